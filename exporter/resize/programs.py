"""Load bpf/resize.bpf.c, keep its rule map equal to the pods' annotations, read its events.

Three moving parts, each in its own daemon thread so none waits on another:
- `RuleSync` (once a second): annotated pods of the pod index -> validated Rules -> the
  (container cgroup id, comm) entries of the resize_rules map, and the actuator's targets.
  A bad annotation is logged once (one line, no traceback) and counted, and never armed.
- `EventReader`: polls the ring buffer; exec and exit events go to the actuator, and between
  polls (at most 100 ms apart) the actuator's timers run.
- the actuator's PATCH pool (actuator.py).
"""
from __future__ import annotations

import ctypes
import json
import logging
import threading
import time

from .. import kube, names
from ..collectors.bpfmaps import c_string
from ..errors import PodsnoopError
from . import annotation
from .actuator import Actuator, PodPatcher
from .collector import ResizeCollector, ResizeStats

log = logging.getLogger(__name__)

MAX_RULES = 4096          # (container cgroup, command) pairs
MAX_LIVE = 16384          # matched processes running at once, node-wide
RINGBUF_PAGES = 16        # 64 KiB: ~1,600 events in flight
EVENT_EXEC, EVENT_EXIT = 1, 2
SYNC_SECONDS = 1.0
POLL_MS = 100
RESCAN_SECONDS = 2.0      # a container not yet in the cgroup index: rescan at most this often


def load_program(cfg):
    """bpf/resize.bpf.c, precompiled, loaded and attached (raw tracepoints) by libbpf in this
    process (set before the load: exporter.loader._resize_object)."""
    from .. import loader as programs
    return programs.load("resize", cfg)


class RuleSync:
    def __init__(self, table, resolver, index, actuator: Actuator, stats: ResizeStats,
                 clock=time.monotonic):
        self.table = table
        self.resolver = resolver
        self.index = index
        self.actuator = actuator
        self.stats = stats
        self.clock = clock
        self.present: set[tuple[int, str]] = set()      # what resize_rules holds
        self._parsed: dict[str, tuple] = {}             # uid -> (text, containers, Rule|error)
        self._last_rescan = float("-inf")
        self.map_failures = 0

    def _rule(self, meta, text: str, containers: frozenset[str]):
        cached = self._parsed.get(meta.uid)
        if cached is not None and cached[:2] == (text, containers):
            return cached[2]
        try:
            rule = annotation.parse(text, set(containers))
        except annotation.AnnotationError as e:
            log.warning("resize annotation %s on pod %s/%s rejected (%s): %s; the pod is not "
                        "resized", names.RESIZE_ANNOTATION, meta.namespace, meta.name, e.reason, e)
            self.stats.annotation_error(meta.uid, meta.namespace, meta.name, e.reason)
            rule = e
        else:
            log.info("resize annotation on pod %s/%s accepted: container %s, commands %s",
                     meta.namespace, meta.name, rule.container, ", ".join(rule.commands))
        self._parsed[meta.uid] = (text, containers, rule)
        return rule

    def _wanted(self):
        _, pods, deleted = self.index.snapshot()
        cgroups_of = self.resolver.pods()
        targets, by_cgroup, entries = {}, {}, set()
        unresolved = False
        for uid, meta in pods.items():
            if meta.resize is None or uid in deleted:
                continue
            text, resources = meta.resize
            spec = json.loads(resources)
            rule = self._rule(meta, text, frozenset(spec))
            if isinstance(rule, Exception):
                continue
            ids = {cid for cid, name in meta.containers.items() if name == rule.container}
            cgroups = [i.cgroup_id for i in cgroups_of.get(uid, ())
                       if i.container_id and i.container_id in ids]
            if not cgroups:
                unresolved = unresolved or bool(ids)   # started, but not in our index yet
                continue
            key = (uid, rule.container)
            targets[key] = (meta.namespace, meta.name, rule, spec.get(rule.container) or {})
            for cgroup_id in cgroups:
                by_cgroup[cgroup_id] = key
                entries.update((cgroup_id, comm) for comm in rule.commands)
        for uid in [u for u in self._parsed if u not in pods or u in deleted]:
            del self._parsed[uid]
        return targets, by_cgroup, entries, unresolved

    def sync(self) -> int:
        """Arm exactly the valid annotations' commands; returns the number of map entries."""
        targets, by_cgroup, entries, unresolved = self._wanted()
        if unresolved and self.clock() - self._last_rescan >= RESCAN_SECONDS:
            self._last_rescan = self.clock()
            self.resolver.rescan()
            targets, by_cgroup, entries, _ = self._wanted()
        # Targets first: an event for a new entry must find its target.
        self.actuator.set_targets(targets, by_cgroup)
        for cgroup_id, comm in entries - self.present:
            key = self.table.Key()
            key.cgroup_id = cgroup_id
            key.comm = comm.encode()
            try:
                self.table[key] = ctypes.c_ubyte(1)
                self.present.add((cgroup_id, comm))
            except Exception as e:  # noqa: BLE001 - map full: log once per entry, keep going
                self.map_failures += 1
                if self.map_failures == 1:
                    log.warning("resize rule map is full (%d entries): %s", MAX_RULES, e)
        for cgroup_id, comm in self.present - entries:
            key = self.table.Key()
            key.cgroup_id = cgroup_id
            key.comm = comm.encode()
            try:
                del self.table[key]
            except KeyError:
                pass
            self.present.discard((cgroup_id, comm))
        return len(self.present)


class EventReader:
    def __init__(self, bpf, actuator: Actuator):
        self.bpf = bpf
        self.actuator = actuator
        self.errors = 0
        bpf["resize_events"].open_ring_buffer(self._on_event)

    def _on_event(self, _ctx, data, _size) -> int:
        try:
            e = self.bpf["resize_events"].event(data)
            if e.kind == EVENT_EXEC:
                self.actuator.on_exec(e.cgroup_id, e.pid, e.time_ns, c_string(e.comm))
            elif e.kind == EVENT_EXIT:
                self.actuator.on_exit(e.cgroup_id, e.pid)
        except Exception:  # never raise into bcc's C callback
            self.errors += 1
            if self.errors == 1:
                log.exception("handling a resize event failed")
        return 0

    def poll(self) -> None:
        self.bpf.ring_buffer_poll(POLL_MS)
        self.actuator.tick()


class _Loop:
    """A daemon thread calling `step` until stopped; one failure is logged, not fatal."""

    def __init__(self, name: str, step, pause: float = 0.0):
        self.step = step
        self.pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        failed = False
        while not self._stop.is_set():
            try:
                self.step()
                failed = False
            except Exception:  # noqa: BLE001 - keep going; say it once per failure streak
                if not failed:
                    log.exception("%s failed", self._thread.name)
                failed = True
                self._stop.wait(1.0)
            if self.pause:
                self._stop.wait(self.pause)

    def start(self) -> "_Loop":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class ResizeOnExec:
    """The feature as app.py sees it: a collector, and stop()."""

    def __init__(self, cfg, resolver, index):
        if index is None:
            raise PodsnoopError(
                f"--resize {cfg.resize} needs the Kubernetes API (pods and their "
                "podsnoop.io/resize-on-exec annotations come from it)",
                "run with --kube auto (in a cluster, or with --kubeconfig), or --resize off")
        dry_run = cfg.resize == "dry-run"
        patcher = None
        if not dry_run:
            client = kube.load_kubernetes_client(cfg.kube, cfg.kubeconfig)
            if client is None:
                raise PodsnoopError("--resize on needs a Kubernetes API client and none is "
                                    "configured", "run in a cluster, give --kubeconfig, or "
                                    "use --resize dry-run / off")
            patcher = PodPatcher(client)
        self.bpf = load_program(cfg)
        self.stats = ResizeStats()
        self.actuator = Actuator(patcher, self.stats, dry_run, cfg.resize_hold_seconds,
                                 cfg.resize_min_interval)
        self.sync = RuleSync(self.bpf["resize_rules"], resolver, index, self.actuator,
                             self.stats)
        self.collector = ResizeCollector(self.stats, self.actuator, self.sync, self.bpf, index)
        reader = EventReader(self.bpf, self.actuator)
        self._loops = [_Loop("podsnoop-resize-sync", self.sync.sync, SYNC_SECONDS).start(),
                       _Loop("podsnoop-resize-events", reader.poll).start()]
        log.info("resize on exec: %s (hold %gs, at least %gs between resizes of a container)",
                 "dry-run, nothing is sent" if dry_run else "on", cfg.resize_hold_seconds,
                 cfg.resize_min_interval)

    def stop(self) -> None:
        for loop in self._loops:
            loop.stop()
        self.actuator.close()
        self.bpf.cleanup()

"""Per-container exec counts by program name, from bpf/exec.bpf.c's exec_counts map.

`podsnoop_exec_total{..., comm}` counts sched_process_exec events per (container, comm);
comm is what the kernel names the task after the exec (the basename of the executed file,
at most 15 bytes). Cardinality per container is bounded like the syscall names: the `top`
comms with the most execs are named, the rest is comm="other" (topn.TopN, shared with the
syscall collector). The maps hold cumulative counts; each scrape adds each key's increase
(cgroupdeltas.CgroupDeltas), so exported counters only grow.

Optional (--exec-log N): every counted exec also goes through a bounded ring buffer to a
reader thread that keeps the last N execs per pod, served at /execs as JSON lines (for
auditing `kubectl exec`). Events the ring had no room for are counted in
podsnoop_exec_events_dropped_total; counting is not affected by them.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict, deque

from prometheus_client.core import CounterMetricFamily

from .. import loader, names
from ..kuberoots import RootSync, choose_level
from .bpfmaps import c_string
from .cgroupdeltas import (UNRESOLVED, CgroupDeltas, container_labels, map_families,
                           percpu_slot)
from .topn import OTHER, NamedCounters, TopN

log = logging.getLogger(__name__)

COUNTS_MAP = "exec_counts"


def load_programs(cfg, resolver):
    """The exec program, loaded and attached (a raw tracepoint) by libbpf (what it is
    given: loader._exec_object)."""
    bpf = loader.load("exec", cfg, resolver)
    return bpf, RootSync(bpf["kubepods_roots"], resolver, choose_level(resolver))


def _comm(key) -> str:
    return c_string(key.comm)


class ContainerExecs(NamedCounters):
    __slots__ = ("last_live",)

    def __init__(self, now: float):
        super().__init__(1)
        self.last_live = now


class ExecCollector:
    def __init__(self, bpf, resolver, labeler, grace_seconds: float, top: int = 10,
                 series_cap: int = 10000, clock=time.monotonic):
        self.counts = bpf[COUNTS_MAP]
        self.failures = bpf["exec_update_failures"]
        self.labeler = labeler
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.deltas = CgroupDeltas(resolver)
        self.topn = TopN(top, None, series_cap)
        self.containers: dict[tuple, ContainerExecs] = {}
        self.log: ExecLog | None = None  # set when --exec-log is on

    def _family(self):
        return CounterMetricFamily(names.EXECS, "Programs the container executed (execve), by "
                                   "the task's comm after the exec.",
                                   labels=list(names.EXEC_LABELS))

    def describe(self):
        yield self._family()
        yield from self._self_families(0)

    def _self_families(self, entries: int):
        yield from map_families([(COUNTS_MAP, self.counts, entries,
                                  percpu_slot(self.failures, 0))])
        c = CounterMetricFamily(names.SERIES_CAP_DROPPED,
                                'Series folded into "other" by a series cap.',
                                labels=["collector"])
        c.add_metric(["exec"], self.topn.cap_dropped)
        yield c
        if self.log is not None:
            d = CounterMetricFamily(names.EXEC_EVENTS_DROPPED,
                                    "Exec events the ring buffer had no room for (missing "
                                    "from /execs; podsnoop_exec_total still counts them).")
            d.add_metric([], percpu_slot(self.failures, 1))
            yield d

    def collect(self):
        family = self._family()
        now = self.clock()
        (rows,), live, (entries,) = self.deltas.take([self.counts])
        for owner in live:
            self.containers.setdefault(owner, ContainerExecs(now)).last_live = now
        per_owner: dict[tuple, dict[str, list[int]]] = defaultdict(dict)
        for owner, key, (n,) in rows:
            if n:
                acc = per_owner[owner].setdefault(_comm(key), [0])
                acc[0] += n
        for owner, deltas in per_owner.items():
            self.topn.apply(self.containers.setdefault(owner, ContainerExecs(now)), deltas)
        for owner, totals in list(self.containers.items()):
            if now - totals.last_live > self.grace_seconds:
                del self.containers[owner]
                self.topn.release(totals)
        labels_of = container_labels(self.labeler)
        for owner, totals in self.containers.items():
            base = labels_of(owner)
            for comm, (n,) in totals.named.items():
                family.add_metric(base + [comm], n)
            if totals.other[0]:
                family.add_metric(base + [OTHER], totals.other[0])
        yield family
        yield from self._self_families(entries)


# -- recent-exec log ----------------------------------------------------------------------
def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _iso(wall: float) -> str:
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
            + f".{int(wall * 1e6) % 1000000:06d}Z")


class ExecLog:
    """Reads bpf/exec.bpf.c's ring buffer in a thread; keeps the last `per_pod` execs per pod.

    Events are kept per cgroup as they arrive (a new container's cgroup may not be known to
    the resolver yet) and resolved to pods when read: at most `per_pod` per cgroup, and per
    pod the newest `per_pod` over its cgroups. A cgroup that is gone and has had no exec for
    the grace period is forgotten.
    """

    def __init__(self, bpf, resolver, labeler, per_pod: int, grace_seconds: float,
                 clock=time.monotonic):
        self.bpf = bpf
        self.resolver = resolver
        self.labeler = labeler
        self.per_pod = per_pod
        self.grace_seconds = grace_seconds
        self.clock = clock
        self._by_cgroup: dict[int, deque] = {}
        self._seen: dict[int, float] = {}
        self._owner: dict[int, tuple[str, str]] = {}  # cgroup id -> (pod_uid, container_id)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        bpf["exec_events"].open_ring_buffer(self._on_event)

    def _on_event(self, _ctx, data, _size) -> int:
        try:
            e = self.bpf["exec_events"].event(data)
            wall = time.time() - (_boottime() - e.time_ns / 1e9)
            record = {"time": _iso(wall), "pid": e.pid, "ppid": e.ppid, "uid": e.uid,
                      "comm": c_string(e.comm), "filename": c_string(e.filename)}
            with self._lock:
                ring = self._by_cgroup.get(e.cgroup_id)
                if ring is None:
                    ring = self._by_cgroup[e.cgroup_id] = deque(maxlen=self.per_pod)
                ring.append(record)
                self._seen[e.cgroup_id] = self.clock()
        except Exception:  # never raise into bcc's C callback
            self.errors += 1
            if self.errors == 1:
                log.exception("decoding an exec event failed")
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.bpf.ring_buffer_poll(200)
            except Exception:  # keep reading; one bad event must not end the log
                log.exception("reading exec events failed")
                time.sleep(1)

    def start(self) -> "ExecLog":
        self._thread = threading.Thread(target=self._run, name="exec-log", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def records(self, pod_uid: str | None = None) -> list[dict]:
        """Recent execs, oldest first, with pod and container names filled in now."""
        now = self.clock()
        with self._lock:
            snapshot = {cid: list(ring) for cid, ring in self._by_cgroup.items()}
            seen = dict(self._seen)
        resolved = self.resolver.resolve_many(snapshot)
        per_pod: dict[str, list[dict]] = defaultdict(list)
        gone = []
        for cid, rows in snapshot.items():
            info = resolved.get(cid)
            if info is not None:
                self._owner[cid] = (info.pod_uid, info.container_id)
            elif now - seen[cid] > self.grace_seconds:
                gone.append(cid)
            uid, container_id = self._owner.get(cid, UNRESOLVED)
            for r in rows:
                per_pod[uid].append({**r, "pod_uid": uid, "container_id": container_id})
        if gone:
            with self._lock:
                for cid in gone:
                    if self._seen.get(cid) == seen[cid]:  # no new exec meanwhile
                        self._by_cgroup.pop(cid, None)
                        self._seen.pop(cid, None)
                        self._owner.pop(cid, None)
        out = []
        for uid, rows in per_pod.items():
            if pod_uid is not None and uid != pod_uid:
                continue
            rows.sort(key=lambda r: r["time"])
            namespace, pod = self.labeler.pod(uid)
            for r in rows[-self.per_pod:]:
                r["namespace"], r["pod"] = namespace, pod
                r["container"] = self.labeler.container(uid, r["container_id"])
                out.append(r)
        out.sort(key=lambda r: r["time"])
        return out

    def json_lines(self, pod_uid: str | None = None) -> str:
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records(pod_uid))


class ExecLogEndpoint:
    """GET /execs[?pod_uid=UID]: the recent-exec log as JSON lines, oldest first."""

    def __init__(self):
        self.log: ExecLog | None = None

    async def __call__(self, request):
        import asyncio

        from aiohttp import web
        if self.log is None:
            return web.Response(status=404, text="the exec log is off: start podsnoop with "
                                                  "--exec-log N (execs kept per pod)\n")
        text = await asyncio.get_running_loop().run_in_executor(
            None, self.log.json_lines, request.query.get("pod_uid"))
        return web.Response(text=text, content_type="application/x-ndjson")

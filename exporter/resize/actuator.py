"""Decide when to resize an annotated container, and send the PATCH.

One `Target` per annotated container. The first matched exec while the container is down
sends the resize up at once (the latency that matters: the burst is starting); every further
match while it is up only joins the set of matched processes, so a `make -j` spawning a
hundred `cc1` causes one resize. The resize down waits until the last matched process has
exited and the hold time has passed with no new match. Two resizes of one container are at
least --resize-min-interval apart; a failed resize down is retried with backoff.

PATCHes go out on a small thread pool, one at a time per container, never under the lock:
the ring-buffer reader only records and decides.

The PATCH is a strategic-merge patch of spec.containers[name].resources, sent to the
pods/resize subresource (Kubernetes >= 1.33). If that answers 404 the pod itself is patched
(1.27-1.32 with the InPlacePodVerticalScaling feature gate), and the rest of this process's
life goes straight there. The outcome is read back from the pod (PodResizePending /
PodResizeInProgress conditions, or the older status.resize, and the container's status
resources) a few times after the PATCH.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .annotation import Resources, Rule, parse_quantity

log = logging.getLogger(__name__)

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
READBACK_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)   # seconds after the PATCH
LIVENESS_SECONDS = 1.0    # how often matched pids are checked in /proc (lost exit events)
MAX_RETRY_SECONDS = 300.0
FINAL_STATUSES = ("done", "infeasible")


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def patch_body(container: str, resources: Resources) -> dict:
    return {"spec": {"containers": [{"name": container, "resources": {
        kind: dict(part) for kind, part in resources.items()}}]}}


def describe(resources: Resources) -> str:
    return " ".join(f"{kind}.{res}={q}" for kind, part in resources.items()
                    for res, q in part.items())


def _same(actual, wanted: str) -> bool:
    try:
        return actual is not None and parse_quantity(str(actual)) == parse_quantity(wanted)
    except ValueError:
        return False


def resize_status(pod: dict, container: str, wanted: Resources) -> str:
    """What the kubelet made of a resize: done, proposed, in_progress, deferred, infeasible."""
    status = pod.get("status") or {}
    for c in status.get("conditions") or ():
        if c.get("status") != "True":
            continue
        if c.get("type") == "PodResizePending":
            return "infeasible" if c.get("reason") == "Infeasible" else "deferred"
        if c.get("type") == "PodResizeInProgress":
            return "in_progress"
    legacy = status.get("resize")   # 1.27-1.32
    if legacy:
        return {"Proposed": "proposed", "InProgress": "in_progress", "Deferred": "deferred",
                "Infeasible": "infeasible"}.get(legacy, str(legacy).lower())
    for cs in status.get("containerStatuses") or ():
        if cs.get("name") == container:
            actual = cs.get("resources") or {}
            if all(_same((actual.get(kind) or {}).get(res), q)
                   for kind, part in wanted.items() for res, q in part.items()):
                return "done"
    return "proposed"


def _reason(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        message = ""
        try:
            message = json.loads(getattr(exc, "body", "") or "{}").get("message", "")
        except (ValueError, AttributeError):
            pass
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}: {message}".strip(": ")
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


class PodPatcher:
    """PATCH a pod's container resources: pods/resize first, the pod spec after a 404."""

    def __init__(self, api_client, timeout: tuple[float, float] = (5.0, 10.0)):
        from kubernetes.client import CoreV1Api
        self.api = CoreV1Api(api_client)
        self.timeout = timeout
        self.subresource = True   # until a 404 says this cluster has no pods/resize

    def warm_up(self) -> None:
        """Open the connection and load the client's code paths now (GET /version), so the
        first resize does not pay for them."""
        from kubernetes.client import VersionApi
        try:
            VersionApi(self.api.api_client).get_code(_request_timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - only a warm-up; the PATCH reports problems
            log.debug("resize: warming up the API connection failed: %s", _reason(e))

    def _kw(self) -> dict:
        return dict(_content_type=STRATEGIC_MERGE, _preload_content=False,
                    _request_timeout=self.timeout)

    def patch(self, namespace: str, name: str, body: dict,
              sending: Callable[[], None]) -> tuple[dict, str]:
        """(the patched pod, how) or raises; `sending` is called just before the request."""
        from kubernetes.client.exceptions import ApiException
        sending()
        if self.subresource:
            try:
                resp = self.api.patch_namespaced_pod_resize(name, namespace, body, **self._kw())
                return json.loads(resp.data), "pods/resize"
            except ApiException as e:
                if e.status != 404:
                    raise
                tried = True
        else:
            tried = False
        # No pods/resize (Kubernetes < 1.33), or the pod is gone: the pod patch tells which.
        resp = self.api.patch_namespaced_pod(name, namespace, body, **self._kw())
        if tried:
            self.subresource = False
            log.info("the API server has no pods/resize subresource (Kubernetes < 1.33): "
                     "resizing by patching the pod spec (needs the InPlacePodVerticalScaling "
                     "feature gate)")
        return json.loads(resp.data), "pod spec"

    def read(self, namespace: str, name: str) -> dict:
        resp = self.api.read_namespaced_pod(name, namespace, _preload_content=False,
                                            _request_timeout=self.timeout)
        return json.loads(resp.data)


class Target:
    """One annotated container: its rule, its matched processes, where its resize is."""

    def __init__(self, key: tuple[str, str]):
        self.key = key                      # (pod uid, container name)
        self.namespace = self.pod = ""
        self.rule: Rule | None = None
        self.spec: Resources = {}           # the container's resources in the pod spec now
        self.live: set[int] = set()         # matched pids still running
        self.empty_since: float | None = 0.0
        self.up = False                     # resized up, or on its way up
        self.busy = False                   # a PATCH in flight
        self.last_patch = float("-inf")
        self.pending_up: tuple | None = None  # (kernel time, comm, pid) held by the rate limit
        self.revert: Resources | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.readback: tuple | None = None  # (due, attempt, wanted resources)

    @property
    def container(self) -> str:
        return self.key[1]

    def labels(self) -> list[str]:
        return [self.namespace, self.pod, self.container]


class Actuator:
    def __init__(self, patcher: PodPatcher | None, stats, dry_run: bool, hold_seconds: float,
                 min_interval: float, clock: Callable[[], float] = time.monotonic,
                 pid_alive: Callable[[int], bool] = _pid_alive, workers: int = 4):
        self.patcher = patcher
        self.stats = stats
        self.dry_run = dry_run
        self.hold_seconds = hold_seconds
        self.min_interval = min_interval
        self.clock = clock
        self.pid_alive = pid_alive
        self.targets: dict[tuple[str, str], Target] = {}
        self.by_cgroup: dict[int, tuple[str, str]] = {}
        self.unmatched_events = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="podsnoop-resize")
        self._last_liveness = float("-inf")
        self._warned: set[tuple] = set()
        self._closed = False
        if patcher is not None:
            self._pool.submit(patcher.warm_up)

    # -- from the annotation sync --

    def set_targets(self, wanted: dict, by_cgroup: dict[int, tuple[str, str]]) -> None:
        """wanted: (uid, container) -> (namespace, pod, Rule, spec resources)."""
        with self._lock:
            targets = {}
            for key, (namespace, pod, rule, spec) in wanted.items():
                t = self.targets.get(key) or Target(key)
                t.namespace, t.pod, t.rule, t.spec = namespace, pod, rule, spec
                targets[key] = t
            self.targets = targets
            self.by_cgroup = dict(by_cgroup)

    def armed(self) -> list[tuple[list[str], int]]:
        with self._lock:
            return [(t.labels(), len(t.live)) for t in self.targets.values()]

    def live_count(self) -> int:
        with self._lock:
            return sum(len(t.live) for t in self.targets.values())

    # -- from the ring-buffer reader --

    def _target(self, cgroup_id: int) -> Target | None:
        key = self.by_cgroup.get(cgroup_id)
        return self.targets.get(key) if key else None

    def on_exec(self, cgroup_id: int, pid: int, time_ns: int, comm: str) -> None:
        with self._lock:
            t = self._target(cgroup_id)
            if t is None:   # the rule went away since the kernel matched it
                self.unmatched_events += 1
                return
            t.live.add(pid)
            t.empty_since = None
            if not t.up:
                self._want_up(t, (time_ns / 1e9, comm, pid))

    def on_exit(self, cgroup_id: int, pid: int) -> None:
        with self._lock:
            t = self._target(cgroup_id)
            if t is not None:
                t.live.discard(pid)
                if not t.live and t.empty_since is None:
                    t.empty_since = self.clock()

    def tick(self) -> None:
        """Rate-limited ups, due downs, read-backs, and pids whose exit event was lost."""
        now = self.clock()
        with self._lock:
            check = now - self._last_liveness >= LIVENESS_SECONDS
            if check:
                self._last_liveness = now
            for t in self.targets.values():
                if check and t.live:
                    t.live = {pid for pid in t.live if self.pid_alive(pid)}
                    if not t.live and t.empty_since is None:
                        t.empty_since = now
                if t.busy:
                    continue
                if t.pending_up is not None:
                    if t.up or not t.live:   # the matched processes are already gone
                        t.pending_up = None
                    elif now >= t.last_patch + self.min_interval:
                        self._start(t, "up", t.pending_up)
                        continue
                hold = t.rule.hold_seconds if t.rule and t.rule.hold_seconds is not None \
                    else self.hold_seconds
                if (t.up and not t.live and t.empty_since is not None
                        and now - t.empty_since >= hold
                        and now >= max(t.last_patch + self.min_interval, t.retry_at)):
                    self._start(t, "down", None)
                    continue
                if t.readback is not None and now >= t.readback[0] and self.patcher:
                    _, attempt, wanted = t.readback
                    t.readback = None
                    t.busy = True
                    self._pool.submit(self._read_back, t, attempt, wanted)

    # -- deciding (lock held) --

    def _want_up(self, t: Target, trigger: tuple) -> None:
        if t.busy or self.clock() < t.last_patch + self.min_interval:
            if t.pending_up is None:
                t.pending_up = trigger
            return
        self._start(t, "up", trigger)

    def _original(self, t: Target) -> Resources:
        """What the resize up changes, as the pod spec has it now: where down returns to."""
        out: dict[str, dict[str, str]] = {}
        for kind, part in t.rule.up.items():
            for res in part:
                value = (t.spec.get(kind) or {}).get(res)
                if value is None:
                    if (t.key, kind, res) not in self._warned:
                        self._warned.add((t.key, kind, res))
                        log.warning("resize: %s/%s container %s has no %s.%s before the resize "
                                    "up: it is not reverted (give \"down\" in the annotation)",
                                    t.namespace, t.pod, t.container, kind, res)
                    continue
                out.setdefault(kind, {})[res] = str(value)
        return out

    def _start(self, t: Target, direction: str, trigger: tuple | None) -> None:
        if self._closed:
            return
        t.pending_up = None
        t.readback = None
        if direction == "up":
            # Without "down": what the spec had before the first resize up. Kept across
            # cycles: the watch may not yet show the last resize down when the next up starts.
            t.revert = t.rule.down or t.revert or self._original(t)
            resources = t.rule.up
        else:
            resources = t.revert
            if not resources:   # nothing known to return to
                t.up = False
                return
        t.up = direction == "up"   # set now: matches during the PATCH are debounced
        t.busy = True
        self._pool.submit(self._send, t, direction, resources, trigger)

    # -- sending (pool threads) --

    def _send(self, t: Target, direction: str, resources: Resources, trigger) -> None:
        body = patch_body(t.container, resources)
        sent = [self.clock()]

        def sending() -> None:
            sent[0] = self.clock()
            if trigger is not None:
                self.stats.latency(max(0.0, sent[0] - trigger[0]))

        pod = None
        what = f"{t.namespace}/{t.pod} container {t.container} {direction} ({describe(resources)})"
        try:
            if self.dry_run:
                sending()
                result, how = "dry_run", ""
            else:
                pod, how = self.patcher.patch(t.namespace, t.pod, body, sending)
                result = "applied"
        except Exception as e:  # noqa: BLE001 - any API or network failure: count, log, retry
            result, how = "failed", _reason(e)
            if getattr(e, "status", None) == 403:
                how += (" (podsnoop needs patch on pods/resize, and on pods before Kubernetes "
                        "1.33: apply the deploy/resize component)")
        cause = (f", {(sent[0] - trigger[0]) * 1e3:.1f} ms after the exec of {trigger[1]} "
                 f"(pid {trigger[2]})" if trigger else "")
        if result == "dry_run":
            log.info("resize dry-run: would resize %s%s", what, cause)
        elif result == "applied":
            log.info("resized %s via %s%s", what, how, cause)
        else:
            log.warning("resizing %s failed: %s", what, how)
        self.stats.action(t.key[0], t.namespace, t.pod, t.container, direction, result)
        now = self.clock()
        with self._lock:
            t.busy = False
            t.last_patch = now
            if result == "failed":
                if direction == "up":
                    t.up = False   # the next matched exec tries again (rate-limited)
                else:
                    t.up = True
                    t.failures += 1
                    t.retry_at = now + min(MAX_RETRY_SECONDS, max(self.min_interval,
                                                                  2.0 ** t.failures))
                return
            t.failures = 0
            if pod is not None:
                self._readback_result(t, pod, 0, resources, now)

    def _readback_result(self, t: Target, pod: dict, attempt: int, wanted: Resources,
                         now: float) -> None:
        status = resize_status(pod, t.container, wanted)
        self.stats.set_status(t.key[0], t.namespace, t.pod, t.container, status)
        if status in ("deferred", "infeasible") and (t.key, status) not in self._warned:
            self._warned.add((t.key, status))
            log.warning("resize of %s/%s container %s is %s by the kubelet", t.namespace,
                        t.pod, t.container, status)
        if status not in FINAL_STATUSES and attempt < len(READBACK_DELAYS):
            t.readback = (now + READBACK_DELAYS[attempt], attempt + 1, wanted)

    def _read_back(self, t: Target, attempt: int, wanted: Resources) -> None:
        try:
            pod = self.patcher.read(t.namespace, t.pod)
        except Exception as e:  # noqa: BLE001 - the pod may be gone; nothing to retry
            log.debug("reading back the resize of %s/%s failed: %s", t.namespace, t.pod,
                      _reason(e))
            pod = None
        with self._lock:
            t.busy = False
            if pod is not None:
                self._readback_result(t, pod, attempt, wanted, self.clock())

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

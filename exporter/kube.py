"""Pods on this node, from the Kubernetes API: uid -> namespace, name, container names.

The scrape path never talks to the API server. A daemon thread (`PodWatcher`) lists and
watches the pods bound to this node and keeps a `PodIndex` current; collectors only read the
index, which is an immutable snapshot swapped under a lock, so a read is one attribute load
and a dict lookup and never waits for the watcher.

The watcher parses the API's JSON itself instead of deserializing into the client's models:
that is what keeps a 1,000-pod re-list well under a second of CPU.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

from . import __version__, names
from .kubeclient import ApiError
from .config import DEFAULT_GRACE_SECONDS  # noqa: F401  (one grace period for all state)

log = logging.getLogger(__name__)

RBAC_HINT = """\
podsnoop needs `get, list, watch` on `pods` and `services` at cluster scope (it lists all
namespaces: pods with fieldSelector spec.nodeName=<node>, and for the traffic matrix's peers
every pod and Service). Grant it to the exporter's ServiceAccount, e.g.:
  apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRole
  metadata:
    name: podsnoop
  rules:
  - apiGroups: [""]
    resources: ["pods", "services"]
    verbs: ["get", "list", "watch"]
plus a ClusterRoleBinding of that role to the ServiceAccount. Retrying until then; pods stay
unlabelled meanwhile."""


@dataclass(frozen=True)
class PodMeta:
    """What the collectors need to label a pod's samples. Immutable, so it can be shared."""

    uid: str
    namespace: str
    name: str
    node: str
    # container id (no "containerd://" prefix) -> container name
    containers: Mapping[str, str] = field(default_factory=dict, hash=False)
    # allowlisted pod labels, keys already sanitized ("label_app_kubernetes_io_name")
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    phase: str = ""
    # Resize on exec (issue 8): (annotation text, JSON of {container: spec resources}) for
    # pods with the podsnoop.io/resize-on-exec annotation, None for every other pod.
    resize: tuple[str, str] | None = None
    # The pod's workload from its controller ownerReference (see workload_of): e.g.
    # ("Deployment", "web"); ("", "") for a bare pod.
    workload_kind: str = ""
    workload: str = ""

    def __post_init__(self) -> None:
        # Read-only views: a PodMeta handed to a collector cannot be changed under it.
        object.__setattr__(self, "containers", MappingProxyType(dict(self.containers)))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))


# --- parsing -------------------------------------------------------------------------

_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_label_name(key: str) -> str:
    """`app.kubernetes.io/name` -> `label_app_kubernetes_io_name` (kube-state-metrics style)."""
    return "label_" + _INVALID_LABEL_CHARS.sub("_", key)


def strip_runtime_prefix(container_id: str) -> str:
    """`containerd://abc` -> `abc`: the cgroup path carries the bare id."""
    _, sep, rest = container_id.partition("://")
    return rest if sep else container_id


class LabelAllowlist:
    """Which pod labels become Prometheus labels. Empty = none, "*" = all (mind cardinality)."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self.keys = frozenset(k.strip() for k in keys if k.strip())
        self.all = "*" in self.keys

    def __bool__(self) -> bool:
        return bool(self.keys)

    def select(self, labels: Mapping[str, str] | None) -> dict[str, str]:
        if not labels or not self.keys:
            return {}
        out: dict[str, str] = {}
        # Sorted so two keys that sanitize to the same name resolve the same way every time.
        for key in sorted(labels):
            if self.all or key in self.keys:
                out.setdefault(sanitize_label_name(key), str(labels[key]))
        return out


_STATUS_LISTS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")


def _container_ids(status: Mapping[str, Any]) -> dict[str, str]:
    ids: dict[str, str] = {}
    for key in _STATUS_LISTS:
        for cs in status.get(key) or ():
            name = cs.get("name") or ""
            # The previous instance's id (lastState) too: after a restart, the dead
            # container's last syscall counters still deserve its name.
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("containerID")
            for cid in (last, cs.get("containerID")):
                if cid:
                    ids[strip_runtime_prefix(cid)] = name
    return ids


# CronJob controller names its Jobs "<cronjob>-<scheduled time in minutes since the epoch>"
# (kubernetes pkg/controller/cronjob getJobName). A Job counts as a CronJob's only if its
# suffix is such a time, from 2015 (CronJobs did not exist before) to a day from now.
_CRONJOB_MINUTES_FROM = 23_667_840   # 2015-01-01T00:00Z
_JOB_NAME = re.compile(r"(.+)-(\d{8,})")


def workload_of(md: Mapping[str, Any], now: float | None = None) -> tuple[str, str]:
    """(workload_kind, workload) from a pod's controller ownerReference, without asking the
    API for the owner (podsnoop may only read pods): a ReplicaSet named
    "<deployment>-<pod-template-hash label>" is its Deployment's (the Deployment controller
    names them so), a Job named "<cronjob>-<minutes>" is its CronJob's; a StatefulSet,
    DaemonSet, other Job or ReplicaSet, or any other owner (a Node for a static pod) is
    itself; a bare pod is ("", "")."""
    refs = [r for r in md.get("ownerReferences") or () if isinstance(r, Mapping)]
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ref is None:
        return ("", "")
    kind, name = str(ref.get("kind") or ""), str(ref.get("name") or "")
    if kind == "ReplicaSet":
        template_hash = (md.get("labels") or {}).get("pod-template-hash")
        if template_hash and name.endswith("-" + template_hash) and len(name) > len(
                template_hash) + 1:
            return ("Deployment", name[:-len(template_hash) - 1])
    elif kind == "Job":
        m = _JOB_NAME.fullmatch(name)
        latest = ((time.time() if now is None else now) + 86400) // 60
        if m and _CRONJOB_MINUTES_FROM <= int(m.group(2)) <= latest:
            return ("CronJob", m.group(1))
    return (kind, name)


def pod_meta(obj: Mapping[str, Any], allowlist: LabelAllowlist | None = None) -> PodMeta:
    """Build a PodMeta from a pod as the API serves it (JSON dict, camelCase)."""
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    kind, workload = workload_of(md)
    return PodMeta(
        uid=md.get("uid") or "",
        namespace=md.get("namespace") or "",
        name=md.get("name") or "",
        node=spec.get("nodeName") or "",
        containers=_container_ids(status),
        labels=allowlist.select(md.get("labels")) if allowlist else {},
        phase=status.get("phase") or "",
        resize=_resize_on_exec(md, spec),
        workload_kind=kind,
        workload=workload,
    )


# --- resize on exec (issue 8) ----------------------------------------------------------
def _resize_on_exec(md: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """Only annotated pods keep anything: the annotation, and their containers' resources
    (what a resize up returns to when the annotation gives no "down")."""
    text = (md.get("annotations") or {}).get(names.RESIZE_ANNOTATION)
    if text is None:
        return None
    resources = {c.get("name") or "": c.get("resources") or {}
                 for c in spec.get("containers") or ()}
    return (str(text), json.dumps(resources, sort_keys=True))
# --- end resize on exec ----------------------------------------------------------------


# --- index ---------------------------------------------------------------------------


class _State(NamedTuple):
    generation: int
    pods: Mapping[str, PodMeta]
    deleted: Mapping[str, float]  # uid -> when the API deleted it (index clock)


class PodIndex:
    """uid -> PodMeta, safe to read from any thread without locking.

    Writers build a new immutable snapshot under a lock and swap one reference, so readers
    see either the old or the new state, never a half-applied re-list. `generation` changes
    with every change; a cache keyed on it must read `generation` *before* the data (or use
    `snapshot()`), otherwise it could tag old data with the new generation.
    """

    def __init__(self, grace_seconds: float = DEFAULT_GRACE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_seconds = grace_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _State(0, MappingProxyType({}), MappingProxyType({}))

    # readers: one attribute load, no lock
    @property
    def generation(self) -> int:
        return self._state.generation

    def snapshot(self) -> _State:
        """(generation, pods, deleted) from one consistent moment."""
        return self._state

    def get(self, uid: str) -> PodMeta | None:
        return self._state.pods.get(uid)

    def container_name(self, uid: str, container_id: str) -> str:
        pod = self._state.pods.get(uid)
        return pod.containers.get(container_id, "") if pod else ""

    def all(self) -> list[PodMeta]:
        """Every resolvable pod, including deleted ones still in their grace period."""
        return list(self._state.pods.values())

    def deleted_at(self, uid: str) -> float | None:
        """When the API deleted the pod (index clock), None if it is alive or unknown."""
        return self._state.deleted.get(uid)

    def __len__(self) -> int:
        return len(self._state.pods)

    # writers
    def _commit(self, pods: dict[str, PodMeta], deleted: dict[str, float]) -> None:
        self._state = _State(self._state.generation + 1,
                             MappingProxyType(pods), MappingProxyType(deleted))

    def upsert(self, meta: PodMeta) -> bool:
        """Add or update a living pod. Returns whether anything changed."""
        with self._lock:
            st = self._state
            if st.pods.get(meta.uid) == meta and meta.uid not in st.deleted:
                return False
            pods = dict(st.pods)
            pods[meta.uid] = meta
            deleted = dict(st.deleted)
            deleted.pop(meta.uid, None)
            self._commit(pods, deleted)
            return True

    def delete(self, uid: str, *, final: PodMeta | None = None,
               now: float | None = None) -> bool:
        """Mark a pod deleted; it stays resolvable until `expire` (grace period)."""
        with self._lock:
            st = self._state
            if uid in st.deleted and (final is None or st.pods.get(uid) == final):
                return False
            pods = dict(st.pods)
            if final is not None:
                pods[uid] = final
            elif uid not in pods:
                return False  # never knew it: nothing to keep resolvable
            deleted = dict(st.deleted)
            deleted.setdefault(uid, self._clock() if now is None else now)
            self._commit(pods, deleted)
            return True

    def replace(self, metas: Iterable[PodMeta], now: float | None = None) -> bool:
        """Apply a full re-list in one swap.

        Living pods that are in the list are kept (no drop-and-re-add, no flapping); pods
        that are missing are marked deleted and get the usual grace period.
        """
        new = {m.uid: m for m in metas}
        with self._lock:
            st = self._state
            when = self._clock() if now is None else now
            deleted = {uid: t for uid, t in st.deleted.items() if uid not in new}
            pods = dict(new)
            for uid, meta in st.pods.items():
                if uid not in new:
                    pods[uid] = meta
                    deleted.setdefault(uid, when)
            if pods == st.pods and deleted == st.deleted:
                return False
            self._commit(pods, deleted)
            return True

    def expire(self, now: float | None = None) -> list[str]:
        """Forget pods deleted more than `grace_seconds` ago; returns their uids."""
        with self._lock:
            st = self._state
            when = self._clock() if now is None else now
            gone = [uid for uid, t in st.deleted.items() if when - t >= self.grace_seconds]
            if not gone:
                return []
            pods = dict(st.pods)
            deleted = dict(st.deleted)
            for uid in gone:
                pods.pop(uid, None)
                del deleted[uid]
            self._commit(pods, deleted)
            return gone


# --- watcher -------------------------------------------------------------------------


class _Gone(Exception):
    """The watch's resourceVersion fell out of the server's window: re-list."""


def _iter_lines(resp) -> Iterator[bytes]:
    """Newline-delimited JSON from a streamed (chunked) urllib3 response."""
    buf = b""
    for chunk in resp.stream(amt=None):
        buf += chunk
        if b"\n" in buf:
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    yield line
    if buf.strip():
        yield buf


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    if isinstance(getattr(exc, "reason", None), BaseException):  # urllib3 MaxRetryError
        exc = exc.reason
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]


class ListWatcher:
    """List + watch one kind of object in a daemon thread; subclasses say which objects
    (`_request`), and what a list, a change and a deletion do (`_parse`, `_replace`,
    `_upsert`, `_delete`).

    The blocking client lives only in this thread, so neither the asyncio loop nor /metrics
    ever waits on the API server. Resumes the watch from the last resourceVersion it saw
    (bookmarks keep that fresh), re-lists on 410 Gone, and retries everything else with
    capped exponential backoff and jitter. With `page_size` set, lists are read page by
    page (`limit` and `continue`): only one page of JSON is ever held.

    Attributes for metrics and /readyz:
      state     "starting", "synced" or "degraded: <reason>"
      restarts  list/watch cycles ended by an error, 410 included (not the periodic,
                server-side watch timeout): podsnoop_kube_watch_restarts_total
      last_error, resource_version, last_list_cpu_seconds (watcher thread CPU of the last
      list + index, from time.thread_time()), last_list_items, last_list_pages
    """

    kind = "object"          # log wording: "pod watch expired", "pod list/watch failed"
    resource = "objects"     # log wording: "listed 3 pods", "refused to list pods"
    page_size: int | None = None   # the list's `limit`; None: one unpaginated list

    def __init__(self, api_client_factory: Callable[[], Any], backoff_base: float = 0.5,
                 backoff_cap: float = 30.0, *, watch_timeout: int = 300,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 thread_name: str = "podsnoop-kube-watch") -> None:
        self.api_client_factory = api_client_factory
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.watch_timeout = watch_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

        self.state = "starting"
        self.restarts = 0
        self.last_error: str | None = None
        self.resource_version: str | None = None
        self.last_list_cpu_seconds = 0.0
        self.last_list_items = 0
        self.last_list_pages = 0

        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._resp_lock = threading.Lock()
        self._resp = None
        self._forbidden_logged = False
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    # -- what subclasses define --

    def _request(self, api, **kw):
        """The list (or, with watch=True, watch) request: a RawPods method call."""
        raise NotImplementedError

    def _parse(self, obj: Mapping[str, Any]) -> Any:
        """A listed object -> what `_replace` keeps of it (called per item, page by page)."""
        return obj

    def _replace(self, parsed: list) -> None:
        """A complete list: everything that is, replacing what was."""
        raise NotImplementedError

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _delete(self, obj: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _list_scope(self) -> str:
        """Where the list looked, for its log line: "on node node-a", "in the cluster"."""
        return "in the cluster"

    def _log_forbidden(self, reason: str) -> None:
        """Once per run of 403s: say what permission is missing."""
        log.error("Kubernetes API refused to list %s (%s).", self.resource, reason)

    # -- lifecycle --

    def start(self):
        self._thread.start()
        return self

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until the first successful list (for startup, tests and the demo)."""
        return self._synced.wait(timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread; cuts an open watch instead of waiting for its timeout."""
        self._stopping.set()
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            _shutdown(resp)
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the loop --

    def _run(self) -> None:
        client = api = None
        failures = 0        # consecutive failed cycles, drives the backoff
        need_list = True
        while not self._stopping.is_set():
            delay = 0.0
            try:
                if api is None:
                    client = self.api_client_factory()
                    if client is None:
                        raise RuntimeError("no Kubernetes API client configured")
                    # Not CoreV1Api: ~21 MB of generated code and models (kubeapi.py).
                    from .kubeapi import RawPods
                    api = RawPods(client)
                if need_list:
                    self._list(api, consistent=self._synced.is_set())
                    need_list = False
                if self._watch(api):
                    failures = 0
            except _Gone as exc:
                if self._stopping.is_set():
                    break
                self.restarts += 1
                need_list = True
                log.info("%s watch expired (%s); re-listing", self.kind, exc)
                # The first 410 re-lists at once; a server that keeps answering 410 backs off.
                delay = self._backoff(failures) if failures else 0.0
                failures += 1
            except Exception as exc:  # noqa: BLE001 - any failure: report, back off, retry
                if self._stopping.is_set():
                    break
                self.restarts += 1
                failures += 1
                delay = self._failed(exc, failures)
                if api is None or getattr(exc, "status", None) == 401:
                    _close(client)  # rebuilt by the factory: picks up new credentials
                    client = api = None
            self._stopping.wait(delay)
        _close(client)

    def _backoff(self, failures: int) -> float:
        # Exponent bounded: hours of outage must not overflow the float and kill the thread.
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** min(max(failures - 1, 0), 32))
        return random.uniform(ceiling / 2, ceiling)

    def _failed(self, exc: Exception, failures: int) -> float:
        reason = _describe(exc)
        changed = reason != self.last_error
        self.last_error = reason
        self.state = f"degraded: {reason}"
        if getattr(exc, "status", None) == 403:
            if not self._forbidden_logged:
                self._forbidden_logged = True
                self._log_forbidden(reason)
            # Permissions do not fix themselves quickly: retry at the cap, quietly.
            return random.uniform(self.backoff_cap / 2, self.backoff_cap)
        (log.warning if changed else log.debug)(
            "%s list/watch failed (%s); retrying with backoff", self.kind, reason)
        return self._backoff(failures)

    def _healthy(self, listed: bool = False) -> None:
        if self.state.startswith("degraded"):
            log.info("%s list/watch recovered (last error: %s)", self.kind, self.last_error)
        if listed or self._synced.is_set():
            self.state = "synced"
        self._forbidden_logged = False  # a later, new 403 deserves its own message

    def _open(self, call: Callable[[], Any]):
        """Run a request whose response `stop()` may have to cut; None if stopping."""
        resp = call()
        with self._resp_lock:
            self._resp = resp
        if self._stopping.is_set():
            self._release(close=True)
            return None
        return resp

    def _release(self, close: bool = False) -> None:
        """Hand the connection back; `close` it if the body was not read to the end."""
        with self._resp_lock:
            resp, self._resp = self._resp, None
        if resp is not None:
            try:
                if close:
                    resp.close()
                resp.release_conn()
            except Exception:  # noqa: BLE001 - a cut connection may not release cleanly
                pass

    def _list_page(self, api, **kw) -> dict | None:
        """One list request's parsed body; None if stopping."""
        resp = self._open(lambda: self._request(
            api, _preload_content=False,
            _request_timeout=(self.connect_timeout, self.read_timeout), **kw))
        if resp is None:
            return None
        try:
            return json.loads(resp.data)
        finally:
            self._release()

    def _list(self, api, consistent: bool) -> None:
        cpu0 = time.thread_time()
        # "0" lets the API server answer from its watch cache: the cheap list every
        # DaemonSet should use. After a 410 we want a consistent (quorum) read instead.
        # (A server that cannot paginate its cache answers "0" in one page, limit or not.)
        kw: dict[str, Any] = {"resource_version": None if consistent else "0"}
        if self.page_size:
            kw["limit"] = self.page_size
        parsed: list = []
        pages = 0
        resource_version = None
        while True:
            try:
                body = self._list_page(api, **kw)
            except ApiError as exc:
                if exc.status == 410 and "_continue" in kw:  # token outlived compaction
                    raise _Gone(_describe(exc)) from exc
                raise
            if body is None:
                return
            pages += 1
            metadata = body.get("metadata") or {}
            if resource_version is None:   # every page is of the first page's snapshot
                resource_version = metadata.get("resourceVersion") or None
            parsed.extend(self._parse(obj) for obj in body.get("items") or ())
            token = metadata.get("continue")
            del body
            if not token:
                break
            kw = {"limit": self.page_size, "_continue": token}  # no resourceVersion with it
        self._replace(parsed)
        self.resource_version = resource_version
        self.last_list_cpu_seconds = time.thread_time() - cpu0
        self.last_list_items = len(parsed)
        self.last_list_pages = pages
        first = not self._synced.is_set()
        self._healthy(listed=True)
        self._synced.set()    # after `state`: whoever waits on it sees "synced"
        log.log(logging.INFO if first else logging.DEBUG,
                "listed %d %s %s (resourceVersion %s, %.3f s CPU)",
                len(parsed), self.resource, self._list_scope(), self.resource_version,
                self.last_list_cpu_seconds)

    def _watch(self, api) -> bool:
        """One watch request. True if it ended normally (server timeout, stop)."""
        timeout = int(self.watch_timeout * random.uniform(1.0, 1.2))  # spread reconnects
        try:
            resp = self._open(lambda: self._request(
                api,
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=self.resource_version,
                timeout_seconds=timeout,
                _preload_content=False,
                _request_timeout=(self.connect_timeout, timeout + self.read_timeout)))
        except ApiError as exc:
            if exc.status == 410:
                raise _Gone(_describe(exc)) from exc
            raise
        if resp is None:
            return True
        self._healthy()
        started, events = time.monotonic(), 0
        try:
            for line in _iter_lines(resp):
                self._apply(json.loads(line))
                events += 1
                if self._stopping.is_set():
                    return True
        finally:
            self._release(close=True)
        if not events and time.monotonic() - started < 1.0:
            # A proxy or server closing every watch at once would make us spin: back off
            # (client-go's reflector does the same for "very short watch").
            raise RuntimeError("very short watch: closed within 1 s with no events")
        return True

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            msg = f"{obj.get('reason', '')}: {obj.get('message', '')}"
            if code == 410:
                raise _Gone(msg)
            raise ApiError(code or 0, msg)
        if kind in ("ADDED", "MODIFIED"):
            self._upsert(obj)
        elif kind == "DELETED":
            self._delete(obj)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:  # BOOKMARK carries only this: it keeps a quiet watch resumable
            self.resource_version = rv


class PodWatcher(ListWatcher):
    """List + watch this node's pods and keep `index` current (see ListWatcher)."""

    kind, resource = "pod", "pods"

    def __init__(self, index: PodIndex, node_name: str, api_client_factory: Callable[[], Any],
                 label_allowlist: Iterable[str] = (), backoff_base: float = 0.5,
                 backoff_cap: float = 30.0, *, watch_timeout: int = 300,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 own_pod: tuple[str, str] | None = None) -> None:
        """own_pod: (namespace, name) to watch only that pod, in its namespace (a sidecar
        given read access to its own pod by a namespaced Role)."""
        self.index = index
        self.own_pod = own_pod
        self.node_name = node_name
        self.allowlist = LabelAllowlist(label_allowlist)
        super().__init__(api_client_factory, backoff_base, backoff_cap,
                         watch_timeout=watch_timeout, connect_timeout=connect_timeout,
                         read_timeout=read_timeout, thread_name="podsnoop-kube-watch")

    @property
    def last_list_pods(self) -> int:
        return self.last_list_items

    @property
    def field_selector(self) -> str:
        if self.own_pod:
            return f"metadata.name={self.own_pod[1]}"
        return f"spec.nodeName={self.node_name}"

    def _request(self, api, **kw):
        if self.own_pod:
            return api.list_namespaced_pod(self.own_pod[0], field_selector=self.field_selector,
                                           **kw)
        return api.list_pod_for_all_namespaces(field_selector=self.field_selector, **kw)

    def _parse(self, obj: Mapping[str, Any]) -> PodMeta:
        return pod_meta(obj, self.allowlist)

    def _replace(self, parsed: list) -> None:
        self.index.replace(parsed)

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        self.index.upsert(pod_meta(obj, self.allowlist))

    def _delete(self, obj: Mapping[str, Any]) -> None:
        meta = pod_meta(obj, self.allowlist)
        self.index.delete(meta.uid, final=meta)

    def _list_scope(self) -> str:
        return f"on node {self.node_name}"

    def _log_forbidden(self, reason: str) -> None:
        log.error("Kubernetes API refused to list pods (%s).\n%s", reason, RBAC_HINT)


def _shutdown(resp) -> None:
    """Unblock a thread reading `resp` (close() from another thread could deadlock)."""
    try:
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(client) -> None:
    if client is not None:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing a broken client must not kill the loop
            pass


# --- configuration -------------------------------------------------------------------


def load_api_client(mode: str = "auto", kubeconfig: str | None = None):
    """The watchers' read-only client for this environment (kubeclient.KubeApi, or
    kubeclient.LibraryApi for a kubeconfig only the kubernetes package can read), or None
    (pods will be unlabelled).

    auto: in-cluster service account if KUBERNETES_SERVICE_HOST is set (unless an explicit
    kubeconfig is given), else `kubeconfig`, else $KUBECONFIG, else ~/.kube/config if it
    exists. An explicit `kubeconfig` that cannot be loaded raises; an auto-detected one that
    fails is logged and gives None, so the exporter still runs.
    """
    return _load(mode, kubeconfig, lean=True)


def load_kubernetes_client(mode: str = "auto", kubeconfig: str | None = None):
    """The kubernetes package's ApiClient, found as load_api_client finds its config: for
    resize's PATCH and the program CRD watcher, which use the package's generated APIs."""
    return _load(mode, kubeconfig, lean=False)


USER_AGENT = f"podsnoop/{__version__}"


def _load(mode: str, kubeconfig: str | None, lean: bool):
    if mode == "off":
        log.info("Kubernetes API disabled (kube mode off): pods will be unlabelled")
        return None
    if mode != "auto":
        raise ValueError(f"kube mode must be 'auto' or 'off', not {mode!r}")
    if kubeconfig:
        return _from_file(kubeconfig, lean)
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            source = "in-cluster service account"
            if lean:
                from . import kubeclient
                return _lean(kubeclient.in_cluster(), source)
            from kubernetes import config
            from kubernetes.client import Configuration
            cfg = Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return _library(cfg, source)
        source = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        if not os.environ.get("KUBECONFIG") and not os.path.exists(source):
            log.warning("no in-cluster config and no kubeconfig (--kubeconfig, "
                        "$KUBECONFIG, ~/.kube/config): pods will be unlabelled")
            return None
        return _from_file(source, lean)
    except Exception as exc:  # noqa: BLE001 - auto-detection must not stop the exporter
        log.warning("cannot load Kubernetes config from %s (%s): pods will be unlabelled",
                    source, exc)
        return None


def _from_file(path: str, lean: bool):
    """A kubeconfig: read by kubeclient.py if `lean` and it can, else by the kubernetes
    package (its ApiClient wrapped in LibraryApi if `lean`). Several files (KUBECONFIG=a:b)
    are merged by the kubernetes package only."""
    from . import kubeclient
    if lean and os.pathsep not in path:
        try:
            return _lean(kubeclient.from_kubeconfig(path), path)
        except kubeclient.NeedsLibrary as needs:
            log.info("the kubeconfig %s uses %s: reading it with the kubernetes package",
                     path, needs)
    from kubernetes import config
    from kubernetes.client import Configuration
    cfg = Configuration()
    config.load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)
    client = _library(cfg, path)
    return kubeclient.LibraryApi(client) if lean else client


def _library(cfg, source: str):
    from kubernetes.client import ApiClient
    client = ApiClient(configuration=cfg)
    client.user_agent = USER_AGENT
    log.info("Kubernetes API %s (from %s)", cfg.host, source)
    return client


def _lean(endpoint, source: str):
    from .kubeclient import KubeApi
    log.info("Kubernetes API %s (from %s)", endpoint.host, source)
    return KubeApi(endpoint, USER_AGENT)


def node_name(arg: str | None = None) -> str:
    """--node-name, else $NODE_NAME (downward API), else the hostname as kubelet uses it."""
    if arg:
        return arg
    env = os.environ.get("NODE_NAME")
    if env:
        return env
    return socket.gethostname().lower()  # kubelet lowercases the hostname for the node name

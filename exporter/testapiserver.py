"""A small Kubernetes API server for tests and the demo: pods and Services, list and watch.

It follows the documented API semantics closely enough for the real `kubernetes` client:
one resourceVersion counter bumped on every change; lists carry `metadata.resourceVersion`;
`?watch=1&resourceVersion=N` streams newline-delimited JSON events after N (ADDED, MODIFIED,
DELETED, BOOKMARK when allowWatchBookmarks=true, ERROR with a 410 Status when N is older than
the compacted window); watches without a resourceVersion (or "0") start with synthetic ADDED
events; `timeoutSeconds` ends a watch cleanly; fieldSelector and labelSelector filter, and a
watcher sees a pod that stops or starts matching as DELETED or ADDED. Pods and Services share
that code (`_Resource`: objects, history, open watches; one resourceVersion counter for both).

Lists paginate with `limit`: a page carries `metadata.continue` (and `remainingItemCount`)
while items remain; `continue=<token>` serves the next page of the same snapshot, at the first
page's resourceVersion, whatever changed meanwhile; the last page has no token. A token from
before `compact()` answers 410 Expired, one given with a resourceVersion 400, as a real API
server does. `limit` is honoured for any resourceVersion (a server that serves lists from its
watch cache may ignore it for resourceVersion=0).

It runs its own asyncio loop in a daemon thread on 127.0.0.1 (ephemeral port), so
synchronous tests can drive it; every control method is thread-safe and returns once the
change is visible to clients. Faults: `fail_next`, `compact`, `drop_connections`,
`set_down`. `kubeconfig_path` points the real client's config loading at it (token auth).

    with KubeApiServer() as api:
        pod = api.add_pod("web-0", labels={"app": "web"})
        client = kubernetes.config.new_client_from_config(api.kubeconfig_path)
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from aiohttp import web

DEFAULT_NODE = "node-a"
LOG_KEY = web.RequestKey("podsnoop_log", object)   # request -> its LoggedRequest
_STOP = object()   # queue sentinels for a watch handler
_DROP = object()


@dataclass
class LoggedRequest:
    """One request as the server saw it; `status` is filled in once it is decided."""

    method: str
    path: str
    query: dict[str, str]
    time: float = field(default_factory=time.monotonic)
    status: int | None = None
    body: Any = None          # a PATCH's JSON body (resize on exec)
    content_type: str = ""

    @property
    def watch(self) -> bool:
        return self.query.get("watch", "").lower() in ("1", "true")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_id() -> str:
    """A containerd-style container id: 64 hex characters."""
    return secrets.token_hex(32)


def _status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
            410: "Expired", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable"}


def _fail_message(code: int, path: str = "/api/v1/pods") -> str:
    if code == 403:
        resource = path.rstrip("/").rsplit("/", 1)[-1]
        return (f'{resource} is forbidden: User "system:serviceaccount:monitoring:podsnoop" '
                f'cannot list resource "{resource}" in API group "" at the cluster scope')
    if code == 410:
        return "too old resource version"
    return f"injected failure {code}"


# --- selectors ---------------------------------------------------------------------------

_FIELDS: dict[str, Callable[[dict], str]] = {
    "spec.nodeName": lambda p: p["spec"].get("nodeName") or "",
    "metadata.name": lambda p: p["metadata"]["name"],
    "metadata.namespace": lambda p: p["metadata"]["namespace"],
    "status.phase": lambda p: p["status"].get("phase") or "",
}


class SelectorError(ValueError):
    pass


def parse_field_selector(text: str) -> Callable[[dict], bool]:
    """`spec.nodeName=node-a,metadata.namespace!=kube-system` -> predicate."""
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise SelectorError(f"invalid field selector: {term!r}")
        key, op, value = m.groups()
        if key not in _FIELDS:
            raise SelectorError(f'"{key}" is not a known field selector: only '
                                f'"{", ".join(_FIELDS)}"')
        terms.append((_FIELDS[key], op == "!=", value))
    return lambda pod: all((get(pod) == value) != neg for get, neg, value in terms)


def parse_label_selector(text: str) -> Callable[[dict], bool]:
    """Equality (`a=b`, `a!=b`), existence (`a`, `!a`) and set (`a in (x,y)`, `notin`)."""
    tests = []
    for term in re.findall(r"(?:[^,(]|\([^)]*\))+", text):
        term = term.strip()
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = m.groups()
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            if op == "in":
                tests.append(lambda ls, k=key, a=allowed: ls.get(k) in a)
            else:
                tests.append(lambda ls, k=key, a=allowed: ls.get(k) not in a)
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", term):
            key, op, value = m.groups()
            if op == "!=":
                tests.append(lambda ls, k=key, v=value: ls.get(k) != v)
            else:
                tests.append(lambda ls, k=key, v=value: ls.get(k) == v)
        elif m := re.fullmatch(r"(!?)\s*([\w./-]+)", term):
            neg, key = m.groups()
            tests.append(lambda ls, k=key, n=bool(neg): (k in ls) != n)
        elif term:
            raise SelectorError(f"unable to parse requirement: {term!r}")
    return lambda pod: all(t(pod["metadata"].get("labels") or {}) for t in tests)


# --- the server --------------------------------------------------------------------------


PROGRAM_GROUP, PROGRAM_VERSION = "podsnoop.io", "v1alpha1"


class _Resource:
    """One kind's state, shared list/watch code for pods and Services: current objects by
    uid, the change history watches resume from, and the open watches."""

    def __init__(self, kind: str) -> None:
        self.kind = kind                      # "Pod": the objects' and the list's kind
        self.objects: dict[str, dict] = {}    # uid -> object, current state
        self.history: list[tuple] = []        # (rv, old, new or None, object sent)
        self.watches: dict[int, tuple[asyncio.Queue, web.Request]] = {}  # by id(queue)


class KubeApiServer:
    """Pods, Services (and podsnoop's PodsnoopProgram custom resource) Kubernetes API for tests.
    Start with `start()` or `with`."""

    def __init__(self, *, bookmark_interval: float = 1.0,
                 token: str = "podsnoop-test-token", host: str = "127.0.0.1",
                 ssl_context=None) -> None:
        """host: the address to serve on (a test pod reaches the host at its veth's).
        ssl_context: serve HTTPS with it; a client certificate it verifies (verify_mode
        CERT_OPTIONAL and a CA loaded) is accepted instead of the token, as kube-apiserver's
        --client-ca-file does."""
        self.host = host
        self.ssl_context = ssl_context
        self.bookmark_interval = bookmark_interval
        self.token = token
        self.port = 0
        self._rv = 1000                       # like a real cluster: never starts at 0
        self._resources = {"pods": _Resource("Pod"), "services": _Resource("Service")}
        self._pods = self._resources["pods"].objects          # uid -> pod
        self._services = self._resources["services"].objects  # uid -> Service
        self._compacted_rv = 0                # watches from before this get 410
        # (status, path or None for any) for the next requests
        self._fail: list[tuple[int, str | None]] = []
        self._down = False
        # Paginated lists: snapshot id -> (resourceVersion, items), until the last page.
        self._snapshots: dict[int, tuple[int, list[dict]]] = {}
        self._next_snapshot = 0
        self._node_ips: dict[str, str] = {}   # node name -> its hostIP
        self._service_ip = 0
        self._log: list[LoggedRequest] = []
        # Resize on exec (issue 8): False makes pods/resize answer 404, as before 1.33;
        # resize_outcome None: the kubelet applies a resize at once, "Deferred" or
        # "Infeasible": it reports the resize pending for that reason.
        self.resize_subresource = True
        self.resize_outcome: str | None = None
        self._ip = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.BaseSite | None = None
        self._start_error: BaseException | None = None
        # PodsnoopPrograms: name -> object; changes (rv, type, object); watch queues.
        self._programs: dict[str, dict] = {}
        self._program_history: list[tuple[int, str, dict]] = []
        self._program_watches: dict[int, asyncio.Queue] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="podsnoop-kubeapi-"))
        self.kubeconfig_path = str(self._tmp / "kubeconfig")

    # -- lifecycle --

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> "KubeApiServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,),
                                        name="kube-api-server", daemon=True)
        self._thread.start()
        if not ready.wait(10) or self._start_error is not None:
            raise RuntimeError("test API server did not start") from self._start_error
        self._write_kubeconfig()
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "KubeApiServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._start_error = exc
            ready.set()
            loop.close()
            return
        self._loop = loop
        ready.set()
        loop.run_forever()
        loop.close()

    async def _startup(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/version", self._version)
        for plural in self._resources:
            handler = self._list_handler(plural)
            app.router.add_get(f"/api/v1/{plural}", handler)
            app.router.add_get(f"/api/v1/namespaces/{{namespace}}/{plural}", handler)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods/{name}", self._pod_handler)
        app.router.add_patch("/api/v1/namespaces/{namespace}/pods/{name}", self._patch_pod)
        app.router.add_patch("/api/v1/namespaces/{namespace}/pods/{name}/resize",
                             self._patch_resize)
        # User programs (issue 14): the cluster-scoped PodsnoopProgram custom resource.
        app.router.add_get(f"/apis/{PROGRAM_GROUP}/{PROGRAM_VERSION}/podsnoopprograms",
                           self._programs_handler)
        # handler_cancellation: a watch whose client went away ends (and leaves open_watches).
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     handler_cancellation=True,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        # Our own socket: the port is known before start and reused by set_down(False).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock, ssl_context=self.ssl_context)
        await self._site.start()

    async def _shutdown(self) -> None:
        self._end_watches(_STOP)
        await asyncio.sleep(0)
        await self._runner.cleanup()

    def _write_kubeconfig(self) -> None:
        # JSON is YAML: the client's loader reads it without us needing pyyaml.
        name = "podsnoop-test"
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": {"token": self.token}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        }
        Path(self.kubeconfig_path).write_text(json.dumps(cfg, indent=2))

    def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on the server's loop (all state lives there) and return its result."""
        async def run() -> Any:
            return fn(*args, **kwargs)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- test controls (thread-safe) --

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def request_log(self) -> list[LoggedRequest]:
        """A copy of every request so far, oldest first."""
        return list(self._log)

    def clear_log(self) -> None:
        self._call(self._log.clear)

    @property
    def open_watches(self) -> int:
        """Open pod and Service watches."""
        return sum(len(r.watches) for r in self._resources.values())

    def pods(self) -> list[dict]:
        """Every pod's current state, as the API would serve it."""
        return self._call(lambda: [self._serve_copy(p) for p in self._pods.values()])

    def pod(self, uid: str) -> dict:
        return self._call(lambda: self._serve_copy(self._pods[uid]))

    def add_pod(self, name: str, namespace: str = "default", node: str | None = DEFAULT_NODE,
                *, uid: str | None = None, labels: Mapping[str, str] | None = None,
                containers: Iterable[str] | Mapping[str, str] = ("app",),
                init_containers: Iterable[str] | Mapping[str, str] = (),
                ephemeral_containers: Iterable[str] | Mapping[str, str] = (),
                phase: str | None = None, annotations: Mapping[str, str] | None = None,
                resources: Mapping[str, dict] | None = None,
                owner: tuple[str, str] | None = None, pod_ip: str | None = None,
                pod_ips: Iterable[str] | None = None, host_ip: str | None = None,
                host_network: bool = False) -> dict:
        """Create a pod (running, with containerd ids) and return it.

        `owner`: (kind, name) of its controller, e.g. ("ReplicaSet", "web-5d4f8c7b9"), put in
        metadata.ownerReferences as its controller would (controller: true).
        `containers` is names, or name -> bare container id to choose the ids. A pod with
        `node=None` is unscheduled: Pending, no container statuses. `resources`: container
        name -> its spec resources ({"requests": {...}, "limits": {...}}).
        A scheduled pod gets status.hostIP (its node's: `host_ip`, else one per node) and
        status.podIP (a 10.244/16 address, only that unless IPs are given); `pod_ips` sets
        status.podIPs and podIP (the first), `pod_ip` both to one address; `host_network`
        sets spec.hostNetwork and, as a kubelet does, the host IP as the pod's.
        """
        pod = self._build_pod(name, namespace, node, uid or str(uuid.uuid4()), labels,
                              containers, init_containers, ephemeral_containers, phase,
                              annotations=annotations, resources=resources)
        if host_network:
            pod["spec"]["hostNetwork"] = True
        if host_ip is not None:
            pod["status"]["hostIP"] = host_ip
        if host_network and pod_ip is None and pod_ips is None and pod["status"].get("hostIP"):
            pod_ip = pod["status"]["hostIP"]
        self._set_pod_ips(pod, pod_ip, pod_ips)
        if owner is not None:
            kind, owner_name = owner
            pod["metadata"]["ownerReferences"] = [{
                "apiVersion": "batch/v1" if kind == "Job" else (
                    "v1" if kind == "Node" else "apps/v1"),
                "kind": kind, "name": owner_name, "uid": str(uuid.uuid4()),
                "controller": True, "blockOwnerDeletion": True}]
        return self._call(self._commit, pod["metadata"]["uid"], pod, created=True)

    def add_pods(self, count: int, node: str | None = DEFAULT_NODE, *,
                 prefix: str = "pod", namespace: str = "default",
                 labels: Mapping[str, str] | None = None) -> list[dict]:
        """Many pods at once (one loop round trip), e.g. for load tests."""
        pods = [self._build_pod(f"{prefix}-{i}", namespace, node, str(uuid.uuid4()),
                                labels, ("app", "sidecar"), (), (), None)
                for i in range(count)]
        return self._call(lambda: [self._commit(p["metadata"]["uid"], p, created=True)
                                   for p in pods])

    def update_pod(self, uid: str, *, labels: Mapping[str, str] | None = None,
                   phase: str | None = None, node: str | None = None,
                   annotations: Mapping[str, str] | None = None,
                   pod_ips: Iterable[str] | None = None) -> dict:
        """Change labels, annotations, phase, IPs (status.podIPs and podIP) and/or bind an
        unscheduled pod to `node`."""
        def change() -> dict:
            pod = copy.deepcopy(self._pods[uid])
            if labels is not None:
                pod["metadata"]["labels"] = dict(labels)
            if annotations is not None:
                pod["metadata"]["annotations"] = dict(annotations)
            if phase is not None:
                pod["status"]["phase"] = phase
            if node is not None:
                pod["spec"]["nodeName"] = node
                if not pod["status"].get("containerStatuses"):
                    self._start_containers(pod)
            self._set_pod_ips(pod, None, pod_ips)
            return self._commit(uid, pod)
        return self._call(change)

    def restart_container(self, uid: str, container: str) -> str:
        """Restart one container like kubelet does: new id, old one moves to lastState."""
        new_id = container_id()

        def change() -> dict:
            pod = copy.deepcopy(self._pods[uid])
            for cs in pod["status"]["containerStatuses"]:
                if cs["name"] == container:
                    cs["lastState"] = {"terminated": {
                        "exitCode": 137, "reason": "Error", "finishedAt": _now(),
                        "startedAt": cs["state"]["running"]["startedAt"],
                        "containerID": cs["containerID"]}}
                    cs["containerID"] = f"containerd://{new_id}"
                    cs["restartCount"] += 1
                    cs["state"] = {"running": {"startedAt": _now()}}
                    return self._commit(uid, pod)
            raise KeyError(container)
        self._call(change)
        return new_id

    def delete_pod(self, uid: str) -> dict:
        """Delete a pod (as after graceful termination) and return its final state."""
        def change() -> dict:
            pod = copy.deepcopy(self._pods[uid])
            pod["metadata"]["deletionTimestamp"] = _now()
            return self._commit(uid, None, final=pod)
        return self._call(change)

    def services(self) -> list[dict]:
        return self._call(lambda: [copy.deepcopy(s) for s in self._services.values()])

    def add_service(self, name: str, namespace: str = "default", *,
                    cluster_ip: str | None = None, cluster_ips: Iterable[str] | None = None,
                    uid: str | None = None) -> dict:
        """Create a Service and return it. spec.clusterIPs is `cluster_ips`, else
        [`cluster_ip`], else one allocated from 10.96/16; "None" makes it headless."""
        if cluster_ips is not None:
            ips = list(cluster_ips)
        elif cluster_ip is not None:
            ips = [cluster_ip]
        else:
            self._service_ip += 1
            ips = [f"10.96.{(self._service_ip >> 8) & 255}.{self._service_ip & 255}"]
        uid = uid or str(uuid.uuid4())
        svc = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid,
                         "creationTimestamp": _now()},
            "spec": {"type": "ClusterIP", "clusterIP": ips[0] if ips else "",
                     "clusterIPs": ips, "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {}},
        }
        return self._call(self._commit, uid, svc, created=True, resource="services")

    def delete_service(self, uid: str) -> dict:
        """Delete a Service and return its final state."""
        def change() -> dict:
            svc = copy.deepcopy(self._services[uid])
            return self._commit(uid, None, final=svc, resource="services")
        return self._call(change)

    def compact(self) -> None:
        """Forget history, like etcd compaction: every watch resuming from a resourceVersion
        before now gets 410 Expired, and open watches are ended with an ERROR 410 event."""
        def run() -> None:
            self._rv += 1                     # other objects changed meanwhile
            self._compacted_rv = self._rv
            for resource in self._resources.values():
                resource.history.clear()
            self._snapshots.clear()           # their continue tokens answer 410 now
            self._end_watches(("ERROR", _status_body(
                410, "Expired", "The resourceVersion for the provided watch is too old.")))
        self._call(run)

    def fail_next(self, status: int, n: int = 1, *, path: str | None = None) -> None:
        """The next `n` API requests (to `path` only, e.g. "/api/v1/services", if given)
        answer `status` with a Status body (403, 410, 500...)."""
        self._call(self._fail.extend, [(status, path)] * n)

    def end_watches(self) -> None:
        """End every open watch cleanly, as on a server-side timeout or graceful restart."""
        self._call(self._end_watches, _STOP)

    def drop_connections(self) -> None:
        """Cut every open watch stream mid-response, as a lost connection would."""
        self._call(self._end_watches, _DROP)

    def set_down(self, down: bool) -> None:
        """Down: stop listening and cut every connection (clients get refused). Up: listen
        again on the same port."""
        async def run() -> None:
            if down and not self._down:
                self._down = True
                self._end_watches(_DROP)
                await self._site.stop()
                for conn in list(self._runner.server.connections):
                    conn.force_close()
                    if conn.transport is not None:
                        conn.transport.abort()
            elif not down and self._down:
                self._down = False
                await self._listen()
        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- building pods (pure but for the IP counter) and changing state (loop thread) --

    def _build_pod(self, name, namespace, node, uid, labels, containers, init_containers,
                   ephemeral_containers, phase, *, annotations=None, resources=None) -> dict:
        self._ip += 1
        pod = {
            "metadata": {
                "name": name, "namespace": namespace, "uid": uid,
                "creationTimestamp": _now(), "labels": dict(labels or {}),
                "ownerReferences": [],
            },
            "spec": {
                "containers": [{"name": c, "image": f"registry.example/{c}:1.0"}
                               for c in containers],
                "initContainers": [{"name": c, "image": f"registry.example/{c}:1.0"}
                                   for c in init_containers],
                "ephemeralContainers": [{"name": c, "image": "busybox:1.36"}
                                        for c in ephemeral_containers],
                "restartPolicy": "Always", "serviceAccountName": "default",
                "schedulerName": "default-scheduler",
            },
            "status": {"phase": "Pending", "qosClass": "BestEffort"},
            "_ids": {  # stripped before serving; remembers chosen ids until containers start
                "containerStatuses": _ids(containers),
                "initContainerStatuses": _ids(init_containers),
                "ephemeralContainerStatuses": _ids(ephemeral_containers),
            },
        }
        if annotations:
            pod["metadata"]["annotations"] = dict(annotations)
        for c in pod["spec"]["containers"]:
            if resources and c["name"] in resources:
                c["resources"] = copy.deepcopy(dict(resources[c["name"]]))
        if node:
            pod["spec"]["nodeName"] = node
            self._start_containers(pod)
        if phase:
            pod["status"]["phase"] = phase
        return pod

    def _start_containers(self, pod: dict) -> None:
        ids = pod.pop("_ids", None) or {}
        st = pod["status"]
        node = pod["spec"].get("nodeName") or DEFAULT_NODE
        host_ip = self._node_ips.setdefault(node, f"192.0.2.{10 + len(self._node_ips)}")
        st.update(phase="Running", hostIP=host_ip, startTime=_now(),
                  podIP=f"10.244.{(self._ip >> 8) & 255}.{self._ip & 255}")
        for key, spec_key in (("containerStatuses", "containers"),
                              ("initContainerStatuses", "initContainers"),
                              ("ephemeralContainerStatuses", "ephemeralContainers")):
            names = [c["name"] for c in pod["spec"][spec_key]]
            if not names:
                continue
            chosen = ids.get(key, {})
            init = key == "initContainerStatuses"
            # what a kubelet reports as configured: the spec's resources (resize, issue 8)
            wanted = {c["name"]: c.get("resources") for c in pod["spec"][spec_key]}
            state = ({"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": _now()}}
                     if init else {"running": {"startedAt": _now()}})
            st[key] = [{
                "name": n, "containerID": f"containerd://{chosen.get(n) or container_id()}",
                "image": f"registry.example/{n}:1.0", "imageID": "sha256:" + secrets.token_hex(32),
                "ready": not init, "started": not init, "restartCount": 0,
                "state": copy.deepcopy(state), "lastState": {},
                **({"resources": copy.deepcopy(wanted[n])} if wanted.get(n) else {}),
            } for n in names]

    @staticmethod
    def _set_pod_ips(pod: dict, pod_ip: str | None, pod_ips: Iterable[str] | None) -> None:
        ips = list(pod_ips) if pod_ips is not None else [pod_ip] if pod_ip is not None else None
        if ips is not None:
            pod["status"]["podIPs"] = [{"ip": ip} for ip in ips]
            pod["status"]["podIP"] = ips[0] if ips else ""

    def _commit(self, uid: str, new: dict | None, *, final: dict | None = None,
                created: bool = False, resource: str = "pods") -> dict:
        """Apply one change: bump resourceVersion, record history, notify watches."""
        res = self._resources[resource]
        old = res.objects.get(uid)
        if created and old is not None:
            raise ValueError(f"{res.kind} uid {uid} exists")
        if not created and old is None:
            raise KeyError(uid)
        self._rv += 1
        obj = new if new is not None else final   # what watchers are sent
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if new is None:
            del res.objects[uid]
        else:
            res.objects[uid] = new
        change = (self._rv, old, new, obj)
        res.history.append(change)
        for queue, _ in res.watches.values():
            queue.put_nowait(change)
        return self._serve_copy(obj)

    def _end_watches(self, how: Any) -> None:
        for queue in list(self._program_watches.values()):
            queue.put_nowait(how)
        for resource in self._resources.values():
            for queue, request in list(resource.watches.values()):
                queue.put_nowait(how)
                if how is _DROP and request.transport is not None:
                    request.transport.abort()

    @staticmethod
    def _serve_copy(pod: dict) -> dict:
        out = copy.deepcopy(pod)
        out.pop("_ids", None)
        return out

    # -- PodsnoopPrograms (cluster-scoped custom resource) --

    def put_program(self, name: str, spec: Mapping[str, Any]) -> dict:
        """Create or replace a PodsnoopProgram (ADDED or MODIFIED to watchers)."""
        def change() -> dict:
            old = self._programs.get(name)
            obj = {"apiVersion": f"{PROGRAM_GROUP}/{PROGRAM_VERSION}",
                   "kind": "PodsnoopProgram",
                   "metadata": {"name": name,
                                "uid": old["metadata"]["uid"] if old else str(uuid.uuid4()),
                                "generation": (old["metadata"]["generation"] + 1
                                               if old else 1)},
                   "spec": copy.deepcopy(dict(spec))}
            self._programs[name] = obj
            return self._program_event("MODIFIED" if old else "ADDED", obj)
        return self._call(change)

    def delete_program(self, name: str) -> dict:
        def change() -> dict:
            return self._program_event("DELETED", self._programs.pop(name))
        return self._call(change)

    def _program_event(self, kind: str, obj: dict) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._program_history.append((self._rv, kind, copy.deepcopy(obj)))
        for queue in self._program_watches.values():
            queue.put_nowait((kind, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    async def _programs_handler(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if not request[LOG_KEY].watch:
            request[LOG_KEY].status = 200
            return web.json_response({
                "apiVersion": f"{PROGRAM_GROUP}/{PROGRAM_VERSION}",
                "kind": "PodsnoopProgramList",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": [copy.deepcopy(p) for p in self._programs.values()]})
        rv_text = q.get("resourceVersion", "")
        since = int(rv_text) if rv_text.isdigit() and rv_text != "0" else None
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        deadline = time.monotonic() + timeout if timeout else None
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        request[LOG_KEY].status = 200
        queue: asyncio.Queue = asyncio.Queue()
        if since is None:
            backlog = [("ADDED", copy.deepcopy(p)) for p in self._programs.values()]
        else:
            backlog = [(k, o) for rv, k, o in self._program_history if rv > since]
        for item in backlog:
            queue.put_nowait(item)
        self._program_watches[id(queue)] = queue
        try:
            while True:
                wait = None
                if deadline is not None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        break
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    break
                if item is _STOP or item is _DROP:
                    break
                kind, obj = item
                await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        finally:
            self._program_watches.pop(id(queue), None)
        return resp

    # -- HTTP --

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        entry = LoggedRequest(request.method, request.path, dict(request.query))
        self._log.append(entry)
        request[LOG_KEY] = entry
        if self._down:  # a connection that outlived set_down(True): cut it
            if request.transport is not None:
                request.transport.abort()
            entry.status = 0
            return web.Response(status=503)
        if (request.headers.get("Authorization") != f"Bearer {self.token}"
                and not self._client_certificate(request)):
            return self._error(request, 401, "Unauthorized")
        hit = next((i for i, (_, path) in enumerate(self._fail)
                    if path is None or path == request.path), None)
        if hit is not None:
            code, _ = self._fail.pop(hit)
            return self._error(request, code, _fail_message(code, request.path))
        return await handler(request)

    @staticmethod
    def _client_certificate(request: web.Request) -> bool:
        """A client certificate the TLS handshake verified against the server's CA."""
        return bool(request.transport and request.transport.get_extra_info("peercert"))

    def _error(self, request: web.Request, code: int, message: str) -> web.Response:
        request[LOG_KEY].status = code
        return web.json_response(_status_body(code, _REASONS.get(code, "Unknown"), message),
                                 status=code)

    async def _version(self, request: web.Request) -> web.Response:
        request[LOG_KEY].status = 200
        return web.json_response({"major": "1", "minor": "34", "gitVersion": "v1.34.0-podsnoop"})

    async def _pod_handler(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        for pod in self._pods.values():
            if pod["metadata"]["namespace"] == ns and pod["metadata"]["name"] == name:
                request[LOG_KEY].status = 200
                return web.json_response(self._with_kind(self._serve_copy(pod)))
        return self._error(request, 404, f'pods "{name}" not found')

    # -- resize (issue 8): PATCH of a pod or of its pods/resize subresource --

    async def _patch_resize(self, request: web.Request) -> web.Response:
        if not self.resize_subresource:   # a cluster before 1.33
            request[LOG_KEY].content_type = request.content_type
            try:
                request[LOG_KEY].body = json.loads(await request.text())
            except ValueError:
                pass
            return self._error(request, 404, "the server could not find the requested resource")
        return await self._patch(request, subresource=True)

    async def _patch_pod(self, request: web.Request) -> web.Response:
        return await self._patch(request, subresource=False)

    async def _patch(self, request: web.Request, subresource: bool) -> web.Response:
        """A strategic-merge patch of spec.containers[].resources, nothing else; the
        kubelet's answer (status resources, or a pending condition) is set at once."""
        entry = request[LOG_KEY]
        entry.content_type = request.content_type
        try:
            entry.body = body = json.loads(await request.text())
        except ValueError as exc:
            return self._error(request, 400, f"invalid JSON: {exc}")
        if request.content_type != "application/strategic-merge-patch+json":
            return self._error(request, 415, f"unsupported patch type {request.content_type}")
        ns, name = request.match_info["namespace"], request.match_info["name"]
        uid = next((u for u, p in self._pods.items() if p["metadata"]["namespace"] == ns
                    and p["metadata"]["name"] == name), None)
        if uid is None:
            return self._error(request, 404, f'pods "{name}" not found')
        changes = body.get("spec", {}).get("containers") if isinstance(body, dict) else None
        if (not isinstance(changes, list) or set(body) != {"spec"} or set(body["spec"]) !=
                {"containers"} or any(set(c) - {"name", "resources"} for c in changes)):
            return self._error(request, 422, "only spec.containers[*].resources may change")
        pod = copy.deepcopy(self._pods[uid])
        by_name = {c["name"]: c for c in pod["spec"]["containers"]}
        for change in changes:
            target = by_name.get(change.get("name"))
            if target is None:
                return self._error(request, 422, f"no container {change.get('name')!r}")
            resources = target.setdefault("resources", {})
            for kind, part in (change.get("resources") or {}).items():
                merged = resources.setdefault(kind, {})
                for res, qty in part.items():
                    if qty is None:
                        merged.pop(res, None)
                    else:
                        merged[res] = qty
        status = pod["status"]
        status["conditions"] = [c for c in status.get("conditions") or ()
                                if c.get("type") not in ("PodResizePending",
                                                         "PodResizeInProgress")]
        status.pop("resize", None)
        if self.resize_outcome:
            status["conditions"].append({
                "type": "PodResizePending", "status": "True", "reason": self.resize_outcome,
                "message": f"test API server: resize {self.resize_outcome.lower()}",
                "lastTransitionTime": _now()})
            if not subresource:
                status["resize"] = self.resize_outcome   # what 1.27-1.32 report
        else:
            for cs in status.get("containerStatuses") or ():
                if cs["name"] in by_name:
                    cs["resources"] = copy.deepcopy(by_name[cs["name"]].get("resources") or {})
        entry.status = 200
        return web.json_response(self._with_kind(self._commit(uid, pod)))

    @staticmethod
    def _with_kind(obj: dict, kind: str = "Pod") -> dict:
        return {"kind": kind, "apiVersion": "v1", **obj}

    def _list_handler(self, plural: str) -> Callable:
        """GET /api/v1/<plural> and /api/v1/namespaces/{namespace}/<plural>: list or watch."""
        res = self._resources[plural]

        async def handler(request: web.Request) -> web.StreamResponse:
            q = request.query
            try:
                by_field = parse_field_selector(q.get("fieldSelector", ""))
                by_label = parse_label_selector(q.get("labelSelector", ""))
            except SelectorError as exc:
                return self._error(request, 400, str(exc))
            ns = request.match_info.get("namespace")

            def matches(obj: dict | None) -> bool:
                return (obj is not None and (ns is None or obj["metadata"]["namespace"] == ns)
                        and by_field(obj) and by_label(obj))

            if request[LOG_KEY].watch:
                return await self._watch(request, matches, res)
            return self._list(request, matches, res)
        return handler

    def _list(self, request: web.Request, matches: Callable[[dict | None], bool],
              res: _Resource) -> web.Response:
        """A list, or one page of it (limit / continue) from a snapshot of the first page."""
        q = request.query
        try:
            limit = int(q.get("limit") or 0)
            if limit < 0:
                raise ValueError
        except ValueError:
            return self._error(request, 400, f"invalid limit {q.get('limit')!r}")
        token = q.get("continue", "")
        if token:
            if q.get("resourceVersion"):
                return self._error(request, 400, "specifying resource version is not "
                                   "allowed when using continue")
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                sid, offset = int(decoded["snapshot"]), int(decoded["offset"])
            except (ValueError, KeyError, TypeError):
                return self._error(request, 400, f"invalid continue token {token!r}")
            if sid not in self._snapshots:
                return self._error(request, 410, "The provided continue parameter is too old "
                                   "to display a consistent list result. You can start a new "
                                   "list without the continue parameter.")
            rv, items = self._snapshots[sid]
        else:
            sid, offset, rv = None, 0, self._rv
            items = [self._serve_copy(o) for o in res.objects.values() if matches(o)]
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        end = offset + limit if limit else len(items)
        if end < len(items):
            if sid is None:
                sid, self._next_snapshot = self._next_snapshot, self._next_snapshot + 1
                self._snapshots[sid] = (rv, items)
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"rv": rv, "snapshot": sid, "offset": end}).encode()).decode()
            metadata["remainingItemCount"] = len(items) - end
        elif sid is not None:
            del self._snapshots[sid]          # the last page: the token is spent
        request[LOG_KEY].status = 200
        return web.json_response({"kind": f"{res.kind}List", "apiVersion": "v1",
                                  "metadata": metadata, "items": items[offset:end]})

    async def _watch(self, request: web.Request, matches: Callable[[dict | None], bool],
                     res: _Resource):
        q = request.query
        rv_text = q.get("resourceVersion", "")
        try:
            since = int(rv_text) if rv_text not in ("", "0") else None
        except ValueError:
            return self._error(request, 400, f"invalid resourceVersion {rv_text!r}")
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("1", "true")
        deadline = time.monotonic() + timeout if timeout else None

        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        request[LOG_KEY].status = 200

        async def send(kind: str, obj: dict) -> None:
            await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        if since is not None and since < self._compacted_rv:
            await send("ERROR", _status_body(
                410, "Expired", f"too old resource version: {since} ({self._compacted_rv})"))
            return resp

        # Backlog and subscription with no await in between: no event can slip through.
        queue: asyncio.Queue = asyncio.Queue()
        if since is None:
            backlog = [(self._rv, None, o, o) for o in res.objects.values() if matches(o)]
        else:
            backlog = [change for change in res.history if change[0] > since]
        for item in backlog:
            queue.put_nowait(item)
        res.watches[id(queue)] = (queue, request)
        try:
            while True:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    if bookmarks and (deadline is None or time.monotonic() < deadline):
                        await send("BOOKMARK", {"kind": res.kind, "apiVersion": "v1",
                                                "metadata": {"resourceVersion": str(self._rv)}})
                    continue
                if item is _STOP:
                    break
                if item is _DROP:   # transport already aborted: just go
                    return resp
                if isinstance(item[0], str):   # ("ERROR", status)
                    await send(*item)
                    break
                _, old, new, obj = item
                was, now = matches(old), matches(new)
                kind = ("MODIFIED" if was and now else "ADDED" if now
                        else "DELETED" if was else None)
                if kind:
                    await send(kind, self._with_kind(self._serve_copy(obj), res.kind))
        finally:
            del res.watches[id(queue)]
        if request.transport is not None and not request.transport.is_closing():
            await resp.write_eof()
        return resp


def _ids(containers: Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    return dict(containers) if isinstance(containers, Mapping) else {}

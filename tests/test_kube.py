"""kube.py against a real HTTP API (exporter/testapiserver.py) with the real kubernetes client."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from kubernetes.client import CoreV1Api  # pay the ~0.6 s lazy import once, here
from kubernetes.config.config_exception import ConfigException

from exporter import kube
from exporter.kube import (LabelAllowlist, PodIndex, PodMeta, PodWatcher, load_api_client,
                           load_kubernetes_client, node_name, sanitize_label_name,
                           strip_runtime_prefix)
from exporter.kubeapi import RawPods
from exporter.testapiserver import KubeApiServer, container_id
from kube_helpers import api, wait_for  # noqa: F401 (api is a fixture)

BASE, CAP = 0.05, 0.4          # test backoff: fast, but measurable
ALLOW = ("app.kubernetes.io/name", "team")


@pytest.fixture
def start(api):
    """start(**kw) -> a running PodWatcher for node-a; all are stopped (promptly) afterwards."""
    watchers: list[PodWatcher] = []

    def _start(index: PodIndex | None = None, node: str = "node-a", **kw) -> PodWatcher:
        kw = {"label_allowlist": ALLOW, "backoff_base": BASE, "backoff_cap": CAP} | kw
        w = PodWatcher(PodIndex(grace_seconds=0.5) if index is None else index, node,
                       lambda: load_api_client("auto", api.kubeconfig_path), **kw)
        watchers.append(w.start())
        return w

    yield _start
    for w in watchers:
        assert w.stop(timeout=3), "watcher thread did not stop"


def watching(api, w: PodWatcher) -> bool:
    """Synced and its watch is open on the server (so the next fault hits that watch)."""
    return w.wait_synced(3) and wait_for(lambda: api.open_watches == 1)


def lists(api) -> list:
    return [r for r in api.request_log if r.path == "/api/v1/pods" and not r.watch]


def watches(api) -> list:
    return [r for r in api.request_log if r.watch]


# --- listing -------------------------------------------------------------------------------


def test_list_fills_index_with_names_containers_and_sanitized_labels(api, start):
    ids = {"app": container_id(), "istio-proxy": container_id()}
    init_id = container_id()
    pod = api.add_pod("web-0", "shop", labels={"app.kubernetes.io/name": "web", "team": "pay",
                                               "pod-template-hash": "5d8f"},
                      containers=ids, init_containers={"init-db": init_id},
                      ephemeral_containers=("debugger",))
    uid = pod["metadata"]["uid"]
    debugger = pod["status"]["ephemeralContainerStatuses"][0]["containerID"]
    assert debugger.startswith("containerd://")

    w = start()
    assert w.wait_synced(3) and w.state == "synced"
    meta = w.index.get(uid)
    assert (meta.namespace, meta.name, meta.node, meta.phase) == ("shop", "web-0", "node-a",
                                                                  "Running")
    debugger_id = debugger.removeprefix("containerd://")
    assert dict(meta.containers) == {ids["app"]: "app", ids["istio-proxy"]: "istio-proxy",
                                     init_id: "init-db", debugger_id: "debugger"}
    # Only allowlisted labels, as valid Prometheus label names.
    assert dict(meta.labels) == {"label_app_kubernetes_io_name": "web", "label_team": "pay"}
    assert w.index.container_name(uid, ids["istio-proxy"]) == "istio-proxy"
    assert w.index.container_name(uid, "f" * 64) == ""
    assert w.index.container_name("no-such-uid", ids["app"]) == ""
    assert w.index.get("no-such-uid") is None
    # One list, from the API server's cache, for this node only.
    (first,) = lists(api)
    assert first.query["fieldSelector"] == "spec.nodeName=node-a"
    assert first.query["resourceVersion"] == "0"
    assert w.restarts == 0 and w.last_list_pods == 1


def test_1000_pods_listed_and_indexed_under_a_second_of_cpu(api, start):
    api.add_pods(1000)
    api.add_pods(50, node="node-b", prefix="elsewhere")
    w = start()
    assert w.wait_synced(10)
    assert len(w.index.all()) == 1000
    assert w.index.generation == 1            # one atomic swap, not 1,000 updates
    print(f"\n1000-pod list + index: {w.last_list_cpu_seconds * 1000:.1f} ms watcher CPU")
    assert w.last_list_cpu_seconds < 1.0


# --- watching ------------------------------------------------------------------------------


def test_pod_added_later_arrives_through_the_watch(api, start):
    """A pod created after the list arrives by the open watch (no new list), not by a
    periodic re-list: shown by the request log, not by how fast it came."""
    w = start()
    assert watching(api, w)
    listed = len(lists(api))
    t0 = time.monotonic()
    uid = api.add_pod("late", "default", labels={"team": "x"})["metadata"]["uid"]
    assert wait_for(lambda: w.index.get(uid) is not None, 30)
    print(f"\nnew pod in the index {(time.monotonic() - t0) * 1e3:.1f} ms after its creation")
    assert w.index.get(uid).labels == {"label_team": "x"}
    assert len(lists(api)) == listed and w.restarts == 0


def test_modified_restart_and_labels_update_the_index(api, start):
    pod = api.add_pod("web-0", containers=("app", "sidecar"))
    uid = pod["metadata"]["uid"]
    old_id = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    w = start()
    assert w.wait_synced(3)
    gen = w.index.generation

    new_id = api.restart_container(uid, "app")
    assert wait_for(lambda: w.index.container_name(uid, new_id) == "app")
    # The dead instance keeps its name (from lastState) for its last counters.
    assert w.index.container_name(uid, old_id) == "app"
    assert w.index.generation > gen

    api.update_pod(uid, labels={"team": "search"})
    assert wait_for(lambda: w.index.get(uid).labels == {"label_team": "search"})


def test_deleted_pod_stays_resolvable_for_the_grace_period_then_expires(api, start):
    keep = api.add_pod("keep")["metadata"]["uid"]
    pod = api.add_pod("doomed")
    uid = pod["metadata"]["uid"]
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    index = PodIndex(grace_seconds=0.5)
    w = start(index)
    assert w.wait_synced(3)

    api.delete_pod(uid)
    assert wait_for(lambda: index.deleted_at(uid) is not None)
    deleted = index.deleted_at(uid)
    assert index.get(uid).name == "doomed"            # still labelled
    assert index.container_name(uid, cid) == "app"
    assert uid in {p.uid for p in index.all()}
    assert index.deleted_at(keep) is None

    assert index.expire(deleted + 0.49) == []
    gen = index.generation
    assert index.expire(deleted + 0.5) == [uid]
    assert index.get(uid) is None and index.deleted_at(uid) is None
    assert index.generation == gen + 1
    assert [p.uid for p in index.all()] == [keep]
    assert index.expire(deleted + 100) == []


def test_bookmarks_keep_resume_point_fresh(api, start):
    w = start()
    assert watching(api, w)
    api.add_pods(3, node="node-b")            # bumps resourceVersion; node-a sees nothing
    target = str(api.resource_version)
    assert w.resource_version != target
    assert wait_for(lambda: w.resource_version == target)   # via BOOKMARK only
    api.drop_connections()
    assert wait_for(lambda: len(watches(api)) >= 2)
    assert watches(api)[-1].query["resourceVersion"] == target
    assert watches(api)[-1].query["allowWatchBookmarks"] == "true"


def test_field_selector_ignores_pods_of_other_nodes(api, start):
    api.add_pod("mine")
    api.add_pods(5, node="node-b")
    pending = api.add_pod("pending", node=None)["metadata"]["uid"]
    w = start()
    assert w.wait_synced(3)
    assert [p.name for p in w.index.all()] == ["mine"]

    api.add_pod("theirs", node="node-b")
    marker = api.add_pod("marker")["metadata"]["uid"]   # after "theirs" in the stream
    assert wait_for(lambda: w.index.get(marker) is not None)
    assert sorted(p.name for p in w.index.all()) == ["marker", "mine"]
    assert all(p.node == "node-a" for p in w.index.all())

    api.update_pod(pending, node="node-a")            # scheduled here: ADDED for us
    assert wait_for(lambda: w.index.get(pending) is not None)
    assert w.index.get(pending).containers


# --- failures ------------------------------------------------------------------------------


def _watch_for_flaps(index: PodIndex, uids):
    """Poll get() for living pods in a thread; returns (stop, misses)."""
    misses: list[str] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            for uid in uids:
                if index.get(uid) is None:
                    misses.append(uid)
            time.sleep(0)

    threading.Thread(target=run, daemon=True).start()
    return stop, misses


def test_410_after_compaction_relists_without_flapping(api, start):
    uids = [api.add_pod(n)["metadata"]["uid"] for n in ("a", "b", "c")]
    w = start()
    assert watching(api, w)
    stop, misses = _watch_for_flaps(w.index, uids)
    gen, before = w.index.generation, w.index.all()

    api.compact()                                 # ERROR 410 on the open watch
    assert wait_for(lambda: len(lists(api)) == 2 and len(watches(api)) >= 2)
    assert "resourceVersion" not in lists(api)[1].query   # consistent re-list after 410
    assert w.restarts == 1 and w.state == "synced"
    # Nothing changed, so nothing was swapped: no cache invalidation, no flap.
    assert w.index.generation == gen and w.index.all() == before

    # Changes while the watcher is away, then history compacted: the resume gets 410.
    api.set_down(True)
    assert wait_for(lambda: w.state.startswith("degraded"))
    api.delete_pod(uids[2])
    new = api.add_pod("d")["metadata"]["uid"]
    api.compact()
    api.set_down(False)
    assert wait_for(lambda: w.index.get(new) is not None, 3.0)
    stop.set()

    assert misses == []          # never a moment without a, b (or c, in its grace period)
    living = [p for p in w.index.all() if w.index.deleted_at(p.uid) is None]
    assert sorted(p.name for p in living) == ["a", "b", "d"]
    assert w.index.deleted_at(uids[2]) is not None       # gone, but in its grace period
    assert len({p.uid for p in w.index.all()}) == len(w.index.all()) == 4
    assert len(lists(api)) == 3 and w.state == "synced"


def test_http_410_on_watch_resume_relists(api, start):
    uid = api.add_pod("a")["metadata"]["uid"]
    w = start()
    assert watching(api, w)
    api.fail_next(410)
    api.drop_connections()
    assert wait_for(lambda: len(lists(api)) == 2)
    assert [r.status for r in watches(api)][1] == 410
    assert wait_for(lambda: w.state == "synced" and w.index.get(uid) is not None)
    assert w.restarts == 2                      # the dropped watch, then the 410


def test_500_and_dropped_connection_retried_with_capped_backoff(api, start):
    w = start()
    assert watching(api, w)
    rv = w.resource_version
    api.fail_next(500, 4)
    t_drop = time.monotonic()
    api.drop_connections()
    # The sixth watch is logged on arrival; its status once the server has answered it.
    assert wait_for(lambda: w.state == "synced" and len(watches(api)) == 6
                    and watches(api)[-1].status is not None and api.open_watches == 1, 5.0)
    assert w.restarts == 5
    assert "500" in w.last_error

    retries = watches(api)[1:]
    assert [r.status for r in retries] == [500, 500, 500, 500, 200], retries
    gaps = [retries[0].time - t_drop] + [b.time - a.time for a, b in zip(retries, retries[1:])]
    ceilings = [min(CAP, BASE * 2 ** i) for i in range(5)]      # .05 .1 .2 .4 .4
    for gap, ceiling in zip(gaps, ceilings):
        # A sleep never ends early, so each gap is at least its jittered floor; how late it
        # ends is the scheduler's, so the cap is checked on the backoff function below.
        assert ceiling / 2 - 0.01 <= gap, (gaps, ceilings)
    assert all(c / 2 - 1e-9 <= w._backoff(i + 1) <= c + 1e-9
               for i, c in enumerate(ceilings) for _ in range(50))
    assert all(CAP / 2 - 1e-9 <= w._backoff(n) <= CAP for n in range(4, 200))
    # Resumed where it was: no re-list, same resourceVersion.
    assert len(lists(api)) == 1
    assert {r.query["resourceVersion"] for r in retries} == {rv}

    uid = api.add_pod("after")["metadata"]["uid"]
    assert wait_for(lambda: w.index.get(uid) is not None)


def test_watches_closed_at_once_back_off_instead_of_spinning(api, start):
    w = start()
    assert watching(api, w)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:      # a "proxy" that closes every watch at once
        api.end_watches()
        time.sleep(0.005)
    # Backoff .05 .1 .2 .4 .4 ...: a handful of retries, not one per 5 ms.
    assert 2 <= len(watches(api)) <= 10
    assert w.state.startswith("degraded: RuntimeError: very short watch")
    assert wait_for(lambda: w.state == "synced", 3.0)
    assert len(lists(api)) == 1


def test_403_degrades_and_logs_rbac_hint_once(api, start, caplog):
    caplog.set_level(logging.INFO, logger="exporter.kube")
    api.fail_next(403, 4)
    w = start(backoff_cap=0.2)
    assert wait_for(lambda: "403" in w.state)
    assert w.state.startswith("degraded: HTTP 403")
    assert not w.wait_synced(0)
    assert w.wait_synced(5) and w.state == "synced"

    hints = [r for r in caplog.records if "ClusterRole" in r.getMessage()]
    assert len(hints) == 1
    assert hints[0].levelno == logging.ERROR
    assert 'verbs: ["get", "list", "watch"]' in hints[0].getMessage()
    assert w.restarts == 4
    # 403s are retried at the cap straight away, not from the base.
    tries = lists(api)
    assert [r.status for r in tries] == [403, 403, 403, 403, 200]
    assert all(b.time - a.time >= 0.2 / 2 - 0.01 for a, b in zip(tries, tries[1:]))


def test_api_down_at_start_then_up(api, start):
    uid = api.add_pod("web", labels={"app.kubernetes.io/name": "web"})["metadata"]["uid"]
    api.set_down(True)
    w = start()
    assert wait_for(lambda: w.state.startswith("degraded"))
    assert "refused" in w.state.lower()
    assert w.index.all() == [] and not w.wait_synced(0)
    api.set_down(False)
    assert w.wait_synced(3)
    assert wait_for(lambda: w.state == "synced")
    assert w.index.get(uid).labels == {"label_app_kubernetes_io_name": "web"}
    assert w.restarts >= 1


@pytest.fixture
def quiet_api():
    """No bookmarks: a watch stays silent, so only cutting the socket can stop it fast."""
    with KubeApiServer(bookmark_interval=60) as server:
        yield server


def test_stop_is_prompt_while_watching_and_while_backing_off(quiet_api):
    api, index = quiet_api, PodIndex()
    factory = lambda: load_api_client("auto", api.kubeconfig_path)  # noqa: E731
    watching = PodWatcher(index, "node-a", factory, watch_timeout=300).start()
    assert watching.wait_synced(3)
    assert wait_for(lambda: api.open_watches == 1)
    # Prompt: stop() returns well before the 300 s watch or the 30 s backoff would end
    # (stop's timeout, half the shorter of them, is the bound; no tighter wall-clock figure).
    t0 = time.monotonic()
    assert watching.stop(timeout=15)
    print(f"\nstop while watching: {(time.monotonic() - t0) * 1e3:.1f} ms")
    assert wait_for(lambda: api.open_watches == 0)

    api.set_down(True)
    sleeping = PodWatcher(index, "node-a", factory, backoff_base=30, backoff_cap=30).start()
    assert wait_for(lambda: sleeping.state.startswith("degraded"))
    t0 = time.monotonic()
    assert sleeping.stop(timeout=15)
    print(f"stop while backing off: {(time.monotonic() - t0) * 1e3:.1f} ms")


# --- index and helpers ---------------------------------------------------------------------


def meta(uid: str, name: str = "p", **kw) -> PodMeta:
    return PodMeta(uid=uid, namespace="ns", name=name, node="n", **kw)


def test_index_replace_keeps_living_pods_and_graces_missing_ones():
    clock = [100.0]
    index = PodIndex(grace_seconds=10, clock=lambda: clock[0])
    assert index.replace([meta("a"), meta("b")]) and index.generation == 1
    assert not index.replace([meta("a"), meta("b")]) and index.generation == 1
    assert not index.upsert(meta("a"))
    snap_a = index.get("a")

    assert index.replace([meta("a")])                 # b missing from the re-list
    assert index.get("a") == snap_a
    assert index.deleted_at("b") == 100.0 and index.get("b") is not None
    clock[0] = 105.0
    assert not index.replace([meta("a")])              # still missing: timer not restarted
    assert index.deleted_at("b") == 100.0
    assert index.expire() == []
    clock[0] = 110.0
    assert index.expire() == ["b"] and index.get("b") is None

    # A pod that comes back (same uid) is alive again.
    index.delete("a")
    assert index.deleted_at("a") == 110.0
    assert index.upsert(meta("a", phase="Running")) and index.deleted_at("a") is None
    assert not index.delete("never-seen")


def test_podmeta_is_immutable_and_hashable():
    m = meta("u", containers={"c1": "app"}, labels={"label_x": "y"})
    with pytest.raises(TypeError):
        m.containers["c2"] = "x"
    assert hash(m) == hash(meta("u", containers={"c9": "z"}))
    assert m == meta("u", containers={"c1": "app"}, labels={"label_x": "y"})
    assert m != meta("u", containers={"c1": "other"}, labels={"label_x": "y"})


def test_label_and_container_id_helpers():
    assert sanitize_label_name("app.kubernetes.io/name") == "label_app_kubernetes_io_name"
    assert sanitize_label_name("team") == "label_team"
    assert sanitize_label_name("a-b/c.d") == "label_a_b_c_d"
    every = LabelAllowlist(["*"]).select({"b.x": "1", "a": "2"})
    assert every == {"label_a": "2", "label_b_x": "1"}
    assert LabelAllowlist([]).select({"a": "1"}) == {}
    # Two keys that sanitize alike: deterministic, first in key order wins.
    assert LabelAllowlist(["*"]).select({"a_b": "2", "a.b": "1"}) == {"label_a_b": "1"}
    assert strip_runtime_prefix("containerd://abc") == "abc"
    assert strip_runtime_prefix("cri-o://abc") == "abc"
    assert strip_runtime_prefix("docker://abc") == "abc"
    assert strip_runtime_prefix("abc") == "abc"


# --- configuration -------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG", "NODE_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_load_api_client_sources(api, clean_env, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="exporter.kube")
    assert load_api_client("off") is None
    with pytest.raises(ValueError):
        load_api_client("in-cluster-please")

    client = load_api_client("auto", api.kubeconfig_path)
    assert client.host == api.url
    assert RawPods(client).list_pod_for_all_namespaces().json()["items"] == []  # token sent
    library = load_kubernetes_client("auto", api.kubeconfig_path)  # the writers' client
    assert CoreV1Api(library).list_pod_for_all_namespaces().items == []

    clean_env.setenv("KUBECONFIG", api.kubeconfig_path)
    assert load_api_client("auto").host == api.url
    clean_env.delenv("KUBECONFIG")

    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text(open(api.kubeconfig_path).read())
    assert load_api_client("auto").host == api.url
    (tmp_path / ".kube" / "config").unlink()

    caplog.clear()
    assert load_api_client("auto") is None
    assert "unlabelled" in caplog.text

    # KUBERNETES_SERVICE_HOST set but no service account mounted: unlabelled, not a crash.
    clean_env.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    clean_env.setenv("KUBERNETES_SERVICE_PORT", "443")
    caplog.clear()
    assert load_api_client("auto") is None
    assert "in-cluster" in caplog.text and "unlabelled" in caplog.text

    with pytest.raises(FileNotFoundError):       # an explicit, broken kubeconfig is fatal
        load_api_client("auto", str(tmp_path / "missing"))
    with pytest.raises(ConfigException):
        load_kubernetes_client("auto", str(tmp_path / "missing"))


def test_node_name(clean_env):
    assert node_name("n1") == "n1"
    clean_env.setenv("NODE_NAME", "from-env")
    assert node_name(None) == "from-env"
    assert node_name("arg") == "arg"
    clean_env.delenv("NODE_NAME")
    clean_env.setattr(kube.socket, "gethostname", lambda: "Worker-7.Example")
    assert node_name() == "worker-7.example"


def test_watcher_without_client_is_degraded_not_dead():
    w = PodWatcher(PodIndex(), "n", lambda: None, backoff_base=0.01, backoff_cap=0.02).start()
    try:
        assert wait_for(lambda: w.restarts >= 2)
        assert w.state.startswith("degraded") and "no Kubernetes API client" in w.state
    finally:
        assert w.stop()


# --- workloads (issue 15) -------------------------------------------------------------------

def test_workload_labels_from_owner_references(api, start):
    """podsnoop_pod_info's workload_kind/workload, from pods as the test API server serves
    them (the ownerReferences their controllers set) through the real watcher."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from exporter import exposition, names
    from exporter.collectors.pods import PodCollector

    minutes = int(time.time() // 60)
    cases = {   # pod name -> (owner, labels, want)
        "web-5d8f7c9b4-x2x9q": (("ReplicaSet", "web-5d8f7c9b4"),
                                {"pod-template-hash": "5d8f7c9b4"}, ("Deployment", "web")),
        # a ReplicaSet that no Deployment named: the hash label does not match
        "legacy-abcde": (("ReplicaSet", "legacy"), {"pod-template-hash": "5d8f7c9b4"},
                         ("ReplicaSet", "legacy")),
        "db-0": (("StatefulSet", "db"), {}, ("StatefulSet", "db")),
        "agent-7xk2p": (("DaemonSet", "agent"), {}, ("DaemonSet", "agent")),
        "backup-29134560-q8x7z": (("Job", f"backup-{minutes - 5}"), {}, ("CronJob", "backup")),
        # named like a CronJob's but with a date, not minutes since the epoch: a plain Job
        "migrate-20240101-abcde": (("Job", "migrate-20240101"), {}, ("Job", "migrate-20240101")),
        "once-abcde": (("Job", "once"), {}, ("Job", "once")),
        "etcd-node-a": (("Node", "node-a"), {}, ("Node", "node-a")),
        "bare": (None, {}, ("", "")),
    }
    uids = {name: api.add_pod(name, "shop", labels=labels, owner=owner)["metadata"]["uid"]
            for name, (owner, labels, _) in cases.items()}
    w = start()
    assert w.wait_synced(3)
    for name, (_, _, want) in cases.items():
        meta = w.index.get(uids[name])
        assert (meta.workload_kind, meta.workload) == want, name

    registry = CollectorRegistry()
    registry.register(PodCollector(w.index, w, ()))
    info = {s.labels["pod"]: s.labels for f in text_string_to_metric_families(
        exposition.render(registry).decode()) for s in f.samples if s.name == names.POD_INFO}
    assert {pod: (labels["workload_kind"], labels["workload"]) for pod, labels in info.items()
            } == {name: want for name, (_, _, want) in cases.items()}

    # a pod created later arrives through the watch with its workload
    late = api.add_pod("web-5d8f7c9b4-late1", "shop", labels={"pod-template-hash": "5d8f7c9b4"},
                       owner=("ReplicaSet", "web-5d8f7c9b4"))["metadata"]["uid"]
    assert wait_for(lambda: w.index.get(late) is not None)
    assert (w.index.get(late).workload_kind, w.index.get(late).workload) == ("Deployment", "web")


def test_workload_of_edge_cases():
    from exporter.kube import workload_of
    now = 1_800_000_000.0   # 2027-01-15
    job = lambda name: {"ownerReferences": [{"kind": "Job", "name": name, "controller": True}]}
    assert workload_of(job(f"nightly-{int(now // 60)}"), now) == ("CronJob", "nightly")
    assert workload_of(job(f"nightly-{int(now // 60) + 3 * 1440}"), now) == (
        "Job", f"nightly-{int(now // 60) + 3 * 1440}")   # in the future: not a schedule
    assert workload_of(job("a-b-29134560"), now) == ("CronJob", "a-b")
    # the controller reference wins over other owners
    md = {"ownerReferences": [{"kind": "ConfigMap", "name": "x"},
                              {"kind": "StatefulSet", "name": "s", "controller": True}]}
    assert workload_of(md) == ("StatefulSet", "s")
    assert workload_of({"ownerReferences": [{"kind": "Foo", "name": "f"}]}) == ("Foo", "f")
    rs = {"ownerReferences": [{"kind": "ReplicaSet", "name": "-abc", "controller": True}],
          "labels": {"pod-template-hash": "abc"}}
    assert workload_of(rs) == ("ReplicaSet", "-abc")
    assert workload_of({}) == ("", "") and workload_of({"ownerReferences": None}) == ("", "")

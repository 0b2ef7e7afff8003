"""peerwatch.py against the test API server (exporter/testapiserver.py) with the real
kubernetes client: every pod and Service of the cluster into peers.PeerDirectory."""

from __future__ import annotations

import functools
import logging

import pytest

from exporter import peers
from exporter.kube import load_api_client
from exporter.kubeapi import RawPods
from exporter.peerwatch import PeerPodWatcher, ServiceWatcher, start_peer_watchers
import kube_helpers
from kube_helpers import api  # noqa: F401 (a fixture)

NODE = peers.NODE
PODS, SERVICES = "/api/v1/pods", "/api/v1/services"
wait_for = functools.partial(kube_helpers.wait_for, timeout=10.0)


@pytest.fixture
def start(api):
    """start(**kw) -> [PeerPodWatcher, ServiceWatcher] feeding a new directory (kw.directory
    or a fresh one); all are stopped afterwards."""
    started: list = []

    def _start(directory: peers.PeerDirectory | None = None, **kw):
        kw = {"backoff_base": 0.05, "backoff_cap": 0.4} | kw
        ws = start_peer_watchers(directory or peers.PeerDirectory(),
                                 lambda: load_api_client("auto", api.kubeconfig_path), **kw)
        started.extend(ws)
        return ws

    yield _start
    for w in started:
        assert w.stop(timeout=3), "watcher thread did not stop"


def lists(api, path: str = PODS) -> list:
    return [r for r in api.request_log if r.path == path and not r.watch]


def watching(api, *ws) -> bool:
    return all(w.wait_synced(10) for w in ws) and wait_for(
        lambda: api.open_watches == len(ws))


def test_pods_of_every_node_and_services_make_the_address_table(api, start):
    web = api.add_pod("web-5d4f8c7b9-x2x9z", "shop", node="node-a",
                      labels={"pod-template-hash": "5d4f8c7b9"},
                      owner=("ReplicaSet", "web-5d4f8c7b9"), pod_ips=["10.244.1.5", "fd00::5"])
    bare = api.add_pod("debug", "shop", node="node-b", pod_ip="10.244.2.7")
    cache = api.add_pod("cache-0", node="node-b", owner=("StatefulSet", "cache"))  # podIP only
    assert "podIPs" not in cache["status"]
    api.add_pod("node-exporter-q7", "monitoring", node="node-a", host_network=True,
                owner=("DaemonSet", "node-exporter"))
    api.add_pod("odd-host-net", "monitoring", node="node-a", host_network=True,
                pod_ip="10.244.9.9")
    api.add_pod("migrate-1", "shop", node="node-b", phase="Succeeded", pod_ip="10.244.2.99")
    api.add_service("web", "shop", cluster_ip="10.96.0.10")
    api.add_service("web-headless", "shop", cluster_ip="None")
    api.add_service("dns", "kube-system", cluster_ips=["10.96.0.11", "fd00:96::11"])
    host_a, host_b = web["status"]["hostIP"], bare["status"]["hostIP"]
    assert host_a != host_b

    directory = peers.PeerDirectory()
    pods, services = start(directory)
    assert isinstance(pods, PeerPodWatcher) and isinstance(services, ServiceWatcher)
    assert pods.wait_synced(10) and services.wait_synced(10)
    assert (pods.state, services.state) == ("synced", "synced")
    assert directory.addresses() == {
        "10.244.1.5": ("shop", "web", "", ""),             # Deployment, not its ReplicaSet
        "fd00::5": ("shop", "web", "", ""),
        "10.244.2.7": ("shop", "debug", "", ""),           # a bare pod: its own name
        cache["status"]["podIP"]: ("default", "cache", "", ""),
        host_a: NODE, host_b: NODE,                        # hostIP; hostNetwork pods' own
        "10.96.0.10": ("shop", "", "web", ""),             # headless: no address at all
        "10.96.0.11": ("kube-system", "", "dns", ""),
        "fd00:96::11": ("kube-system", "", "dns", ""),
    }
    # All pods, no node filter; one page each at this size, from the watch cache.
    (pod_list,) = lists(api)
    assert pod_list.query == {"limit": "500", "resourceVersion": "0"}
    (svc_list,) = lists(api, SERVICES)
    assert svc_list.query == {"limit": "500", "resourceVersion": "0"}
    assert (pods.last_list_items, services.last_list_items) == (6, 3)


def test_changes_arrive_by_the_watch(api, start):
    gone = api.add_pod("old", pod_ip="10.244.0.50")["metadata"]["uid"]
    job = api.add_pod("job-1", pod_ip="10.244.0.51")["metadata"]["uid"]
    old_svc = api.add_service("old", cluster_ip="10.96.0.50")["metadata"]["uid"]
    directory = peers.PeerDirectory()
    ws = start(directory)
    assert watching(api, *ws)
    host = api.pods()[0]["status"]["hostIP"]

    api.delete_pod(gone)
    api.update_pod(job, phase="Succeeded")
    api.delete_service(old_svc)
    api.add_pod("new", "shop", node="node-c", pod_ip="10.244.3.3")
    api.add_service("new", "shop", cluster_ip="10.96.0.60")
    new_host = api.pods()[-1]["status"]["hostIP"]
    expected = {host: NODE, new_host: NODE, "10.244.3.3": ("shop", "new", "", ""),
                "10.96.0.60": ("shop", "", "new", "")}
    assert wait_for(lambda: directory.addresses() == expected)
    assert len(lists(api)) == 1 and len(lists(api, SERVICES)) == 1   # no re-list
    assert [w.restarts for w in ws] == [0, 0]


def test_a_list_longer_than_limit_is_read_page_by_page(api, start):
    api.add_pods(700, node="node-a", prefix="a")
    api.add_pods(503, node="node-b", prefix="b")
    directory = peers.PeerDirectory()
    pods, services = start(directory, limit=500)
    assert pods.wait_synced(10)
    pages = lists(api)
    assert [r.query.get("limit") for r in pages] == ["500"] * 3
    assert pages[0].query.get("resourceVersion") == "0" and "continue" not in pages[0].query
    assert all("continue" in r.query and "resourceVersion" not in r.query for r in pages[1:])
    assert [r.status for r in pages] == [200] * 3
    assert pods.last_list_pages == 3 and pods.last_list_items == 1203
    table = directory.addresses()
    assert sorted(set(table.values())) == sorted(
        {NODE} | {("default", f"a-{i}", "", "") for i in range(700)}
        | {("default", f"b-{i}", "", "") for i in range(503)})
    assert len(table) == 1203 + 2          # every pod's IP, and the two nodes'


def test_pages_are_one_snapshot_and_the_watch_goes_on_from_it(api):
    """The test server's pagination, as the API documents it."""
    for i in range(5):
        api.add_pod(f"p{i}")
    client = load_api_client("auto", api.kubeconfig_path)
    raw = RawPods(client)

    def page(**kw) -> dict:
        import json
        return json.loads(raw.list_pod_for_all_namespaces(**kw).data)

    first = page(limit=2)
    rv = first["metadata"]["resourceVersion"]
    assert [p["metadata"]["name"] for p in first["items"]] == ["p0", "p1"]
    assert first["metadata"]["remainingItemCount"] == 3
    api.add_pod("late")                     # after the first page: not in this list
    api.delete_pod(api.pods()[2]["metadata"]["uid"])   # p2: still in this list
    second = page(limit=2, _continue=first["metadata"]["continue"])
    last = page(limit=2, _continue=second["metadata"]["continue"])
    assert [p["metadata"]["name"] for p in second["items"] + last["items"]] == [
        "p2", "p3", "p4"]
    assert second["metadata"]["resourceVersion"] == last["metadata"]["resourceVersion"] == rv
    assert "continue" not in last["metadata"]

    from exporter.kubeclient import ApiError
    with pytest.raises(ApiError) as exc:   # a continue token is its own resourceVersion
        page(limit=2, _continue=first["metadata"]["continue"], resource_version="0")
    assert exc.value.status == 400
    token = page(limit=2)["metadata"]["continue"]
    api.compact()
    with pytest.raises(ApiError) as exc:   # a token older than compaction has expired
        page(limit=2, _continue=token)
    assert exc.value.status == 410
    client.close()


def test_410_relists_consistently(api, start):
    keep = api.add_pod("keep", pod_ip="10.244.0.10")
    directory = peers.PeerDirectory()
    pods, services = ws = start(directory, limit=2)
    assert watching(api, *ws)
    host = keep["status"]["hostIP"]

    api.set_down(True)                        # changes while away, then history compacted
    assert wait_for(lambda: pods.state.startswith("degraded"))
    api.add_pod("while-away", pod_ip="10.244.0.11")
    api.add_service("while-away", cluster_ip="10.96.0.11")
    api.compact()
    api.set_down(False)
    expected = {host: NODE, "10.244.0.10": ("default", "keep", "", ""),
                "10.244.0.11": ("default", "while-away", "", ""),
                "10.96.0.11": ("default", "", "while-away", "")}
    assert wait_for(lambda: directory.addresses() == expected)
    assert wait_for(lambda: pods.state == services.state == "synced")
    relist = lists(api)[-1]
    assert "resourceVersion" not in relist.query and relist.query["limit"] == "2"
    assert pods.restarts >= 2 and services.restarts >= 2   # the cut, then the 410


def test_403_on_services_logs_once_and_pods_keep_working(api, start, caplog):
    caplog.set_level(logging.INFO, logger="exporter")
    api.add_pod("web", pod_ip="10.244.0.20")
    api.add_service("web", cluster_ip="10.96.0.20")
    api.fail_next(403, 3, path=SERVICES)
    directory = peers.PeerDirectory()
    pods, services = start(directory, backoff_cap=0.2)
    assert pods.wait_synced(10)
    assert wait_for(lambda: ("default", "web", "", "") in directory.addresses().values())
    assert wait_for(lambda: "403" in services.state)
    assert services.state.startswith("degraded: HTTP 403")
    assert pods.state == "synced"

    assert services.wait_synced(10) and services.state == "synced"
    assert directory.addresses()["10.96.0.20"] == ("default", "", "web", "")
    assert [r.status for r in lists(api, SERVICES)] == [403, 403, 403, 200]
    assert [r.status for r in lists(api)] == [200]
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    line = refused[0].getMessage()
    assert "\n" not in line
    assert "services" in line and "get, list, watch" in line and "ClusterRole" in line
    assert services.restarts == 3 and pods.restarts == 0

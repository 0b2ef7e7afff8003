"""Peers named from the Kubernetes API: the exporter process, real test pods, real traffic,
and the real kubernetes client talking to the test API server (exporter/testapiserver.py).

Pods "front" (a Deployment's) and "back" (a StatefulSet's) are published with their real
addresses; Service "back" has a ClusterIP that a DNAT rule on the host turns into back's
TCP port, as kube-proxy's would. Exact bytes and connects per peer, named by workload and
by Service; a pod the API learns about later gets its name, and loses it when deleted.
"""
from __future__ import annotations

import subprocess

import pytest

from exporter import names
from exporter.testapiserver import KubeApiServer
from conftest import run_exporter
from test_dns import route_between
from test_network import wait_for
from test_peers import (BYTES, CONNECTS, FAILURES, REPLY, TCP_PORT, V4, V6, delta,
                        peer_values, run, start_server)

NODE = "node-a"
CLUSTER_IP, SERVICE_PORT = "10.96.77.7", 80


def workload(namespace: str, name: str) -> tuple:
    return (namespace, name, "", "")


def service(namespace: str, name: str) -> tuple:
    return (namespace, "", name, "")


WORLD = ("", "", "", names.PEER_WORLD)


def publish(api, pod, namespace: str, name: str, owner: tuple[str, str]) -> dict:
    """Tell the API about a test pod: its real UID, container ids and addresses (and a
    ReplicaSet's pod-template-hash label, as its Deployment sets it)."""
    labels = ({"pod-template-hash": owner[1].rsplit("-", 1)[1]}
              if owner[0] == "ReplicaSet" else {})
    return api.add_pod(name, namespace, NODE, uid=pod.uid, owner=owner, labels=labels,
                       containers={c.name: c.id for c in pod.containers.values()},
                       pod_ips=[pod.pod_ip, pod.pod_ip6])


def until_named(exporter, sender, op: list, viewer, seen: tuple) -> None:
    """Send `op` (one datagram) from `sender` until `viewer`'s counters move under `seen`
    ((direction, peer)): the exporter's address table has caught up with the API (its
    lists, then its once-a-second write into the kernel)."""
    def once() -> bool:
        before = peer_values(exporter, viewer)
        run(sender, [op])
        return seen in delta(before, peer_values(exporter, viewer))
    wait_for(once, interval=0.2, what=f"traffic counted under {seen}")


@pytest.fixture(scope="module")
def api():
    with KubeApiServer() as server:
        yield server


@pytest.fixture(scope="module")
def pods(factory, api):
    front = factory.create(ipv6=True, name="front")
    back = factory.create(ipv6=True, name="back")
    route_between(front, back)
    start_server(back)
    start_server(front)
    publish(api, front, "shop", "front-5d4f8c7b9-x2x9z", ("ReplicaSet", "front-5d4f8c7b9"))
    publish(api, back, "shop", "back-0", ("StatefulSet", "back"))
    api.add_service("back", "shop", cluster_ip=CLUSTER_IP)
    # kube-proxy's part: the ClusterIP is rewritten to the backend after the pod
    rule = ["PREROUTING", "-i", front.host_if, "-d", CLUSTER_IP, "-p", "tcp", "--dport",
            str(SERVICE_PORT), "-j", "DNAT", "--to-destination", f"{back.pod_ip}:{TCP_PORT}"]
    subprocess.run(["iptables", "-t", "nat", "-I", *rule], check=True)
    yield front, back
    subprocess.run(["iptables", "-t", "nat", "-D", *rule], check=True)


@pytest.fixture(scope="module")
def exporter(factory, api, pods):
    front, back = pods
    proc = run_exporter(factory, "--kube", "auto", "--kubeconfig", str(api.kubeconfig_path),
                        "--node-name", NODE)
    # the pods' and the Service's addresses in the kernel's table (neighbours resolved on
    # the way, both families) before anything is measured
    wait_for(lambda: "ok: peers" in proc.get("/readyz")[1], what="the peer watchers' lists")
    back_wl = workload("shop", "back")
    for address in (back.pod_ip, back.pod_ip6):
        until_named(proc, front, ["udp", address, 1, 1], front, ("transmit", back_wl))
    until_named(proc, front, ["udp_only", CLUSTER_IP, 9999, 1, 1], front,
                ("transmit", service("shop", "back")))
    yield proc
    assert proc.stop() == 0, proc.output()


def test_pods_are_named_by_workload_both_ways(exporter, pods):
    front, back = pods
    f0, b0 = peer_values(exporter, front), peer_values(exporter, back)
    assert run(front, [["udp", back.pod_ip, 4, 100], ["udp", back.pod_ip6, 2, 300]]) == \
        [REPLY] * 6
    back_wl, front_wl = workload("shop", "back"), workload("shop", "front")
    # both of back's addresses are one peer: its workload
    assert delta(f0, peer_values(exporter, front)) == {
        ("transmit", back_wl): 4 * (V4 + 100) + 2 * (V6 + 300),
        ("receive", back_wl): 4 * (V4 + REPLY) + 2 * (V6 + REPLY)}
    # the Deployment, not its ReplicaSet
    assert delta(b0, peer_values(exporter, back)) == {
        ("receive", front_wl): 4 * (V4 + 100) + 2 * (V6 + 300),
        ("transmit", front_wl): 4 * (V4 + REPLY) + 2 * (V6 + REPLY)}


def test_a_connect_to_a_cluster_ip_is_the_service_and_the_backend_sees_the_client(
        exporter, pods):
    front, back = pods
    c0, fl0 = peer_values(exporter, front, CONNECTS), peer_values(exporter, front, FAILURES)
    b0 = peer_values(exporter, back, BYTES)
    assert run(front, [["tcp", CLUSTER_IP, SERVICE_PORT, 3]]) == ["ok"] * 3
    assert delta(c0, peer_values(exporter, front, CONNECTS)) == {
        ("", service("shop", "back")): 3}
    assert delta(fl0, peer_values(exporter, front, FAILURES)) == {}
    # front's bytes went to the Service (the address its socket has)...
    sent = peer_values(exporter, front, BYTES)
    assert sent[("transmit", service("shop", "back"))] > 3 * 100
    assert sent[("receive", service("shop", "back"))] > 0
    # ...and back, after the DNAT, saw them come from front's workload
    got = delta(b0, peer_values(exporter, back, BYTES))
    assert set(got) == {("receive", workload("shop", "front")),
                        ("transmit", workload("shop", "front"))}
    assert got[("receive", workload("shop", "front"))] > 3 * 100


def test_a_pod_gets_its_name_when_published_and_loses_it_when_deleted(
        exporter, pods, factory, api):
    _, back = pods
    late = factory.create(ipv6=True, name="late")
    route_between(late, back)
    assert run(late, [["udp", back.pod_ip, 1, 1]]) == [REPLY]  # neighbours

    def back_sees_late(count: int) -> dict:
        before = peer_values(exporter, back)
        assert run(late, [["udp", back.pod_ip, count, 200]]) == [REPLY] * count
        return delta(before, peer_values(exporter, back))

    def named_after(change, before: tuple, after: tuple) -> None:
        assert back_sees_late(2) == {("receive", before): 2 * (V4 + 200),
                                     ("transmit", before): 2 * (V4 + REPLY)}
        change()
        until_named(exporter, late, ["udp", back.pod_ip, 1, 1], back, ("receive", after))
        assert back_sees_late(3) == {("receive", after): 3 * (V4 + 200),
                                     ("transmit", after): 3 * (V4 + REPLY)}

    late_wl = workload("batch", "late")
    named_after(lambda: publish(api, late, "batch", "late-6b7c4d-q8x", ("ReplicaSet",
                                                                        "late-6b7c4d")),
                WORLD, late_wl)
    named_after(lambda: api.delete_pod(late.uid), late_wl, WORLD)


def test_services_forbidden_is_degraded_on_readyz_and_pods_are_still_named(factory):
    """RBAC without `services`: /readyz (still 200) says so, the log says what to grant,
    once; pods keep their workload names."""
    with KubeApiServer() as api:
        a, b = factory.create(ipv6=True, name="rbac-a"), factory.create(ipv6=True, name="rbac-b")
        route_between(a, b)
        start_server(b)
        publish(api, b, "shop", "back-0", ("StatefulSet", "back"))
        api.fail_next(403, 1000, path="/api/v1/services")
        proc = run_exporter(factory, "--kube", "auto", "--kubeconfig",
                            str(api.kubeconfig_path), "--node-name", NODE)
        try:
            wait_for(lambda: "degraded: peers: services: HTTP 403" in proc.get("/readyz")[1],
                     what="/readyz to report the refused Service list")
            status, body = proc.get("/readyz")
            assert status == 200 and "ok: kube" in body, body
            until_named(proc, a, ["udp", b.pod_ip, 1, 1], a,
                        ("transmit", workload("shop", "back")))
            before = peer_values(proc, a)
            assert run(a, [["udp", b.pod_ip, 2, 100]]) == [REPLY] * 2
            assert delta(before, peer_values(proc, a)) == {
                ("transmit", workload("shop", "back")): 2 * (V4 + 100),
                ("receive", workload("shop", "back")): 2 * (V4 + REPLY)}
            out = proc.output()
            assert out.count("refused to list services") == 1, out
            assert "deploy/clusterrole.yaml" in out
        finally:
            assert proc.stop() == 0, proc.output()

"""Pod labels end to end: real test pods, the exporter process, and the real kubernetes
client talking to the test API server (list + watch, outages)."""
from __future__ import annotations

import pytest

from exporter import names
from exporter.testapiserver import KubeApiServer
from conftest import run_exporter
from test_network import wait_for
from test_syscalls import GETSID

NODE = "node-a"
TX = names.NET_TRANSMIT_PACKETS + "_total"
CALLS = names.SYSCALLS + "_total"


@pytest.fixture
def api():
    with KubeApiServer() as server:
        yield server


def publish(api, pod, namespace="shop", name=None, labels=None):
    """Tell the API about a test pod, with its real UID and container ids."""
    return api.add_pod(name or pod.name, namespace, NODE, uid=pod.uid,
                       containers={c.name: c.id for c in pod.containers.values()},
                       labels=labels or {"app": "cart"})


def kube_exporter(pods, api, *extra):
    return run_exporter(pods, "--kube", "auto", "--kubeconfig", str(api.kubeconfig_path),
                        "--node-name", NODE, "--pod-labels", "app", *extra)


def test_samples_get_namespace_pod_and_container(pods, api):
    pod = pods.create(containers=("web", "sidecar"))
    publish(api, pod, name="cart-1")
    proc = kube_exporter(pods, api)
    try:
        pod.exec(["ping", "-c", "2", "-i", "0.05", "-q", pod.host_ip])
        pod.exec(["python3", "-c", GETSID, "3000"], container="web")
        wait_for(lambda: proc.metrics().series(TX, namespace="shop", pod="cart-1",
                                               pod_uid=pod.uid, interface=pod.host_if),
                 what="labelled network samples")
        m = proc.metrics()
        assert m.value(CALLS, namespace="shop", pod="cart-1", container="web",
                       syscall="getsid") == 3000
        assert m.series(names.POD_INFO, namespace="shop", pod="cart-1", pod_uid=pod.uid,
                        node=NODE, label_app="cart")
        status, body = proc.get("/readyz")
        assert status == 200 and "ok: kube" in body
    finally:
        assert proc.stop() == 0


def test_pod_added_later_is_labelled_and_deleted_pod_goes_after_grace(pods, api):
    proc = kube_exporter(pods, api, "--grace-period", "3")
    try:
        pod = pods.create()
        publish(api, pod, name="late-1")
        pod.exec(["ping", "-c", "2", "-i", "0.05", "-q", pod.host_ip])
        wait_for(lambda: proc.metrics().value(TX, pod="late-1", protocol="icmp") == 2,
                 what="the later pod's labelled samples")
        api.delete_pod(pod.uid)
        pods.delete(pod)
        # Still there, labelled, during the grace period...
        assert proc.metrics().value(TX, pod="late-1", protocol="icmp") == 2
        # ...and gone after it (network series, and pod_info).
        wait_for(lambda: not proc.metrics().series(TX, pod_uid=pod.uid), timeout=10,
                 interval=0.5, what="network series to expire")
        wait_for(lambda: not proc.metrics().series(names.POD_INFO, pod_uid=pod.uid),
                 timeout=20, interval=0.5, what="pod_info to expire")
    finally:
        assert proc.stop() == 0


def test_api_down_at_start_then_up(pods, api):
    pod = pods.create()
    publish(api, pod, name="outage-1")
    api.set_down(True)
    proc = kube_exporter(pods, api)
    try:
        # Wait until the watcher really met the outage (not just "starting").
        wait_for(lambda: "refused" in proc.get("/readyz")[1].lower(), timeout=20,
                 what="/readyz to report the refused API")
        status, body = proc.get("/readyz")
        assert status == 200, "an API outage must not make podsnoop unready"
        assert "degraded: kube" in body
        pod.exec(["ping", "-c", "1", "-q", pod.host_ip])
        wait_for(lambda: proc.metrics().value(TX, pod_uid=pod.uid, pod="", protocol="icmp") == 1,
                 what="unlabelled samples while the API is down")
        api.set_down(False)
        wait_for(lambda: proc.metrics().value(TX, pod_uid=pod.uid, pod="outage-1",
                                              protocol="icmp") == 1,
                 timeout=40, interval=0.5, what="labels once the API is back")
        assert "ok: kube" in proc.get("/readyz")[1]
        m = proc.metrics()
        assert m.value(names.KUBE_WATCH_RESTARTS + "_total") >= 1
    finally:
        assert proc.stop() == 0


def test_broken_explicit_kubeconfig_is_a_clear_error(pods, tmp_path):
    bad = tmp_path / "kubeconfig"
    bad.write_text("this: is: not: a kubeconfig")
    from test_cli import assert_clean_failure, podsnoop
    r = podsnoop("--kube", "auto", "--kubeconfig", str(bad), "--listen", "127.0.0.1:0",
                 "--interfaces", "none")
    assert_clean_failure(r, 1, "cannot load the kubeconfig", "podsnoop: fix:")

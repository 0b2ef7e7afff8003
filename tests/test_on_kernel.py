"""The kernel-facing subset: what must hold on every kernel podsnoop supports.

Runs in the normal suite on this machine's kernel, and inside a qemu guest on each of
Debian's kernels (tests/test_kernel_matrix.py boots them with scripts/kmatrix/vm-run). One
exporter start with the default flags for the whole module (everything runs slowly under
emulation), then exact counts: network bytes and packets against the veth's
own counters, N syscalls of a pod's container, execs, TCP connects and failures (and by
peer), drops
where the kernel has drop reasons, and a SIGTERM that leaves nothing attached.

What the kernel lacks is taken from its version here, not from podsnoop's own feature
checks, so a wrong check fails the test: below 5.17 no drop reasons (the drops collector
must be off, saying why), below 5.13 no task storage for tracing programs (the per-thread
hash), below 6.2 no SKB_CONSUMED, below 6.6 no tcx (clsact filters).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from exporter import names
from exporter.exporterproc import ExporterProcess
from conftest import our_filters
from test_drops import DROPS, closed_udp_port, drops, pod_sends_udp
from test_network import deltas, snapshot, wait_for
from test_tcp import FAILURES, connect, histogram

RELEASE = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
HAS_DROP_REASONS = RELEASE >= (5, 17)
HAS_TRACING_TASK_STORAGE = RELEASE >= (5, 13)
HAS_TCX = RELEASE >= (6, 6)
IN_GUEST = os.environ.get("KVM_GUEST") == "1"
# Bounded waits, generous under emulation (Python alone starts ~10x slower there).
READY_SECONDS = 1500 if IN_GUEST else 180
WAIT_SECONDS = 120 if IN_GUEST else 15
CALLS = names.SYSCALLS + "_total"
EXECS = names.EXECS + "_total"
LATENCY_COUNT = names.SYSCALL_DURATION + "_count"
GETPPID = "import os, sys\nfor _ in range(int(sys.argv[1])): os.getppid()"
COLLECTORS = ("network", "syscalls", "exec", "tcp", "dns", "peers", "drops")
PEER_CONNECTS = names.PEER_TCP_CONNECTS + "_total"
PEER_FAILURES = names.PEER_TCP_CONNECT_FAILURES + "_total"
NODE_PEER = {"peer_network": names.PEER_NODE}


def bpf_program_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


@pytest.fixture(scope="module")
def before_ids(kernel):
    return bpf_program_ids()


@pytest.fixture(scope="module")
def pod(factory, before_ids):
    p = factory.create()
    return p


@pytest.fixture(scope="module")
def exporter(factory, pod, before_ids):
    # default flags but for the test's own scope (its veths, its kubepods root, no API)
    proc = ExporterProcess("--kube", "off", "--interfaces", rf"{factory.tag}h\d+",
                           "--kubepods-root", str(factory.kubepods)).start(READY_SECONDS)
    wait_for(lambda: len(our_filters(pod.host_if)) == 2, timeout=WAIT_SECONDS,
             what=f"podsnoop's filters on {pod.host_if}")
    pod.exec(["ping", "-c", "1", "-W", "5", pod.host_ip])  # ARP resolved before measuring
    yield proc
    proc.stop()


def test_ready_with_default_flags_and_the_kernels_fallbacks(exporter):
    status, body = exporter.get("/readyz")
    assert status == 200, body
    m = exporter.metrics()
    up = {c: m.value(names.COLLECTOR_UP, collector=c) for c in COLLECTORS}
    assert up == {c: float(c != "drops" or HAS_DROP_REASONS) for c in COLLECTORS}, up
    log = exporter.output()
    if HAS_DROP_REASONS:
        assert not m.series(names.COLLECTOR_DISABLED), m.series(names.COLLECTOR_DISABLED)
        assert "degraded: collectors" not in body
    else:
        assert m.series(names.COLLECTOR_DISABLED) == [
            {"collector": "drops", "reason": "kernel<5.17: drop reasons"}]
        assert "degraded: collectors: off: drops (kernel<5.17: drop reasons)" in body, body
        warnings = [ln for ln in log.splitlines() if "collector off:" in ln]
        assert len(warnings) == 1 and "(--drops off silences this)" in warnings[0], log
    assert ("per-thread hash" in log) == (not HAS_TRACING_TASK_STORAGE), log
    assert ("attach as tcx links" in log) == HAS_TCX, log
    assert "Traceback" not in log, log


def test_network_bytes_and_packets_equal_the_veth_counters(exporter, pod):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((pod.host_ip, 0))
        port = server.getsockname()[1]
        before = snapshot(exporter, pod)
        pod.exec(["ping", "-c", "5", "-i", "0.2", "-s", "300", "-q", pod.host_ip])
        pod.exec(["python3", "-c", "import socket; s=socket.socket(socket.AF_INET, "
                  "socket.SOCK_DGRAM)\nfor _ in range(50): "
                  f"s.sendto(b'x'*700, ('{pod.host_ip}', {port}))"])
        wait_for(lambda: pod.host_stats()["rx_packets"] - before[1]["rx_packets"] >= 55,
                 timeout=WAIT_SECONDS, what="the packets on the veth")
        exported, kernel, protos, _ = deltas(before, snapshot(exporter, pod))
    assert exported == kernel
    assert protos[("tx", "icmp")] == 5 and protos[("rx", "icmp")] == 5
    assert protos[("tx", "udp")] == 50


def test_getppid_calls_of_a_container_counted_exactly(exporter, pod):
    """The launcher (sh, ip netns exec, python's start) makes a fixed number of getppid
    calls of its own: measured with 0 iterations, then exactly 3000 more. One call in 16
    lands in the latency histogram (the default --syscall-latency-every 16; the tick lives
    in the task storage or, before 5.13, the per-thread hash that pairs each exit with its
    entry), to within the one task's rounding."""
    container = pod.first_container

    def run(n: int) -> tuple[float, float, float]:
        m0 = exporter.metrics()
        # Debian's interpreter by its path: a python3 shim on PATH forks shells, each
        # rounding its own one-in-16 count down, which would loosen the bound below.
        pod.exec(["/usr/bin/python3", "-c", GETPPID, str(n)], timeout=600)
        m1 = exporter.metrics()
        return tuple(m1.value(name, container_id=container.id, **labels)
                     - m0.value(name, container_id=container.id, **labels)
                     for name, labels in ((CALLS, {"syscall": "getppid"}), (CALLS, {}),
                                          (LATENCY_COUNT, {})))
    run(3000)  # first into the container's top N by name (below it: syscall="other")
    launcher = run(0)[0]
    getppid, every_call, timed = run(3000)
    assert getppid - launcher == 3000
    assert every_call >= 3000
    assert every_call // 16 - 2 <= timed <= every_call // 16 + 1, (timed, every_call)


def test_execs_counted_exactly(exporter, pod, tmp_path):
    binary = tmp_path / "podsnoopktrue"
    shutil.copy("/bin/true", binary)
    os.chmod(binary, 0o755)
    container = pod.first_container
    before = exporter.metrics().value(EXECS, container_id=container.id, comm=binary.name)
    pod.exec(["sh", "-c", f"for i in 1 2 3 4 5 6 7; do {binary}; done"], timeout=600)
    after = exporter.metrics().value(EXECS, container_id=container.id, comm=binary.name)
    assert after - before == 7


def test_tcp_connects_and_a_failure_counted_exactly(exporter, pod):
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((pod.host_ip, 0))
        server.listen(64)
        m0 = exporter.metrics()
        connect(pod, server.getsockname()[1], 4)
        m1 = exporter.metrics()
    assert histogram(m1, pod)["count"] - histogram(m0, pod)["count"] == 4
    # the host's address is the node: the peer of every one of them
    assert (m1.value(PEER_CONNECTS, pod_uid=pod.uid, **NODE_PEER)
            - m0.value(PEER_CONNECTS, pod_uid=pod.uid, **NODE_PEER)) == 4
    with socket.socket() as s:
        s.bind((pod.host_ip, 0))
        closed = s.getsockname()[1]
    r = pod.exec(["python3", "-c", "import socket\ntry:\n"
                  f"    socket.create_connection(('{pod.host_ip}', {closed}), timeout=30)\n"
                  "except ConnectionRefusedError: print('refused')"], timeout=600)
    assert r.stdout.strip() == "refused"
    m2 = exporter.metrics()
    assert m2.value(FAILURES, pod_uid=pod.uid) - m1.value(FAILURES, pod_uid=pod.uid) == 1
    assert (m2.value(PEER_FAILURES, pod_uid=pod.uid, **NODE_PEER)
            - m1.value(PEER_FAILURES, pod_uid=pod.uid, **NODE_PEER)) == 1


def test_drops_counted_exactly_where_the_kernel_names_them(exporter, pod):
    port = closed_udp_port(pod.host_ip)
    if not HAS_DROP_REASONS:  # the collector is off (checked above): no drop series at all
        pod_sends_udp(pod, port, 3)
        assert not exporter.metrics().series(DROPS)
        return
    # the drops program learns a new pod veth within a second (pod_ifindexes)
    wait_for(lambda: (pod_sends_udp(pod, port, 1),
                      drops(exporter.metrics(), pod, "transmit", "NO_SOCKET"))[1] > 0,
             timeout=WAIT_SECONDS, interval=0.5, what="a drop on the pod's veth")
    m0 = exporter.metrics()
    pod_sends_udp(pod, port, 10)
    m1 = exporter.metrics()
    assert drops(m1, pod, "transmit", "NO_SOCKET") - drops(m0, pod, "transmit",
                                                           "NO_SOCKET") == 10
    assert drops(m1, pod) - drops(m0, pod) == 10


def test_sigterm_exits_zero_and_leaves_nothing_attached(exporter, pod, before_ids):
    assert exporter.stop(signal.SIGTERM, timeout=WAIT_SECONDS) == 0, exporter.output()
    assert our_filters(pod.host_if) == []
    qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", pod.host_if], capture_output=True,
                            text=True).stdout
    assert "clsact" not in qdiscs
    # programs are freed after an RCU grace period once the last fd or link is gone
    deadline = time.monotonic() + WAIT_SECONDS
    while bpf_program_ids() - before_ids and time.monotonic() < deadline:
        time.sleep(0.2)
    assert bpf_program_ids() - before_ids == set()

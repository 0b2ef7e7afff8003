"""Per-pod drops by the kernel's drop reason (skb:kfree_skb), from real packets of real test
pods that the kernel really drops, with the real exporter process."""
from __future__ import annotations

import re
import socket
import time

import pytest

from exporter import names
from exporter.collectors.drops import FORMAT, ReasonNamer
from exporter.tc import TC_H_EGRESS, TC_H_INGRESS
from conftest import run_exporter
from test_exec import BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_PROG_TYPE_TRACEPOINT, prog_types
from test_network import wait_for
from test_tcp import Impairment

DROPS = names.NET_DROPS + "_total"


def drops(m, pod, direction=None, reason=None) -> float:
    labels = {"pod_uid": pod.uid}
    if direction:
        labels["direction"] = direction
    if reason:
        labels["reason"] = reason
    return m.value(DROPS, **labels)


def closed_udp_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def pod_sends_udp(pod, port: int, n: int, size: int = 16) -> None:
    pod.exec(["python3", "-c", "import socket\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"for _ in range({n}): s.sendto(b'x' * {size}, ('{pod.host_ip}', {port}))"])


def host_sends_udp(pod, port: int, n: int, size: int = 16) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(n):
            s.sendto(b"y" * size, (pod.pod_ip, port))


@pytest.fixture(scope="module")
def pod(factory, exporter):
    p = factory.create()
    p.exec(["ping", "-c", "1", "-W", "2", p.host_ip])  # ARP resolved: no NEIGH drops later
    # The exporter learns a new pod veth within a second (pod_ifindexes): wait until a drop
    # on it is counted before measuring.
    port = closed_udp_port(p.host_ip)
    wait_for(lambda: (pod_sends_udp(p, port, 1),
                      drops(exporter.metrics(), p, "transmit", "NO_SOCKET"))[1] > 0,
             timeout=15, interval=0.2, what="drops on the pod's host veth to be counted")
    return p


def test_udp_to_a_closed_host_port_is_a_transmit_no_socket_drop(exporter, pod):
    port = closed_udp_port(pod.host_ip)
    m0 = exporter.metrics()
    pod_sends_udp(pod, port, 10)
    m1 = exporter.metrics()
    assert drops(m1, pod, "transmit", "NO_SOCKET") - drops(m0, pod, "transmit", "NO_SOCKET") == 10
    assert drops(m1, pod) - drops(m0, pod) == 10


def test_udp_to_a_closed_pod_port_is_a_receive_no_socket_drop(exporter, pod):
    m0 = exporter.metrics()
    host_sends_udp(pod, 9, 7)
    # the drops happen in softirq, maybe later on a busy machine: wait for them, then check
    # the exact figures
    wait_for(lambda: drops(exporter.metrics(), pod) - drops(m0, pod) >= 7, timeout=20,
             what="the 7 drops")
    m1 = exporter.metrics()
    assert drops(m1, pod, "receive", "NO_SOCKET") - drops(m0, pod, "receive", "NO_SOCKET") == 7
    assert drops(m1, pod) - drops(m0, pod) == 7


def test_tc_drops_on_both_hooks(exporter, pod):
    imp = Impairment()
    try:
        port = 4000 + pod.host_ifindex() % 1000
        imp.set(proto=socket.IPPROTO_UDP, port=port, drop_all=1)
        imp.attach(pod, TC_H_INGRESS)   # host veth ingress: packets out of the pod
        imp.attach(pod, TC_H_EGRESS)    # host veth egress: packets into the pod
        m0 = exporter.metrics()
        pod_sends_udp(pod, port, 5)
        host_sends_udp(pod, port, 4)
        wait_for(lambda: drops(exporter.metrics(), pod) - drops(m0, pod) >= 9, timeout=20,
                 what="the 9 TC drops")
        m1 = exporter.metrics()
    finally:
        imp.close()
    assert imp_dropped_ok(m0, m1, pod)


def imp_dropped_ok(m0, m1, pod) -> bool:
    got = {(d, r): drops(m1, pod, d, r) - drops(m0, pod, d, r)
           for d in names.DROP_DIRECTIONS for r in ("TC_INGRESS", "TC_EGRESS")}
    assert got == {("transmit", "TC_INGRESS"): 5, ("transmit", "TC_EGRESS"): 0,
                   ("receive", "TC_INGRESS"): 0, ("receive", "TC_EGRESS"): 4}, got
    assert drops(m1, pod) - drops(m0, pod) == 9
    return True


def test_full_socket_receive_buffer_is_a_receive_drop(exporter, pod):
    """A pod's UDP socket with a small buffer that nobody reads: what does not fit is
    dropped (SOCKET_RCVBUFF), and drops + datagrams read == datagrams sent."""
    port = 5000 + pod.host_ifindex() % 1000
    sent = 300
    reader = pod.run(["python3", "-u", "-c", "import socket, sys\n"
                      "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n"
                      f"s.bind(('{pod.pod_ip}', {port})); print('ready')\n"
                      "sys.stdin.readline(); s.setblocking(False); n = 0\n"
                      "while True:\n"
                      "    try: s.recv(2048); n += 1\n"
                      "    except BlockingIOError: break\n"
                      "print(n)"],
                     stdin=-1, stdout=-1, text=True)
    assert reader.stdout.readline().strip() == "ready"
    m0 = exporter.metrics()
    host_sends_udp(pod, port, sent, size=1000)
    time.sleep(0.2)
    reader.stdin.write("go\n")
    reader.stdin.flush()
    read = int(reader.stdout.readline())
    reader.wait(10)
    m1 = exporter.metrics()
    dropped = (drops(m1, pod, "receive", "SOCKET_RCVBUFF")
               - drops(m0, pod, "receive", "SOCKET_RCVBUFF"))
    assert 0 < read < sent
    assert dropped + read == sent, (dropped, read)


def test_a_quiet_pod_has_no_drops(factory, exporter, pod):
    quiet = factory.create()
    # (No ping here: iputils ping reads replies on a raw socket, and the kernel also hands
    # each echo reply to the ICMP "ping socket" lookup, which finds none and drops it as
    # NO_SOCKET: one real, counted receive drop per reply.)
    host_sends_udp(pod, 9, 1)
    pod_sends_udp(pod, closed_udp_port(pod.host_ip), 3)
    assert drops(exporter.metrics(), quiet) == 0


def test_labels_and_directions(exporter, pod):
    series = exporter.metrics().series(DROPS, pod_uid=pod.uid)
    assert series
    for labels in series:
        assert set(labels) == set(names.NET_DROP_LABELS)
        assert labels["direction"] in ("receive", "transmit")
        assert labels["namespace"] == "" and labels["pod"] == ""


def test_reason_names_are_the_kernels():
    """Names come from BTF's enum skb_drop_reason; the tracepoint's own table agrees."""
    text = open(FORMAT).read()
    table = text[text.index("__print_symbolic(REC->reason"):]
    fmt = {int(v): n for v, n in re.findall(r'\{\s*(\d+),\s*"(\w+)"\s*\}', table)}
    namer = ReasonNamer()
    assert len(fmt) > 50
    assert {v: namer(v) for v in fmt} == fmt
    assert namer(0x20005) in ("OPENVSWITCH_5", "SUBSYS2_5")


def test_drops_off_loads_no_program(pods):
    off = ("--syscalls", "off", "--exec", "off", "--tcp", "off", "--peers", "off")
    proc = run_exporter(pods, *off, "--drops", "off")
    try:
        assert not {BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_RAW_TRACEPOINT} & set(
            prog_types(proc.proc.pid))
        assert not proc.metrics().series(names.SCRAPE_COLLECTOR_SUCCESS, collector="drops")
    finally:
        assert proc.stop() == 0
    proc = run_exporter(pods, *off, "--drops", "on")
    try:
        assert prog_types(proc.proc.pid).count(BPF_PROG_TYPE_RAW_TRACEPOINT) == 1  # kfree_skb
        assert proc.metrics().value(names.SCRAPE_COLLECTOR_SUCCESS, collector="drops") == 1
    finally:
        assert proc.stop() == 0


def test_reason_names_from_libbpf_match_the_kernel_btf_parsed_here():
    """The loader reads the two enums through libbpf's BTF parser (fast, then freed);
    exporter/btf.py's own parser reads the same values from /sys/kernel/btf/vmlinux."""
    from exporter import btf
    for name in ("skb_drop_reason", "skb_drop_reason_subsys"):
        with open(btf.VMLINUX, "rb") as f:
            here = btf.BTF(f.read(), only_enums=frozenset([name])).enum(name)
        assert btf._libbpf_enums([name], btf.VMLINUX)[name] == here
        assert btf.vmlinux_enums(name).enum(name) == here

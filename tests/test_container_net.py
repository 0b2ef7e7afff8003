"""Per-container network bytes and packets (cgroup_skb programs linked to the kubepods
root), from known UDP traffic of two containers of one real test pod, with the real
exporter process. Also how the figures relate to the pod's veth counters."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import threading

import pytest

from exporter import names
from conftest import run_exporter
from test_exec import prog_types
from test_network import wait_for

IP4, UDP, ETH = 20, 8, 14
RX_BYTES = names.CONTAINER_NET_RECEIVE_BYTES + "_total"
TX_BYTES = names.CONTAINER_NET_TRANSMIT_BYTES + "_total"
RX_PACKETS = names.CONTAINER_NET_RECEIVE_PACKETS + "_total"
TX_PACKETS = names.CONTAINER_NET_TRANSMIT_PACKETS + "_total"
BPF_PROG_TYPE_CGROUP_SKB = 8
BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS = 0, 1


def attached_programs(cgroup: str, attach_type: int) -> int:
    """Programs attached to a cgroup for one hook (BPF_PROG_QUERY through libbpf)."""
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags, count = ctypes.c_uint32(0), ctypes.c_uint32(64)
        ids = (ctypes.c_uint32 * 64)()
        rc = lib.bpf_prog_query(fd, attach_type, 0, ctypes.byref(flags), ids,
                                ctypes.byref(count))
        assert rc == 0, os.strerror(ctypes.get_errno())
        return count.value
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def exporter(factory):
    proc = run_exporter(factory, "--container-network", "on")
    yield proc
    assert proc.stop() == 0, proc.output()


@pytest.fixture(scope="module")
def pod(factory, exporter):
    p = factory.create(containers=("app", "sidecar"))
    p.exec(["ping", "-c", "1", "-W", "2", p.host_ip])  # ARP resolved before measuring
    return p


def snapshot(exporter, pod):
    m = exporter.metrics()
    out = {}
    for c in pod.containers.values():
        out[c.name] = {k: m.value(name, container_id=c.id) for k, name in
                       (("rx_bytes", RX_BYTES), ("tx_bytes", TX_BYTES),
                        ("rx_packets", RX_PACKETS), ("tx_packets", TX_PACKETS))}
    return out, pod.host_stats()


def deltas(before, after):
    (c0, k0), (c1, k1) = before, after
    return ({c: {k: c1[c][k] - c0[c][k] for k in c0[c]} for c in c0},
            {k: k1[k] - k0[k] for k in k0})


class UdpSink:
    """A host UDP socket that reads everything sent to it (no ICMP errors come back)."""

    def __init__(self, ip: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                self.sock.recv(65536)
                self.count += 1
            except OSError:
                pass

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def send_udp(pod, container: str, port: int, n: int, size: int) -> None:
    pod.exec(["python3", "-c", "import socket\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"for _ in range({n}): s.sendto(b'x' * {size}, ('{pod.host_ip}', {port}))"],
             container=container)


def test_each_container_counts_exactly_what_it_sent(exporter, pod):
    sink = UdpSink(pod.host_ip)
    try:
        before = snapshot(exporter, pod)
        send_udp(pod, "app", sink.port, 100, 200)
        send_udp(pod, "sidecar", sink.port, 50, 700)
        wait_for(lambda: sink.count == 150, what="the host to receive every datagram")
        c, veth = deltas(before, snapshot(exporter, pod))
    finally:
        sink.close()
    assert c["app"] == {"tx_packets": 100, "tx_bytes": 100 * (IP4 + UDP + 200),
                        "rx_packets": 0, "rx_bytes": 0}
    assert c["sidecar"] == {"tx_packets": 50, "tx_bytes": 50 * (IP4 + UDP + 700),
                            "rx_packets": 0, "rx_bytes": 0}
    # The veth saw the same datagrams as Ethernet frames: 14 more bytes each, nothing else.
    sent_packets = c["app"]["tx_packets"] + c["sidecar"]["tx_packets"]
    sent_bytes = c["app"]["tx_bytes"] + c["sidecar"]["tx_bytes"]
    assert veth["rx_packets"] == sent_packets
    assert veth["rx_bytes"] == sent_bytes + ETH * sent_packets


def test_each_container_counts_exactly_what_it_received(exporter, pod):
    readers, ports = {}, {"app": 6100, "sidecar": 6101}
    counts = {"app": (30, 100), "sidecar": (20, 300)}
    for name, port in ports.items():
        n = counts[name][0]
        readers[name] = pod.run(["python3", "-u", "-c", "import socket\n"
                                 "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                                 f"s.bind(('{pod.pod_ip}', {port})); print('ready')\n"
                                 f"for _ in range({n}): s.recv(2048)\n"
                                 "print('done')"], container=name, stdout=-1, text=True)
        assert readers[name].stdout.readline().strip() == "ready"
    before = snapshot(exporter, pod)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name, port in ports.items():
            n, size = counts[name]
            for _ in range(n):
                s.sendto(b"r" * size, (pod.pod_ip, port))
    for r in readers.values():
        assert r.stdout.readline().strip() == "done"
        r.wait(10)
    c, veth = deltas(before, snapshot(exporter, pod))
    for name, (n, size) in counts.items():
        assert c[name]["rx_packets"] == n and c[name]["rx_bytes"] == n * (IP4 + UDP + size)
        assert c[name]["tx_packets"] == 0
    assert veth["tx_packets"] == 50
    assert veth["tx_bytes"] == sum(c[x]["rx_bytes"] for x in c) + ETH * 50


def test_traffic_of_no_socket_is_not_a_containers(exporter, pod):
    """ICMP port unreachable replies come from the pod's kernel, not from a container's
    socket: the veth counts them, the containers do not."""
    before = snapshot(exporter, pod)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"?", (pod.pod_ip, 9))  # nothing listens on port 9 in the pod
    # the reply is made in softirq, maybe later on a busy machine: wait for both packets
    wait_for(lambda: all(deltas(before, snapshot(exporter, pod))[1][k] >= 1
                         for k in ("tx_packets", "rx_packets")), timeout=20,
             what="the datagram and the ICMP error on the veth")
    c, veth = deltas(before, snapshot(exporter, pod))
    assert veth["tx_packets"] == 1 and veth["rx_packets"] == 1  # datagram in, ICMP error out
    assert all(v == 0 for d in c.values() for v in d.values()), c


def test_a_new_pod_is_counted_from_its_first_packet(factory, exporter):
    late = factory.create()
    sink = UdpSink(late.host_ip)
    try:
        send_udp(late, "app", sink.port, 3, 10)  # right away: no exporter rescan needed
        wait_for(lambda: sink.count == 3, what="datagrams")
        m = exporter.metrics()
        assert m.value(TX_PACKETS, container_id=late.first_container.id) == 3
        assert m.value(TX_BYTES, container_id=late.first_container.id) == 3 * (IP4 + UDP + 10)
        assert m.series(TX_BYTES, container_id=late.first_container.id) == [
            {"namespace": "", "pod": "", "pod_uid": late.uid, "container": "",
             "container_id": late.first_container.id}]
    finally:
        sink.close()


def test_links_go_away_with_the_exporter_even_on_sigkill(pods):
    root = str(pods.kubepods)
    base = (attached_programs(root, BPF_CGROUP_INET_INGRESS),
            attached_programs(root, BPF_CGROUP_INET_EGRESS))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = run_exporter(pods, "--container-network", "on", "--dns", "off", "--peers", "off")
        try:
            assert prog_types(proc.proc.pid).count(BPF_PROG_TYPE_CGROUP_SKB) == 2
            assert (attached_programs(root, BPF_CGROUP_INET_INGRESS),
                    attached_programs(root, BPF_CGROUP_INET_EGRESS)) == (base[0] + 1,
                                                                         base[1] + 1)
        finally:
            proc.stop(sig)
        wait_for(lambda: (attached_programs(root, BPF_CGROUP_INET_INGRESS),
                          attached_programs(root, BPF_CGROUP_INET_EGRESS)) == base,
                 what=f"the links to be gone after {sig.name}")


def test_container_network_off_by_default_loads_no_program(pods):
    proc = run_exporter(pods, "--dns", "off", "--peers", "off")  # both on by default, cgroup_skb too
    try:
        assert BPF_PROG_TYPE_CGROUP_SKB not in prog_types(proc.proc.pid)
        assert attached_programs(str(pods.kubepods), BPF_CGROUP_INET_EGRESS) == 0
        m = proc.metrics()
        assert not m.series(names.SCRAPE_COLLECTOR_SUCCESS, collector="container_network")
    finally:
        assert proc.stop() == 0


def test_every_feature_on_gives_one_sample_per_series(exporter, pod):
    """This module's exporter runs every collector (the defaults plus container network):
    families several collectors share (map self metrics, series cap) must still hold each
    series once, or Prometheus rejects the whole scrape."""
    pod.exec(["sh", "-c", "true"], container="app")
    m = exporter.metrics()
    seen = set()
    for name, samples in m.samples.items():
        for labels, _ in samples:
            key = (name, tuple(sorted(labels.items())))
            assert key not in seen, key
            seen.add(key)
    for collector in ("network", "syscalls", "exec", "tcp", "drops", "container_network"):
        assert m.value(names.SCRAPE_COLLECTOR_SUCCESS, collector=collector) == 1, collector

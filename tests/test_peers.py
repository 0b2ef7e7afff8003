"""Traffic and TCP connects per pod by peer (bpf/peers.bpf.c, collectors/peers.py), with the
real exporter, real test pods and real traffic between them.

Pod "a" talks to pod "b" through the host (forwarding on their host veths only, as in
test_dns), over UDP (datagrams of known sizes, each answered by one of 50 bytes: exact
bytes and packets in both directions, IPv4 and IPv6) and TCP (established and refused
connects: exact counts). Without an API server here, the pods' addresses get their names
from --peer-cidrs; the Kubernetes identities (workloads, Services) are in
test_peers_kube.py.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading

import pytest

from exporter import names
from conftest import run_exporter
from test_container_net import BPF_PROG_TYPE_CGROUP_SKB
from test_degrade import refusing_objects, warnings_about
from test_degrade import exporter as degraded_exporter
from test_dns import attached, route_between
from test_exec import prog_types
from test_network import wait_for

BYTES, PACKETS = names.PEER_BYTES + "_total", names.PEER_PACKETS + "_total"
CONNECTS = names.PEER_TCP_CONNECTS + "_total"
FAILURES = names.PEER_TCP_CONNECT_FAILURES + "_total"
CAP = names.SERIES_CAP_DROPPED + "_total"
PYTHON = "/usr/bin/python3"  # by path: one process (a python3 on PATH may be a shim)
UDP_PORT, TCP_PORT, CLOSED_PORT = 7100, 7000, 7001
REPLY = 50                   # bytes of the server's answer to each datagram
V4, V6 = 20 + 8, 40 + 8      # IP + UDP header bytes

# The peer: a UDP server answering every datagram with REPLY bytes (v4 and v6 sockets), and
# a TCP server that reads each connection to its end.
SERVER = f"""
import socket, threading
def udp(family, address):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((address, {UDP_PORT}))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(b"r" * {REPLY}, peer)
def tcp():
    s = socket.socket(socket.AF_INET6)  # dual-stack: IPv4 clients too
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", {TCP_PORT}))
    s.listen(64)
    while True:
        c, _ = s.accept()
        while c.recv(65536):
            pass
        c.close()
for target, args in ((udp, (socket.AF_INET, "0.0.0.0")), (udp, (socket.AF_INET6, "::")),
                     (tcp, ())):
    threading.Thread(target=target, args=args, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# argv[1]: JSON [[op, ...], ...]; prints JSON results. ("udp", address, count, size): that
# many datagrams, each answered; ("udp_only", address, port, count, size): sent, no answer
# awaited; ("tcp", address, port, count): connects, 100 bytes each, "ok" or "refused".
CLIENT = f"""
import json, socket, sys
out = []
for op, address, *args in json.loads(sys.argv[1]):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    if op == "udp":
        count, size = args
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for _ in range(count):
                s.sendto(b"q" * size, (address, {UDP_PORT}))
                out.append(len(s.recv(65535)))
    elif op == "udp_only":
        port, count, size = args
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            for _ in range(count):
                s.sendto(b"q" * size, (address, port))
        out.append(count)
    elif op == "tcp":
        port, count = args
        for _ in range(count):
            try:
                with socket.create_connection((address, port), timeout=5) as s:
                    s.sendall(b"t" * 100)
                    s.shutdown(socket.SHUT_WR)
                    s.recv(1)
                out.append("ok")
            except ConnectionRefusedError:
                out.append("refused")
print(json.dumps(out))
"""


def run(pod, ops) -> list:
    out = pod.exec([PYTHON, "-c", CLIENT, json.dumps(ops)])
    return json.loads(out.stdout)


def peer_values(exporter, pod, metric=BYTES) -> dict[tuple, float]:
    """(direction or "", peer_network or peer_workload...) -> the pod's value."""
    out = {}
    for lab, v in exporter.metrics().samples.get(metric, []):
        if lab["pod_uid"] == pod.uid:
            peer = tuple(lab[k] for k in names.PEER_ID_LABELS)
            out[(lab.get("direction", ""), peer)] = v
    return out


def net(name: str) -> tuple:
    return ("", "", "", name)


def delta(before: dict, after: dict) -> dict:
    out = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    return {k: v for k, v in out.items() if v}


def start_server(pod):
    proc = pod.run([PYTHON, "-u", "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"


@pytest.fixture(scope="module")
def pods(factory):
    a = factory.create(ipv6=True, name="peer-a")
    b = factory.create(ipv6=True, name="peer-b")
    route_between(a, b)
    start_server(b)
    start_server(a)
    return a, b


@pytest.fixture(scope="module")
def exporter(factory, pods):
    a, b = pods
    cidrs = (f"anet={a.pod_ip}/32,{a.pod_ip6}/128;bnet={b.pod_ip}/32;"
             f"bnet6={b.pod_ip6}/128")
    proc = run_exporter(factory, "--peer-cidrs", cidrs)
    # neighbours resolved, both families, before anything is measured
    assert run(a, [["udp", b.pod_ip, 1, 1], ["udp", b.pod_ip6, 1, 1]]) == [REPLY, REPLY]
    yield proc
    assert proc.stop() == 0, proc.output()


def test_udp_bytes_and_packets_per_peer_are_exact_both_ways(exporter, pods):
    a, b = pods
    a0, b0 = peer_values(exporter, a), peer_values(exporter, b)
    pa0, pb0 = peer_values(exporter, a, PACKETS), peer_values(exporter, b, PACKETS)
    assert run(a, [["udp", b.pod_ip, 5, 100], ["udp", b.pod_ip6, 3, 200]]) == [REPLY] * 8
    assert delta(a0, peer_values(exporter, a)) == {
        ("transmit", net("bnet")): 5 * (V4 + 100), ("receive", net("bnet")): 5 * (V4 + REPLY),
        ("transmit", net("bnet6")): 3 * (V6 + 200), ("receive", net("bnet6")): 3 * (V6 + REPLY)}
    assert delta(pa0, peer_values(exporter, a, PACKETS)) == {
        ("transmit", net("bnet")): 5, ("receive", net("bnet")): 5,
        ("transmit", net("bnet6")): 3, ("receive", net("bnet6")): 3}
    # the other end sees the same datagrams, the other way round, from one peer (both of
    # a's addresses are "anet")
    assert delta(b0, peer_values(exporter, b)) == {
        ("receive", net("anet")): 5 * (V4 + 100) + 3 * (V6 + 200),
        ("transmit", net("anet")): 5 * (V4 + REPLY) + 3 * (V6 + REPLY)}
    assert delta(pb0, peer_values(exporter, b, PACKETS)) == {
        ("receive", net("anet")): 8, ("transmit", net("anet")): 8}


def test_tcp_connects_and_failures_per_peer_are_exact(exporter, pods):
    a, b = pods
    c0, f0 = peer_values(exporter, a, CONNECTS), peer_values(exporter, a, FAILURES)
    assert run(a, [["tcp", b.pod_ip, TCP_PORT, 3], ["tcp", b.pod_ip, CLOSED_PORT, 2],
                   ["tcp", b.pod_ip6, TCP_PORT, 1]]) == ["ok"] * 3 + ["refused"] * 2 + ["ok"]
    assert delta(c0, peer_values(exporter, a, CONNECTS)) == {("", net("bnet")): 3,
                                                              ("", net("bnet6")): 1}
    assert delta(f0, peer_values(exporter, a, FAILURES)) == {("", net("bnet")): 2}
    # b only accepted: no connects of its own
    assert peer_values(exporter, b, CONNECTS) == {}


def test_unnamed_addresses_are_world_and_loopback_is_no_peer(exporter, pods, factory):
    a, b = pods
    c = factory.create(ipv6=True, name="peer-c")  # an address --peer-cidrs does not name
    route_between(c, b)
    start_server(c)
    assert run(c, [["udp", b.pod_ip, 1, 1]]) == [REPLY]  # neighbours
    b0, c0 = peer_values(exporter, b), peer_values(exporter, c)
    assert run(c, [["udp", b.pod_ip, 2, 300], ["udp", "127.0.0.1", 4, 10]]) == [REPLY] * 6
    assert delta(c0, peer_values(exporter, c)) == {
        ("transmit", net("bnet")): 2 * (V4 + 300), ("receive", net("bnet")): 2 * (V4 + REPLY)}
    assert delta(b0, peer_values(exporter, b)) == {
        ("receive", net(names.PEER_WORLD)): 2 * (V4 + 300),
        ("transmit", net(names.PEER_WORLD)): 2 * (V4 + REPLY)}


def test_the_node_is_a_peer(exporter, pods):
    """A connect to the node's own address (here the host side of the pod's veth)."""
    a, _ = pods
    server = socket.socket()
    server.bind((a.host_ip, 0))
    server.listen(8)
    port = server.getsockname()[1]

    def accept():
        for _ in range(2):
            conn, _ = server.accept()
            while conn.recv(65536):
                pass
            conn.close()
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        c0 = peer_values(exporter, a, CONNECTS)
        assert run(a, [["tcp", a.host_ip, port, 2]]) == ["ok", "ok"]
        t.join(10)
        assert delta(c0, peer_values(exporter, a, CONNECTS)) == {("", net(names.PEER_NODE)): 2}
    finally:
        server.close()


# -- bounded: top N per pod, the node-wide cap ------------------------------------------


@pytest.fixture(scope="module")
def many(factory):
    """A pod with four more addresses, each routed from the host, and two senders."""
    sink = factory.create(ipv6=True, name="peer-sink")
    extra = [f"10.223.{sink.pod_ip.split('.')[2]}.{i}" for i in (1, 2, 3, 4)]
    for address in extra:
        subprocess.run(["ip", "-n", sink.netns, "addr", "add", f"{address}/32", "dev", "eth0"],
                       check=True)
        subprocess.run(["ip", "route", "replace", f"{address}/32", "via", sink.pod_ip],
                       check=True)
    start_server(sink)
    senders = [factory.create(ipv6=True, name=f"peer-s{i}") for i in (1, 2)]
    for s in senders:
        route_between(s, sink)
    yield sink, extra, senders
    for address in extra:
        subprocess.run(["ip", "route", "del", f"{address}/32"], check=False)


def test_top_n_per_pod_and_the_series_cap(factory, many):
    """--peer-top 2, --peer-series-cap 4: after the warm-up each sender names "sink" and
    the sink names "world" (the senders' addresses have no name): 3 named node-wide. s1
    then sends to n1..n4 with falling sizes: n1 takes its second slot (4 named: the cap),
    n2 has more than twice sink's bytes and replaces it, n3 and n4 are "other". s2's n3
    would take its second slot, but the cap is reached: "other", and the cap's counter
    says so."""
    sink, extra, (s1, s2) = many
    cidrs = ";".join([f"sink={sink.pod_ip}/32"] +
                     [f"n{i}={address}/32" for i, address in enumerate(extra, 1)])
    proc = run_exporter(factory, "--peer-cidrs", cidrs, "--peer-top", "2",
                        "--peer-series-cap", "4")
    try:
        for s in (s1, s2):  # neighbours
            assert run(s, [["udp", sink.pod_ip, 1, 1]]) == [REPLY]
        assert {k[1] for k in peer_values(proc, s1)} == {net("sink")}
        assert run(s1, [["udp_only", a, 9999, 1, size] for a, size in
                        zip(extra, (4000, 3000, 2000, 1000))]) == [1] * 4
        assert peer_values(proc, s1) == {("transmit", net("n1")): V4 + 4000,
                                         ("transmit", net("n2")): V4 + 3000,
                                         ("transmit", net("other")): 2 * V4 + 3000}
        cap0 = proc.metrics().value(CAP, collector="peers")
        assert run(s2, [["udp_only", extra[2], 9999, 1, 500]]) == [1]
        assert peer_values(proc, s2) == {("transmit", net("sink")): V4 + 1,
                                         ("receive", net("sink")): V4 + REPLY,
                                         ("transmit", net("other")): V4 + 500}
        assert proc.metrics().value(CAP, collector="peers") > cap0
    finally:
        assert proc.stop() == 0, proc.output()


# -- off, exit, refusal ------------------------------------------------------------------


def test_peers_off_loads_no_program(factory):
    root = str(factory.kubepods)
    base = attached(root)
    proc = run_exporter(factory, "--peers", "off", "--dns", "off")
    try:
        assert BPF_PROG_TYPE_CGROUP_SKB not in prog_types(proc.proc.pid)
        assert attached(root) == base
        m = proc.metrics()
        assert not m.series(BYTES) and not m.series(CONNECTS)
        assert not m.series(names.SCRAPE_COLLECTOR_SUCCESS, collector="peers")
        assert not m.series(names.BPF_MAP_ENTRIES, map="peer_addrs")
    finally:
        assert proc.stop() == 0


def test_links_go_away_with_the_exporter_even_on_sigkill(factory):
    root = str(factory.kubepods)
    base = attached(root)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = run_exporter(factory, "--dns", "off")  # peers on by default
        try:
            assert prog_types(proc.proc.pid).count(BPF_PROG_TYPE_CGROUP_SKB) == 2
            assert attached(root) == (base[0] + 1, base[1] + 1)
            assert proc.metrics().value(names.COLLECTOR_UP, collector="peers") == 1
        finally:
            proc.stop(sig)
        wait_for(lambda: attached(root) == base, what=f"the links to be gone after {sig.name}")


def test_refused_peers_program_turns_off_peers_alone(factory, tmp_path):
    objects = refusing_objects(tmp_path, "peers.bpf.c")
    proc = degraded_exporter(factory, objects).start(wait_ready=180)
    try:
        status, body = proc.get("/readyz")
        assert status == 200, body
        assert "degraded: collectors: off: peers (verifier refused)" in body, body
        m = proc.metrics()
        assert m.series(names.COLLECTOR_DISABLED) == [
            {"collector": "peers", "reason": "verifier refused"}]
        for other in ("network", "syscalls", "exec", "tcp", "dns", "drops"):
            assert m.value(names.COLLECTOR_UP, collector=other) == 1, other
        assert not m.series(BYTES)
        lines = warnings_about(proc.output(), "peers")
        assert len(lines) == 1 and "(--peers off silences this)" in lines[0], proc.output()
        assert "refused_read of peers.bpf.o" in lines[0], lines[0]
    finally:
        assert proc.stop() == 0, proc.output()

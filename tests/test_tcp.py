"""Per-pod TCP connect latency, connect failures and retransmits, from real connects and
transfers of real test pods, with the real exporter process.

This kernel has no netem (CONFIG_NET_SCH_NETEM is off), so impairments come from a small
TC filter put in front of podsnoop's on the pod's host veth (bpf/testing/impair.c): it
holds SYN-ACKs back for a set time (a delay line: the filter hands the frame to the test,
which sends it unchanged 50 ms later), drops the first SYN of a connect (the connect then
waits for the kernel's SYN retransmission, 1 s), or drops a share of the data segments
(loss, so the pod's TCP retransmits).
"""
from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time

import pytest
from pyroute2 import IPRoute

from exporter import bpfload, names
from exporter.collectors.tcp import CONNECT_BUCKETS
from exporter.tc import TC_H_EGRESS, TC_H_INGRESS
from conftest import run_exporter
from test_exec import BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_PROG_TYPE_TRACEPOINT, prog_types

HIST = names.TCP_CONNECT_DURATION
FAILURES = names.TCP_CONNECT_FAILURES + "_total"
RETRANSMITS = names.TCP_RETRANSMITS + "_total"
IMPAIR_PRIO = 1          # in front of podsnoop's filter (50000)
IMPAIR_HANDLE = 0x1A1
SOL_PACKET, PACKET_QDISC_BYPASS = 263, 20


class Impairment:
    """bpf/testing/impair.c on the host veth's ingress hook (packets leaving the pod)."""

    def __init__(self):
        self.bpf = bpfload.compile_program("testing/impair", [])
        self.fn = self.bpf.load_func("impair", self.bpf.SCHED_CLS)
        self.cfg = self.bpf["impair_cfg"]
        self.attached: list[tuple[int, int]] = []
        self._stoppers: list = []

    def attach(self, pod, hook: int = TC_H_INGRESS) -> None:
        with IPRoute() as ipr:
            idx = pod.host_ifindex()
            try:
                ipr.tc("add", "clsact", idx)
            except Exception:  # already there (podsnoop's)
                pass
            ipr.tc("add-filter", "bpf", idx, IMPAIR_HANDLE, fd=self.fn.fd, name="impair",
                   parent=hook, classid=1, direct_action=True, prio=IMPAIR_PRIO)
        self.attached.append((idx, hook))

    def set(self, proto: int = 0, port: int = 0, syn_drops: int = 0, loss_pct: int = 0,
            drop_all: int = 0, delay_sport: int = 0) -> None:
        v = self.cfg.Leaf(proto, port, syn_drops, loss_pct, drop_all, delay_sport)
        self.cfg[self.cfg.Key(0)] = v

    def delay_synacks(self, pod, sport: int, seconds: float) -> None:
        """A delay line on the host veth's egress (into the pod): each SYN-ACK from `sport`
        goes to userspace instead, and is sent `seconds` later, unchanged, by an AF_PACKET
        socket with PACKET_QDISC_BYPASS (so it does not pass TC again). netem's delay, for
        one kind of packet."""
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        out.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        out.bind((pod.host_if, 0))
        self.delayed = 0

        def on_frame(_cpu, data, size):
            raw = ctypes.string_at(data, size)
            (length,) = struct.unpack_from("I", raw)
            frame = with_tcp_checksum(raw[4:4 + length])
            self.delayed += 1
            threading.Timer(seconds, out.send, (frame,)).start()

        self.bpf["delayed_frames"].open_perf_buffer(on_frame)
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                self.bpf.perf_buffer_poll(50)

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        self.attach(pod, TC_H_EGRESS)
        self.set(delay_sport=sport)
        self._stoppers.append(lambda: (stop.set(), t.join(2), out.close()))

    def dropped(self) -> int:
        t = self.bpf["impair_dropped"]
        return t[t.Key(0)].value

    def close(self) -> None:
        for stop in self._stoppers:
            stop()
        with IPRoute() as ipr:
            for idx, hook in self.attached:
                try:
                    ipr.tc("del-filter", "bpf", idx, IMPAIR_HANDLE, parent=hook,
                           prio=IMPAIR_PRIO)
                except Exception:  # the pod (and its veth) is gone already
                    pass
        self.bpf.cleanup()


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def with_tcp_checksum(frame: bytes) -> bytes:
    """An Ethernet/IPv4/TCP frame with its TCP checksum filled in. A locally generated
    segment leaves the stack with only the pseudo-header sum in place (checksum offload, the
    veth tells the receiver it is fine); sent again as raw bytes, it needs the real one."""
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack_from("!H", ip, 2)[0]
    seg = bytearray(ip[ihl:total])
    seg[16:18] = b"\0\0"
    pseudo = ip[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(seg))
    csum = ~_fold(_sum16(pseudo) + _sum16(bytes(seg))) & 0xFFFF
    seg[16:18] = struct.pack("!H", csum)
    return frame[:14] + ip[:ihl] + bytes(seg) + frame[14 + total:]


@pytest.fixture
def impair(kernel):
    imp = Impairment()
    yield imp
    imp.close()


@pytest.fixture(scope="module")
def pod(factory, exporter):
    p = factory.create()
    p.exec(["ping", "-c", "1", "-W", "2", p.host_ip])  # resolve ARP before measuring
    return p


@pytest.fixture
def server(pod):
    """A listening socket on the host side of the pod's veth."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((pod.host_ip, 0))
        s.listen(64)
        yield s.getsockname()[1]


def connect(pod, port: int, n: int = 1) -> None:
    pod.exec(["python3", "-c", "import socket\n"
              f"for _ in range({n}): socket.create_connection(('{pod.host_ip}', {port}), "
              "timeout=10).close()"])


def timed_connects(pod, port: int, n: int = 1) -> list[float]:
    """n connects from the pod, each timed by the pod's process around its connect()
    (CLOCK_MONOTONIC, the clock the BPF program reads too)."""
    r = pod.exec(["python3", "-c", "import socket, time\n"
                  f"for _ in range({n}):\n"
                  "    t = time.monotonic()\n"
                  f"    s = socket.create_connection(('{pod.host_ip}', {port}), timeout=10)\n"
                  "    print(time.monotonic() - t)\n"
                  "    s.close()"])
    return [float(x) for x in r.stdout.split()]


def assert_within_wall_times(d: dict, walls: list[float]) -> None:
    """The kernel times each connect from SYN_SENT to ESTABLISHED, both inside the pod's
    connect() call, so each observation is at most that call's wall time: every bucket holds
    at least the connects whose wall time fits in it, and the _sum is at most theirs. A
    relative order, not a wall-clock threshold: true on a busy machine too, and it still
    fails when the kernel measures wrong (units, clock, a missed ESTABLISHED)."""
    assert d["count"] == len(walls)
    for le in (*CONNECT_BUCKETS, float("inf")):
        fit = sum(1 for w in walls if w <= le)
        assert d[float(le)] >= fit, (le, d, walls)
    assert 0 < d["sum"] <= sum(walls), (d["sum"], walls)


def histogram(m, pod) -> dict:
    """le -> cumulative count, plus _count and _sum, of one pod."""
    out = {float(lab["le"]): v for lab, v in m.samples.get(HIST + "_bucket", [])
           if lab["pod_uid"] == pod.uid}
    out["count"] = m.value(HIST + "_count", pod_uid=pod.uid)
    out["sum"] = m.value(HIST + "_sum", pod_uid=pod.uid)
    return out


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def test_fast_connects_are_counted_in_low_buckets(exporter, pod, server):
    """Each connect lands in a bucket no higher than its own connect() call's wall time
    (measured in the pod): across one veth that is the lowest buckets on a quiet machine,
    and still a true statement on a busy one."""
    before = histogram(exporter.metrics(), pod)
    walls = timed_connects(pod, server, 20)
    d = delta(histogram(exporter.metrics(), pod), before)
    assert_within_wall_times(d, walls)
    labels = exporter.metrics().series(HIST + "_count", pod_uid=pod.uid)
    assert labels == [{"namespace": "", "pod": "", "pod_uid": pod.uid}]
    print(f"\n20 connects: kernel mean {d['sum'] / 20 * 1e3:.3f} ms, connect() calls mean "
          f"{sum(walls) / 20 * 1e3:.3f} ms, {d[0.01]:.0f} in the <= 10 ms bucket")


def test_injected_50ms_delay_lands_in_the_right_bucket(exporter, pod, server, impair):
    """Each SYN-ACK reaches the pod 50 ms late (a delay line on the host veth): every
    connect must be above 50 ms and in (50 ms, 100 ms] unless its own connect() call took
    longer, and the exact _sum says by how much."""
    impair.delay_synacks(pod, server, 0.050)
    before = histogram(exporter.metrics(), pod)
    walls = timed_connects(pod, server, 5)
    d = delta(histogram(exporter.metrics(), pod), before)
    assert impair.delayed == 5
    # none faster than the injected delay; each no slower than its connect() call, so all
    # in (50 ms, 100 ms] whenever the calls took under 100 ms (the machine's load can only
    # make the calls, and with them the allowed buckets, longer)
    assert d[0.05] == 0, d
    assert_within_wall_times(d, walls)
    mean = d["sum"] / 5
    assert 0.050 <= mean, mean
    print(f"\nSYN-ACK delayed 50 ms: mean connect latency measured {mean * 1000:.2f} ms "
          f"over 5 connects")


def test_lost_syn_lands_in_the_right_bucket(exporter, pod, server, impair):
    """The first SYN is dropped: the connect completes on the SYN retransmission, after the
    kernel's initial RTO of 1 s. That observation must be above 1 s, and in (1 s, 2.5 s]
    unless the connect() call itself took longer."""
    impair.attach(pod)
    impair.set(proto=socket.IPPROTO_TCP, port=server, syn_drops=1)
    before = histogram(exporter.metrics(), pod)
    (took,) = timed_connects(pod, server)
    d = delta(histogram(exporter.metrics(), pod), before)
    assert impair.dropped() == 1
    assert d[1.0] == 0, d          # not before the retransmission timer
    assert_within_wall_times(d, [took])
    assert 1.0 <= d["sum"] <= took, (d["sum"], took)
    print(f"\nconnect with the first SYN dropped: measured {d['sum'] * 1000:.1f} ms "
          f"(injected: initial RTO 1000 ms), connect() call {took * 1000:.1f} ms")


def test_connect_to_a_closed_port_is_one_failure(exporter, pod, server):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind((pod.host_ip, 0))
        closed = s.getsockname()[1]
    m0 = exporter.metrics()
    r = pod.exec(["python3", "-c", "import socket\ntry:\n"
                  f"    socket.create_connection(('{pod.host_ip}', {closed}), timeout=5)\n"
                  "except ConnectionRefusedError: print('refused')"])
    assert r.stdout.strip() == "refused"
    m1 = exporter.metrics()
    assert m1.value(FAILURES, pod_uid=pod.uid) - m0.value(FAILURES, pod_uid=pod.uid) == 1
    assert histogram(m1, pod)["count"] == histogram(m0, pod)["count"]
    # A successful connect is not a failure.
    connect(pod, server, 3)
    assert exporter.metrics().value(FAILURES, pod_uid=pod.uid) == m1.value(FAILURES,
                                                                             pod_uid=pod.uid)


def _sink(port_holder: list, done: threading.Event, host_ip: str) -> threading.Thread:
    srv = socket.socket()
    srv.bind((host_ip, 0))
    srv.listen(4)
    port_holder.append(srv.getsockname()[1])

    def run():
        with srv:
            conn, _ = srv.accept()
            with conn:
                while conn.recv(1 << 16):
                    pass
        done.set()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def send(pod, port: int, nbytes: int) -> None:
    pod.exec(["python3", "-c", "import socket\n"
              f"s = socket.create_connection(('{pod.host_ip}', {port}))\n"
              f"s.sendall(b'z' * {nbytes}); s.close()"], timeout=120)


def _netstat(pod, path: str, prefix: str, field: str) -> int:
    lines = [ln.split() for ln in pod.exec(["cat", path]).stdout.splitlines()
             if ln.startswith(prefix)]
    return int(lines[1][lines[0].index(field)])


def kernel_retransmits(pod) -> int:
    """Retransmitted TCP segments that went out, by the pod network namespace's own counters:
    RetransSegs (counted before the send) less TCPRetransFail (the sends that failed)."""
    return (_netstat(pod, "/proc/net/snmp", "Tcp:", "RetransSegs")
            - _netstat(pod, "/proc/net/netstat", "TcpExt:", "TCPRetransFail"))


def test_loss_causes_retransmits_of_that_pod_only(factory, exporter, pod, impair):
    other = factory.create()
    other.exec(["ping", "-c", "1", "-W", "2", other.host_ip])
    k0 = {p.uid: kernel_retransmits(p) for p in (pod, other)}
    m0 = exporter.metrics()
    ports, done = [], threading.Event()
    t = _sink(ports, done, pod.host_ip)
    impair.attach(pod)
    impair.set(proto=socket.IPPROTO_TCP, port=ports[0], loss_pct=30)
    send(pod, ports[0], 2 << 20)
    t.join(60)
    assert done.is_set()
    ports2, done2 = [], threading.Event()
    t2 = _sink(ports2, done2, other.host_ip)
    send(other, ports2[0], 2 << 20)
    t2.join(60)
    assert done2.is_set()
    lost = impair.dropped()
    assert lost > 0

    def exported_and_kernel():
        m = exporter.metrics()
        return [(m.value(RETRANSMITS, pod_uid=p.uid) - m0.value(RETRANSMITS, pod_uid=p.uid),
                 kernel_retransmits(p) - k0[p.uid]) for p in (pod, other)]
    # Segments, as the kernel counts them in each pod's network namespace (the only TCP
    # senders there): a retransmitted GSO skb counts each of its segments. The clean pod may
    # retransmit too (a tail loss probe on a busy machine is one), but exactly what its own
    # namespace recorded, nothing of the lossy pod's. Both figures are read again until
    # they agree, as a closing socket may still retransmit after the receiver is done.
    deadline = time.monotonic() + 10
    while (figures := exported_and_kernel()) and any(e != k for e, k in figures) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    (got, kernel), (other_got, other_kernel) = figures
    assert got == kernel and other_got == other_kernel, figures
    # Every lost segment is sent again at least once (a retransmission can be lost too, and
    # SACK-based recovery resends more).
    assert got >= lost, (got, lost)
    print(f"\n30% loss on 2 MiB: {lost} segments dropped, {got:.0f} segments retransmitted "
          f"= the pod netns' RetransSegs - TCPRetransFail; clean pod {other_got:.0f}")


def test_retransmits_of_an_accepted_socket_count_for_the_pod(exporter, pod, impair):
    """A server in the pod (accepted socket, no connect() in the pod) sends into loss."""
    port = 18000 + pod.host_ifindex() % 1000
    m0 = exporter.metrics()
    srv = pod.run(["python3", "-c", "import socket\n"
                   f"s = socket.socket(); s.bind(('{pod.pod_ip}', {port})); s.listen(1)\n"
                   "c, _ = s.accept(); c.sendall(b'q' * (2 << 20)); c.close()"])
    impair.attach(pod)
    # Impair the pod's outgoing data: destination is the host's ephemeral port, so match by
    # protocol only (port 0 = any) while this transfer is the pod's only TCP traffic.
    impair.set(proto=socket.IPPROTO_TCP, loss_pct=30)
    received = 0
    for _ in range(50):
        try:
            c = socket.create_connection((pod.pod_ip, port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    # Under 30% loss one segment lost several times in a row backs the RTO off to seconds
    # (0.2, 0.4, ... 6.4 s): a bound for the whole transfer, not for one recv.
    c.settimeout(120)
    with c:
        while chunk := c.recv(1 << 16):
            received += len(chunk)
    srv.wait(30)
    assert received == 2 << 20
    got = exporter.metrics().value(RETRANSMITS, pod_uid=pod.uid) - m0.value(RETRANSMITS,
                                                                              pod_uid=pod.uid)
    assert impair.dropped() > 0 and got > 0


def test_tcp_off_loads_no_program(pods):
    off = ("--syscalls", "off", "--exec", "off", "--drops", "off", "--peers", "off")
    proc = run_exporter(pods, *off, "--tcp", "off")
    try:
        types = prog_types(proc.proc.pid)
        assert BPF_PROG_TYPE_TRACEPOINT not in types and BPF_PROG_TYPE_RAW_TRACEPOINT not in types
        assert not proc.metrics().series(names.SCRAPE_COLLECTOR_SUCCESS, collector="tcp")
    finally:
        assert proc.stop() == 0
    proc = run_exporter(pods, *off, "--tcp", "on")
    try:
        types = prog_types(proc.proc.pid)  # inet_sock_set_state, tcp_retransmit_skb: raw
        assert (types.count(BPF_PROG_TYPE_TRACEPOINT),
                types.count(BPF_PROG_TYPE_RAW_TRACEPOINT)) == (0, 2)
        assert proc.metrics().value(names.SCRAPE_COLLECTOR_SUCCESS, collector="tcp") == 1
    finally:
        assert proc.stop() == 0


def test_buckets_are_the_documented_ones(exporter, pod, server):
    connect(pod, server)
    les = sorted(float(lab["le"]) for lab, _ in exporter.metrics().samples[HIST + "_bucket"]
                 if lab["pod_uid"] == pod.uid)
    assert les == sorted(CONNECT_BUCKETS) + [float("inf")]

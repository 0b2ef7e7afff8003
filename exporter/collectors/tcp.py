"""Per-pod TCP connect latency, connect failures and retransmits, from bpf/tcp.c's maps.

- podsnoop_tcp_connect_duration_seconds: SYN_SENT -> ESTABLISHED of the pod's connect()s
  (the SYN until the SYN-ACK is processed; a SYN retransmitted after a lost SYN or SYN-ACK
  shows as >= 1 s). Buckets are fixed (CONNECT_BUCKETS) and counted in the kernel; _sum is
  the exact sum of the observations.
- podsnoop_tcp_connect_failures_total: connects that went SYN_SENT -> CLOSE: refused (RST),
  timed out, unreachable, or closed by the application before the handshake completed.
- podsnoop_tcp_retransmits_total: segments (data, SYN, FIN) the kernel retransmitted for
  the pod's sockets, connected or accepted, attributed by the socket's cgroup.

The maps are keyed by cgroup id and hold cumulative values; each scrape adds each key's
increase to the pod's exported values (cgroupdeltas.CgroupDeltas), so they only grow.
"""
from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from .. import loader, names
from ..bpfconsts import CONNECT_BUCKETS
from ..kuberoots import RootSync, choose_level
from .bpfmaps import read_summed
from .cgroupdeltas import CgroupDeltas, map_families, percpu_slot

LATENCY_MAP, FAILURES_MAP, RETRANSMITS_MAP = ("tcp_connect_latency", "tcp_connect_failures",
                                              "tcp_retransmits")
CONNECTING_MAP = "tcp_connecting"
COUNTER_ENTRIES_PER_MAP = 16384


def load_programs(cfg, resolver):
    """The TCP programs, loaded and attached (raw tracepoints) by libbpf (what they are
    given: loader._tcp_object)."""
    bpf = loader.load("tcp", cfg, resolver)
    return bpf, RootSync(bpf["kubepods_roots"], resolver, choose_level(resolver))


class PodTcp:
    __slots__ = ("buckets", "sum_ns", "failures", "retransmits", "last_live")

    def __init__(self, now: float):
        self.buckets = [0] * (len(CONNECT_BUCKETS) + 1)
        self.sum_ns = 0
        self.failures = 0
        self.retransmits = 0
        self.last_live = now


class TcpCollector:
    def __init__(self, bpf, resolver, labeler, grace_seconds: float, clock=time.monotonic):
        self.latency = bpf[LATENCY_MAP]
        self.failures = bpf[FAILURES_MAP]
        self.retransmits = bpf[RETRANSMITS_MAP]
        self.connecting = bpf[CONNECTING_MAP]
        self.update_failures = bpf["tcp_update_failures"]
        self.labeler = labeler
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.deltas = CgroupDeltas(resolver)
        self.pods: dict[str, PodTcp] = {}

    def _families(self):
        labels = list(names.TCP_LABELS)
        return (HistogramMetricFamily(names.TCP_CONNECT_DURATION,
                                      "Time from the pod's SYN to the established connection "
                                      "(connect(2) to SYN-ACK processed).", labels=labels),
                CounterMetricFamily(names.TCP_CONNECT_FAILURES,
                                    "TCP connects of the pod that ended before being "
                                    "established (refused, timed out, reset, abandoned).",
                                    labels=labels),
                CounterMetricFamily(names.TCP_RETRANSMITS,
                                    "TCP segments the kernel retransmitted for the pod's "
                                    "sockets.", labels=labels))

    def describe(self):
        yield from self._families()
        yield from self._self_families((0, 0, 0), 0)

    def _self_families(self, entries, connecting: int):
        rows = [(name, table, n, percpu_slot(self.update_failures, i))
                for i, (name, table, n) in enumerate((
                    (LATENCY_MAP, self.latency, entries[0]),
                    (FAILURES_MAP, self.failures, entries[1]),
                    (RETRANSMITS_MAP, self.retransmits, entries[2])))]
        # Connects in flight; an LRU map: when full, the oldest is evicted (its connect is
        # then not measured), nothing fails.
        rows.append((CONNECTING_MAP, self.connecting, connecting, 0))
        yield from map_families(rows)

    def collect(self):
        hist, failures_f, retrans_f = self._families()
        now = self.clock()
        (lat, fail, retr), live, entries = self.deltas.take(
            [self.latency, self.failures, self.retransmits])
        for uid, _ in live:
            self.pods.setdefault(uid, PodTcp(now)).last_live = now
        for (uid, _), key, (count, sum_ns) in lat:
            pod = self.pods.setdefault(uid, PodTcp(now))
            pod.buckets[min(key.bucket, len(CONNECT_BUCKETS))] += count
            pod.sum_ns += sum_ns
        for (uid, _), _, (n,) in fail:
            self.pods.setdefault(uid, PodTcp(now)).failures += n
        for (uid, _), _, (n,) in retr:
            self.pods.setdefault(uid, PodTcp(now)).retransmits += n
        for uid, pod in list(self.pods.items()):
            if now - pod.last_live > self.grace_seconds:
                del self.pods[uid]
        for uid, pod in self.pods.items():
            namespace, name = self.labeler.pod(uid)
            labels = [namespace, name, uid]
            if any(pod.buckets):
                cumulative, running = [], 0
                for bound, n in zip((*CONNECT_BUCKETS, float("inf")), pod.buckets):
                    running += n
                    cumulative.append(("+Inf" if bound == float("inf") else repr(bound),
                                       running))
                hist.add_metric(labels, cumulative, sum_value=pod.sum_ns / 1e9)
            # A pod with any TCP event gets both counters, 0 until something happens.
            failures_f.add_metric(labels, pod.failures)
            retrans_f.add_metric(labels, pod.retransmits)
        yield hist
        yield failures_f
        yield retrans_f
        yield from self._self_families(entries, len(read_summed(self.connecting)))

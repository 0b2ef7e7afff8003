"""Per-pod network counters from bpf/net.bpf.c: an interface's own bucket of the
direct-mapped net_buckets (netbuckets.py, claimed before the interface is attached), or,
where its bucket is taken, the net_counters hash keyed by (ifindex, direction, protocol).
The link manager knows which pod and interface an ifindex is. When a link disappears its
last values are retired: kept (and exported) for the grace period so the final increments
are scraped, while its bucket and hash entries are freed at once (the ifindex may be
reused by the next pod).
"""
from __future__ import annotations

import threading
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import names
from ..exposition import RowFamily
from .bpfmaps import read_summed, sum_counter_array, sum_percpu
from .netbuckets import NetBuckets

MAP = "net_counters"
BUCKETS_MAP = "net_buckets"
# Protocol label of each protocol number the key can hold (u8): unknown ones are "other".
_PROTOCOL_OF_NUMBER = tuple(names.PROTOCOLS[i] if i < len(names.PROTOCOLS) else "other"
                            for i in range(256))
FAMILIES = (  # (direction, field, metric name, help)
    (names.DIR_RECEIVE, "bytes", names.NET_RECEIVE_BYTES, "Bytes received by the pod."),
    (names.DIR_TRANSMIT, "bytes", names.NET_TRANSMIT_BYTES, "Bytes sent by the pod."),
    (names.DIR_RECEIVE, "packets", names.NET_RECEIVE_PACKETS, "Packets received by the pod."),
    (names.DIR_TRANSMIT, "packets", names.NET_TRANSMIT_PACKETS, "Packets sent by the pod."),
)
FIELDS = ("packets", "bytes")


class NetworkCollector:
    def __init__(self, bpf, links, labeler, grace_seconds: float, buckets: int = 0,
                 ncpus: int = 1, clock=time.monotonic):
        self.table = bpf[MAP]
        self.failures = bpf["net_update_failures"]
        self.buckets = NetBuckets(bpf[BUCKETS_MAP], buckets, ncpus)
        self.links = links            # LinkManager (links: ifindex -> PodLink)
        self.labeler = labeler
        self.grace_seconds = grace_seconds
        self.clock = clock
        self._retired: dict[tuple, list] = {}   # sample key -> [packets, bytes, expires]
        self._lock = threading.Lock()

    def _base_labels(self, link) -> tuple[str, ...]:
        namespace, pod = self.labeler.pod(link.pod_uid)
        return (namespace, pod, link.pod_uid, link.name)

    def claim(self, link) -> None:
        """Called before a link is attached: its own bucket, if it is free."""
        with self._lock:
            self.buckets.claim(link.index)

    def retire(self, link) -> None:
        """Called when a link is deleted: keep its totals for the grace period, free its
        bucket and its map entries."""
        base = self._base_labels(link)
        expires = self.clock() + self.grace_seconds
        Key = self.table.Key
        with self._lock:
            for (direction, proto), (packets, nbytes) in \
                    self.buckets.release(link.index).items():
                sample = (direction, base + (names.PROTOCOLS[proto],))
                old = self._retired.get(sample, [0, 0, 0])
                self._retired[sample] = [old[0] + packets, old[1] + nbytes, expires]
            for direction in (names.DIR_RECEIVE, names.DIR_TRANSMIT):
                for proto in range(len(names.PROTOCOLS)):
                    key = Key(link.index, direction, proto, 0)
                    try:
                        packets, nbytes = sum_percpu(self.table[key], FIELDS)
                        del self.table[key]
                    except KeyError:
                        continue
                    sample = (direction, base + (names.PROTOCOLS[proto],))
                    old = self._retired.get(sample, [0, 0, 0])
                    self._retired[sample] = [old[0] + packets, old[1] + nbytes, expires]

    def _families(self):
        return {(d, f): RowFamily(n, h, names.NET_LABELS) for d, f, n, h in FAMILIES}

    def describe(self):
        yield from self._families().values()
        yield from self._self_families(0, 0)

    def _self_families(self, entries: int, failures: int):
        e = GaugeMetricFamily(names.BPF_MAP_ENTRIES, "Entries in a BPF map.", labels=["map"])
        e.add_metric([MAP], entries)
        m = GaugeMetricFamily(names.BPF_MAP_MAX_ENTRIES, "Capacity of a BPF map.",
                              labels=["map"])
        m.add_metric([MAP], self.table.max_entries)
        e.add_metric([BUCKETS_MAP], len(self.buckets.owner))
        m.add_metric([BUCKETS_MAP], self.buckets.buckets)
        f = CounterMetricFamily(names.BPF_MAP_UPDATE_FAILURES,
                                "Counter updates lost because a BPF map was full.",
                                labels=["map"])
        f.add_metric([MAP], failures)
        a = GaugeMetricFamily(names.ATTACHED_INTERFACES,
                              "Pod interfaces with podsnoop's TC programs attached.")
        links = list(self.links.links.values())
        a.add_metric([], sum(1 for link in links if link.attached))
        t = GaugeMetricFamily(names.INTERFACES_BEHIND_TCX,
                              "Pod interfaces whose tcx programs (kernel >= 6.6) run before "
                              "podsnoop's filter and may hide packets from it.")
        t.add_metric([], sum(1 for link in links if link.attached and link.behind_tcx))
        r = CounterMetricFamily(names.TC_FILTER_REPAIRS,
                                "Hooks of pod interfaces whose podsnoop filter someone else "
                                "deleted while podsnoop ran, and podsnoop put back.")
        r.add_metric([], self.links.repairs)
        x = CounterMetricFamily(names.TC_ATTACH_FAILURES,
                                "Pod interfaces podsnoop could not attach to (see the log).")
        x.add_metric([], self.links.attach_failures)
        return e, m, f, a, t, r, x

    def collect(self):
        families = self._families()
        links = dict(self.links.links)
        bases = {index: self._base_labels(link) for index, link in links.items()}
        protocols = _PROTOCOL_OF_NUMBER
        items = read_summed(self.table)
        totals: dict[tuple, list] = {}
        with self._lock:
            for index, base in bases.items():
                if self.buckets.holds(index):
                    for (direction, proto), (packets, nbytes) in \
                            self.buckets.totals(index).items():
                        totals[(direction, base + (protocols[proto],))] = [packets, nbytes]
        for key, (packets, nbytes) in items:
            base = bases.get(key.ifindex)
            if base is None:
                continue  # removed between the event and this read; retire() has it
            sample = (key.dir, base + (protocols[key.proto],))
            acc = totals.get(sample)
            if acc is None:
                totals[sample] = [packets, nbytes]
            else:  # two protocol numbers named "other"
                acc[0] += packets
                acc[1] += nbytes
        now = self.clock()
        with self._lock:
            for sample, (packets, nbytes, expires) in list(self._retired.items()):
                if expires <= now:
                    del self._retired[sample]
                    continue
                acc = totals.setdefault(sample, [0, 0])
                acc[0] += packets
                acc[1] += nbytes
        for (direction, labels), (packets, nbytes) in totals.items():
            families[(direction, "packets")].add(labels, packets)
            families[(direction, "bytes")].add(labels, nbytes)
        yield from families.values()
        yield from self._self_families(len(items), sum_counter_array(self.failures))

"""DNS requests per container, by query type and response code, and their latency, from
bpf/dns.bpf.c's maps.

- podsnoop_dns_requests_total{namespace, pod, pod_uid, container, container_id, qtype,
  rcode}: the DNS queries the container's sockets sent (UDP or TCP to port 53) that were
  answered (rcode: the response's code, by name) or were not answered within --dns-timeout
  seconds (rcode="timeout", counted once, however late an answer comes).
- podsnoop_dns_request_duration_seconds{namespace, pod, pod_uid, container, container_id}:
  query sent -> response received, for the answered ones (timeouts are not observed).
  Buckets are fixed (bpfconsts.DNS_BUCKETS) and counted in the kernel; _sum is exact.

The same attachment as the per-container network (collectors/container_net.py): two
cgroup_skb programs linked once to each kubepods root, so every container's sockets are
seen from their first packet, keyed by the socket's cgroup. Requests are counted in the
kernel; the exporter only reads the counters, and at each scrape sweeps the map of
queries in flight: each one older than the timeout is deleted and counted as a timeout.
The kernel deletes an entry before counting its answer, and the sweep counts only the
entries its own delete removed, so each query counts once.

Cardinality: qtype has bpfconsts.DNS_QTYPES' names and "other", rcode at most 16 codes
and "timeout", per container; no addresses are labels, and names only with --dns-domains:

- podsnoop_dns_domain_queries_total{..., domain} (--dns-domains N > 0): the queries each
  container sent, by queried name (lower case, from its first DNS_DOMAIN_BYTES wire bytes;
  a longer name ends in "..."), the N names it asked for most named (topn.TopN, as syscalls
  and comms; a node-wide cap of DOMAIN_SERIES_CAP named series) and the rest
  domain="other". Resends are not counted again. The kernel's map is drained at each scrape
  (a name asked for once does not hold an entry for good), and each container's ranking
  keeps RANKED_PER_NAMED names per named slot, so a container asking for endless random
  names costs bounded memory; a query counted in the instant between the scrape's read and
  its delete of that name's entry is lost.
"""
from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from .. import loader, names
from ..bpfconsts import DNS_BUCKETS, DNS_QTYPES, DNS_RCODE_TIMEOUT, DNS_RCODES
from .bpfmaps import ctypes_key, read_summed
from .cgroupdeltas import UNRESOLVED, CgroupDeltas, container_labels, map_families, percpu_slot
from .container_net import (BPF_CGROUP_INET_EGRESS, BPF_CGROUP_INET_INGRESS, CgroupLinks,
                            link_to_roots)
from .topn import OTHER, NamedCounters, TopN


REQUESTS_MAP, LATENCY_MAP, INFLIGHT_MAP = "dns_requests", "dns_latency", "dns_inflight"
DOMAINS_MAP = "dns_domains"
DOMAIN_SERIES_CAP = 10000   # named domain series, node-wide
RANKED_PER_NAMED = 8        # names a container's ranking keeps per named slot
PROGRAMS = (("podsnoop_dns_ingress", BPF_CGROUP_INET_INGRESS),
            ("podsnoop_dns_egress", BPF_CGROUP_INET_EGRESS))
QTYPE_NAMES = {number: name for name, number in DNS_QTYPES.items()}


def qtype_name(qtype: int) -> str:
    return QTYPE_NAMES.get(qtype, OTHER)  # the kernel stores 0 for every other type


def domain_name(wire: bytes) -> str:
    """A name's wire form (length-prefixed labels, cut at DNS_DOMAIN_BYTES) as text."""
    labels, i = [], 0
    while i < len(wire) and wire[i]:
        n = wire[i]
        label = wire[i + 1:i + 1 + n].decode("ascii", "backslashreplace").lower()
        i += 1 + n
        if i >= len(wire):  # cut: no room for the closing zero
            labels.append(label + "...")
            return ".".join(labels)
        labels.append(label)
    return ".".join(labels) or "."


def rcode_name(rcode: int) -> str:
    if rcode == DNS_RCODE_TIMEOUT:
        return names.DNS_TIMEOUT
    return DNS_RCODES[rcode] if rcode < len(DNS_RCODES) else str(rcode)


def load_programs(cfg, resolver):
    """Load the DNS programs (what they are given: loader._dns_object) and link them to
    the kubepods roots (container_net's CgroupLinks, with this object's programs)."""
    bpf = loader.load("dns", cfg, resolver)
    return bpf, link_to_roots(CgroupLinks(bpf, resolver, PROGRAMS, "DNS programs"), bpf,
                              "--dns off")


class ContainerDns:
    __slots__ = ("requests", "buckets", "sum_ns", "last_live", "domains")

    def __init__(self, now: float):
        self.requests: dict[tuple[int, int], int] = {}  # (qtype, rcode) -> requests
        self.buckets = [0] * (len(DNS_BUCKETS) + 1)
        self.sum_ns = 0
        self.last_live = now
        self.domains = NamedCounters()  # --dns-domains


class DnsCollector:
    def __init__(self, bpf, resolver, labeler, grace_seconds: float, timeout_seconds: float,
                 domains: int = 0, clock=time.monotonic, clock_ns=time.monotonic_ns):
        self.domains = bpf[DOMAINS_MAP] if domains else None
        self.topn = TopN(domains, None, DOMAIN_SERIES_CAP)
        self.requests = bpf[REQUESTS_MAP]
        self.latency = bpf[LATENCY_MAP]
        self.inflight = bpf[INFLIGHT_MAP]
        self.update_failures = bpf["dns_update_failures"]
        self.labeler = labeler
        self.grace_seconds = grace_seconds
        self.timeout_ns = round(timeout_seconds * 1e9)
        self.clock = clock
        self.clock_ns = clock_ns  # CLOCK_MONOTONIC, the kernel's bpf_ktime_get_ns
        self.deltas = CgroupDeltas(resolver)
        self.containers: dict[tuple, ContainerDns] = {}

    def _domain_families(self):
        if self.domains is None:
            return ()
        cap = CounterMetricFamily(names.SERIES_CAP_DROPPED,
                                  'Series folded into "other" by a series cap.',
                                  labels=["collector"])
        cap.add_metric(["dns"], self.topn.cap_dropped)
        return (CounterMetricFamily(names.DNS_DOMAIN_QUERIES,
                                    "DNS queries the container sent by queried name: the "
                                    "names it asks for most, the rest domain=\"other\".",
                                    labels=list(names.DNS_DOMAIN_LABELS)), cap)

    def _families(self):
        return (CounterMetricFamily(names.DNS_REQUESTS,
                                    "DNS queries of the container's sockets (UDP or TCP to "
                                    "port 53) by query type and response code; rcode "
                                    "\"timeout\": no answer within --dns-timeout.",
                                    labels=list(names.DNS_REQUEST_LABELS)),
                HistogramMetricFamily(names.DNS_REQUEST_DURATION,
                                      "Time from the container's DNS query to its response "
                                      "(answered queries only).",
                                      labels=list(names.DNS_DURATION_LABELS)))

    def describe(self):
        yield from self._families()
        yield from self._domain_families()
        yield from self._self_families((0, 0), 0, 0)

    def _self_families(self, entries, inflight: int, domains: int):
        failures = [percpu_slot(self.update_failures, i) for i in range(3)]
        rows = [(REQUESTS_MAP, self.requests, entries[0], failures[0]),
                (LATENCY_MAP, self.latency, entries[1], failures[1]),
                # LRU: when full the oldest query is evicted (neither answered nor timed
                # out then), nothing fails
                (INFLIGHT_MAP, self.inflight, inflight, 0)]
        if self.domains is not None:  # entries: before this scrape drained it
            rows.append((DOMAINS_MAP, self.domains, domains, failures[2]))
        yield from map_families(rows)

    def _drain_domains(self, now: float) -> int:
        """Move the kernel's queries by name into the containers' top-N counters; how many
        entries the map held."""
        rows = read_summed(self.domains)  # (cgroup id, wire name) -> queries
        for key, _ in rows:
            try:
                del self.domains[ctypes_key(self.domains, key)]
            except KeyError:
                pass
        owners, live_now = self._owners_of({key.cgroup_id for key, _ in rows})
        for owner in live_now:
            self.containers.setdefault(owner, ContainerDns(now)).last_live = now
        per_owner: dict[tuple, dict[str, list[int]]] = {}
        for key, (n,) in rows:
            if n:
                acc = per_owner.setdefault(owners[key.cgroup_id], {}).setdefault(
                    domain_name(key.name), [0])
                acc[0] += n
        keep = RANKED_PER_NAMED * max(self.topn.top, 1)
        for owner, deltas in per_owner.items():
            counters = self.containers.setdefault(owner, ContainerDns(now)).domains
            self.topn.apply(counters, deltas)
            if len(counters.ranking) > keep:  # forget the rarest names (bounded memory)
                ranked = sorted(counters.ranking.items(), key=lambda kv: -kv[1])
                counters.ranking = {k: v for k, v in ranked[:keep]}
                for name in counters.named:
                    counters.ranking.setdefault(name, 0)
        return len(rows)

    def sweep(self) -> tuple[dict[tuple, int], int]:
        """Delete the queries in flight for longer than the timeout: {(cgroup id, qtype):
        timeouts}, and how many stay in flight. Only a delete that succeeds counts: the
        kernel deletes an entry before it counts its answer."""
        now = self.clock_ns()
        timeouts: dict[tuple, int] = {}
        rows = read_summed(self.inflight)  # (cookie, id) -> (start_ns, cgroup_id, qtype)
        left = len(rows)
        for key, (start_ns, cgroup_id, qtype) in rows:
            if now - start_ns <= self.timeout_ns:
                continue
            try:
                del self.inflight[ctypes_key(self.inflight, key)]
            except KeyError:
                continue  # answered (or evicted) meanwhile
            left -= 1
            timeouts[(cgroup_id, qtype)] = timeouts.get((cgroup_id, qtype), 0) + 1
        return timeouts, left

    def _owners_of(self, ids: set) -> tuple[dict, set]:
        """cgroup id -> owner of timed-out or named queries (a cgroup gone since: its
        last owner), and the owners that resolve now (live)."""
        owners, live = {}, set()
        for cid, owner in self.deltas.resolve(ids).items():
            if owner is not None:
                live.add(owner)
            else:
                owner = self.deltas._known.get(cid, UNRESOLVED)
            owners[cid] = owner
        return owners, live

    def collect(self):
        requests_f, hist = self._families()
        domains_f = self._domain_families()
        now = self.clock()
        timeouts, inflight = self.sweep()
        domain_entries = self._drain_domains(now) if self.domains is not None else 0
        (reqs, lat), live, entries = self.deltas.take([self.requests, self.latency])
        for owner in live:
            self.containers.setdefault(owner, ContainerDns(now)).last_live = now
        for owner, key, (n,) in reqs:
            c = self.containers.setdefault(owner, ContainerDns(now))
            k = (key.qtype, key.rcode)
            c.requests[k] = c.requests.get(k, 0) + n
        if timeouts:
            owners, live_now = self._owners_of({cid for cid, _ in timeouts})
            for owner in live_now:
                self.containers.setdefault(owner, ContainerDns(now)).last_live = now
            for (cid, qtype), n in timeouts.items():
                c = self.containers.setdefault(owners[cid], ContainerDns(now))
                k = (qtype, DNS_RCODE_TIMEOUT)
                c.requests[k] = c.requests.get(k, 0) + n
        for owner, key, (count, sum_ns) in lat:
            c = self.containers.setdefault(owner, ContainerDns(now))
            c.buckets[min(key.bucket, len(DNS_BUCKETS))] += count
            c.sum_ns += sum_ns
        for owner, c in list(self.containers.items()):
            if now - c.last_live > self.grace_seconds:
                del self.containers[owner]
                self.topn.release(c.domains)
        labels_of = container_labels(self.labeler)
        for owner, c in self.containers.items():
            labels = labels_of(owner)
            for (qtype, rcode), n in c.requests.items():
                requests_f.add_metric(labels + [qtype_name(qtype), rcode_name(rcode)], n)
            if any(c.buckets):
                cumulative, running = [], 0
                for bound, n in zip((*DNS_BUCKETS, float("inf")), c.buckets):
                    running += n
                    cumulative.append(("+Inf" if bound == float("inf") else repr(bound),
                                       running))
                hist.add_metric(labels, cumulative, sum_value=c.sum_ns / 1e9)
            if domains_f:
                for domain, (n,) in c.domains.named.items():
                    domains_f[0].add_metric(labels + [domain], n)
                if c.domains.other[0]:
                    domains_f[0].add_metric(labels + [OTHER], c.domains.other[0])
        yield requests_f
        yield hist
        yield from domains_f
        yield from self._self_families(entries, inflight, domain_entries)

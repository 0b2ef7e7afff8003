"""Per-container syscall counts, errors and latency from bpf/syscalls.bpf.c's maps.

The maps hold cumulative per-(cgroup, syscall) counts. Each scrape takes the increase of
every key since the previous scrape and adds it to the container's exported counters, so
every exported counter only ever grows, whatever happens to the keys underneath: a
container's syscalls can be re-ranked, a cgroup can resolve late or disappear.

Cardinality is bounded per container: the `top` syscalls with the most calls get their own
series and the rest go to syscall="other". A syscall replaces the weakest named one only when
it has twice its calls (no flapping at the boundary); a replaced syscall's series ends and
its further calls count under "other". With an allowlist, exactly those syscalls are named.
A node-wide cap on named series folds the rest into "other" and counts how often it bit.
The naming is topn.TopN, shared with the exec collector.

Cgroups that resolve to no pod are exported together under empty pod labels (one bounded
group, so totals add up); their keys are drained from the map each scrape, since nothing
says when such a cgroup goes away. A pod container's keys are deleted once its cgroup is
gone, and its series stay exported for the grace period.
"""
from __future__ import annotations

import time
from collections import defaultdict

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .. import names
from ..syscall_names import syscall_name
from .bpfmaps import ctypes_key, read_summed, sum_counter_array
from .topn import OTHER, NamedCounters, TopN

COUNTS_MAP, LATENCY_MAP = "syscall_counts", "syscall_latency"
# Histogram buckets: upper bounds 2^8 .. 2^34 ns in steps of 4x (256 ns .. ~17 s). A log2
# slot k holds latencies in [2^k, 2^(k+1)) ns, so it lands in the first bucket >= 2^(k+1).
BUCKET_EXPONENTS = tuple(range(8, 35, 2))
BUCKET_BOUNDS = tuple(2.0 ** e / 1e9 for e in BUCKET_EXPONENTS)
UNRESOLVED = ("", "")  # (pod_uid, container_id) of cgroups that belong to no known pod


def bucket_index(slot: int) -> int:
    """Index into BUCKET_BOUNDS (len = +Inf) for log2 slot `slot`."""
    for i, e in enumerate(BUCKET_EXPONENTS):
        if slot + 1 <= e:
            return i
    return len(BUCKET_EXPONENTS)


def slot_midpoint_seconds(slot: int) -> float:
    """Best estimate of a slot's latencies for the histogram's _sum (1.5 x 2^slot ns)."""
    return 1.5 * (1 << slot) / 1e9


class ContainerTotals(NamedCounters):
    """What one container has exported so far: per syscall name [calls, errors] (ranking,
    named, other: see topn.NamedCounters) and its latency histogram."""
    __slots__ = ("slots", "seconds", "last_live")

    def __init__(self, now: float):
        super().__init__(2)
        self.slots: dict[int, int] = {}         # log2 latency slot -> count
        self.seconds = 0.0
        self.last_live = now

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        per_bucket = [0] * (len(BUCKET_BOUNDS) + 1)
        for slot, n in self.slots.items():
            per_bucket[bucket_index(slot)] += n
        out, running = [], 0
        for bound, n in zip((*BUCKET_BOUNDS, float("inf")), per_bucket):
            running += n
            out.append((_bound_text(bound), running))
        return out


class SyscallCollector:
    def __init__(self, bpf, resolver, labeler, grace_seconds: float, top: int = 20,
                 allowlist: frozenset[str] | None = None, series_cap: int = 20000,
                 clock=time.monotonic):
        self.counts = bpf[COUNTS_MAP]
        self.latency = bpf[LATENCY_MAP]
        self.failures = bpf["syscall_update_failures"]
        self.resolver = resolver
        self.labeler = labeler
        self.grace_seconds = grace_seconds
        self.topn = TopN(top, allowlist, series_cap)
        self.clock = clock
        self.containers: dict[tuple, ContainerTotals] = {}
        self._last_counts: dict[tuple[int, int], tuple[int, int]] = {}  # (cgid, nr) -> seen
        self._last_slots: dict[tuple[int, int], int] = {}               # (cgid, slot) -> seen
        self._known: dict[int, tuple[str, str]] = {}  # cgroup id -> (pod_uid, container_id)
        self.unresolved = 0

    @property
    def cap_dropped(self) -> int:
        return self.topn.cap_dropped

    # -- describe -------------------------------------------------------------------------
    def _families(self):
        calls = CounterMetricFamily(names.SYSCALLS, "Syscalls made by the container.",
                                    labels=list(names.SYSCALL_LABELS))
        errors = CounterMetricFamily(names.SYSCALL_ERRORS,
                                     "Syscalls of the container that returned an error.",
                                     labels=list(names.SYSCALL_LABELS))
        hist = HistogramMetricFamily(names.SYSCALL_DURATION,
                                     "Time the container's syscalls took, entry to exit.",
                                     labels=list(names.CONTAINER_LABELS))
        return calls, errors, hist

    def describe(self):
        yield from self._families()
        yield from self._self_families(0, 0)

    def _self_families(self, entries: int, lat_entries: int):
        lost = self._failure_counts()
        e = GaugeMetricFamily(names.BPF_MAP_ENTRIES, "Entries in a BPF map.", labels=["map"])
        m = GaugeMetricFamily(names.BPF_MAP_MAX_ENTRIES, "Capacity of a BPF map.", labels=["map"])
        f = CounterMetricFamily(names.BPF_MAP_UPDATE_FAILURES,
                                "Counter updates lost because a BPF map was full.", labels=["map"])
        for i, (name, table, n) in enumerate(((COUNTS_MAP, self.counts, entries),
                                              (LATENCY_MAP, self.latency, lat_entries))):
            e.add_metric([name], n)
            m.add_metric([name], table.max_entries)
            f.add_metric([name], lost[i])
        u = GaugeMetricFamily(names.UNRESOLVED_CGROUPS,
                              "Cgroups with syscalls that resolve to no known pod.")
        u.add_metric([], self.unresolved)
        c = CounterMetricFamily(names.SERIES_CAP_DROPPED,
                                'Syscall series folded into syscall="other" by the series cap.',
                                labels=["collector"])
        c.add_metric(["syscalls"], self.cap_dropped)
        return e, m, f, u, c

    def _failure_counts(self) -> tuple[int, int]:
        return sum_counter_array(self.failures, 0), sum_counter_array(self.failures, 1)

    # -- reading ----------------------------------------------------------------------------
    def _classify(self, cgroup_ids: set[int], now: float):
        """cgroup id -> container, and which ids are gone (pod cgroup deleted) or unresolved."""
        resolved = self.resolver.resolve_many(cgroup_ids)
        owner, gone, unresolved = {}, set(), set()
        for cid, info in resolved.items():
            if info is not None:
                owner[cid] = self._known[cid] = (info.pod_uid, info.container_id)
                self.containers.setdefault(owner[cid], ContainerTotals(now)).last_live = now
            elif cid in self._known:  # resolved before, missing now: the cgroup is gone
                owner[cid] = self._known.pop(cid)
                gone.add(cid)
            else:
                owner[cid] = UNRESOLVED
                unresolved.add(cid)
        if unresolved:
            self.containers.setdefault(UNRESOLVED, ContainerTotals(now)).last_live = now
        return owner, gone, unresolved

    def _take_deltas(self, now: float):
        """Increase of every key since the last scrape, per container; frees dead keys."""
        counts_items = read_summed(self.counts)    # (calls, errors)
        latency_items = read_summed(self.latency)  # (count,)
        ids = {k.cgroup_id for k, _ in counts_items} | {k.cgroup_id for k, _ in latency_items}
        owner, gone, unresolved = self._classify(ids, now)
        drop = gone | unresolved
        call_deltas: dict[tuple, dict[int, list[int]]] = defaultdict(dict)
        for key, values in counts_items:
            seen = values
            k = (key.cgroup_id, key.nr)
            prev = self._last_counts.get(k, (0, 0))
            acc = call_deltas[owner[key.cgroup_id]].setdefault(key.nr, [0, 0])
            acc[0] += seen[0] - prev[0]
            acc[1] += seen[1] - prev[1]
            self._forget_or_keep(self.counts, key, k, seen, self._last_counts, drop)
        for key, values in latency_items:
            seen = values[0]
            k = (key.cgroup_id, key.slot)
            totals = self.containers[owner[key.cgroup_id]]
            delta = seen - self._last_slots.get(k, 0)
            totals.slots[key.slot] = totals.slots.get(key.slot, 0) + delta
            totals.seconds += delta * slot_midpoint_seconds(key.slot)
            self._forget_or_keep(self.latency, key, k, seen, self._last_slots, drop)
        self.unresolved = len(unresolved)
        return call_deltas, len(counts_items), len(latency_items)

    @staticmethod
    def _forget_or_keep(table, key, k, seen, last: dict, drop: set[int]) -> None:
        if k[0] in drop:
            last.pop(k, None)
            try:
                del table[ctypes_key(table, key)]
            except KeyError:
                pass
        else:
            last[k] = seen

    # -- naming -----------------------------------------------------------------------------
    def _apply(self, container: tuple, deltas: dict[int, list[int]]) -> None:
        by_name: dict[str, list[int]] = {}
        for nr, (n, err) in deltas.items():
            acc = by_name.setdefault(syscall_name(nr), [0, 0])
            acc[0] += n
            acc[1] += err
        self.topn.apply(self.containers[container], by_name)

    def _expire(self, now: float) -> None:
        for container, totals in list(self.containers.items()):
            if now - totals.last_live > self.grace_seconds:
                del self.containers[container]
                self.topn.release(totals)

    # -- collect ----------------------------------------------------------------------------
    def collect(self):
        calls_f, errors_f, hist_f = self._families()
        now = self.clock()
        call_deltas, entries, lat_entries = self._take_deltas(now)
        for container, deltas in call_deltas.items():
            self._apply(container, deltas)
        self._expire(now)
        labels_of = _label_cache(self.labeler)
        for container, totals in self.containers.items():
            base = labels_of(container)
            for name, (n, err) in totals.named.items():
                calls_f.add_metric(base + [name], n)
                if err:
                    errors_f.add_metric(base + [name], err)
            if totals.other[0]:
                calls_f.add_metric(base + [OTHER], totals.other[0])
            if totals.other[1]:
                errors_f.add_metric(base + [OTHER], totals.other[1])
            if totals.slots:
                hist_f.add_metric(base, totals.cumulative_buckets(), sum_value=totals.seconds)
        yield calls_f
        yield errors_f
        yield hist_f
        yield from self._self_families(entries, lat_entries)


def _label_cache(labeler):
    cache: dict[tuple, list[str]] = {}

    def labels_of(container: tuple) -> list[str]:
        if container not in cache:
            uid, cid = container
            namespace, pod = labeler.pod(uid)
            cache[container] = [namespace, pod, uid, labeler.container(uid, cid), cid]
        return cache[container]
    return labels_of


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)

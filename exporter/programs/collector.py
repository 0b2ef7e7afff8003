"""Turn a user program's maps into Prometheus families at scrape time.

Every map holds cumulative u64 values (per-CPU maps are summed). Each scrape adds each
key's increase since the last scrape to the series its key decodes to, so exported
counters only grow whatever happens to the keys (like collectors/cgroupdeltas.py):
- `pod` keys are owned by a container (pod_uid, container_id); names are filled in when
  the samples are made, so a pod named late keeps its series. A cgroup that belongs to no
  known pod counts under empty pod labels (one bounded group) and its keys are drained; a
  gone cgroup's keys are deleted after their last increase; a gone pod's series are
  dropped after the grace period.
- `pod_interface` keys are owned by the pod of a host veth (the link manager's links);
  other interfaces count under empty labels and their keys are drained; a pod whose veth
  is gone has its series dropped after the grace period.
- a label with `top: N` names its N most frequent values; the rest is "other".
- at most `series_cap` label sets per program; the rest fold into one series whose labels
  are all "other", counted in podsnoop_series_cap_dropped_total{collector="program:<name>"}.
"""
from __future__ import annotations

import ctypes as ct
import time
from collections import OrderedDict

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from ..collectors.topn import OTHER, NamedCounters, TopN
from .decoders import decode
from .spec import Metric, ProgramSpec, SpecError

PREFIX = "podsnoop_"
DECODE_CACHE = 4096   # decoded label parts per metric (LRU on the raw key bytes)


def metric_name(m: Metric) -> str:
    base = PREFIX + m.name
    return base.removesuffix("_total") if m.kind == "counter" else base


def _value(v) -> int:
    if isinstance(v, ct.Array):  # per-CPU
        return sum(int(getattr(x, "value", x)) for x in v)
    return int(getattr(v, "value", v))


def _raw(table, key) -> bytes:
    """A key's bytes (bcc's batch read gives plain ints for integer keys)."""
    if isinstance(key, int):
        return bytes(table.Key(key))
    return bytes(key)


class _MetricState:
    def __init__(self, metric: Metric, table):
        self.m = metric
        self.table = table
        self.last: dict[bytes, int] = {}
        self.series: dict[tuple, object] = {}   # counters: int; histograms: {bucket: n}
        self.cache: OrderedDict[bytes, tuple] = OrderedDict()
        self.tops = {i: (TopN(lb.top, None, 10**9), NamedCounters(1))
                     for i, lb in enumerate(metric.labels) if lb.top is not None}
        offsets, at = [], 0
        for lb in metric.labels:
            offsets.append((at, lb.size))
            at += lb.size + lb.padding
        self.offsets = offsets
        self.label_names = [n for lb in (metric.labels[:-1] if metric.kind == "histogram"
                                         else metric.labels) for n in lb.names]


NO_LABELS_KEY = bytes(4)  # a counter without labels: ebpf_exporter's single u32 0 key


def check_maps(spec: ProgramSpec, bpf) -> list[_MetricState]:
    states = []
    for m in spec.metrics:
        try:
            table = bpf[m.name.encode()]
        except KeyError:
            declare = (f"define a map named {m.name} in SEC(\".maps\") and rebuild "
                       f"{spec.file}" if spec.kind == "object" else
                       f"declare BPF_HASH({m.name}, <key>, u64) in {spec.file}")
            raise SpecError(f"program {spec.name}: bad spec: {spec.file} has no map named "
                            f"{m.name} for the metric of that name", declare)
        size = ct.sizeof(table.Key)
        want = m.key_size if m.labels else len(NO_LABELS_KEY)
        if size != want:
            raise SpecError(f"program {spec.name}: bad spec: map {m.name} has {size}-byte "
                            f"keys but its labels add up to {want} bytes" +
                            ("" if m.labels else " (no labels: a u32 key, 0)"),
                            "make the label sizes (plus padding) add up to sizeof(key)")
        leaf = getattr(table, "sLeaf", None) or table.Leaf
        if ct.sizeof(leaf) != 8:
            raise SpecError(f"program {spec.name}: bad spec: map {m.name} values are "
                            f"{ct.sizeof(leaf)} bytes, not a u64",
                            "count in u64 values, as ebpf_exporter does")
        states.append(_MetricState(m, table))
    return states


class ProgramCollector:
    def __init__(self, spec: ProgramSpec, bpf, resolver, labeler, links=None,
                 grace_seconds: float = 330.0, clock=time.monotonic):
        self.spec = spec
        self.states = check_maps(spec, bpf)
        self.resolver = resolver
        self.labeler = labeler
        self.links = links        # callable -> LinkManager or None
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.cap_dropped = 0
        self._known: dict[int, tuple[str, str]] = {}   # cgroup id -> (uid, container id)
        self._live: dict[str, float] = {}              # pod uid -> last seen live

    # -- decoding ----------------------------------------------------------------------
    def _parts(self, st: _MetricState, raw: bytes, owners: dict) -> tuple[tuple, bool]:
        """The label parts of a key, and whether its keys should be deleted from the map
        (its cgroup is gone or belongs to no pod)."""
        parts, drop = [], False
        labels = st.m.labels
        for i, (lb, (off, size)) in enumerate(zip(labels, st.offsets)):
            field = raw[off:off + size]
            kind = lb.decoders[-1]["name"] if lb.decoders else ""
            if kind == "pod":
                cid = int.from_bytes(field, "little")
                owner, gone = owners[cid]
                drop = drop or gone
                parts.append(("pod",) + owner)
            elif kind == "pod_interface":
                idx = int.from_bytes(field, "little")
                mgr = self.links() if self.links else None
                link = mgr.links.get(idx) if mgr is not None else None
                if link is not None and link.pod_uid:
                    parts.append(("if", link.pod_uid, link.name))
                    self._live[link.pod_uid] = self.clock()
                else:  # not a pod's: counted under empty labels, its keys drained
                    parts.append(("if", "", ""))
                    drop = True
            elif st.m.kind == "histogram" and i == len(labels) - 1:
                parts.append(int.from_bytes(field, "little"))
            else:
                parts.append(decode(lb.decoders, field))
        return tuple(parts), drop

    def _owners(self, st: _MetricState, raws: list[bytes]) -> dict:
        """cgroup id -> ((uid, container id), gone-or-unresolved) for the pod labels."""
        ids = set()
        for i, lb in enumerate(st.m.labels):
            if lb.decoders and lb.decoders[-1]["name"] == "pod":
                off, size = st.offsets[i]
                ids.update(int.from_bytes(r[off:off + size], "little") for r in raws)
        out = {}
        for cid, info in (self.resolver.resolve_many(ids).items() if ids else ()):
            if info is not None:
                owner = self._known[cid] = (info.pod_uid, info.container_id)
                self._live[info.pod_uid] = self.clock()
                out[cid] = (owner, False)
            elif cid in self._known:
                out[cid] = (self._known.pop(cid), True)
            else:
                out[cid] = (("", ""), True)
        return out

    # -- one scrape --------------------------------------------------------------------
    def _take(self, st: _MetricState) -> None:
        from ..collectors.bpfmaps import read_items
        rows = [(_raw(st.table, k), _value(v), k) for k, v in read_items(st.table)]
        if not st.m.labels:  # only key 0 counts, as in ebpf_exporter
            rows = [r for r in rows if r[0] == NO_LABELS_KEY]
        owners = self._owners(st, [r for r, _, _ in rows])
        deltas: list[tuple[tuple, int]] = []
        for raw, value, key in rows:
            prev = st.last.get(raw, 0)
            delta = value - prev if value >= prev else value
            parts, drop = self._parts(st, raw, owners)
            if drop:
                st.last.pop(raw, None)
                try:
                    del st.table[key if not isinstance(key, int) else st.table.Key(key)]
                except KeyError:
                    pass
            else:
                st.last[raw] = value
            if delta:
                deltas.append((parts, delta))
        for i, (topn, counters) in st.tops.items():
            per_value: dict[str, list[int]] = {}
            for parts, delta in deltas:
                per_value.setdefault(parts[i], [0])[0] += delta
            topn.apply(counters, per_value)
            named = counters.named
            deltas = [(parts if parts[i] in named else
                       parts[:i] + (OTHER,) + parts[i + 1:], d) for parts, d in deltas]
        hist = st.m.kind == "histogram"
        for parts, delta in deltas:
            key, bucket = (parts[:-1], parts[-1]) if hist else (parts, None)
            if key not in st.series:
                if self._series_count() >= self.spec.series_cap:
                    self.cap_dropped += 1
                    key = tuple(OTHER for _ in key)
                st.series.setdefault(key, {} if hist else 0)
            if hist:
                st.series[key][bucket] = st.series[key].get(bucket, 0) + delta
            else:
                st.series[key] += delta

    def _series_count(self) -> int:
        return sum(len(st.series) for st in self.states)

    def _expire(self) -> None:
        now = self.clock()
        gone = {uid for uid, seen in self._live.items() if now - seen > self.grace_seconds}
        if not gone:
            return
        for st in self.states:
            for key in [k for k in st.series
                        if any(isinstance(p, tuple) and p[1] in gone for p in k)]:
                del st.series[key]
        for uid in gone:
            del self._live[uid]

    # -- samples -----------------------------------------------------------------------
    def _labels(self, key: tuple) -> list[str]:
        out = []
        for p in key:
            if isinstance(p, tuple):
                kind, uid, third = p
                namespace, pod = self.labeler.pod(uid)
                if kind == "pod":
                    out += [namespace, pod, uid, self.labeler.container(uid, third), third]
                else:
                    out += [namespace, pod, uid, third]
            else:
                out.append(str(p))
        return out

    def _fix_other(self, st: _MetricState, key: tuple, labels: list[str]) -> list[str]:
        return labels if len(labels) == len(st.label_names) else [OTHER] * len(st.label_names)

    def _buckets(self, m: Metric, counts: dict[int, int]):
        mult = m.bucket_multiplier
        if m.bucket_type == "fixed":
            keys = list(m.bucket_keys)
            bounds = [k * mult for k in keys]
            sum_key = keys[-1] + 1
        else:
            keys = list(range(m.bucket_min, m.bucket_max + 1))
            if m.bucket_type == "exp2":
                bounds = [(2 ** k) * mult for k in keys]
            elif m.bucket_type == "exp2zero":
                bounds = [0.0 if k == 0 else (2 ** (k - 1)) * mult for k in keys]
            else:
                bounds = [k * mult for k in keys]
            sum_key = m.bucket_max + 1
        out, acc, total = [], 0, 0
        for b, n in counts.items():
            if b != sum_key:
                total += n
        below = sum(n for b, n in counts.items() if b < keys[0])
        acc = below
        for k, le in zip(keys, bounds):
            acc += counts.get(k, 0) if k != sum_key else 0
            out.append((repr(float(le)), acc))
        out.append(("+Inf", total))
        return out, counts.get(sum_key, 0) * mult

    def families(self):
        for st in self.states:
            m = st.m
            name = metric_name(m)
            if m.kind == "counter":
                fam = CounterMetricFamily(name, m.help or name, labels=st.label_names)
                for key, n in st.series.items():
                    fam.add_metric(self._fix_other(st, key, self._labels(key)), n)
            else:
                fam = HistogramMetricFamily(name, m.help or name, labels=st.label_names)
                for key, counts in st.series.items():
                    buckets, total = self._buckets(m, counts)
                    fam.add_metric(self._fix_other(st, key, self._labels(key)), buckets,
                                   total)
            yield fam

    def empty_families(self):
        for st in self.states:
            m = st.m
            cls = CounterMetricFamily if m.kind == "counter" else HistogramMetricFamily
            yield cls(metric_name(m), m.help or metric_name(m), labels=st.label_names)

    def collect(self):
        for st in self.states:
            self._take(st)
        self._expire()
        yield from self.families()

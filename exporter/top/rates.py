"""The arithmetic of `podsnoop top`: two scrapes of /metrics -> one row of rates per pod.

Pure functions over parsed exposition text (prometheus_client.parser), no I/O, so the unit
tests feed them synthetic texts. Conventions, the same as Prometheus' own where it has one:

- A counter's increase over the interval is summed series by series. A series that went
  down was reset (the exporter restarted): its increase is its new value. A series that
  appears only in the second scrape started from zero in between (podsnoop exports a series
  from its first increment), so its increase is its value. A vanished series adds nothing.
- Rates divide by the measured time between the two scrapes, not by the requested interval.
- A quantile is histogram_quantile()'s: the cumulative bucket increases of the pod's series
  (containers summed, per `le`), linear interpolation inside the bucket holding the rank,
  the highest finite bound when the rank falls in +Inf, None when nothing was observed.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .. import names

Labels = tuple[tuple[str, str], ...]   # a series' labels, sorted: hashable
PodKey = tuple[str, str]               # (namespace, pod), or ("", pod_uid) without names

RX_BYTES = names.NET_RECEIVE_BYTES + "_total"
TX_BYTES = names.NET_TRANSMIT_BYTES + "_total"
RX_PACKETS = names.NET_RECEIVE_PACKETS + "_total"
TX_PACKETS = names.NET_TRANSMIT_PACKETS + "_total"
SYSCALLS = names.SYSCALLS + "_total"
SYSCALL_ERRORS = names.SYSCALL_ERRORS + "_total"
SYSCALL_BUCKET = names.SYSCALL_DURATION + "_bucket"
CONNECT_BUCKET = names.TCP_CONNECT_DURATION + "_bucket"
CONNECT_COUNT = names.TCP_CONNECT_DURATION + "_count"
CONNECT_FAILURES = names.TCP_CONNECT_FAILURES + "_total"
RETRANSMITS = names.TCP_RETRANSMITS + "_total"
DROPS = names.NET_DROPS + "_total"
EXECS = names.EXECS + "_total"
DNS_REQUESTS = names.DNS_REQUESTS + "_total"
DNS_BUCKET = names.DNS_REQUEST_DURATION + "_bucket"
PEER_BYTES = names.PEER_BYTES + "_total"

# Counter column -> sample name whose per-pod increase / seconds is the column's value.
COUNTER_COLUMNS = {
    "rx_bytes": RX_BYTES, "tx_bytes": TX_BYTES,
    "rx_packets": RX_PACKETS, "tx_packets": TX_PACKETS,
    "syscalls": SYSCALLS, "connects": CONNECT_COUNT, "connect_failures": CONNECT_FAILURES,
    "retransmits": RETRANSMITS, "drops": DROPS, "execs": EXECS, "dns": DNS_REQUESTS,
}
WANTED = set(COUNTER_COLUMNS.values()) | {SYSCALL_ERRORS, SYSCALL_BUCKET, CONNECT_BUCKET,
                                          DNS_BUCKET, PEER_BYTES}


@dataclass
class Scrape:
    """One /metrics text, parsed: sample name -> {labels: value}; `t` is when it was asked
    for (time.monotonic())."""
    t: float
    samples: dict[str, dict[Labels, float]]


def parse(text: str, t: float) -> Scrape:
    """Raises ValueError on text that is not the Prometheus exposition format."""
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in WANTED:
                samples[s.name][tuple(sorted(s.labels.items()))] = s.value
    return Scrape(t, dict(samples))


def pod_key(labels: Labels) -> PodKey | None:
    """The pod a series belongs to; None for samples of no pod (empty pod labels)."""
    d = dict(labels)
    if d.get("pod"):
        return d.get("namespace", ""), d["pod"]
    if d.get("pod_uid"):
        return "", d["pod_uid"]
    return None


def increase(before: float | None, after: float) -> float:
    if before is None or after < before:  # new series, or a counter reset
        return after
    return after - before


def increases(a: Scrape, b: Scrape, name: str) -> dict[Labels, float]:
    """Per series of `name` in the second scrape: its increase since the first."""
    old = a.samples.get(name, {})
    return {lab: increase(old.get(lab), v) for lab, v in b.samples.get(name, {}).items()}


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile(q) of cumulative counts by upper bound (must include +Inf)."""
    if not buckets or math.inf not in buckets:
        return None
    bounds = sorted(buckets)
    counts, run = [], 0.0
    for le in bounds:  # resets and scrape skew can make increases non-monotonic
        run = max(run, buckets[le])
        counts.append(run)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    for i, (le, c) in enumerate(zip(bounds, counts)):
        if c >= rank:
            if le == math.inf:
                return bounds[-2] if len(bounds) > 1 else None
            lower, below = (bounds[i - 1], counts[i - 1]) if i else (0.0, 0.0)
            if i == 0 and le <= 0:
                return le
            if c == below:
                return le
            return lower + (le - lower) * (rank - below) / (c - below)
    return None


@dataclass
class PodRow:
    namespace: str
    pod: str
    rx_bytes: float = 0.0
    tx_bytes: float = 0.0
    rx_packets: float = 0.0
    tx_packets: float = 0.0
    syscalls: float = 0.0
    errors: float | None = None          # failed / all syscalls in the interval
    syscall_p99: float | None = None     # seconds
    connects: float = 0.0                # established per second
    connect_p99: float | None = None     # seconds
    connect_failures: float = 0.0
    retransmits: float = 0.0
    drops: float = 0.0
    drop_reason: str = ""                # the reason with the most drops in the interval
    execs: float = 0.0
    dns: float = 0.0                     # DNS requests per second (answered or timed out)
    dns_failures: float | None = None    # names.DNS_FAILURE_RCODES / all, in the interval
    dns_p99: float | None = None         # seconds
    top_peer: str = ""                   # the peer with the most bytes in the interval
    _drop_reasons: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.pod}" if self.namespace else self.pod


def peer_name(labels: Labels) -> str:
    """A peer series' other end, short: "ns/workload", "svc ns/name", or the network's name
    (node, world, other, a --peer-cidrs name)."""
    ns, workload, service, network = (dict(labels).get(k, "") for k in names.PEER_ID_LABELS)
    if workload:
        return f"{ns}/{workload}"
    if service:
        return f"svc {ns}/{service}"
    return network or "-"


def pod_rates(a: Scrape, b: Scrape, q: float = 0.99) -> tuple[list[PodRow], float]:
    """One row per pod seen in the second scrape, and the seconds between the scrapes."""
    seconds = b.t - a.t
    if seconds <= 0:
        raise ValueError("the second scrape is not later than the first")
    rows: dict[PodKey, PodRow] = {}
    dns_failed: dict[PodKey, float] = defaultdict(float)

    def row(labels: Labels) -> PodRow | None:
        key = pod_key(labels)
        if key is None:
            return None
        if key not in rows:
            rows[key] = PodRow(*key)
        return rows[key]

    for column, name in COUNTER_COLUMNS.items():
        for labels, inc in increases(a, b, name).items():
            r = row(labels)
            if r is None:
                continue
            setattr(r, column, getattr(r, column) + inc)
            if column == "drops" and inc:
                reason = dict(labels).get("reason", "")
                r._drop_reasons[reason] = r._drop_reasons.get(reason, 0.0) + inc
            if column == "dns" and dict(labels).get("rcode") in names.DNS_FAILURE_RCODES:
                dns_failed[pod_key(labels)] += inc
    peer_bytes: dict[PodKey, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for labels, inc in increases(a, b, PEER_BYTES).items():
        if (key := pod_key(labels)) is not None:
            row(labels)
            if inc:
                peer_bytes[key][peer_name(labels)] += inc   # both directions
    errors: dict[PodKey, float] = defaultdict(float)
    for labels, inc in increases(a, b, SYSCALL_ERRORS).items():
        if (key := pod_key(labels)) is not None:
            row(labels)
            errors[key] += inc
    hists: dict[str, dict[PodKey, dict[float, float]]] = {}
    for column, name in (("syscall_p99", SYSCALL_BUCKET), ("connect_p99", CONNECT_BUCKET),
                         ("dns_p99", DNS_BUCKET)):
        per_pod: dict[PodKey, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for labels, inc in increases(a, b, name).items():
            if (key := pod_key(labels)) is None:
                continue
            row(labels)
            per_pod[key][float(dict(labels)["le"])] += inc
        hists[column] = per_pod

    for key, r in rows.items():
        calls = r.syscalls
        r.errors = errors[key] / calls if calls > 0 else None
        r.dns_failures = dns_failed[key] / r.dns if r.dns > 0 else None
        for column, per_pod in hists.items():
            setattr(r, column, quantile(q, per_pod.get(key, {})))
        if r._drop_reasons:
            r.drop_reason = max(sorted(r._drop_reasons), key=r._drop_reasons.__getitem__)
        if peers := peer_bytes.get(key):
            r.top_peer = max(sorted(peers), key=peers.__getitem__)
        for column in COUNTER_COLUMNS:
            setattr(r, column, getattr(r, column) / seconds)
    return list(rows.values()), seconds


# Sorting: text columns ascending, figures descending (biggest first, like top), "no value"
# (None) last either way.
TEXT_COLUMNS = ("pod", "drop_reason", "top_peer")


def sort_rows(rows: list[PodRow], column: str, reverse: bool = False) -> list[PodRow]:
    def value(r: PodRow):
        return r.name if column == "pod" else getattr(r, column)

    have = [r for r in rows if value(r) not in (None, "")]
    missing = sorted((r for r in rows if value(r) in (None, "")), key=lambda r: r.name)
    descending = column not in TEXT_COLUMNS
    have.sort(key=lambda r: r.name)                       # ties: by name
    have.sort(key=value, reverse=descending != reverse)   # stable
    return have + missing


def filter_namespaces(rows: list[PodRow], namespaces: list[str] | None) -> list[PodRow]:
    if not namespaces:
        return rows
    return [r for r in rows if r.namespace in namespaces]

"""How `podsnoop top` draws its table (rich): a wide layout, one figure per column, and a
narrow one for 80-column terminals, two figures stacked in each cell."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich import box
from rich.table import Table
from rich.text import Text

from .rates import PodRow

WIDE_MIN_WIDTH = 190   # below this many columns the narrow layout is used


def si(v: float | None) -> str:
    """3 significant figures with k/M/G: 0, 0.25, 3.40, 55.0, 812, 1.23k, 45.6M."""
    if v is None:
        return "-"
    if v == 0:
        return "0"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if abs(v) >= scale * 0.9995 or scale == 1:
            x = v / scale
            break
    if abs(x) >= 99.95:
        return f"{x:.0f}{suffix}"
    if abs(x) >= 9.995:
        return f"{x:.1f}{suffix}"
    return f"{x:.2f}{suffix}"


def duration(v: float | None) -> str:
    if v is None:
        return "-"
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "us")):
        if v >= scale * 0.9995:
            return si(v / scale) + unit
    return si(v * 1e9) + "ns"


def percent(v: float | None) -> str:
    if v is None:
        return "-"
    p = v * 100
    if p == 0:
        return "0%"
    return f"{p:.0f}%" if p >= 9.95 else f"{p:.1f}%"


@dataclass(frozen=True)
class Column:
    key: str                       # sort key (--sort) and PodRow attribute
    header: str
    fmt: Callable[[object], str]
    meaning: str


COLUMNS = (
    Column("pod", "NAMESPACE/POD", str, "namespace/pod (the pod UID without names)"),
    Column("rx_bytes", "RX B/s", si, "bytes/s into the pod"),
    Column("tx_bytes", "TX B/s", si, "bytes/s out of the pod"),
    Column("rx_packets", "RX p/s", si, "packets/s into the pod"),
    Column("tx_packets", "TX p/s", si, "packets/s out of the pod"),
    Column("syscalls", "SYSC/s", si, "syscalls/s"),
    Column("errors", "ERR%", percent, "share of syscalls that failed"),
    Column("syscall_p99", "SYS p99", duration, "p99 syscall latency"),
    Column("connects", "CONN/s", si, "TCP connects established/s"),
    Column("connect_p99", "CON p99", duration, "p99 TCP connect latency"),
    Column("connect_failures", "CFAIL/s", si, "TCP connects failed/s"),
    Column("retransmits", "RETR/s", si, "TCP segments retransmitted/s"),
    Column("drops", "DROP/s", si, "packets dropped/s"),
    Column("drop_reason", "DROP REASON", lambda v: v or "-", "the most frequent drop reason"),
    Column("execs", "EXEC/s", si, "execs/s"),
    Column("dns", "DNS/s", si, "DNS requests/s (answered or timed out)"),
    Column("dns_failures", "DNSF%", percent,
           "share of DNS requests that got SERVFAIL or REFUSED or timed out"),
    Column("dns_p99", "DNS p99", duration, "p99 DNS request latency"),
    Column("top_peer", "TOP PEER", lambda v: v or "-",
           "the peer with the most bytes (both ways): ns/workload, svc ns/name, or a network"),
)
BY_KEY = {c.key: c for c in COLUMNS}
SORT_KEYS = tuple(c.key for c in COLUMNS)

# Narrow layout: cells of two stacked figures (top line, bottom line).
NARROW = (
    ("rx_bytes", "tx_bytes"), ("rx_packets", "tx_packets"), ("syscalls", "errors"),
    ("syscall_p99", "execs"), ("connects", "connect_failures"), ("connect_p99", "retransmits"),
    ("dns", "dns_p99"), ("drops", "drop_reason"),
)   # (no room for DNSF% and TOP PEER at 80 columns: the wide layout has them)
TEXT = ("pod", "drop_reason", "top_peer")   # left-aligned


def cell(row: PodRow, key: str) -> str:
    if key == "pod":
        return row.name or "-"
    return BY_KEY[key].fmt(getattr(row, key))


def _header(key: str, sort: str, reverse: bool) -> Text:
    title = BY_KEY[key].header
    if key != sort:
        return Text(title)
    return Text(title + "*", style="bold reverse")


def table(rows: list[PodRow], sort: str, reverse: bool, narrow: bool) -> Table:
    t = Table(box=None if not narrow else box.SIMPLE_HEAD, padding=(0, 1),
              collapse_padding=True, pad_edge=False, show_edge=False, expand=False)
    if not narrow:
        for c in COLUMNS:
            t.add_column(_header(c.key, sort, reverse), no_wrap=True,
                         justify="left" if c.key in TEXT else "right")
        for r in rows:
            t.add_row(*(cell(r, c.key) for c in COLUMNS))
        return t
    pod_header = Text("NAMESPACE\n") + (Text("POD*", style="bold reverse") if sort == "pod"
                                         else Text("POD"))
    t.add_column(pod_header, no_wrap=True, overflow="ellipsis", min_width=10, max_width=24)
    for top, bottom in NARROW:
        t.add_column(_header(top, sort, reverse) + Text("\n") + _header(bottom, sort, reverse),
                     no_wrap=True, overflow="ellipsis",
                     justify="left" if bottom in TEXT else "right",
                     max_width=12 if bottom in TEXT else None)
    for r in rows:
        name = f"{r.namespace}\n{r.pod}" if r.namespace else f"-\n{r.pod}"
        t.add_row(name, *(f"{cell(r, top)}\n{cell(r, bottom)}" for top, bottom in NARROW))
    return t

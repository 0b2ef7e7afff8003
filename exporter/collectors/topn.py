"""Bounded naming of one label per container: the top N names get their own series, the
rest is "other". Shared by the syscall (label `syscall`) and exec (label `comm`) collectors.

Each scrape hands a container's increases per name to TopN.apply, which adds them to the
exported counters, so every exported counter only ever grows. The `top` names with the most
events (counted since the container was first seen) are named. A name replaces the weakest
named one only when it has twice its events (no flapping at the boundary); a replaced name's
series ends and its further events count under "other". With an allowlist, exactly those
names are named. A node-wide cap on named series folds the rest into "other" and counts how
often it bit (`cap_dropped`).
"""
from __future__ import annotations

from typing import Sequence

OTHER = "other"


class NamedCounters:
    """What one container has exported so far for one named label.

    Each value is a list of counters (e.g. [calls, errors]); the first one ranks the names.
    """
    __slots__ = ("ranking", "named", "other")

    def __init__(self, width: int = 1):
        self.ranking: dict[str, int] = {}       # name -> events seen, for the top N
        self.named: dict[str, list[int]] = {}   # named series -> counters
        self.other = [0] * width


class TopN:
    def __init__(self, top: int, allowlist: frozenset[str] | None = None,
                 series_cap: int = 20000):
        self.top = top
        self.allowlist = allowlist
        self.series_cap = series_cap
        self.named_total = 0   # named series node-wide (without an allowlist)
        self.cap_dropped = 0

    def rank(self, counters: NamedCounters) -> set[str]:
        """The names this container exports by name after this scrape."""
        if self.allowlist is not None:
            return set(counters.ranking) & self.allowlist
        current = set(counters.named)
        by_events = sorted(counters.ranking.items(), key=lambda kv: -kv[1])
        events_of = dict(by_events)
        for name, n in by_events[: self.top]:
            if name in current:
                continue
            if len(current) < self.top:
                if self.named_total >= self.series_cap:
                    self.cap_dropped += 1
                    continue
                current.add(name)
                self.named_total += 1
                continue
            weakest = min(current, key=lambda c: events_of.get(c, 0))
            if n > 2 * events_of.get(weakest, 0):
                current.discard(weakest)
                current.add(name)
        return current

    def apply(self, counters: NamedCounters, deltas: dict[str, Sequence[int]]) -> None:
        """Add one scrape's increases per name to the container's exported counters."""
        for name, values in deltas.items():
            counters.ranking[name] = counters.ranking.get(name, 0) + values[0]
        named = self.rank(counters)
        for name in list(counters.named):
            if name not in named:  # replaced: its series ends, later events go to "other"
                del counters.named[name]
        for name, values in deltas.items():
            if name in named:
                acc = counters.named.setdefault(name, [0] * len(values))
            else:
                acc = counters.other
            for i, v in enumerate(values):
                acc[i] += v

    def release(self, counters: NamedCounters) -> None:
        """The container's series are gone (grace period over): free its named slots."""
        if self.allowlist is None:
            self.named_total -= len(counters.named)

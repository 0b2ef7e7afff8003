"""Per-scrape increases of cumulative BPF map values, per owner (container, pod).

The tracepoint and cgroup programs (exec, tcp, drops, container network) count in per-CPU
hashes. Each scrape reads every key, sums its per-CPU values, subtracts what the previous
scrape saw, and attributes the increase to the owner of the key's id (a cgroup, a network
namespace, a host veth), so exported counters only grow whatever happens to the keys: an id
can resolve late or disappear. The same approach as collectors/syscalls.py.

- An id that resolves is its owner's, e.g. a cgroup's (pod_uid, container_id).
- One that resolved before and does not any more is gone: its last increase goes to its
  owner, and its keys are deleted from the map (the kernel may reuse the id).
- One that never resolved belongs to no known pod: its increase goes to the unresolved
  owner (empty pod labels, one bounded group so totals add up) and its keys are drained
  each scrape, since nothing says when such an id goes away.
"""
from __future__ import annotations

from typing import Callable

from .bpfmaps import ctypes_key, read_summed

UNRESOLVED = ("", "")  # (pod_uid, container_id) of cgroups that belong to no known pod


class KeyedDeltas:
    """The increases of cumulative BPF map values since the last scrape, per owner.

    `id_of(key)` names what a key belongs to in the kernel (a cgroup id, a network namespace
    or interface); `resolve(ids)` maps a set of those to owners (None: unknown now).
    """

    def __init__(self, resolve: Callable[[set], dict], id_of: Callable[[object], object],
                 unresolved_owner=UNRESOLVED):
        self.resolve = resolve
        self.id_of = id_of
        self.unresolved_owner = unresolved_owner
        self._known: dict = {}                           # id -> owner
        self._last: dict[tuple[int, bytes], tuple] = {}  # (table index, raw key) -> seen
        self.unresolved = 0   # ids with events that resolve to no owner (last scrape)

    def take(self, tables: list):
        """Read every table; returns ([rows per table], live owners, [entries per table]).

        A row is (owner, key, increase tuple): the increase of each of the value's u64
        fields (summed over CPUs). Live owners are those whose ids resolve now.
        """
        items = [read_summed(table) for table in tables]
        ids = {self.id_of(key) for rows in items for key, _ in rows}
        owner: dict = {}
        drop: set = set()
        live: set = set()
        unresolved = 0
        for kid, resolved in self.resolve(ids).items():
            if resolved is not None:
                owner[kid] = self._known[kid] = resolved
                live.add(resolved)
            elif kid in self._known:  # resolved before, missing now: gone
                owner[kid] = self._known.pop(kid)
                drop.add(kid)
            else:
                owner[kid] = self.unresolved_owner
                drop.add(kid)
                unresolved += 1
        if unresolved:
            live.add(self.unresolved_owner)
        out = []
        for index, (table, rows) in enumerate(zip(tables, items)):
            deltas = []
            for key, seen in rows:
                k = (index, key)
                prev = self._last.get(k)
                delta = seen if prev is None else tuple(a - b for a, b in zip(seen, prev))
                kid = self.id_of(key)
                deltas.append((owner[kid], key, delta))
                if kid in drop:
                    self._last.pop(k, None)
                    try:
                        del table[ctypes_key(table, key)]
                    except KeyError:
                        pass
                else:
                    self._last[k] = seen
            out.append(deltas)
        self.unresolved = unresolved
        return out, live, [len(rows) for rows in items]


class CgroupDeltas(KeyedDeltas):
    """Keys that start with a cgroup id; owners are (pod_uid, container_id)."""

    def __init__(self, resolver):
        def resolve(ids):
            return {cid: (info.pod_uid, info.container_id) if info is not None else None
                    for cid, info in resolver.resolve_many(ids).items()}
        super().__init__(resolve, lambda key: key.cgroup_id)


def container_labels(labeler) -> Callable[[tuple[str, str]], list[str]]:
    """(pod_uid, container_id) -> [namespace, pod, pod_uid, container, container_id],
    cached for one scrape."""
    cache: dict[tuple, list[str]] = {}

    def labels_of(owner: tuple[str, str]) -> list[str]:
        if owner not in cache:
            uid, cid = owner
            namespace, pod = labeler.pod(uid)
            cache[owner] = [namespace, pod, uid, labeler.container(uid, cid), cid]
        return cache[owner]
    return labels_of


def map_families(maps: list[tuple[str, object, int, int]]):
    """podsnoop_bpf_map_{entries,max_entries,update_failures_total} for (name, table,
    entries, failures) rows; ScrapeCollector merges them with the other collectors'."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from .. import names
    e = GaugeMetricFamily(names.BPF_MAP_ENTRIES, "Entries in a BPF map.", labels=["map"])
    m = GaugeMetricFamily(names.BPF_MAP_MAX_ENTRIES, "Capacity of a BPF map.", labels=["map"])
    f = CounterMetricFamily(names.BPF_MAP_UPDATE_FAILURES,
                            "Counter updates lost because a BPF map was full.", labels=["map"])
    for name, table, entries, failures in maps:
        e.add_metric([name], entries)
        m.add_metric([name], table.max_entries)
        f.add_metric([name], failures)
    return e, m, f


def percpu_slot(table, slot: int) -> int:
    """Total over CPUs of one slot of a per-CPU u64 array."""
    try:
        return sum(int(v) for v in table[table.Key(slot)])
    except KeyError:
        return 0

"""Reading bcc maps: batch lookups where the kernel has them, per-CPU values summed."""
from __future__ import annotations


def read_items(table) -> list:
    """All (key, value) pairs; one syscall per batch instead of two per key."""
    try:
        return list(table.items_lookup_batch())
    except Exception:  # kernels or map types without batch ops
        return list(table.items())


def sum_percpu(values, fields: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(sum(getattr(v, f) for v in values) for f in fields)


def sum_counter_array(table, slot: int = 0) -> int:
    """Total over CPUs of one slot of a per-CPU u64 array (e.g. update-failure counters)."""
    try:
        return sum(int(v) for v in table[table.Key(slot)])
    except KeyError:
        return 0

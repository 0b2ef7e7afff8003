"""exporter/collectors/bpfmaps.py's batch reader returns what bcc's own reader returns, for
per-CPU and plain maps, larger than one batch (bpfmaps.CHUNK) and empty."""
from __future__ import annotations

import ctypes as ct
import random

import pytest

from exporter import bpfload
from exporter.collectors import bpfmaps


@pytest.fixture(scope="module")
def maps(kernel):
    bpf = bpfload.compile_program("testing/maps", [])
    yield bpf
    bpf.cleanup()


def bcc_sums(table) -> dict[bytes, tuple[int, ...]]:
    """The reference: bcc's item-by-item read, per-CPU values summed field by field."""
    out = {}
    for key, value in table.items():
        per_cpu = list(value) if isinstance(value, ct.Array) else [value]
        if isinstance(per_cpu[0], ct.Structure):
            sums = tuple(sum(getattr(v, name) for v in per_cpu)
                         for name, *_ in per_cpu[0]._fields_)
        else:
            sums = (sum(int(getattr(v, "value", v)) for v in per_cpu),)
        out[bytes(key)] = sums
    return out


def fill_percpu(table, n: int, fields: int) -> None:
    rng = random.Random(n)
    for i in range(n):
        key = table.Key(i * 7919, i % 5) if fields == 2 else table.Key(i)
        values = table.Leaf()
        for cpu in range(table.total_cpu):
            if fields == 2:
                values[cpu].first = rng.randrange(1 << 40)
                values[cpu].second = rng.randrange(1 << 62)
            else:
                values[cpu] = rng.randrange(1 << 50)
        table[key] = values


@pytest.mark.parametrize("name,fields,n", [("percpu_pairs", 2, 3000),
                                           ("percpu_counts", 1, bpfmaps.CHUNK)])
def test_percpu_maps_read_as_bcc_reads_them(maps, name, fields, n):
    table = maps[name]
    table.clear()
    assert bpfmaps.read_summed(table) == []
    fill_percpu(table, n, fields)
    ours = {bytes(bpfmaps.ctypes_key(table, k)): v for k, v in bpfmaps.read_summed(table)}
    assert len(ours) == n
    assert ours == bcc_sums(table)
    assert table._podsnoop_reader is not None  # the batch path, not bcc's fallback


def test_plain_map_reads_as_bcc_reads_it(maps):
    table = maps["plain_pairs"]
    table.clear()
    for i in range(2500):
        table[table.Key(i)] = table.Leaf(i * 3, (1 << 63) + i)
    rows = bpfmaps.read_summed(table)
    assert {bytes(bpfmaps.ctypes_key(table, k)): v for k, v in rows} == bcc_sums(table)
    assert sorted(k.value for k, _ in rows) == list(range(2500))  # keys decoded


def test_keys_decode_to_their_fields(maps):
    table = maps["percpu_pairs"]
    table.clear()
    fill_percpu(table, 3, 2)
    keys = sorted(k for k, _ in bpfmaps.read_summed(table))
    assert [(k.id, k.slot) for k in keys] == [(0, 0), (7919, 1), (2 * 7919, 2)]
    del table[bpfmaps.ctypes_key(table, keys[1])]
    assert sorted(k.id for k, _ in bpfmaps.read_summed(table)) == [0, 2 * 7919]

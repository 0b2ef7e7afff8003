"""Reading bcc maps: whole maps in a few batch syscalls, per-CPU values summed in bulk.

bcc's own batch read allocates arrays for max_entries keys and values on every call and
builds a ctypes object per value and per CPU; at a few thousand keys that was most of a
scrape. read_summed() reuses one buffer per map, reads it in chunks with
BPF_MAP_LOOKUP_BATCH, and sums each value's u64 fields over the CPUs with list slices.
Every podsnoop map value is a u64 or a struct of u64 counters (bpf/*.c), which is what
makes the bulk sum possible; other layouts fall back to bcc's reader.
"""
from __future__ import annotations

import ctypes as ct
import errno
import struct
from collections import namedtuple
from functools import lru_cache
from operator import add

CHUNK = 1024  # keys per batch syscall
ENOTSUPP = 524  # the kernel's internal 'operation not supported' (no errno name)
# bpf_map_type values of per-CPU maps: PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH.
_PERCPU_TYPES = {5, 6, 10}


_STRUCT_CODES = {ct.c_uint8: "B", ct.c_int8: "b", ct.c_uint16: "H", ct.c_int16: "h",
                 ct.c_uint32: "I", ct.c_int32: "i", ct.c_uint64: "Q", ct.c_int64: "q",
                 ct.c_char: "c", ct.c_bool: "?"}


@lru_cache(maxsize=None)
def key_layout(Key) -> tuple[type, struct.Struct]:
    """A named tuple type with the fields of bcc's ctypes key type, and the struct format
    that decodes the key's bytes into it (explicit pad bytes where the C struct has holes).
    Named tuples are hashable, and their fields read far faster than ctypes attributes."""
    if not issubclass(Key, ct.Structure):
        return namedtuple("Key", ["value"]), struct.Struct("=" + _STRUCT_CODES[Key])
    fmt, at, fields = "=", 0, []
    for name, ctype, *_ in Key._fields_:
        offset = getattr(Key, name).offset
        fmt += "x" * (offset - at)
        if issubclass(ctype, ct.Array):  # char[] or padding: its bytes
            fmt += f"{ct.sizeof(ctype)}s"
        else:
            fmt += _STRUCT_CODES[ctype]  # KeyError: a layout we do not decode
        fields.append(name.lstrip("_") or "pad")
        at = offset + ct.sizeof(ctype)
    fmt += "x" * (ct.sizeof(Key) - at)
    return namedtuple("Key", fields, rename=True), struct.Struct(fmt)


def ctypes_key(table, key):
    """bcc's key object for a key read_summed() returned (to delete it from the map)."""
    if isinstance(key, ct._SimpleCData | ct.Structure):
        return key
    return table.Key.from_buffer_copy(key_layout(table.Key)[1].pack(*key))


class _Reader:
    """Buffers and layout of one map, made on first use."""

    def __init__(self, table):
        from ..bpffd import libbpf  # not bcc's libbcc: that maps LLVM (see bpffd.py)
        self._lookup_batch = libbpf().bpf_map_lookup_batch
        self.fd = table.map_fd
        self.Key = table.Key
        self.key_size = ct.sizeof(table.Key)
        percpu = getattr(table, "ttype", None) in _PERCPU_TYPES
        leaf = table.sLeaf if percpu else table.Leaf
        leaf_size = ct.sizeof(leaf)
        self.ncpu = table.total_cpu if percpu else 1
        if leaf_size % 8:
            raise ValueError("value is not made of u64 fields")
        self.fields = leaf_size // 8
        self.stride = leaf_size * self.ncpu  # bytes per entry in the values buffer
        self.Row, self.key_struct = key_layout(table.Key)
        self.keys = ct.create_string_buffer(self.key_size * CHUNK)
        self.values = ct.create_string_buffer(self.stride * CHUNK)

    def _keys(self, n: int) -> list:
        return list(map(self.Row._make, self.key_struct.iter_unpack(
            memoryview(self.keys)[:n * self.key_size])))

    def _sums(self, n: int) -> list[tuple[int, ...]]:
        """Each entry's fields summed over CPUs: one C-level pass per (field, CPU) over all
        entries (strided slices, map(add)) instead of Python work per value."""
        q = memoryview(self.values).cast("B")[:n * self.stride].cast("Q").tolist()
        nf, step = self.fields, self.fields * self.ncpu
        columns = []
        for f in range(nf):
            column = q[f::step]
            for cpu in range(1, self.ncpu):
                column = list(map(add, column, q[cpu * nf + f::step]))
            columns.append(column)
        return list(zip(*columns))

    def read(self) -> list[tuple[object, tuple[int, ...]]]:
        out: list = []
        token, count = ct.c_uint32(0), ct.c_uint32(0)
        first = True
        while True:
            count.value = CHUNK
            res = self._lookup_batch(self.fd, None if first else ct.byref(token),
                                     ct.byref(token), self.keys, self.values, ct.byref(count),
                                     None)
            err = ct.get_errno()
            if res != 0 and err != errno.ENOENT:
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {errno.errorcode.get(err, err)}")
            n = count.value
            if n:
                out.extend(zip(self._keys(n), self._sums(n)))
            if res != 0:  # ENOENT: that was the last chunk
                return out
            first = False


def read_summed(table) -> list[tuple[object, tuple[int, ...]]]:
    """All (key, values) pairs of a map, each value as its u64 fields summed over CPUs,
    e.g. (packets, bytes) or (count,)."""
    reader = getattr(table, "_podsnoop_reader", False)
    if reader is False:
        try:
            reader = _Reader(table)
        except (ValueError, AttributeError, ImportError, KeyError):
            reader = None
        table._podsnoop_reader = reader
    if reader is not None:
        try:
            return reader.read()
        except OSError as e:
            if e.errno not in (errno.EINVAL, ENOTSUPP):
                raise
            table._podsnoop_reader = None  # a kernel without batch ops for this map type
    Row, layout = key_layout(table.Key)
    return [(Row._make(layout.unpack(bytes(key))), _sum_values(value))
            for key, value in read_items(table)]


def _sum_values(value) -> tuple[int, ...]:
    """bcc's value (per-CPU: an array of them) as a tuple of u64 fields summed over CPUs."""
    per_cpu = list(value) if isinstance(value, ct.Array) else [value]
    if isinstance(per_cpu[0], ct.Structure):
        return tuple(sum(getattr(v, name) for v in per_cpu)
                     for name, *_ in per_cpu[0]._fields_)
    return (sum(int(getattr(v, "value", v)) for v in per_cpu),)


def c_string(value) -> str:
    """A char[] field (bcc gives bytes up to the first NUL; a decoded key gives all of
    them) as text."""
    return bytes(value).split(b"\0", 1)[0].decode("utf-8", errors="replace")


def read_items(table) -> list:
    """All (key, value) pairs through bcc; one syscall per batch instead of two per key."""
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

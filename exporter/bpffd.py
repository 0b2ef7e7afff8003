"""BPF programs and maps held by file descriptor only: what the serving process uses.

podsnoop's programs are precompiled objects that libbpf loads (exporter/bpfobject.py),
after which only the file descriptors of their maps, programs and attachments are kept.
This module gives the collectors objects with the parts of bcc's interface they use (`bpf["map"]`, a table's Key, Leaf,
sLeaf, map_fd, ttype, max_entries, total_cpu, item get/set/delete, keys(), ring buffers,
`load_func(name, type).fd`, `cleanup()`) on top of libbpf's fd-based calls.

Importing bcc maps libbcc and with it libLLVM and libclang (~60 MB resident by itself), so
nothing here imports bcc: map access goes through libbpf.so.1 (a few hundred KB), and the
key and value types are ctypes types built from a plain description (type_spec /
build_type) that the object's BTF gives (btf.BTF.ctypes_spec).
"""
from __future__ import annotations

import ctypes as ct
import ctypes.util
import os
from functools import lru_cache

# bpf_map_type values (include/uapi/linux/bpf.h)
MAP_HASH, MAP_ARRAY, MAP_PERCPU_HASH, MAP_PERCPU_ARRAY = 1, 2, 5, 6
MAP_LRU_HASH, MAP_LRU_PERCPU_HASH, MAP_RINGBUF = 9, 10, 27
ARRAY_TYPES = {MAP_ARRAY, MAP_PERCPU_ARRAY}
PERCPU_TYPES = {MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH}

RING_BUFFER_SAMPLE_FN = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)


@lru_cache(maxsize=1)
def libbpf():
    """libbpf.so.1 with the calls used here; they return 0 or a negative errno and set errno."""
    lib = ct.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    lib.ring_buffer__new.restype = ct.c_void_p
    lib.ring_buffer__new.argtypes = [ct.c_int, RING_BUFFER_SAMPLE_FN, ct.c_void_p, ct.c_void_p]
    lib.ring_buffer__add.argtypes = [ct.c_void_p, ct.c_int, RING_BUFFER_SAMPLE_FN, ct.c_void_p]
    lib.ring_buffer__poll.argtypes = [ct.c_void_p, ct.c_int]
    lib.ring_buffer__consume.argtypes = [ct.c_void_p]
    lib.ring_buffer__free.argtypes = [ct.c_void_p]
    lib.ring_buffer__free.restype = None
    lib.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
    return lib


def possible_cpus() -> int:
    """Number of possible CPUs (the kernel's per-CPU value count), as bcc counts them."""
    count = 0
    with open("/sys/devices/system/cpu/possible") as f:
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            count += int(hi or lo) - int(lo) + 1
    return count


# -- ctypes types as plain data (sent by the loader, rebuilt here) -------------------------
def type_spec(t) -> tuple:
    """A picklable description of a ctypes type made by bcc (simple types, arrays,
    structs and unions with bit fields, anonymous members and packing)."""
    if isinstance(t, type) and issubclass(t, (ct.Structure, ct.Union)):
        fields = []
        for f in t._fields_:
            fields.append((f[0], type_spec(f[1]), *f[2:]))
        return ("union" if issubclass(t, ct.Union) else "struct", t.__name__,
                getattr(t, "_pack_", 0), tuple(getattr(t, "_anonymous_", ())), tuple(fields))
    if isinstance(t, type) and issubclass(t, ct.Array):
        return ("array", type_spec(t._type_), t._length_)
    name = t.__name__
    if getattr(ct, name, None) is not t:
        raise TypeError(f"cannot describe ctypes type {t!r}")
    return ("simple", name)


@lru_cache(maxsize=None)
def build_type(spec: tuple):
    kind = spec[0]
    if kind == "simple":
        return getattr(ct, spec[1])
    if kind == "array":
        return build_type(spec[1]) * spec[2]
    _, name, pack, anonymous, fields = spec
    attrs = {"_anonymous_": list(anonymous),
             "_fields_": [(f[0], build_type(f[1]), *f[2:]) for f in fields]}
    if pack:
        attrs["_pack_"] = pack
    return type(name, (ct.Union if kind == "union" else ct.Structure,), attrs)


# -- tables ----------------------------------------------------------------------------------
class FdTable:
    """One BPF map by fd, with bcc's table interface (what podsnoop uses of it)."""

    def __init__(self, name: str, fd: int, ttype: int, max_entries: int, flags: int,
                 key_spec: tuple, leaf_spec: tuple, event_spec: tuple | None = None):
        self.name = name
        self.map_fd = fd
        self.ttype = ttype
        self.max_entries = max_entries
        self.flags = flags
        self.Key = build_type(key_spec)
        self.Leaf = build_type(leaf_spec)
        self._event_class = build_type(event_spec) if event_spec else None
        self._lib = libbpf()
        self._widen = False
        if ttype in PERCPU_TYPES:
            self.sLeaf = self.Leaf
            self.total_cpu = possible_cpus()
            if ct.sizeof(self.sLeaf) % 8 == 0:
                self.Leaf = self.sLeaf * self.total_cpu
            elif self.sLeaf in (ct.c_uint, ct.c_int):  # the kernel pads each to 8 bytes
                self.Leaf = (ct.c_uint64 if self.sLeaf is ct.c_uint else ct.c_int64) \
                    * self.total_cpu
                self._widen = True
            else:
                raise IndexError("Leaf must be aligned to 8 bytes")

    def get_fd(self) -> int:
        return self.map_fd

    def _key(self, key):
        if isinstance(key, int) and self.ttype in ARRAY_TYPES:
            return self.Key(key)
        return key

    def __getitem__(self, key):
        leaf = self.Leaf()
        if self._lib.bpf_map_lookup_elem(self.map_fd, ct.byref(self._key(key)),
                                         ct.byref(leaf)) < 0:
            raise KeyError(key)
        if self._widen:
            narrow = (self.sLeaf * self.total_cpu)()
            for i in range(self.total_cpu):
                narrow[i] = leaf[i]
            return narrow
        return leaf

    def __setitem__(self, key, leaf) -> None:
        if self._lib.bpf_map_update_elem(self.map_fd, ct.byref(self._key(key)),
                                         ct.byref(leaf), 0) < 0:
            raise Exception("Could not update table: %s" % os.strerror(ct.get_errno()))

    def __delitem__(self, key) -> None:
        if self.ttype in ARRAY_TYPES:  # array entries cannot be deleted: zero them (as bcc)
            self[key] = self.Leaf()
            return
        if self._lib.bpf_map_delete_elem(self.map_fd, ct.byref(self._key(key))) < 0:
            raise KeyError(key)

    def __contains__(self, key) -> bool:
        try:
            self[key]
            return True
        except KeyError:
            return False

    def next(self, key):
        nxt = self.Key()
        if self._lib.bpf_map_get_next_key(self.map_fd, None if key is None else ct.byref(key),
                                          ct.byref(nxt)) < 0:
            raise StopIteration()
        return nxt

    def __iter__(self):
        key = None
        while True:
            try:
                key = self.next(key)
            except StopIteration:
                return
            yield key

    def keys(self):
        return self.__iter__()

    def items(self) -> list:
        out = []
        for key in self:
            try:
                out.append((key, self[key]))
            except KeyError:  # deleted meanwhile
                pass
        return out

    def values(self) -> list:
        return [v for _, v in self.items()]

    def items_lookup_batch(self):
        return iter(self.items())

    def clear(self) -> None:
        for key in list(self.keys()):
            try:
                del self[key]
            except KeyError:
                pass

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # ring buffers
    def event(self, data):
        if self._event_class is None:
            raise TypeError(f"map {self.name} has no event type")
        return ct.cast(data, ct.POINTER(self._event_class)).contents

    def open_ring_buffer(self, callback, ctx=None) -> None:
        self._program._open_ring_buffer(self, callback, ctx)


class Function:
    def __init__(self, name: str, fd: int):
        self.name = name
        self.fd = fd


class FdProgram:
    """What one compiled bpf/<name>.c is in the serving process: its maps, its programs and
    the attachments that live as long as their fds (tracepoints, raw tracepoints)."""

    SCHED_CLS, CGROUP_SKB = 3, 8  # bpf_prog_type values, as bcc's BPF.SCHED_CLS etc.

    def __init__(self, name: str, tables: dict[str, FdTable], funcs: dict[str, int],
                 attachments: list[int], info: dict | None = None):
        self.name = name
        self.tables = tables
        self.funcs = {n: Function(n, fd) for n, fd in funcs.items()}
        self.attachments = attachments
        self.info = info or {}
        self._ringbuf = None
        self._callbacks: list = []
        self._closed = False
        for table in tables.values():
            table._program = self

    def __getitem__(self, name):
        if isinstance(name, bytes):
            name = name.decode()
        return self.tables[name]

    def __contains__(self, name) -> bool:
        return (name.decode() if isinstance(name, bytes) else name) in self.tables

    def load_func(self, name, prog_type=None) -> Function:
        if isinstance(name, bytes):
            name = name.decode()
        try:
            return self.funcs[name]
        except KeyError:
            raise Exception(f"function {name} of {self.name}.c was not loaded") from None

    def _open_ring_buffer(self, table: FdTable, callback, ctx) -> None:
        def trampoline(_ctx, data, size):
            try:
                return int(callback(ctx, data, size) or 0)
            except Exception:  # never raise into libbpf
                return 0
        fn = RING_BUFFER_SAMPLE_FN(trampoline)
        self._callbacks.append(fn)  # keep it alive as long as libbpf may call it
        lib = libbpf()
        if self._ringbuf is None:
            rb = lib.ring_buffer__new(table.map_fd, fn, None, None)
            if not rb:
                raise OSError(ct.get_errno(), f"ring_buffer__new({table.name}) failed")
            self._ringbuf = rb
        elif lib.ring_buffer__add(self._ringbuf, table.map_fd, fn, None) < 0:
            raise OSError(ct.get_errno(), f"ring_buffer__add({table.name}) failed")

    def ring_buffer_poll(self, timeout: int = -1) -> int:
        if self._ringbuf is None:
            raise Exception("No ring buffers to poll")
        return libbpf().ring_buffer__poll(self._ringbuf, timeout)

    def ring_buffer_consume(self) -> int:
        if self._ringbuf is None:
            raise Exception("No ring buffers to poll")
        return libbpf().ring_buffer__consume(self._ringbuf)

    def cleanup(self) -> None:
        """Detach (close the attachment fds), then let go of programs and maps."""
        if self._closed:
            return
        self._closed = True
        if self._ringbuf is not None:
            libbpf().ring_buffer__free(self._ringbuf)
            self._ringbuf = None
        fds = [*self.attachments, *(f.fd for f in self.funcs.values()),
               *(t.map_fd for t in self.tables.values())]
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

"""A small reader of the kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets and
enum values of the running kernel.

bcc compiles podsnoop's programs against the kernel headers installed on the node, and those
can be older than the running kernel (e.g. Debian's 6.1 headers on a 6.18 kernel): a struct
layout taken from them would be wrong. Programs that must read kernel structs (the skb's
device, a socket's cgroup) therefore get each member's offset from BTF, which always
describes the running kernel, as -D flags, and read with bpf_probe_read_kernel. Enum values
(e.g. `enum skb_drop_reason`) come from here too, never from a hand-typed list.

Only what podsnoop needs is parsed; the format is the kernel's Documentation/bpf/btf.rst.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

VMLINUX = "/sys/kernel/btf/vmlinux"

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD = 1, 2, 3, 4, 5, 6, 7
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BTFError(Exception):
    pass


@dataclass
class Type:
    kind: int
    name_off: int
    size_or_type: int
    # struct/union: (name_off, type id, bit offset); enum: (name_off, value);
    # array: [elem, nelems]. Names are decoded only when asked for (parsing stays fast).
    members: list


_INDEXED = (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_TYPEDEF)


class BTF:
    def __init__(self, data: bytes, only_enums: frozenset[str] | None = None):
        """only_enums: keep just these enums (a few KB instead of the ~40 MB of the whole
        kernel's types; struct queries then find nothing)."""
        if len(data) < 24:
            raise BTFError("BTF data too short")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        endian = "<"
        if magic != 0xEB9F:
            if magic == 0x9FEB:
                endian = ">"
            else:
                raise BTFError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from(endian + "4I", data, 8)
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self.types: list[Type | None] = [None]  # id 0 is void
        self._parse(data[hdr_len + type_off: hdr_len + type_off + type_len], endian,
                    only_enums)
        self._by_name: dict[tuple[int, str], int] = {}
        for tid, t in enumerate(self.types):
            if t is not None and t.kind in _INDEXED and t.name_off:
                self._by_name.setdefault((t.kind, self._str(t.name_off)), tid)

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _parse(self, buf: bytes, e: str, only_enums: frozenset[str] | None = None) -> None:
        pos, n = 0, len(buf)
        head = struct.Struct(e + "3I")
        append = self.types.append
        while pos < n:
            name_off, info, size_or_type = head.unpack_from(buf, pos)
            pos += 12
            vlen, kind, kflag = info & 0xFFFF, (info >> 24) & 0x1F, info >> 31
            members: list = []
            if kind in (KIND_STRUCT, KIND_UNION):
                raw = struct.unpack_from(f"{e}{3 * vlen}I", buf, pos)
                pos += 12 * vlen
                if kflag:
                    members = [(raw[i], raw[i + 1], raw[i + 2] & 0xFFFFFF)
                               for i in range(0, 3 * vlen, 3)]
                else:
                    members = [(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, 3 * vlen, 3)]
            elif kind == KIND_INT:
                members = [struct.unpack_from(e + "I", buf, pos)[0]]  # encoding, bits
                pos += 4
            elif kind == KIND_VAR or kind == KIND_DECL_TAG:
                pos += 4
            elif kind == KIND_ARRAY:
                elem, _index, nelems = struct.unpack_from(e + "3I", buf, pos)
                members = [elem, nelems]
                pos += 12
            elif kind == KIND_ENUM:
                fmt = "Ii" if kflag else "II"
                members = [struct.unpack_from(e + fmt, buf, pos + 8 * i) for i in range(vlen)]
                pos += 8 * vlen
            elif kind == KIND_ENUM64:
                for i in range(vlen):
                    m_name, lo, hi = struct.unpack_from(e + "3I", buf, pos + 12 * i)
                    members.append((m_name, hi << 32 | lo))
                pos += 12 * vlen
            elif kind == KIND_FUNC_PROTO:
                pos += 8 * vlen
            elif kind == KIND_DATASEC:  # (var type id, offset, size) of each variable
                members = [struct.unpack_from(e + "3I", buf, pos + 12 * i) for i in range(vlen)]
                pos += 12 * vlen
            elif kind in (KIND_PTR, KIND_FWD, KIND_FUNC, KIND_FLOAT) or kind in _MODIFIERS:
                pass
            else:
                raise BTFError(f"unknown BTF kind {kind}")
            if only_enums is None or (kind in (KIND_ENUM, KIND_ENUM64)
                                      and self._str(name_off) in only_enums):
                append(Type(kind, name_off, size_or_type, members))

    # -- queries ---------------------------------------------------------------------------
    def _resolve(self, tid: int) -> int:
        """Skip typedefs and qualifiers."""
        while self.types[tid] is not None and self.types[tid].kind in _MODIFIERS:
            tid = self.types[tid].size_or_type
        return tid

    def struct_id(self, name: str) -> int:
        for kind in (KIND_STRUCT, KIND_UNION):
            tid = self._by_name.get((kind, name))
            if tid is not None:
                return tid
        tid = self._by_name.get((KIND_TYPEDEF, name))
        if tid is not None:
            return self._resolve(tid)
        raise BTFError(f"no struct {name} in the kernel's BTF")

    def _member(self, tid: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of a member, looking inside anonymous structs/unions."""
        t = self.types[self._resolve(tid)]
        if t is None or t.kind not in (KIND_STRUCT, KIND_UNION):
            return None
        for m_name, m_type, bit_off in t.members:
            if m_name and self._str(m_name) == name:
                return bit_off, m_type
        for m_name, m_type, bit_off in t.members:
            if not m_name:  # anonymous struct/union: its members are the parent's
                found = self._member(m_type, name)
                if found is not None:
                    return bit_off + found[0], found[1]
        return None

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a (dotted, nested) member, e.g. offset("sock", "__sk_common.skc_net")."""
        tid, bits = self.struct_id(struct_name), 0
        for part in path.split("."):
            found = self._member(tid, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path} in the kernel's BTF")
            bits += found[0]
            tid = found[1]
        if bits % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield")
        return bits // 8

    def size(self, struct_name: str, path: str | None = None) -> int:
        """sizeof a struct, or of one of its members."""
        tid = self.struct_id(struct_name)
        if path:
            for part in path.split("."):
                found = self._member(tid, part)
                if found is None:
                    raise BTFError(f"struct {struct_name} has no member {path}")
                tid = found[1]
        return self._sizeof(tid)

    def _sizeof(self, tid: int) -> int:
        tid = self._resolve(tid)
        t = self.types[tid]
        if t.kind == KIND_PTR:
            return 8
        if t.kind == KIND_ARRAY:
            return t.members[1] * self._sizeof(t.members[0])
        return t.size_or_type

    def datasec(self, name: str) -> dict[str, tuple[int, int]]:
        """Variables of a data section (e.g. an object's .rodata): name -> (offset, size)."""
        for t in self.types:
            if t is not None and t.kind == KIND_DATASEC and self._str(t.name_off) == name:
                return {self._str(self.types[var].name_off): (off, size)
                        for var, off, size in t.members}
        raise BTFError(f"no data section {name} in the BTF")

    def ctypes_spec(self, tid: int) -> tuple:
        """The type as exporter/bpffd.py's type_spec description (ctypes, rebuilt there):
        structs get explicit padding and _pack_ 1, so every member sits at its BTF offset."""
        tid = self._resolve(tid)
        t = self.types[tid]
        if t is None:
            raise BTFError("void has no layout")
        if t.kind == KIND_INT:
            if t.size_or_type == 1 and self._str(t.name_off) == "char":
                return ("simple", "c_char")  # char[] as bytes, as bcc maps them
            signed = t.members[0] >> 24 & 1
            return ("simple", {1: "c_int8", 2: "c_int16", 4: "c_int32", 8: "c_int64"}[
                t.size_or_type] if signed else {1: "c_uint8", 2: "c_uint16", 4: "c_uint32",
                                                 8: "c_uint64"}[t.size_or_type])
        if t.kind in (KIND_ENUM, KIND_ENUM64):
            return ("simple", {1: "c_uint8", 2: "c_uint16", 4: "c_uint32",
                               8: "c_uint64"}[t.size_or_type])
        if t.kind == KIND_PTR:
            return ("simple", "c_uint64")
        if t.kind == KIND_ARRAY:
            return ("array", self.ctypes_spec(t.members[0]), t.members[1])
        if t.kind in (KIND_STRUCT, KIND_UNION):
            fields, anonymous, at = [], [], 0
            for i, (m_name, m_type, bit_off) in enumerate(t.members):
                if bit_off % 8:
                    raise BTFError("bit fields are not supported in map keys and values")
                name = self._str(m_name) if m_name else f"_anon{i}"
                if not m_name:
                    anonymous.append(name)
                off = bit_off // 8
                if t.kind == KIND_STRUCT and off > at:
                    fields.append((f"_pad{i}", ("array", ("simple", "c_uint8"), off - at)))
                fields.append((name, self.ctypes_spec(m_type)))
                at = off + self._sizeof(m_type)
            if t.kind == KIND_STRUCT and t.size_or_type > at:
                fields.append(("_pad_end", ("array", ("simple", "c_uint8"),
                                            t.size_or_type - at)))
            name = self._str(t.name_off) or f"anon{tid}"
            return ("union" if t.kind == KIND_UNION else "struct", name, 1, tuple(anonymous),
                    tuple(fields))
        raise BTFError(f"BTF kind {t.kind} has no ctypes layout")

    def enum(self, name: str) -> dict[str, int]:
        for kind in (KIND_ENUM, KIND_ENUM64):
            tid = self._by_name.get((kind, name))
            if tid is not None:
                return {self._str(m): v for m, v in self.types[tid].members}
        raise BTFError(f"no enum {name} in the kernel's BTF")


class Enums:
    """Some enums of the kernel's BTF, by name (what vmlinux_enums read)."""

    def __init__(self, enums: dict[str, dict[str, int]]):
        self._enums = enums

    def enum(self, name: str) -> dict[str, int]:
        try:
            return dict(self._enums[name])
        except KeyError:
            raise BTFError(f"no enum {name} in the kernel's BTF") from None


def vmlinux_enums(*names: str, path: str = VMLINUX) -> Enums:
    """The running kernel's enums `names` only, read by libbpf (its BTF parser, in C: tens
    of milliseconds where parsing the whole kernel BTF here takes ~150 ms) and then freed:
    the serving process keeps neither the kernel's types nor their parse. Where libbpf
    cannot, the same from this module's parser, keeping only those enums."""
    try:
        return Enums(_libbpf_enums(names, path))
    except (OSError, AttributeError):
        pass
    try:
        with open(path, "rb") as f:
            b = BTF(f.read(), only_enums=frozenset(names))
    except OSError as e:
        raise BTFError(f"cannot read {path}: {e.strerror}") from None
    found = {}
    for name in names:
        try:
            found[name] = b.enum(name)
        except BTFError:
            pass
    return Enums(found)


def _libbpf_enums(names, path: str) -> dict[str, dict[str, int]]:
    import ctypes as ct

    from .bpffd import libbpf
    lib = libbpf()
    lib.btf__parse.restype, lib.btf__parse.argtypes = ct.c_void_p, [ct.c_char_p, ct.c_void_p]
    lib.btf__free.argtypes = [ct.c_void_p]
    lib.btf__find_by_name_kind.argtypes = [ct.c_void_p, ct.c_char_p, ct.c_uint32]
    lib.btf__type_by_id.restype, lib.btf__type_by_id.argtypes = ct.c_void_p, [ct.c_void_p,
                                                                            ct.c_uint32]
    lib.btf__name_by_offset.restype = ct.c_char_p
    lib.btf__name_by_offset.argtypes = [ct.c_void_p, ct.c_uint32]
    handle = lib.btf__parse(path.encode(), None)
    if not handle:
        raise OSError(ct.get_errno(), f"libbpf cannot parse {path}")
    try:
        found = {}
        for name in names:
            for kind in (KIND_ENUM, KIND_ENUM64):
                tid = lib.btf__find_by_name_kind(handle, name.encode(), kind)
                if tid > 0:
                    break
            else:
                continue
            t = lib.btf__type_by_id(handle, tid)
            _, info, _ = struct.unpack("<III", ct.string_at(t, 12))
            vlen = info & 0xFFFF
            # struct btf_enum {name_off, s32 val}; btf_enum64 {name_off, lo32, hi32}
            step = 8 if kind == KIND_ENUM else 12
            raw = ct.string_at(t + 12, vlen * step)
            signed = bool(info >> 31)  # kind_flag: the values are signed
            members = {}
            for i in range(vlen):
                if kind == KIND_ENUM:
                    off, val = struct.unpack_from("<Ii" if signed else "<II", raw, i * step)
                else:
                    off, lo, hi = struct.unpack_from("<III", raw, i * step)
                    val = lo | hi << 32
                    if signed and val >> 63:
                        val -= 1 << 64
                members[lib.btf__name_by_offset(handle, off).decode()] = val
            found[name] = members
        return found
    finally:
        lib.btf__free(handle)


@lru_cache(maxsize=1)
def vmlinux(path: str = VMLINUX) -> BTF:
    try:
        with open(path, "rb") as f:
            return BTF(f.read())
    except OSError as e:
        raise BTFError(f"cannot read {path}: {e.strerror}") from None


def _first_member(b: BTF, struct_name: str, *members: str) -> tuple[str, int]:
    """(name, offset) of the first of `members` that `struct_name` has: fields renamed
    across kernel versions."""
    for member in members:
        try:
            return member, b.offset(struct_name, member)
        except BTFError:
            continue
    raise BTFError(f"struct {struct_name} has none of {', '.join(members)} in the kernel's BTF")


def socket_offsets(b: BTF | None = None) -> dict[str, int]:
    """-D values for bpf/sockcgroup.h: where a socket's cgroup and netns are. Before 5.15
    the socket's cgroup pointer is sock_cgroup_data.val; before 6.0 a cgroup lists its
    ancestors' ids (ancestor_ids) instead of pointers (ancestors)."""
    b = b or vmlinux()
    cgrp_member, cgrp_off = _first_member(b, "sock_cgroup_data", "cgroup", "val")
    anc_member, anc_off = _first_member(b, "cgroup", "ancestors", "ancestor_ids")
    return {
        "SOCK_CGRP_OFF": b.offset("sock", "sk_cgrp_data") + cgrp_off,
        "SOCK_CGRP_IS_VAL": int(cgrp_member == "val"),
        "CGROUP_KN_OFF": b.offset("cgroup", "kn"),
        "CGROUP_LEVEL_OFF": b.offset("cgroup", "level"),
        "CGROUP_ANCESTORS_OFF": anc_off,
        "CGROUP_ANCESTOR_IDS": int(anc_member == "ancestor_ids"),
        "KERNFS_ID_OFF": b.offset("kernfs_node", "id"),
        "SOCK_NET_OFF": b.offset("sock", "__sk_common.skc_net.net"),
        "NET_INUM_OFF": b.offset("net", "ns.inum"),
    }


def task_cgroup_offsets(b: BTF | None = None) -> dict[str, int]:
    """-D values for bpf/podfilter.h without the ancestor helper: a task's cgroup v2
    cgroup is task->cgroups->dfl_cgrp."""
    b = b or vmlinux()
    return {"TASK_CGROUPS_OFF": b.offset("task_struct", "cgroups"),
            "CSS_SET_DFL_CGRP_OFF": b.offset("css_set", "dfl_cgrp")}

"""Load a precompiled CO-RE BPF object (bpf/<name>.bpf.c, built by clang at build time) with
the system's libbpf.so.1, and hand it over as an FdProgram (exporter/bpffd.py), the same
fd-only shape the collectors read through.

libbpf relocates the object against the running kernel's BTF (CO-RE), so one object runs
on every kernel; what differs between kernels is chosen before the load, not by
recompiling: .rodata constants (`const volatile` in the C, the verifier prunes the branches
they rule out), programs left out (autoload off) and maps not created (autocreate off).
Maps' key and value layouts come from the object's own BTF. After the load every fd is
duplicated and the libbpf object closed: what podsnoop keeps is plain fds, as with bcc.

Failures say who refused: the verifier (its reason, from libbpf's log of the load), map
creation, or the object itself, as CollectorUnavailable so that a collector can go off
alone (app.py).

User programs' objects (an ebpf_exporter-style `<name>.bpf.o`, exporter/programs/objects.py)
are loaded by load_linked instead: every program is attached by its section name through
libbpf's own bpf_program__attach (tp_btf, raw_tp, tracepoint, uprobe, usdt, kprobe...), and
the libbpf object and links stay open until unload (LinkedObject.cleanup), because a
perf-event link (uprobe, usdt, kprobe) is detached by libbpf, not by closing an fd: it
disables the event, removes a legacy tracefs probe, and a usdt link needs its object.
"""
from __future__ import annotations

import ctypes as ct
import errno as _errno
import logging
import os
import re
import threading
from pathlib import Path

from . import btf
from .bpffd import FdProgram, FdTable, libbpf
from .errors import CollectorUnavailable, PodsnoopError

log = logging.getLogger(__name__)

PRINT_FN = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_char_p, ct.c_void_p)
RAW_TP_SECTIONS = ("raw_tp/", "raw_tracepoint/")
_print_lock = threading.Lock()
_libc = ct.CDLL(None)
_libc.vsnprintf.argtypes = [ct.c_char_p, ct.c_size_t, ct.c_char_p, ct.c_void_p]


def _lib():
    lib = libbpf()
    if getattr(lib, "_podsnoop_objects", False):
        return lib
    P, I, S = ct.c_void_p, ct.c_int, ct.c_char_p
    for name, res, args in (
            ("libbpf_set_print", P, [PRINT_FN]),
            ("bpf_object__open_file", P, [S, P]),
            ("bpf_object__load", I, [P]),
            ("bpf_object__close", None, [P]),
            ("bpf_object__btf", P, [P]),
            ("btf__raw_data", P, [P, ct.POINTER(ct.c_uint32)]),
            ("bpf_object__find_map_by_name", P, [P, S]),
            ("bpf_object__find_program_by_name", P, [P, S]),
            ("bpf_object__next_map", P, [P, P]),
            ("bpf_object__next_program", P, [P, P]),
            ("bpf_map__name", S, [P]),
            ("bpf_map__fd", I, [P]),
            ("bpf_map__type", I, [P]),
            ("bpf_map__max_entries", ct.c_uint32, [P]),
            ("bpf_map__set_max_entries", I, [P, ct.c_uint32]),
            ("bpf_map__map_flags", ct.c_uint32, [P]),
            ("bpf_map__btf_key_type_id", ct.c_uint32, [P]),
            ("bpf_map__btf_value_type_id", ct.c_uint32, [P]),
            ("bpf_map__initial_value", P, [P, ct.POINTER(ct.c_size_t)]),
            ("bpf_map__set_autocreate", I, [P, ct.c_bool]),
            ("bpf_program__name", S, [P]),
            ("bpf_program__section_name", S, [P]),
            ("bpf_program__fd", I, [P]),
            ("bpf_program__set_autoload", I, [P, ct.c_bool]),
            ("bpf_program__autoload", ct.c_bool, [P]),
            ("bpf_raw_tracepoint_open", I, [S, I]),
            # user objects (load_linked)
            ("bpf_object__open_mem", P, [P, ct.c_size_t, P]),
            ("bpf_program__attach", P, [P]),
            ("bpf_link__destroy", I, [P]),
            ("bpf_map__key_size", ct.c_uint32, [P]),
            ("bpf_map__value_size", ct.c_uint32, [P])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    lib._podsnoop_objects = True
    return lib


class _Log:
    """libbpf's messages during one open and load (its print callback is process-wide)."""

    def __init__(self):
        self.lines: list[str] = []

        def collect(_level, fmt, args):
            buf = ct.create_string_buffer(8192)
            _libc.vsnprintf(buf, len(buf), fmt, args)
            self.lines.append(buf.value.decode(errors="replace"))
            return 0
        self.fn = PRINT_FN(collect)

    def __enter__(self):
        _print_lock.acquire()
        _lib().libbpf_set_print(self.fn)
        return self

    def __exit__(self, *exc):
        _lib().libbpf_set_print(PRINT_FN())  # NULL: libbpf prints nothing
        _print_lock.release()

    @property
    def text(self) -> str:
        return "".join(self.lines)


def refusal(log_text: str, source: str) -> CollectorUnavailable:
    """A failed bpf_object__load as one line: the verifier's reason, or the map the kernel
    would not create, or libbpf's last word."""
    from .bpfload import map_refusal, verifier_refusal
    prog = re.search(r"prog '(\w+)': BPF program load failed", log_text)
    if prog:
        body = log_text.split("-- BEGIN PROG LOAD LOG --", 1)[-1]
        return verifier_refusal(prog.group(1), source,
                                body.split("-- END PROG LOAD LOG --", 1)[0])
    bad_map = re.search(r"map '([\w.]+)': failed to create: ([^\n]*)", log_text)
    if bad_map:
        return map_refusal(bad_map.group(1), source, bad_map.group(2))
    last = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    return CollectorUnavailable(f"loading {source} failed: "
                                f"{last[-1] if last else 'no message from libbpf'}",
                                "report it as a podsnoop bug with `uname -r`")


def _iterate(next_fn, obj):
    item = None
    while True:
        item = next_fn(obj, item)
        if not item:
            return
        yield item


def _set_rodata(lib, obj, types: btf.BTF, values: dict[str, int], source: str) -> None:
    rodata = lib.bpf_object__find_map_by_name(obj, b".rodata")
    if not rodata:
        raise PodsnoopError(f"{source} has no .rodata to set {', '.join(values)} in",
                            "rebuild the BPF objects (make -C bpf)")
    size = ct.c_size_t()
    data = lib.bpf_map__initial_value(rodata, ct.byref(size))
    variables = types.datasec(".rodata")
    for name, value in values.items():
        if name not in variables:
            raise PodsnoopError(f"{source} has no constant {name}",
                                "rebuild the BPF objects (make -C bpf)")
        off, width = variables[name]
        if off + width > size.value:
            raise PodsnoopError(f"{source}: constant {name} lies outside .rodata",
                                "report it as a podsnoop bug")
        ct.memmove(data + off, int(value).to_bytes(width, "little", signed=value < 0), width)


def load(path: Path, name: str, *, rodata: dict[str, int] | None = None,
         max_entries: dict[str, int] | None = None, autoload: dict[str, bool] | None = None,
         autocreate: dict[str, bool] | None = None, events: dict[str, str] | None = None,
         info: dict | None = None) -> FdProgram:
    """Open, adjust, load; attach the raw tracepoint programs (their fds are the
    attachments); return fds only. events: ring buffer map -> the struct of its records."""
    lib = _lib()
    source = path.name
    if not path.is_file():
        raise PodsnoopError(f"BPF object {path} is missing",
                            "build it (make -C bpf; ./dev setup does) or reinstall podsnoop")
    with _Log() as messages:
        obj = lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            raise refusal(messages.text, source)
        try:
            raw_size = ct.c_uint32()
            raw = lib.btf__raw_data(lib.bpf_object__btf(obj), ct.byref(raw_size))
            types = btf.BTF(ct.string_at(raw, raw_size.value))
            if rodata:
                _set_rodata(lib, obj, types, rodata, source)
            def find(kind: str, item: str):
                """The object's map or program `item` (never NULL into libbpf)."""
                found = (lib.bpf_object__find_map_by_name if kind == "map" else
                         lib.bpf_object__find_program_by_name)(obj, item.encode())
                if not found:
                    raise PodsnoopError(f"{source} has no {kind} {item}",
                                        "rebuild the BPF objects (make -C bpf)")
                return found
            for map_name, n in (max_entries or {}).items():
                if lib.bpf_map__set_max_entries(find("map", map_name), n) < 0:
                    raise PodsnoopError(f"{source}: the size of map {map_name} cannot be set",
                                        "report it as a podsnoop bug")
            for map_name, on in (autocreate or {}).items():
                lib.bpf_map__set_autocreate(find("map", map_name), on)
            for prog_name, on in (autoload or {}).items():
                lib.bpf_program__set_autoload(find("program", prog_name), on)
            if lib.bpf_object__load(obj) < 0:
                raise refusal(messages.text, source)
            return _hand_over(lib, obj, types, name, source, events or {}, info)
        finally:
            lib.bpf_object__close(obj)


def _hand_over(lib, obj, types: btf.BTF, name: str, source: str, events: dict[str, str],
               info: dict | None) -> FdProgram:
    tables, funcs, attachments = {}, {}, []
    try:
        for m in _iterate(lib.bpf_object__next_map, obj):
            map_name = lib.bpf_map__name(m).decode()
            fd = lib.bpf_map__fd(m)
            if "." in map_name or fd < 0:  # .rodata/.bss, or not created
                continue
            key_id, value_id = lib.bpf_map__btf_key_type_id(m), lib.bpf_map__btf_value_type_id(m)
            key = types.ctypes_spec(key_id) if key_id else ("simple", "c_uint8")
            value = types.ctypes_spec(value_id) if value_id else ("simple", "c_uint8")
            event = (types.ctypes_spec(types.struct_id(events[map_name]))
                     if map_name in events else None)
            tables[map_name] = FdTable(map_name, os.dup(fd), lib.bpf_map__type(m),
                                       lib.bpf_map__max_entries(m), lib.bpf_map__map_flags(m),
                                       key, value, event)
        for p in _iterate(lib.bpf_object__next_program, obj):
            if not lib.bpf_program__autoload(p):
                continue
            # name__variant (one variant of each is loaded): the collectors see the name
            prog_name = lib.bpf_program__name(p).decode().split("__")[0]
            fd = os.dup(lib.bpf_program__fd(p))
            funcs[prog_name] = fd
            section = lib.bpf_program__section_name(p).decode()
            tp = next((section[len(s):] for s in RAW_TP_SECTIONS if section.startswith(s)),
                      None)
            if tp:
                link = lib.bpf_raw_tracepoint_open(tp.encode(), fd)
                if link < 0:
                    raise CollectorUnavailable(
                        f"attaching {prog_name} of {source} to raw tracepoint {tp} failed: "
                        f"{os.strerror(ct.get_errno())}", "report it as a podsnoop bug with "
                        "`uname -r`", reason="attach failed")
                attachments.append(link)
    except BaseException:
        for fd in [*attachments, *funcs.values(), *(t.map_fd for t in tables.values())]:
            os.close(fd)
        raise
    return FdProgram(name, tables, funcs, attachments, info)


# -- user objects: loaded, attached by section, kept until unload ----------------------------
class _OpenOpts(ct.Structure):
    """The head of struct bpf_object_open_opts (libbpf reads only the `sz` bytes given)."""
    _fields_ = [("sz", ct.c_size_t), ("object_name", ct.c_char_p)]


class LinkedObject(FdProgram):
    """A user's object as FdProgram (its maps by fd, for the collectors), which also owns
    the libbpf object and the links of its attached programs until cleanup()."""

    def __init__(self, name: str, tables: dict[str, FdTable], funcs: dict[str, int],
                 obj, links: list, sections: dict[str, str]):
        super().__init__(name, tables, funcs, [])
        self._obj = obj
        self._links = links
        self.sections = sections  # program -> its section, e.g. "tp_btf/sys_enter"

    def cleanup(self) -> None:
        """Destroy every link (libbpf detaches each its own way), close the object, then
        the duplicated map and program fds: nothing of it stays in the kernel."""
        if self._closed:
            return
        lib = _lib()
        while self._links:
            lib.bpf_link__destroy(self._links.pop())
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = None
        super().cleanup()


def _user_table(lib, m, types: btf.BTF, map_name: str) -> FdTable:
    """A map as the collectors read it: keys as the BTF declares them (raw bytes where the
    BTF has no type for them, or none ctypes can express), u64 values as ebpf_exporter
    reads them, whatever the BTF calls them (a struct or typedef of 8 bytes)."""
    key_size, value_size = lib.bpf_map__key_size(m), lib.bpf_map__value_size(m)

    def layout(type_id: int, size: int) -> tuple:
        try:
            if type_id:
                return types.ctypes_spec(type_id)
        except (btf.BTFError, KeyError, IndexError):
            pass
        return ("array", ("simple", "c_uint8"), size) if size else ("simple", "c_uint8")
    key = layout(lib.bpf_map__btf_key_type_id(m), key_size)
    value = (("simple", "c_uint64") if value_size == 8 else
             layout(lib.bpf_map__btf_value_type_id(m), value_size))
    return FdTable(map_name, os.dup(lib.bpf_map__fd(m)), lib.bpf_map__type(m),
                   lib.bpf_map__max_entries(m), lib.bpf_map__map_flags(m), key, value)


def _load_failure(log_text: str, source: str, sections: dict[str, str]) -> CollectorUnavailable:
    """A refused load as one line; a program the kernel refused before verifying it (no
    verifier log: e.g. fentry where the kernel has no BPF trampolines) names its section."""
    refused = re.search(r"prog '(\w+)': BPF program load failed: ([^\n]*)", log_text)
    if refused and "-- BEGIN PROG LOAD LOG --" not in log_text:
        prog, why = refused.groups()
        e = CollectorUnavailable(
            f"the kernel refused to load {prog} ({sections.get(prog, '?')}) of {source}: "
            f"{why.strip()}", "", reason="program refused")
    else:
        e = refusal(log_text, source)
    e.section = sections.get(refused.group(1), "") if refused else ""
    return e


def _attach_failure(log_text: str, prog: str, section: str, source: str,
                    errno: int) -> CollectorUnavailable:
    """libbpf's own last word on the attach (e.g. "failed to create kprobe ... perf
    event"), or, for a section libbpf cannot attach by itself, that."""
    said = [ln.strip().removeprefix("libbpf: ") for ln in log_text.splitlines()
            if f"prog '{prog}'" in ln or "failed" in ln]
    if said:
        why = said[-1].removeprefix(f"prog '{prog}': ")
    elif errno == _errno.EOPNOTSUPP:  # no auto-attach for this section
        why = "libbpf cannot attach this section by itself"
    else:
        why = os.strerror(errno) if errno else "failed"
    e = CollectorUnavailable(f"attaching {prog} ({section}) of {source} failed: {why}", "",
                             reason="attach failed")
    e.section = section
    return e


def _object_btf(lib, obj) -> btf.BTF | None:
    handle = lib.bpf_object__btf(obj)
    if not handle:
        return None
    raw_size = ct.c_uint32()
    raw = lib.btf__raw_data(handle, ct.byref(raw_size))
    try:
        return btf.BTF(ct.string_at(raw, raw_size.value)) if raw else None
    except btf.BTFError:
        return None


def load_linked(data: bytes, name: str, source: str, *,
                rodata: dict[str, int] | None = None) -> LinkedObject:
    """Open an object from its bytes, set its .rodata constants, load it and attach every
    program by its section name. Anything refused (the object, a constant, the verifier, a
    map, an attach) is one CollectorUnavailable, and nothing is left loaded or attached."""
    lib = _lib()
    buf = ct.create_string_buffer(data, len(data))
    opts = _OpenOpts(ct.sizeof(_OpenOpts), name.encode())
    with _Log() as messages:
        obj = lib.bpf_object__open_mem(buf, len(data), ct.byref(opts))
        if not obj:
            last = [ln.strip() for ln in messages.text.splitlines() if ln.strip()]
            raise CollectorUnavailable(f"{source} is not a BPF object libbpf can open: "
                                       f"{last[-1].removeprefix('libbpf: ') if last else ''}",
                                       "", reason="object invalid")
        links: list = []
        try:
            sections = {lib.bpf_program__name(p).decode():
                        lib.bpf_program__section_name(p).decode()
                        for p in _iterate(lib.bpf_object__next_program, obj)}
            types = _object_btf(lib, obj)
            if types is None:
                raise CollectorUnavailable(f"{source} has no BTF (compile it with clang -g)",
                                           "", reason="object invalid")
            if rodata:
                try:
                    _set_rodata(lib, obj, types, rodata, source)
                except PodsnoopError as e:
                    raise CollectorUnavailable(e.message, "", reason="constant missing")
            if lib.bpf_object__load(obj) < 0:
                raise _load_failure(messages.text, source, sections)
            for p in _iterate(lib.bpf_object__next_program, obj):
                if not lib.bpf_program__autoload(p):
                    continue
                prog = lib.bpf_program__name(p).decode()
                del messages.lines[:]
                link = lib.bpf_program__attach(p)
                if not link:
                    raise _attach_failure(messages.text, prog, sections[prog], source,
                                          ct.get_errno())
                links.append(link)
            tables = {}
            try:
                for m in _iterate(lib.bpf_object__next_map, obj):
                    map_name = lib.bpf_map__name(m).decode()
                    if "." not in map_name and lib.bpf_map__fd(m) >= 0:
                        tables[map_name] = _user_table(lib, m, types, map_name)
                funcs = {lib.bpf_program__name(p).decode(): os.dup(lib.bpf_program__fd(p))
                         for p in _iterate(lib.bpf_object__next_program, obj)
                         if lib.bpf_program__autoload(p)}
            except BaseException:
                for t in tables.values():
                    os.close(t.map_fd)
                raise
        except BaseException:
            for link in reversed(links):
                lib.bpf_link__destroy(link)
            lib.bpf_object__close(obj)
            raise
    linked = LinkedObject(name, tables, funcs, obj, links, sections)
    linked._buf = buf  # the ELF image libbpf opened (it may keep pointers into it)
    return linked

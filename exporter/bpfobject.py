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
"""
from __future__ import annotations

import ctypes as ct
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
            ("bpf_raw_tracepoint_open", I, [S, I])):
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

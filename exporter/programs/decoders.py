"""ebpf_exporter's decoders, re-implemented from their documentation: each takes the
previous one's output (the first gets the label's raw key bytes) and returns text.

uint: little-endian bytes -> decimal; hex: bytes -> hex digits; string: bytes up to the
first NUL; static_map: text -> its mapped value ("unknown:<v>" unless allow_unknown);
syscall: number -> name (exporter/syscall_names.py); errno: number -> EPIPE etc.;
ksym: kernel address -> function name from /proc/kallsyms (the hex address where kallsyms
shows no addresses). `pod` and `pod_interface` need podsnoop's indexes and are applied by
the collector (collector.py).
"""
from __future__ import annotations

import bisect
import errno as errno_mod
import threading

from ..syscall_names import syscall_name


def _as_int(value) -> int:
    if isinstance(value, bytes):
        return int.from_bytes(value, "little")
    return int(value, 0) if isinstance(value, str) else int(value)


def _uint(value, _d):
    return str(_as_int(value))


def _hex(value, _d):
    return value.hex() if isinstance(value, bytes) else format(_as_int(value), "x")


def _string(value, _d):
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return value


def _static_map(value, d):
    v = _uint(value, d) if isinstance(value, bytes) else value
    table = {str(k): str(x) for k, x in d["static_map"].items()}
    if v in table:
        return table[v]
    return v if d.get("allow_unknown") else f"unknown:{v}"


def _syscall(value, _d):
    return syscall_name(_as_int(value))


def _errno(value, _d):
    n = _as_int(value)
    return errno_mod.errorcode.get(n, str(n))


class Kallsyms:
    """Sorted kernel text symbols, read once (on first use)."""

    _lock = threading.Lock()
    _addrs: list[int] | None = None
    _names: list[str] = []

    @classmethod
    def lookup(cls, addr: int) -> str:
        with cls._lock:
            if cls._addrs is None:
                pairs = []
                try:
                    with open("/proc/kallsyms", encoding="utf-8", errors="replace") as f:
                        for line in f:
                            parts = line.split()
                            if len(parts) >= 3 and parts[1] in "tTwW":
                                pairs.append((int(parts[0], 16), parts[2]))
                except OSError:
                    pass
                pairs = [p for p in pairs if p[0]]  # all zero: kptr_restrict hides them
                pairs.sort()
                cls._addrs = [a for a, _ in pairs]
                cls._names = [n for _, n in pairs]
        i = bisect.bisect_right(cls._addrs, addr) - 1
        if i < 0 or not addr:
            return f"0x{addr:x}"
        return cls._names[i]


def _ksym(value, _d):
    return Kallsyms.lookup(_as_int(value))


DECODERS = {"uint": _uint, "hex": _hex, "string": _string, "static_map": _static_map,
            "syscall": _syscall, "errno": _errno, "ksym": _ksym}


def decode(decoders, raw: bytes) -> str:
    """The text of one label from its key bytes, through its decoder chain (no decoders:
    the bytes as an unsigned number, as for uint)."""
    value: object = raw
    for d in decoders:
        value = DECODERS[d["name"]](value, d)
    if isinstance(value, bytes):
        value = _uint(value, None)
    return str(value)

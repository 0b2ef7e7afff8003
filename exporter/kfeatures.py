"""What this kernel lets a BPF program do, asked of the kernel itself (libbpf's way:
libbpf_probe_bpf_helper): a four-instruction program that calls one helper is loaded, and
the verifier's answer is the answer. Microseconds, no compiler, no kernel version guesses
(distributions backport helpers).

Used where BTF cannot tell: a helper that exists but a program type may not call yet
(bpf_get_current_ancestor_cgroup_id: cgroup_skb since 5.7, tracing programs since 5.14).
"""
from __future__ import annotations

import ctypes
import os
import struct
from functools import lru_cache

from .tcx import ATTR_SIZE, _bpf

BPF_PROG_LOAD = 5
PROG_TYPE_TRACEPOINT = 5
PROG_TYPE_RAW_TRACEPOINT = 17
HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID = 123
LOG_SIZE = 4096


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


@lru_cache(maxsize=None)
def helper_allowed(prog_type: int, helper: int) -> bool:
    """Whether a program of `prog_type` may call helper number `helper` (scalar
    arguments): r1..r5 = 0; call helper; r0 = 0; exit."""
    insns = b"".join(_insn(0xb7, dst=r) for r in range(1, 6))        # mov rN, 0
    insns += _insn(0x85, imm=helper) + _insn(0xb7, dst=0) + _insn(0x95)  # call; r0=0; exit
    prog = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(LOG_SIZE)
    # union bpf_attr's prog load: prog_type, insn_cnt, insns, license, log_level,
    # log_size, log_buf
    attr = ctypes.create_string_buffer(struct.pack(
        "=IIQQIIQ", prog_type, len(insns) // 8, ctypes.addressof(prog),
        ctypes.addressof(license), 1, LOG_SIZE, ctypes.addressof(log)), ATTR_SIZE)
    try:
        fd = _bpf(BPF_PROG_LOAD, attr)
    except OSError:
        return False  # "unknown func" / "program of this type cannot use helper"
    os.close(fd)
    return True


def tracing_ancestor_cgroup_helper() -> bool:
    """bpf_get_current_ancestor_cgroup_id from (raw) tracepoint programs (5.14+)."""
    return all(helper_allowed(t, HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID)
               for t in (PROG_TYPE_TRACEPOINT, PROG_TYPE_RAW_TRACEPOINT))

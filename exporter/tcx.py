"""Which interfaces carry tcx programs (kernel >= 6.6), through the bpf() syscall.

tcx programs (e.g. Cilium in TCX mode) run before any clsact filter. One that returns a final
verdict (pass, redirect, drop) ends processing there, so podsnoop's clsact filter never sees
those packets and the pod's counters undercount without any error. podsnoop cannot change
that from clsact; it finds such interfaces so it can say so (a metric and a log line).

bcc has no tcx support, so the few bpf() commands needed are issued here with ctypes. The
struct offsets are those of include/uapi/linux/bpf.h (stable ABI).
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_CREATE = 28
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_LINK_TYPE_TCX = 11
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
TCX_HOOKS = {BPF_TCX_INGRESS: "ingress", BPF_TCX_EGRESS: "egress"}
ATTR_SIZE = 128  # bigger than any union bpf_attr member used here; the rest stays zero

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    ret = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _link_ids():
    start = 0
    while True:
        attr = ctypes.create_string_buffer(struct.pack("=I", start), ATTR_SIZE)
        try:
            _bpf(BPF_LINK_GET_NEXT_ID, attr)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return
            raise
        start = struct.unpack_from("=I", attr, 4)[0]
        yield start


def _link_info(link_id: int) -> tuple[int, int, int] | None:
    """(link type, ifindex, attach type) of a link; None if it went away meanwhile."""
    try:
        fd = _bpf(BPF_LINK_GET_FD_BY_ID,
                  ctypes.create_string_buffer(struct.pack("=I", link_id), ATTR_SIZE))
    except OSError:
        return None
    try:
        info = ctypes.create_string_buffer(64)  # struct bpf_link_info (prefix we read)
        attr = ctypes.create_string_buffer(
            struct.pack("=IIQ", fd, ctypes.sizeof(info), ctypes.addressof(info)), ATTR_SIZE)
        _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        link_type = struct.unpack_from("=I", info, 0)[0]
        ifindex, attach_type = struct.unpack_from("=II", info, 16)  # union at offset 16
        return link_type, ifindex, attach_type
    finally:
        os.close(fd)


def tcx_hooks() -> dict[int, set[str]]:
    """ifindex -> {"ingress", "egress"} for every interface with tcx programs attached."""
    out: dict[int, set[str]] = {}
    try:
        for link_id in _link_ids():
            info = _link_info(link_id)
            if info and info[0] == BPF_LINK_TYPE_TCX and info[2] in TCX_HOOKS:
                out.setdefault(info[1], set()).add(TCX_HOOKS[info[2]])
    except OSError:  # kernels without link ids (< 5.8) have no tcx either
        return out
    return out


def attach_tcx(prog_fd: int, ifindex: int, hook: str) -> int:
    """Attach a SCHED_CLS program as a tcx link (what Cilium does); returns the link fd,
    which detaches the program when closed. For tests and benchmarks."""
    attach_type = BPF_TCX_INGRESS if hook == "ingress" else BPF_TCX_EGRESS
    attr = ctypes.create_string_buffer(struct.pack("=IIII", prog_fd, ifindex, attach_type, 0),
                                       ATTR_SIZE)
    return _bpf(BPF_LINK_CREATE, attr)

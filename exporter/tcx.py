"""tcx (kernel >= 6.6) through the bpf() syscall: podsnoop's own tcx links, and which
interfaces carry other programs that run before podsnoop's.

tcx programs (e.g. Cilium in TCX mode) run before any clsact filter. One that returns a final
verdict (pass, redirect, drop) ends processing there, so a clsact filter never sees those
packets and the pod's counters undercount without any error. So on kernels with tcx podsnoop
attaches its own programs as tcx links at the head of each chain (TcxAttacher): they see
every packet first and return "next" (TC_ACT_UNSPEC == TCX_NEXT). A link lives as long as
its fd: nothing stays attached when the process exits, even on SIGKILL. In clsact mode (the
fallback), podsnoop finds interfaces with tcx programs so it can say so.

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
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_LINK_TYPE_TCX = 11
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
TCX_HOOKS = {BPF_TCX_INGRESS: "ingress", BPF_TCX_EGRESS: "egress"}
BPF_F_BEFORE = 1 << 3  # with no relative program: the head of the chain
PROG_ID_OFF = 4        # struct bpf_prog_info: type, id, ...
PROG_NAME_OFF = 64     # ... and name[16]
BPF_PROG_GET_FD_BY_ID = 13
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


def attach_tcx(prog_fd: int, ifindex: int, hook: str, head: bool = False) -> int:
    """Attach a SCHED_CLS program as a tcx link, at the end of the chain or (head) its
    start; returns the link fd, which detaches the program when closed."""
    attach_type = BPF_TCX_INGRESS if hook == "ingress" else BPF_TCX_EGRESS
    flags = BPF_F_BEFORE if head else 0
    attr = ctypes.create_string_buffer(
        struct.pack("=IIII", prog_fd, ifindex, attach_type, flags), ATTR_SIZE)
    return _bpf(BPF_LINK_CREATE, attr)


def _prog_info(prog_fd: int) -> ctypes.Array:
    info = ctypes.create_string_buffer(80)  # struct bpf_prog_info, up to its name
    attr = ctypes.create_string_buffer(
        struct.pack("=IIQ", prog_fd, ctypes.sizeof(info), ctypes.addressof(info)), ATTR_SIZE)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


def prog_id(prog_fd: int) -> int:
    return struct.unpack_from("=I", _prog_info(prog_fd), PROG_ID_OFF)[0]


def prog_name(prog_id_: int) -> str:
    """The (kernel-truncated, 15 characters) name of a loaded program; "" if it is gone."""
    try:
        fd = _bpf(BPF_PROG_GET_FD_BY_ID,
                  ctypes.create_string_buffer(struct.pack("=I", prog_id_), ATTR_SIZE))
    except OSError:
        return ""
    try:
        return _prog_info(fd)[PROG_NAME_OFF:PROG_NAME_OFF + 16].split(b"\0")[0].decode()
    finally:
        os.close(fd)


def chain(ifindex: int, hook: str, most: int = 64) -> list[int]:
    """Program ids of an interface's tcx chain on one hook, in the order they run."""
    attach_type = BPF_TCX_INGRESS if hook == "ingress" else BPF_TCX_EGRESS
    ids = (ctypes.c_uint32 * most)()
    # union bpf_attr's query: target_ifindex, attach_type, query_flags, attach_flags,
    # prog_ids (u64 pointer), count.
    attr = ctypes.create_string_buffer(
        struct.pack("=IIIIQI", ifindex, attach_type, 0, 0, ctypes.addressof(ids), most),
        ATTR_SIZE)
    try:
        _bpf(BPF_PROG_QUERY, attr)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV):
            return []
        raise
    count = struct.unpack_from("=I", attr, 24)[0]
    return list(ids[:min(count, most)])


def supported() -> bool:
    """Whether this kernel has tcx: a query on loopback answers (an empty chain) instead
    of EINVAL for an unknown attach type."""
    try:
        chain(1, "ingress")
        return True
    except OSError:
        return False


class TcxAttacher:
    """The same job as tc.TcAttacher, with tcx links at the head of each pod interface's
    chains instead of clsact filters. Leftover clsact filters of podsnoop processes that
    are gone are still swept (a node that ran the clsact mode before)."""

    def __init__(self, clsact, programs: dict[str, int]):
        self.clsact = clsact              # tc.TcAttacher: sweeping, and its netlink socket
        self.ipr = clsact.ipr
        self.priority = clsact.priority
        self.programs = programs          # hook name -> program fd
        self.ids = {hook: prog_id(fd) for hook, fd in programs.items()}
        self.links: dict[int, dict[str, int]] = {}  # ifindex -> hook -> link fd

    async def attach(self, index: int) -> None:
        if index in self.links:
            return
        fds: dict[str, int] = {}
        try:
            for hook, prog_fd in self.programs.items():
                fds[hook] = attach_tcx(prog_fd, index, hook, head=True)
        except OSError as e:
            for fd in fds.values():
                os.close(fd)
            from pyroute2.netlink.exceptions import NetlinkError
            raise NetlinkError(e.errno, f"tcx attach: {e.strerror}") from None
        self.links[index] = fds
        await self.clsact.sweep(index)

    async def detach(self, index: int) -> None:
        self.forget(index)

    def forget(self, index: int) -> None:
        """Close the links of an interface (gone, or no longer wanted)."""
        for fd in self.links.pop(index, {}).values():
            os.close(fd)

    async def repair(self, index: int) -> int:
        return 0  # a tcx link cannot be deleted with tc(8); it goes only with our fd

    async def sweep(self, index: int) -> bool:
        return await self.clsact.sweep(index)

    def hooks_in_front(self) -> dict[int, set[str]]:
        """ifindex -> hooks where another tcx program runs before ours (attached at the
        head after us)."""
        out: dict[int, set[str]] = {}
        for index in self.links:
            for hook, our_id in self.ids.items():
                ids = chain(index, hook)
                if ids and ids[0] != our_id:
                    out.setdefault(index, set()).add(hook)
        return out

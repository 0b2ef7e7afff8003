"""The kernel's own run-time statistics of podsnoop's BPF programs: what they cost the node.

The kernel times every BPF program run only while statistics are enabled. BPF_ENABLE_STATS
enables them for as long as the returned file descriptor is open, so they are on exactly
while podsnoop runs and off again when it exits (even on SIGKILL), unlike flipping the
node-wide sysctl kernel.bpf_stats_enabled and leaving it. The kernel allows it only with
CAP_SYS_ADMIN; without it podsnoop still reads the figures if an administrator enabled the
statistics node-wide, and otherwise says so once.

Timing costs about two clock reads per program run while enabled (the kernel's figure is
the program alone, not the hook it runs on).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from pathlib import Path

from . import tcx

log = logging.getLogger(__name__)

BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
# struct bpf_prog_info (include/uapi/linux/bpf.h): run_time_ns and run_cnt.
INFO_SIZE = 216
RUN_TIME_OFF, RUN_CNT_OFF = 192, 200
SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


class RunTimeStats:
    def __init__(self):
        self.fd: int | None = None
        self.problem = ""

    def enable(self) -> bool:
        """Turn the statistics on for this process's lifetime; False (and why, in
        `problem`) when they stay off."""
        attr = ctypes.create_string_buffer(struct.pack("=I", BPF_STATS_RUN_TIME),
                                           tcx.ATTR_SIZE)
        try:
            self.fd = tcx._bpf(BPF_ENABLE_STATS, attr)
            return True
        except OSError as e:
            if self.node_wide():
                return True
            self.problem = (
                "needs CAP_SYS_ADMIN" if e.errno == errno.EPERM else e.strerror)
            log.warning("the kernel's BPF run-time statistics are off (%s): "
                        "podsnoop_bpf_program_run_seconds_total is not exported; grant "
                        "SYS_ADMIN (deploy/privileged does) or set "
                        "kernel.bpf_stats_enabled=1", self.problem)
            return False

    @staticmethod
    def node_wide() -> bool:
        try:
            return SYSCTL.read_text().strip() == "1"
        except OSError:
            return False

    @property
    def enabled(self) -> bool:
        return self.fd is not None or self.node_wide()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def run_stats(prog_fd: int) -> tuple[int, int]:
    """(nanoseconds run, runs) of a program since it was loaded, while stats were on."""
    info = ctypes.create_string_buffer(INFO_SIZE)
    attr = ctypes.create_string_buffer(
        struct.pack("=IIQ", prog_fd, INFO_SIZE, ctypes.addressof(info)), tcx.ATTR_SIZE)
    tcx._bpf(tcx.BPF_OBJ_GET_INFO_BY_FD, attr)
    return struct.unpack_from("=QQ", info, RUN_TIME_OFF)

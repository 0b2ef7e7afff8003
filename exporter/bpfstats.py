"""The kernel's own run-time statistics of podsnoop's BPF programs: what they cost the node.

The kernel times every BPF program run only while statistics are enabled. BPF_ENABLE_STATS
enables them for as long as the returned file descriptor is open, so they are on exactly
while podsnoop runs and off again when it exits (even on SIGKILL), unlike flipping the
node-wide sysctl kernel.bpf_stats_enabled and leaving it. The kernel allows it only with
CAP_SYS_ADMIN; without it podsnoop still reads the figures if an administrator enabled the
statistics node-wide, and otherwise says so once.

Timing costs about two clock reads per program run while enabled (the kernel's figure is
the program alone, not the hook it runs on), for EVERY BPF program of the node (a CNI's
too): on the syscall path that is more than podsnoop's own programs cost. So by default
(--bpf-stats sampled) they are on only in short windows (StatsSampler: 0.2 s of every
120 s), and podsnoop_bpf_stats_on_seconds_total says for how long: the programs' run time
divided by it is their share of a CPU while sampled, an estimate of the whole. `on` keeps
them on (exact, at the full cost).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
import threading
import time
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


class StatsSampler:
    """Keeps the statistics on all the time (window None) or for `window` seconds of
    every `interval`, and counts the seconds they were on (on_seconds), the current
    window's part included, so a scrape inside a window sees run time and on-time grow
    together. Where kernel.bpf_stats_enabled is 1 node-wide they are on all the time
    anyway, and on_seconds is the whole time since start. The windows open and close on
    the event loop while scrape threads read on_seconds: a lock keeps the counter from
    ever going back (a read between a window's close and its bookkeeping)."""

    def __init__(self, stats: RunTimeStats, window: float | None, interval: float,
                 clock=time.monotonic):
        self.stats = stats
        self.window = window
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._on_total = 0.0
        self._on_since: float | None = None
        self._kept = False
        self._lock = threading.Lock()

    @property
    def sampled(self) -> bool:
        return self.window is not None

    def start(self) -> bool:
        """The first window (or the whole run): False where the statistics cannot be
        turned on (RunTimeStats says why, once)."""
        self._kept = self._open()
        return self._kept

    def _open(self) -> bool:
        with self._lock:
            if not self.stats.enable():
                return False
            if self.stats.fd is not None:
                self._on_since = self.clock()
            return True

    def _close(self) -> None:
        with self._lock:
            if self._on_since is not None:
                self._on_total += self.clock() - self._on_since
                self._on_since = None
            self.stats.close()

    @property
    def enabled(self) -> bool:
        """The figures are kept: on, in windows, or node-wide."""
        return self._kept or self.stats.node_wide()

    def on_seconds(self) -> float:
        with self._lock:
            if self.stats.fd is None and self.stats.node_wide():
                return self.clock() - self.started
            live = self.clock() - self._on_since if self._on_since is not None else 0.0
            return self._on_total + live

    async def run(self) -> None:
        """The windows after the first (an asyncio task; cancelled at exit). Nothing to
        toggle where the first window did not open, or they are on node-wide (no fd)."""
        import asyncio
        if not self.sampled or self.stats.fd is None:
            return
        try:
            while True:
                await asyncio.sleep(self.window)
                self._close()
                await asyncio.sleep(self.interval - self.window)
                self._open()
        finally:
            self._close()

    def close(self) -> None:
        self._close()


def run_stats(prog_fd: int) -> tuple[int, int]:
    """(nanoseconds run, runs) of a program since it was loaded, while stats were on."""
    info = ctypes.create_string_buffer(INFO_SIZE)
    attr = ctypes.create_string_buffer(
        struct.pack("=IIQ", prog_fd, INFO_SIZE, ctypes.addressof(info)), tcx.ATTR_SIZE)
    tcx._bpf(tcx.BPF_OBJ_GET_INFO_BY_FD, attr)
    return struct.unpack_from("=QQ", info, RUN_TIME_OFF)

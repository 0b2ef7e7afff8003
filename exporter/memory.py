"""Keep the serving process's heap small: one malloc arena for all its threads, and give
back the memory the BPF compile used, once all programs are compiled.

glibc gives each new thread its own malloc arena (up to 8 per CPU), and an arena keeps what
its thread freed: the watcher threads' JSON parsing and asyncio's worker threads each held
~0.5 MB that way (measured: 1.4 MB less steady RSS with one arena, --kube auto, 110 pods,
bench/serving_memory.py). Under the GIL the threads do not malloc in parallel anyway.

podsnoop's own programs are precompiled (loader.py), so without user programs in bcc C the
serving process maps no compiler and release_compiler_memory() finds nothing of it to
drop; its malloc_trim still returns the start-up's freed heap. With --programs, bcc
compiles the user programs in this process and this gives back what it can.

bcc compiles with LLVM and clang (libLLVM, libclang-cpp). A compile leaves ~40 MB of freed
heap that glibc keeps, and ~85 MB of those libraries' code pages resident that the exporter
never runs again (map operations live in libbcc). malloc_trim returns the heap;
MADV_DONTNEED on the libraries' read-only, purely file-backed mappings (code, constants)
drops them from this process (they fault back in from the file if ever used). Never on
writable or relocated (RELRO) mappings: that would discard the libraries' own data. Where a call is not supported nothing changes.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
M_ARENA_MAX = -8    # <malloc.h>
COMPILER_LIBRARIES = ("libLLVM", "libclang")


def _clean_readonly_mappings(name_part: str):
    """Read-only mappings of a library that hold only file pages: code and constants.

    Excluded: writable mappings, and read-only ones with anonymous pages, such as RELRO
    (relocated by the dynamic linker, then made read-only): dropping those would bring back
    the file's unrelocated bytes.
    """
    current = None
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                current = None
                if len(fields) >= 6 and name_part in fields[5] and "w" not in fields[1]:
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    current = (lo, hi - lo)
            elif fields[0] == "Anonymous:" and current is not None:
                if int(fields[1]) == 0:
                    yield current
                current = None


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """mallopt(M_ARENA_MAX) before any thread starts, unless MALLOC_ARENA_MAX (glibc's own
    variable) already says how many. False where that is not glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas) == 1
    except AttributeError:  # not glibc
        return False


def release_compiler_memory() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        libc.malloc_trim(0)
    except AttributeError:  # not glibc
        pass
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for library in COMPILER_LIBRARIES:
        for start, length in list(_clean_readonly_mappings(library)):
            if libc.madvise(start, length, MADV_DONTNEED) != 0:
                log.debug("madvise(MADV_DONTNEED) on %s failed: errno %d", library,
                          ctypes.get_errno())
                return


def freeze_startup_objects() -> None:
    """Collect start-up garbage once, then move every surviving object (modules, the
    kubernetes client's models, compiled programs' tables) out of the collector's sight:
    without this the first full collection after start-up walks all of them while a
    scrape waits (~100-150 ms at 500 pods, measured); later ones see only new objects."""
    gc.collect()
    gc.freeze()

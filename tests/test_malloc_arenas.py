"""memory.limit_malloc_arenas: the serving process's threads share one glibc malloc arena.

Counted with glibc's own malloc_stats() (one "Arena N:" block per arena), in a fresh
interpreter whose threads each malloc: without the limit every thread gets an arena of its
own, with it there is one; MALLOC_ARENA_MAX set by the user wins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import ctypes, sys, threading
from exporter import memory
print(memory.limit_malloc_arenas() if sys.argv[1] == "limit" else None, flush=True)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def work():
    for _ in range(100):
        libc.malloc(1000)
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()
"""


def arenas(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True,
                         text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
                         | env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), sum(line.startswith("Arena ") for line in out.stderr.splitlines())


def test_threads_share_one_arena():
    assert arenas("limit") == ("True", 1)


def test_without_the_limit_each_thread_has_its_own():
    assert arenas("none") == ("None", 5)     # the main thread's and four more


def test_the_users_malloc_arena_max_wins():
    assert arenas("limit", MALLOC_ARENA_MAX="2") == ("False", 2)


HEAP_MAX = 64 << 20     # a glibc secondary arena's heap: 64 MiB reserved, 64 MiB aligned


def secondary_heaps(pid: int) -> int:
    """Anonymous runs of mappings in /proc/<pid>/maps that start 64 MiB aligned and span
    exactly 64 MiB (the arena's used part, then its PROT_NONE reserve)."""
    anon = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) == 5 or (len(fields) == 6 and not fields[5].startswith(("/", "["))):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            anon.append((start, end))
    ends = {start: end for start, end in anon}
    count = 0
    for start, _ in anon:
        if start % HEAP_MAX:
            continue
        at = start
        while at in ends and at - start < HEAP_MAX:
            at = ends[at]
        count += at - start == HEAP_MAX
    return count


@pytest.mark.parametrize("env, heaps", [({}, 0), ({"MALLOC_ARENA_MAX": "8"}, None)])
def test_the_exporter_process_has_no_secondary_arena(pods, env, heaps, monkeypatch):
    """The real exporter (its asyncio worker threads malloc): no arena but the main one;
    with MALLOC_ARENA_MAX=8 (the user's word) its threads have theirs, which shows the
    count above finds them."""
    from exporter.exporterproc import ExporterProcess
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    with ExporterProcess("--kube", "off", "--interfaces", rf"{pods.tag}h\d+",
                         "--kubepods-root", str(pods.kubepods),
                         env=env) as proc:
        proc.metrics()
        found = secondary_heaps(proc.proc.pid)
    if heaps is None:
        assert found >= 1
    else:
        assert found == heaps

"""The generated syscall table: known pairs, unknowns, and that it is really generated."""
from __future__ import annotations

import importlib.util
import os
import platform
import sys

import pytest

from exporter import syscall_names
from exporter.syscall_names import syscall_name, syscall_number

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _generator():
    path = os.path.join(REPO, "scripts", "gen_syscall_names.py")
    spec = importlib.util.spec_from_file_location("gen_syscall_names", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


X86_64 = {0: "read", 1: "write", 39: "getpid", 110: "getppid", 231: "exit_group",
          2: "open", 56: "clone", 59: "execve", 257: "openat", 435: "clone3"}
ARM64 = {63: "read", 64: "write", 172: "getpid", 173: "getppid", 94: "exit_group",
         56: "openat", 57: "close", 220: "clone", 221: "execve", 25: "fcntl", 222: "mmap",
         79: "newfstatat", 38: "renameat", 163: "getrlimit", 435: "clone3"}


@pytest.mark.parametrize("arch,table", [("x86_64", X86_64), ("arm64", ARM64)])
def test_known_pairs(arch, table):
    for nr, name in table.items():
        assert syscall_name(nr, arch) == name
        assert syscall_number(name, arch) == nr


def test_arch_aliases_and_default():
    assert syscall_name(172, "aarch64") == "getpid"
    assert syscall_name(39, "amd64") == "getpid"
    here = platform.machine()
    assert syscall_name(0 if here == "x86_64" else 63) == "read"


def test_unknown():
    assert syscall_name(9999, "x86_64") == "nr_9999"
    assert syscall_name(-1, "arm64") == "nr_-1"
    assert syscall_name(0, "s390x") == "nr_0"   # no table for this arch: numbers, no crash
    assert syscall_number("no_such_call", "x86_64") is None
    assert syscall_number("open", "arm64") is None  # arm64 only has openat
    assert syscall_number("nr_451", "x86_64") == 451  # round-trips the fallback name


def test_x86_64_agrees_with_bccs_table():
    """bcc ships an independent (strace-derived) x86_64 table; it must agree where it has one."""
    sys.path.append("/usr/lib/python3/dist-packages")
    from bcc.syscall import syscalls
    assert len(syscalls) > 300
    for nr, name in syscalls.items():
        assert syscall_name(nr, "x86_64") == name.decode(), nr


def test_regenerating_reproduces_the_committed_file():
    gen = _generator()
    try:
        text = gen.render()
    except gen.GenError as e:
        pytest.fail(f"cannot regenerate the syscall table: {e}")
    with open(syscall_names.__file__, encoding="utf-8") as f:
        assert f.read() == text, \
            "exporter/syscall_names.py is stale or hand-edited: run scripts/gen_syscall_names.py"


def test_generator_fails_clearly_without_headers(tmp_path):
    gen = _generator()
    with pytest.raises(gen.GenError, match="run ./dev setup"):
        gen.render(str(tmp_path))

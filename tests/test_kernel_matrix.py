"""The kernel matrix: tests/test_on_kernel.py inside a qemu guest on each of Debian's kernels.

Each guest boots Debian's own linux-image package (scripts/kmatrix/kernels.sh downloads
them, ./dev setup runs it) with this machine's root as its root, read-only under a RAM
overlay (scripts/kmatrix/vm-run), and runs the kernel-facing subset there with the same
venv. Where /dev/kvm cannot run a stock kernel (the nested PVM KVM of these machines), qemu
emulates: a run takes minutes, its waits are bounded (test_on_kernel.py), nothing asserts
wall time. A kernel whose packages are missing fails: set-up is ./dev setup's job.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VM_RUN = REPO / "scripts" / "kmatrix" / "vm-run"
KERNELS = ("5.10", "6.1", "6.12")   # Debian 11, Debian 12, Debian 12's 6.12 line
GUEST_TIMEOUT = 1800                # seconds; vm-run kills the guest after it (exit 124)
SUBSET = "tests/test_on_kernel.py"


def subset_size() -> int:
    return len(re.findall(r"^def test_", (REPO / SUBSET).read_text(), re.M))


@pytest.mark.skipif(os.environ.get("KVM_GUEST") == "1", reason="already inside a guest")
@pytest.mark.timeout(GUEST_TIMEOUT + 180)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_facing_subset_passes_in_a_guest(kernel):
    r = subprocess.run(
        [str(VM_RUN), "--timeout", str(GUEST_TIMEOUT), "--cwd", str(REPO), kernel, "--",
         str(REPO / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-o", f"timeout={GUEST_TIMEOUT - 60}", SUBSET],
        capture_output=True, text=True, timeout=GUEST_TIMEOUT + 120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"on {kernel} (vm-run exit {r.returncode}):\n{out[-12000:]}"
    summary = out.strip().splitlines()[-1]
    assert re.search(rf"\b{subset_size()} passed\b", summary), out[-6000:]
    assert not re.search(r"skipped|xfail|error", summary), out[-6000:]
    print(f"{kernel}: {summary}")

"""Shared fixtures: the kernel check, test pods, a running exporter.

Kernel tests never skip silently. If this machine cannot load BPF they fail, unless
PODSNOOP_ALLOW_NO_KERNEL=1 is set, and then they skip with a banner at the end of the run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from exporter.exporterproc import ExporterProcess
from exporter.testpods import PodFactory

_kernel: dict = {}


def kernel_problem() -> str | None:
    """None if this machine can compile and load podsnoop's programs, else why not."""
    if "problem" not in _kernel:
        try:
            from exporter import bpfload, config
            from exporter import loader
            bpfload.check_privileges()
            bpfload.ensure_tracefs()
            net = loader.load_object("net", config.parse(["--mode", "node"]), 1)  # libbpf
            net.cleanup()
            _kernel["problem"] = None
        except Exception as e:  # noqa: BLE001 - any failure means no kernel tests
            _kernel["problem"] = f"{type(e).__name__}: {e}"
    return _kernel["problem"]


@pytest.fixture(scope="session")
def kernel():
    problem = kernel_problem()
    if problem:
        if os.environ.get("PODSNOOP_ALLOW_NO_KERNEL") == "1":
            pytest.skip(f"KERNEL TESTS NOT RUN: {problem}")
        pytest.fail(f"this machine cannot load podsnoop's BPF programs: {problem}\n"
                    "(set PODSNOOP_ALLOW_NO_KERNEL=1 to skip kernel tests loudly instead)")


def pytest_terminal_summary(terminalreporter):
    if _kernel.get("problem"):
        bar = "!" * 78
        terminalreporter.write_line(bar, red=True, bold=True)
        terminalreporter.write_line(f"KERNEL TESTS DID NOT RUN: {_kernel['problem']}",
                                    red=True, bold=True)
        terminalreporter.write_line(bar, red=True, bold=True)


@pytest.fixture(scope="module")
def factory(kernel):
    with PodFactory() as f:
        yield f


@pytest.fixture
def pods(kernel):
    """A factory whose pods are removed after each test."""
    with PodFactory() as f:
        yield f


def run_exporter(factory: PodFactory, *args: str, **kw) -> ExporterProcess:
    """An exporter limited to this factory's veths and cgroups, so parallel or leftover
    test pods of other factories cannot disturb the figures."""
    return ExporterProcess("--kube", "off", "--interfaces", rf"{factory.tag}h\d+",
                           "--kubepods-root", str(factory.kubepods), *args, **kw).start()


@pytest.fixture(scope="module")
def exporter(factory):
    proc = run_exporter(factory)
    yield proc
    code = proc.stop()
    assert code == 0, proc.output()


def our_filters(host_if: str, priority: int = 50000) -> list[str]:
    """podsnoop's attachments on both hooks of a link, however attached: its clsact filters
    (ours by priority, via tc(8)) and its tcx links (programs named podsnoop_*)."""
    from exporter import tcx
    lines = []
    has_tcx = tcx.supported()  # kernels before 6.6: clsact filters only
    for hook in ("ingress", "egress"):
        out = subprocess.run(["tc", "filter", "show", "dev", host_if, hook],
                             capture_output=True, text=True).stdout
        lines += [f"{hook}: {ln}" for ln in out.splitlines()
                  if f"pref {priority} " in ln and "handle" in ln]
        if not has_tcx:
            continue
        try:
            index = int(open(f"/sys/class/net/{host_if}/ifindex").read())
        except OSError:
            continue
        for position, prog in enumerate(tcx.chain(index, hook)):
            name = tcx.prog_name(prog)
            if name.startswith("podsnoop"):
                lines.append(f"{hook}: tcx #{position} {name} id {prog}")
    return lines


def wait_for_filters(pod, priority: int = 50000, timeout: float = 30.0) -> None:
    """Until podsnoop's filters sit on both hooks of the pod's host veth."""
    import time
    deadline = time.monotonic() + timeout
    while len(our_filters(pod.host_if, priority)) != 2:
        assert time.monotonic() < deadline, f"no podsnoop filters on {pod.host_if}"
        time.sleep(0.05)


ROOT = Path(__file__).resolve().parent.parent


def run_checked(*argv, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{argv} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip install .` builds from this checkout (build isolation, the pinned
    build backend, as pip does for a user)."""
    out = tmp_path_factory.mktemp("wheel")
    run_checked(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                "--disable-pip-version-check", "-w", str(out), str(ROOT))
    (whl,) = out.glob("podsnoop-*.whl")
    return whl


@pytest.fixture(scope="session")
def installed(wheel) -> Path:
    """A fresh venv with the wheel and its dependencies, outside the tree and readable by
    any user (a checkout may sit in a private directory); Debian's bcc linked in the way
    scripts/setup.sh and the image do (PyPI's bcc is an unrelated package)."""
    top = Path(tempfile.mkdtemp(prefix="podsnoop-venv-", dir="/var/tmp"))
    top.chmod(0o755)
    venv = top / "v"
    try:
        run_checked("/usr/bin/python3", "-m", "venv", str(venv))
        py = venv / "bin" / "python"
        site = run_checked(str(py), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        os.symlink("/usr/lib/python3/dist-packages/bcc", Path(site.stdout.strip(), "bcc"))
        run_checked(str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(wheel))
        yield venv
    finally:
        shutil.rmtree(top, ignore_errors=True)

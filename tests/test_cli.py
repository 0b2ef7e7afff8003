"""Flags, environment variables, and every start-up failure an operator can meet: one clear
error line with the fix, a non-zero exit code, never a traceback. The faults are real
(a port really in use, headers and bcc really hidden in a private mount namespace, a real
unprivileged user), not simulated inside the exporter."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import names

REPO = Path(__file__).resolve().parent.parent


def podsnoop(*args: str, env: dict | None = None, prefix: list[str] | None = None,
             python: str = sys.executable, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), python, "-m", "exporter", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def assert_clean_failure(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == code, out
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in out, out


def test_help_lists_every_flag_with_its_environment_variable():
    r = podsnoop("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for flag, env in (("--listen", "PODSNOOP_LISTEN"), ("--kube", "PODSNOOP_KUBE"),
                      ("--log-level", "PODSNOOP_LOG_LEVEL"), ("--interfaces", "PODSNOOP_INTERFACES")):
        assert flag in text and env in text


def test_console_script_starts_the_same_program():
    script = Path(sys.executable).parent / "podsnoop"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("podsnoop ")


@pytest.mark.parametrize("args,env,needle", [
    (["--listen", "nonsense"], {}, "is not HOST:PORT"),
    (["--listen", "0.0.0.0:70000"], {}, "is not HOST:PORT"),
    (["--kube", "maybe"], {}, "invalid choice"),
    (["--interfaces", "(unclosed"], {}, "not a valid regular expression"),
    (["--tc-priority", "0"], {}, "outside 1..65535"),
    (["--grace-period", "soon"], {}, "not a number of seconds"),
    ([], {"PODSNOOP_LISTEN": "nowhere"}, "is not HOST:PORT"),
    ([], {"PODSNOOP_KUBE": "sometimes"}, "PODSNOOP_KUBE='sometimes': choose from auto, off"),
    ([], {"PODSNOOP_LOG_LEVEL": "loud"}, "PODSNOOP_LOG_LEVEL='loud'"),
    (["--bpf-stats", "always"], {}, "invalid choice"),
    (["--bpf-stats-window", "5", "--bpf-stats-interval", "1"], {},
     "--bpf-stats-window 5 must be more than 0 and at most --bpf-stats-interval 1"),
    (["--bpf-stats-window", "0"], {}, "--bpf-stats-window 0 must be more than 0"),
])
def test_bad_values_are_one_line_errors(args, env, needle):
    assert_clean_failure(podsnoop(*args, env=env), 2, needle)


def test_port_in_use(kernel):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = podsnoop("--kube", "off", "--listen", f"127.0.0.1:{port}")
    assert_clean_failure(r, 1, "podsnoop: error: cannot listen on", "port is in use",
                         "podsnoop: fix:")


def in_private_mounts(*mounts: str) -> list[str]:
    """A prefix that runs the command with empty tmpfs over the given paths."""
    script = " && ".join(f"mount -t tmpfs none {m}" for m in mounts) + ' && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def test_no_kernel_headers_and_no_bcc_are_fine_without_user_programs(pods):
    """podsnoop's own programs are precompiled: with /lib/modules and Debian's bcc module
    hidden it starts, and every default collector counts."""
    from exporter.exporterproc import ExporterProcess
    proc = ExporterProcess("--kube", "off", "--interfaces", rf"{pods.tag}h\d+",
                           "--kubepods-root", str(pods.kubepods),
                           wrapper=in_private_mounts("/lib/modules",
                                                     "/usr/lib/python3/dist-packages/bcc"))
    with proc:
        m = proc.metrics()
        for collector in ("network", "syscalls", "exec", "tcp", "drops"):
            assert m.value(names.COLLECTOR_UP, collector=collector) == 1, collector
    assert proc.proc.returncode == 0, proc.output()
    assert "bcc" not in proc.output() and "kernel headers" not in proc.output()


def test_missing_bcc_is_one_clean_line_for_a_user_program(pods, tmp_path):
    """A user program in bcc C without bcc: that program is not loaded and says why in one
    line with the fix; the rest serves."""
    from exporter.exporterproc import ExporterProcess
    from test_user_programs import _dir
    programs = _dir(tmp_path, "shell-commands")
    proc = ExporterProcess("--kube", "off", "--interfaces", rf"{pods.tag}h\d+",
                           "--kubepods-root", str(pods.kubepods), "--programs", str(programs),
                           wrapper=in_private_mounts("/usr/lib/python3/dist-packages/bcc"))
    with proc:
        m = proc.metrics()
        assert m.value("podsnoop_program_loaded", program="shell-commands") == 0
        assert m.value(names.COLLECTOR_UP, collector="network") == 1
    out = proc.output()
    assert "bcc Python module is not importable" in out and "apt-get install python3-bpfcc" \
        in out, out
    assert "Traceback" not in out, out


def test_not_root(kernel, installed):
    """As nobody, the installed package (world-readable; the checkout and the dev venv may
    sit in directories only root can enter)."""
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        str(installed / "bin" / "podsnoop"), "--kube", "off",
                        "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                       timeout=60, cwd="/", env={**os.environ, "HOME": "/tmp"})
    assert_clean_failure(r, 1, "needs root", "podsnoop: fix:")


def test_build_info_and_self_metrics_are_served(exporter):
    m = exporter.metrics()
    assert m.value(names.BUILD_INFO) == 1
    assert m.value(names.SCRAPE_COLLECTOR_SUCCESS, collector="network") == 1
    assert m.value(names.BPF_MAP_MAX_ENTRIES, map="net_counters") == 16384
    status, body = exporter.get("/healthz")
    assert status == 200
    status, body = exporter.get("/readyz")
    assert status == 200 and body.startswith("ready")


def test_kubepods_root_outside_the_cgroup_tree(kernel):
    r = podsnoop("--kube", "off", "--listen", "127.0.0.1:0", "--kubepods-root", "/tmp")
    assert_clean_failure(r, 1, "is not a directory of the cgroup v2 hierarchy")


def test_missing_tracefs_is_mounted_by_the_exporter(pods):
    """tracefs unmounted (as on a fresh node): podsnoop mounts it and starts counting."""
    from conftest import run_exporter
    script = "umount /sys/kernel/tracing && ! mountpoint -q /sys/kernel/tracing && exec \"$@\""
    proc = run_exporter(pods, wrapper=["unshare", "--mount", "--propagation", "private",
                                       "sh", "-c", script, "sh"])
    try:
        pod = pods.create()
        pod.exec(["python3", "-c", "import os\nfor _ in range(3000): os.getsid(0)"])
        assert proc.metrics().value(names.SYSCALLS + "_total", pod_uid=pod.uid,
                                    syscall="getsid") == 3000
    finally:
        assert proc.stop() == 0, proc.output()

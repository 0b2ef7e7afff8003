"""One collector the kernel refuses goes off alone; the rest count, /readyz stays 200.

The refusal is real: the objects built from a copy of bpf/ whose tcp.bpf.c (or net.bpf.c)
also holds a program the kernel's verifier rejects (an unbounded stack read), loaded by the
real exporter process. The same
copy with the flag set explicitly must stay a hard one-line error.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import names
from exporter.exporterproc import ExporterProcess
from conftest import our_filters
from test_network import wait_for
from test_syscalls import CALLS, GETSID

REPO = Path(__file__).resolve().parent.parent
# Appended to a real source: its maps and constants stay as the loader expects them, and
# the object fails at the load with a real verifier refusal of this program.
REFUSED = """
// test_degrade.py: a variable, unbounded stack read that every verifier refuses
SEC("raw_tp/sched_process_exec")
int refused_read(struct bpf_raw_tracepoint_args *ctx)
{
    char buf[8] = {};
    u32 i = bpf_get_prandom_u32();
    return buf[i];
}
"""


def refusing_objects(tmp_path: Path, source: str) -> Path:
    """The precompiled objects, built from a copy of bpf/ whose `source` also holds a
    program the verifier refuses."""
    bpf_dir, objects = tmp_path / "bpf", tmp_path / "objects"
    shutil.copytree(REPO / "bpf", bpf_dir, ignore=shutil.ignore_patterns(".output"))
    with open(bpf_dir / source, "a") as f:
        f.write(REFUSED)
    subprocess.run(["make", "-s", "-C", str(bpf_dir), f"OUTPUT={objects}", f"REPO={REPO}"],
                   check=True, capture_output=True)
    return objects


def exporter(factory, objects: Path, *args: str) -> ExporterProcess:
    return ExporterProcess("--kube", "off", "--interfaces", rf"{factory.tag}h\d+",
                           "--kubepods-root", str(factory.kubepods), *args,
                           env={"PODSNOOP_BPF_OBJECT_DIR": str(objects)})


def warnings_about(output: str, collector: str) -> list[str]:
    return [ln for ln in output.splitlines() if f"{collector} collector off:" in ln]


def test_refused_tcp_program_turns_off_tcp_alone(pods, tmp_path):
    objects = refusing_objects(tmp_path, "tcp.bpf.c")
    pod = pods.create()
    proc = exporter(pods, objects).start(wait_ready=180)
    try:
        status, body = proc.get("/readyz")
        assert status == 200, body
        assert "degraded: collectors: off: tcp (verifier refused)" in body, body
        m = proc.metrics()
        assert m.value(names.COLLECTOR_UP, collector="tcp") == 0
        for other in ("network", "syscalls", "exec", "drops"):
            assert m.value(names.COLLECTOR_UP, collector=other) == 1, other
        assert m.series(names.COLLECTOR_DISABLED) == [
            {"collector": "tcp", "reason": "verifier refused"}]
        assert not m.series(names.SCRAPE_COLLECTOR_SUCCESS, collector="tcp")
        # the rest counts exactly
        container = pod.first_container
        before = m.value(CALLS, container_id=container.id, syscall="getsid")
        pod.exec(["python3", "-c", GETSID, "2000"])
        assert proc.metrics().value(CALLS, container_id=container.id,
                                    syscall="getsid") - before == 2000
        wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="the TC filters")
        lines = warnings_about(proc.output(), "tcp")
        assert len(lines) == 1, proc.output()
        assert "the kernel's verifier refused refused_read of tcp.bpf.o: invalid unbounded " \
               "variable-offset read from stack" in lines[0], lines[0]
        assert "(--tcp off silences this)" in lines[0]
        assert "kernel headers" not in proc.output()
        assert "per-thread hash" not in proc.output()  # this kernel has task storage
    finally:
        assert proc.stop() == 0, proc.output()
    assert our_filters(pod.host_if) == []


@pytest.mark.parametrize("how", ["flag", "env"])
def test_explicit_flag_that_cannot_be_honoured_is_a_hard_error(pods, tmp_path, how):
    objects = refusing_objects(tmp_path, "tcp.bpf.c")
    args = ["--tcp", "on"] if how == "flag" else []
    env = {"PODSNOOP_TCP": "on"} if how == "env" else {}
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "--kube", "off", "--listen", "127.0.0.1:0",
         "--interfaces", rf"{pods.tag}h\d+", "--kubepods-root", str(pods.kubepods), *args],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PODSNOOP_BPF_OBJECT_DIR": str(objects), **env})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("podsnoop: ")]
    assert errors[0].startswith("podsnoop: error: the kernel's verifier refused "
                                "refused_read of tcp.bpf.o: "), r.stderr
    assert errors[1].startswith("podsnoop: fix: ") and "or run with --tcp off" in errors[1]


def test_refused_network_program_leaves_the_links_alone_and_the_rest_counting(pods, tmp_path):
    objects = refusing_objects(tmp_path, "net.bpf.c")
    pod = pods.create()
    proc = exporter(pods, objects, "--tc-attach", "clsact").start(wait_ready=180)
    try:
        assert proc.get("/readyz")[0] == 200
        m = proc.metrics()
        assert m.series(names.COLLECTOR_DISABLED) == [
            {"collector": "network", "reason": "verifier refused"}]
        assert m.value(names.COLLECTOR_UP, collector="syscalls") == 1
        assert not m.series(names.NET_RECEIVE_BYTES + "_total")
        container = pod.first_container
        pod.exec(["python3", "-c", GETSID, "2000"])
        assert proc.metrics().value(CALLS, container_id=container.id, syscall="getsid") == 2000
        lines = warnings_about(proc.output(), "network")
        assert len(lines) == 1 and "it has no flag to turn it off" in lines[0], proc.output()
        assert "the kernel's verifier refused refused_read of net.bpf.o: invalid " \
               "unbounded variable-offset read from stack" in lines[0], lines[0]
        qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", pod.host_if],
                                capture_output=True, text=True).stdout
        assert "clsact" not in qdiscs, "nothing to attach: no qdisc either"
    finally:
        assert proc.stop() == 0, proc.output()

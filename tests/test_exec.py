"""Per-container exec counts (sched:sched_process_exec), against known workloads in real
test pods, with the real exporter process.

A workload is started in a pod by `sh -c 'echo $$ > cgroup.procs && exec "$@"' ... ip netns
exec NETNS argv`: the shell moves itself into the container's cgroup and then execs `ip`
(counted under comm="ip"), which execs argv[0] (counted under its comm). The program that
must be counted exactly is a copy of /bin/true under a name nothing else uses.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from exporter import names
from conftest import run_exporter
from test_network import wait_for

EXECS = names.EXECS + "_total"
NAME = "podsnooptrue"


@pytest.fixture(scope="module")
def true_copy(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("exec") / NAME
    shutil.copy("/bin/true", path)
    os.chmod(path, 0o755)
    return str(path)


def loop(binary: str, n: int) -> list[str]:
    return ["sh", "-c", f"i=0; while [ $i -lt {n} ]; do {binary}; i=$((i+1)); done"]


def execs(proc, container, comm) -> float:
    return proc.metrics().value(EXECS, container_id=container.id, comm=comm)


def fdinfo_values(pid: int, field: str) -> list[int]:
    """`field` (e.g. prog_type, prog_id) of every fd of process `pid` that has it, from
    /proc/PID/fdinfo: what the process holds, not what it was configured to load."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(field + ":"):
                out.append(int(line.split()[1]))
    return out


def prog_types(pid: int) -> list[int]:
    """prog_type of every BPF program fd the process holds (5 = tracepoint,
    8 = cgroup_skb)."""
    return fdinfo_values(pid, "prog_type")


BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_RAW_TRACEPOINT = 17


@pytest.fixture(scope="module")
def pod(factory, exporter):
    p = factory.create(containers=("app", "sidecar"))
    # The pod's long-lived process (ip netns exec, then sleep) must be counted before the
    # tests take their "before" figures.
    wait_for(lambda: execs(exporter, p.first_container, "sleep") == 1,
             what="the pod's own process")
    return p


def test_exact_exec_count_per_container(exporter, pod, true_copy):
    app, sidecar = pod.containers["app"], pod.containers["sidecar"]
    m0 = exporter.metrics()
    pod.exec(loop(true_copy, 37), container="app")
    pod.exec(loop(true_copy, 5), container="sidecar")
    m1 = exporter.metrics()

    def added(c, comm):
        return (m1.value(EXECS, container_id=c.id, comm=comm)
                - m0.value(EXECS, container_id=c.id, comm=comm))
    assert added(app, NAME) == 37
    assert added(sidecar, NAME) == 5
    # The launcher's own execs, exactly: ip (netns exec) then sh (the loop), once each.
    assert added(app, "ip") == 1 and added(app, "sh") == 1
    assert added(sidecar, "ip") == 1 and added(sidecar, "sh") == 1


def test_samples_carry_pod_and_container_labels(exporter, pod, true_copy):
    app = pod.containers["app"]
    pod.exec(loop(true_copy, 1), container="app")
    series = exporter.metrics().series(EXECS, container_id=app.id, comm=NAME)
    assert series == [{"namespace": "", "pod": "", "pod_uid": pod.uid, "container": "",
                       "container_id": app.id, "comm": NAME}]


def test_host_execs_are_not_counted(exporter, pod, true_copy):
    before = exporter.metrics().value(EXECS, comm=NAME)
    for _ in range(20):
        subprocess.run([true_copy], check=True)
    assert exporter.metrics().value(EXECS, comm=NAME) == before


def test_top_n_bounds_series_and_keeps_totals(pods, tmp_path):
    proc = run_exporter(pods, "--exec-top", "2", "--syscalls", "off")
    try:
        pod = pods.create()
        app = pod.first_container
        script = []
        for i, n in enumerate((30, 20, 10, 5, 3)):  # five distinct comms
            path = tmp_path / f"psx{i}"
            shutil.copy("/bin/true", path)
            script.append(f"j=0; while [ $j -lt {n} ]; do {path}; j=$((j+1)); done")
        pod.exec(["sh", "-c", "; ".join(script)])
        m = proc.metrics()
        got = {s["comm"]: v for s, v in m.samples[EXECS] if s["container_id"] == app.id}
        assert set(got) == {"psx0", "psx1", "other"}, got
        assert got["psx0"] == 30 and got["psx1"] == 20
        # other = psx2..4 + ip and sleep (the pod's long-lived process) + ip and sh (this
        # workload's launcher)
        assert got["other"] == 10 + 5 + 3 + 4
    finally:
        assert proc.stop() == 0


def test_exec_log_serves_recent_execs_of_the_pod(pods, true_copy):
    proc = run_exporter(pods, "--exec-log", "9", "--syscalls", "off")
    try:
        pod = pods.create()
        app = pod.first_container
        # The pod's own process (ip, sleep) first, so the workload's execs come last.
        wait_for(lambda: len(proc.get(f"/execs?pod_uid={pod.uid}")[1].splitlines()) == 2,
                 what="the pod's own execs")
        pod.exec(loop(true_copy, 7))

        def rows():
            status, body = proc.get(f"/execs?pod_uid={pod.uid}")
            assert status == 200
            return [json.loads(line) for line in body.splitlines()]
        # Bounded per pod: the last 9 of ip, sleep, then this workload's ip, sh, 7 x true.
        # The reader thread polls the ring buffer: the last exec may take a moment.
        want = ["ip", "sh"] + [NAME] * 7
        wait_for(lambda: [r["comm"] for r in rows()] == want, what="the exec log")
        ip, sh, *trues = rows()
        assert ip["filename"].endswith("/ip") and sh["filename"].endswith("/sh")
        assert all(r["filename"] == true_copy for r in trues)
        assert all(r["pod_uid"] == pod.uid and r["container_id"] == app.id
                   for r in [ip, sh, *trues])
        # execve keeps the pid (ip became sh); each true is a child of that shell: ppid is
        # read from the kernel's task_struct at BTF offsets, and must say exactly that.
        assert sh["pid"] == ip["pid"] > 0
        assert all(r["ppid"] == sh["pid"] for r in trues), trues
        assert len({r["pid"] for r in trues}) == 7 and sh["pid"] not in {r["pid"] for r in trues}
        assert all(r["uid"] == 0 for r in trues)
        m = proc.metrics()
        assert m.value(names.EXEC_EVENTS_DROPPED + "_total") == 0
        assert names.EXEC_EVENTS_DROPPED + "_total" in m.samples
    finally:
        assert proc.stop() == 0


def test_exec_log_is_off_by_default(exporter):
    status, body = exporter.get("/execs")
    assert status == 404 and "--exec-log" in body


def test_exec_off_loads_no_program(pods, true_copy):
    off = ("--syscalls", "off", "--tcp", "off", "--drops", "off", "--container-network", "off",
           "--peers", "off")
    proc = run_exporter(pods, *off, "--exec", "off")
    try:
        assert not {BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_RAW_TRACEPOINT} & set(
            prog_types(proc.proc.pid))
        pod = pods.create()
        pod.exec(loop(true_copy, 3))
        m = proc.metrics()
        assert not m.samples.get(EXECS)
        assert not m.series(names.SCRAPE_COLLECTOR_SUCCESS, collector="exec")
    finally:
        assert proc.stop() == 0
    proc = run_exporter(pods, *off, "--exec", "on")
    try:
        assert prog_types(proc.proc.pid).count(BPF_PROG_TYPE_RAW_TRACEPOINT) == 1
        assert proc.metrics().value(names.SCRAPE_COLLECTOR_SUCCESS, collector="exec") == 1
    finally:
        assert proc.stop() == 0

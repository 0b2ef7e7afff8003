"""The in-kernel cost of podsnoop's programs, from the kernel's own run-time statistics,
turned on only while podsnoop runs: all the time with --bpf-stats on, in short windows by
default (sampled), counted in podsnoop_bpf_stats_on_seconds_total."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from exporter import bpfload, names, tcx
from exporter.bpfstats import run_stats
from conftest import run_exporter, wait_for_filters
from test_network import deltas, snapshot

SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
RUNS = names.BPF_PROGRAM_RUNS + "_total"
SECONDS = names.BPF_PROGRAM_RUN_SECONDS + "_total"
ON_SECONDS = names.BPF_STATS_ON_SECONDS + "_total"
MANIFEST_CAPS = "-all,+bpf,+perfmon,+net_admin,+sys_ptrace"  # deploy/daemonset.yaml's


@contextlib.contextmanager
def foreign_program(pod):
    """A program of someone else's on the pod's veth (its fd): the kernel counts its runs
    only while statistics are on, which shows when they were. On leaving (after the
    exporter stopped), checks that podsnoop left them off."""
    other = bpfload.compile_program("testing/foreign", [])
    fd = other.load_func("foreign_count", other.SCHED_CLS).fd
    link = tcx.attach_tcx(fd, pod.host_ifindex(), "ingress")
    try:
        yield fd
        assert SYSCTL.read_text().strip() == "0"
        counted = run_stats(fd)[1]
        pod.exec(["ping", "-c", "5", "-i", "0.01", "-W", "2", pod.host_ip])
        assert run_stats(fd)[1] == counted, "statistics stayed on after podsnoop"
    finally:
        os.close(link)
        other.cleanup()


def test_every_program_is_timed_and_runs_count_packets_exactly(pods, kernel):
    assert SYSCTL.read_text().strip() == "0", "statistics must be off before the test"
    pod = pods.create()
    with foreign_program(pod) as other_fd:
        _every_program_is_timed(pods, pod, other_fd)


def _every_program_is_timed(pods, pod, other_fd):
    proc = run_exporter(pods, "--bpf-stats", "on")
    try:
        wait_for_filters(pod)
        # On through podsnoop's BPF_ENABLE_STATS fd, not the node-wide sysctl.
        assert SYSCTL.read_text().strip() == "0"
        pod.exec(["ping", "-c", "1", "-W", "2", pod.host_ip])
        before, runs0 = snapshot(proc, pod), proc.metrics()
        pod.exec(["ping", "-c", "20", "-i", "0.01", "-W", "2", pod.host_ip])
        after, runs1 = snapshot(proc, pod), proc.metrics()
        _, kernel, _, _ = deltas(before, after)
        ingress = "net/podsnoop_tc_ingress"
        # One run of the ingress program per packet out of the pod (only this factory's
        # veths are attached).
        assert (runs1.value(RUNS, program=ingress) - runs0.value(RUNS, program=ingress)
                == kernel["transmit_packets"] >= 20)
        programs = {labels["program"] for labels in runs1.series(SECONDS)}
        assert {"net/podsnoop_tc_ingress", "net/podsnoop_tc_egress"} <= programs
        assert any(p.startswith("syscalls/") for p in programs), programs
        assert runs1.value(SECONDS, program=ingress) > 0
        assert runs1.value(names.BPF_STATS_ENABLED) == 1
        assert run_stats(other_fd)[1] >= kernel["transmit_packets"]
    finally:
        assert proc.stop() == 0, proc.output()


def test_sampled_windows_count_only_while_on_and_say_for_how_long(pods):
    """The default: on for --bpf-stats-window seconds of every --bpf-stats-interval. Between
    two scrapes with the same on-seconds the statistics were off throughout, and the kernel
    counted no run of anyone's program; within windows it did."""
    pod = pods.create()
    with foreign_program(pod) as other_fd:
        _windows_count_only_while_on(pods, pod, other_fd)


def _windows_count_only_while_on(pods, pod, other_fd):
    proc = run_exporter(pods, "--bpf-stats-window", "0.3", "--bpf-stats-interval", "1.5")
    try:
        wait_for_filters(pod)
        assert SYSCTL.read_text().strip() == "0"
        ingress = "net/podsnoop_tc_ingress"
        off_seen = 0
        for _ in range(200):
            m0, counted = proc.metrics(), run_stats(other_fd)[1]
            pod.exec(["ping", "-c", "3", "-i", "0.01", "-W", "2", pod.host_ip])
            m1, counted1 = proc.metrics(), run_stats(other_fd)[1]
            if m1.value(ON_SECONDS) == m0.value(ON_SECONDS):  # off from m0 to m1
                assert counted1 == counted, "a program was timed outside the windows"
                assert m1.value(RUNS, program=ingress) == m0.value(RUNS, program=ingress)
                off_seen += 1
            if off_seen >= 3 and counted1 > 0 and m1.value(ON_SECONDS) >= 0.6:
                break
        assert off_seen >= 3 and counted1 > 0, (off_seen, counted1)
        assert m1.value(RUNS, program=ingress) > 0 and m1.value(SECONDS, program=ingress) > 0
        assert m1.value(names.BPF_STATS_ENABLED) == 1
    finally:
        assert proc.stop() == 0, proc.output()


def test_without_sys_admin_it_says_so_and_runs_on(pods):
    pod = pods.create()
    proc = run_exporter(pods, wrapper=["setpriv", f"--bounding-set={MANIFEST_CAPS}",
                                       "--inh-caps=-all"])
    try:
        wait_for_filters(pod)
        m = proc.metrics()
        assert m.value(names.BPF_STATS_ENABLED) == 0
        assert not m.series(SECONDS)
    finally:
        assert proc.stop() == 0, proc.output()
    out = proc.output()
    assert out.count("BPF run-time statistics are off (needs CAP_SYS_ADMIN)") == 1, out
    assert "Traceback" not in out

"""The floor: what podsnoop's programs cost over EMPTY programs on the same hooks.

Any tool pays for the hook itself (a raw tracepoint pair on every syscall of the node, a TC
program run per packet per hook); podsnoop's own cost is what it adds on top. Alternated rep
by rep in one run:

- syscall path: a getppid loop (bench/syscall_loop.c) in a test pod's container (a tracked
  task) and on the host (an untracked task, in a cgroup two levels down as a node's
  system.slice/<unit>.service is), ns per call, under: nothing attached / the
  floor (empty sys_enter + sys_exit raw tracepoints, bpf/testing/floor.c) / podsnoop
  (default collectors, --bpf-stats off; also with one call in 16 timed, and counts only) /
  podsnoop with --bpf-stats on (the kernel then
  times every program run, which is itself a cost). The default, --bpf-stats sampled, is
  on for window/interval of the time: its cost is that share of the measured --bpf-stats
  on cost (too small to measure directly), computed below from the figures measured here
  and compared with podsnoop's own;
- packet path: UDP packets out of and into a test pod; ns per program run from the kernel's
  run-time statistics (BPF_ENABLE_STATS, held by this script), for the floor (an empty
  program as a tcx link at the head of both hooks) and podsnoop's two programs.

    .venv/bin/python bench/floor.py [--reps 5] [--calls 2000000] [--packets 100000] [--write]
"""
from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from common import (exported_ns_per_run, floor_ns_per_run, graceful, header, summary, table,
                    write_section)
from syscall_path import Nothing, build_loop, ns_per_call

from exporter import bpfload, tcx
from exporter.bpfstats import RunTimeStats
from exporter.exporterproc import ExporterProcess
from exporter.testpods import PodFactory, in_cgroup

HOOKS = ("ingress", "egress")


class Floor:
    """Empty programs on podsnoop's syscall hooks (bcc attaches them on load)."""

    def __init__(self, factory):
        pass

    def __enter__(self):
        self.bpf = bpfload.compile_program("testing/floor", [])
        return self

    def __exit__(self, *exc):
        self.bpf.cleanup()


class Podsnoop:
    def __init__(self, factory, *extra: str, interfaces: str = "none"):
        self.exporter = ExporterProcess("--kube", "off", "--interfaces", interfaces,
                                        "--kubepods-root", str(factory.kubepods),
                                        "--log-level", "warning", *extra)

    def __enter__(self):
        self.exporter.start()
        return self

    def __exit__(self, *exc):
        self.exporter.stop()


class HostService:
    """A cgroup where a node's services run (system.slice/<unit>.service, two levels down):
    the untracked host task's, so that the pod filter walks as far as it does on a node."""

    def __init__(self):
        from exporter.cgroups import find_cgroup2_mount
        self.slice = Path(find_cgroup2_mount(), "podsnoop-bench-system.slice")
        self.unit = self.slice / "bench.service"

    def __enter__(self):
        self.unit.mkdir(parents=True, exist_ok=True)
        return self

    def run(self, argv: list[str]) -> float:
        """ns per call of the loop `argv`, run in this cgroup."""
        return ns_per_call(in_cgroup(self.unit, argv))

    def __exit__(self, *exc):
        for cgroup in (self.unit, self.slice):
            cgroup.rmdir()


def udp_blast(pod, packets: int) -> None:
    """`packets` datagrams out of the pod, and as many into it."""
    send = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(int(sys.argv[2])): s.sendto(b'x' * 64, (sys.argv[1], 9))")
    pod.exec(["python3", "-c", send, pod.host_ip, str(packets)])
    subprocess.run(["python3", "-c", send, pod.pod_ip, str(packets)], check=True)


def floor_tc(pod, packets: int) -> dict[str, float]:
    """ns per run of an empty program at the head of each hook."""
    per_run = floor_ns_per_run(
        "floor_tc", "SCHED_CLS",
        lambda fd: [tcx.attach_tcx(fd, pod.host_ifindex(), hook, head=True) for hook in HOOKS],
        lambda: udp_blast(pod, packets))
    return {hook: per_run for hook in HOOKS}  # one program on both hooks


def podsnoop_tc(factory, pod, packets: int) -> dict[str, float]:
    with Podsnoop(factory, "--syscalls", "off", "--exec", "off", "--tcp", "off",
                  "--drops", "off", "--bpf-stats", "on", interfaces=pod.host_if) as p:
        time.sleep(0.5)
        m0 = p.exporter.metrics()
        udp_blast(pod, packets)
        m1 = p.exporter.metrics()
    return {hook: exported_ns_per_run(m0, m1, f"net/podsnoop_tc_{hook}") for hook in HOOKS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2_000_000)
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = ap.parse_args()
    graceful()
    loop = build_loop()
    configs = {"nothing attached": lambda f: Nothing(), "floor (empty programs)": Floor,
               "podsnoop": lambda f: Podsnoop(f, "--bpf-stats", "off"),
               "podsnoop --syscall-latency-every 1": lambda f: Podsnoop(
                   f, "--bpf-stats", "off", "--syscall-latency-every", "1"),
               "podsnoop --syscall-latency off": lambda f: Podsnoop(
                   f, "--bpf-stats", "off", "--syscall-latency", "off"),
               "podsnoop --bpf-stats on": lambda f: Podsnoop(f, "--bpf-stats", "on")}
    sys_results = {(c, w): [] for c in configs for w in ("pod", "host")}
    tc_results = {(c, h): [] for c in ("floor", "podsnoop") for h in HOOKS}
    with PodFactory(prefix="bf") as factory, HostService() as host:
        pod = factory.create()
        pod.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", pod.host_ip], check=False)
        for rep in range(args.reps):
            for name, make in configs.items():
                with make(factory):
                    time.sleep(0.5)
                    sys_results[(name, "pod")].append(
                        float(pod.exec([loop, str(args.calls)]).stdout))
                    sys_results[(name, "host")].append(host.run([loop, str(args.calls)]))
            stats = RunTimeStats()
            stats.enable()
            try:
                for hook, ns in floor_tc(pod, args.packets).items():
                    tc_results[("floor", hook)].append(ns)
            finally:
                stats.close()
            for hook, ns in podsnoop_tc(factory, pod, args.packets).items():
                tc_results[("podsnoop", hook)].append(ns)
            print(f"rep {rep + 1}/{args.reps} done", flush=True)
    base = {w: summary(sys_results[("nothing attached", w)])[0] for w in ("pod", "host")}
    floor = {w: summary(sys_results[("floor (empty programs)", w)])[0] for w in ("pod", "host")}
    rows = []
    for name in configs:
        row = [name]
        for where in ("pod", "host"):
            med, lo, hi = summary(sys_results[(name, where)])
            hook = floor[where] - base[where]  # what the empty programs cost
            row += [f"{med:.1f} ({lo:.1f}-{hi:.1f})", f"{med - base[where]:+.1f}",
                    f"{med - floor[where]:+.1f}",
                    f"{(med - floor[where]) / hook:.2f}x" if name.startswith("podsnoop") else ""]
        rows.append(row)
    sys_text = table(["configuration", "tracked pod task: ns/call (min-max)", "over nothing",
                      "over the floor", "/ the floor's own", "untracked host task: ns/call",
                      "over nothing", "over the floor", "/ the floor's own"], rows)
    from exporter.config import Config
    duty = Config.bpf_stats_window / Config.bpf_stats_interval
    sampled = []
    for where, what in (("pod", "tracked pod task"), ("host", "untracked host task")):
        own = summary(sys_results[("podsnoop", where)])[0] - floor[where]
        timing = summary(sys_results[("podsnoop --bpf-stats on", where)])[0] - floor[where] - own
        sampled.append(f"- {what}: --bpf-stats on adds {timing:+.1f} ns per syscall to "
                       f"podsnoop's own {own:+.1f}; the default --bpf-stats sampled "
                       f"({Config.bpf_stats_window:g} s of every "
                       f"{Config.bpf_stats_interval:g} s, {duty:.2%} of the time) "
                       f"{timing * duty:+.2f} ns = {timing * duty / own:.1%} of podsnoop's "
                       "own" if own > 0 else f"- {what}: podsnoop's own cost not above "
                       "the floor in this run")
    sys_text += "\n\n" + "\n".join(sampled)
    tc_rows = []
    for hook in HOOKS:
        f_med, f_lo, f_hi = summary(tc_results[("floor", hook)])
        p_med, p_lo, p_hi = summary(tc_results[("podsnoop", hook)])
        tc_rows.append([hook, f"{f_med:.1f} ({f_lo:.1f}-{f_hi:.1f})",
                        f"{p_med:.1f} ({p_lo:.1f}-{p_hi:.1f})", f"{p_med - f_med:+.1f}",
                        f"{p_med / f_med:.2f}x"])
    tc_text = table(["hook (host veth)", "floor: ns/run (min-max)", "podsnoop: ns/run",
                     "over the floor", "ratio"], tc_rows)
    print(sys_text)
    print(tc_text)
    if args.write:
        write_section("floor", header("The floor: podsnoop over empty programs on the same "
                                      "hooks") + "\n" +
                      f"{args.reps} reps, configurations alternated per rep; syscall path "
                      f"{args.calls} getppid calls per measurement, packet path "
                      f"{args.packets} UDP datagrams each way per measurement (ns per program "
                      "run from the kernel's run-time statistics).\n\n" + sys_text + "\n\n" +
                      tc_text + "\n")


if __name__ == "__main__":
    main()

"""Syscall path: what each traced syscall costs with podsnoop, next to bcc's syscount.

A C loop of getppid (bench/syscall_loop.c) runs inside a test pod (a tracked container) and
on the host (an untracked process), under four configurations, alternated rep by rep:
nothing attached; podsnoop (syscall collector, latency histogram on); bcc's syscount-bpfcc
(per-syscall counts); syscount-bpfcc -L (counts + latency, podsnoop's closest equivalent).
Reported: median ns per call and the added ns versus nothing attached.

    .venv/bin/python bench/syscall_path.py [--reps 5] [--calls 2000000] [--write]
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import time

from common import HERE, graceful, header, summary, table, write_section

from exporter.exporterproc import ExporterProcess
from exporter.testpods import PodFactory

LOOP_SRC = HERE / "syscall_loop.c"
LOOP_BIN = HERE / "out" / "syscall_loop"


def build_loop() -> str:
    LOOP_BIN.parent.mkdir(exist_ok=True)
    if not LOOP_BIN.exists() or LOOP_BIN.stat().st_mtime < LOOP_SRC.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-o", str(LOOP_BIN), str(LOOP_SRC)], check=True)
    return str(LOOP_BIN)


class Syscount:
    """bcc's own tool, started like an operator would, stopped with Ctrl-C."""

    def __init__(self, latency: bool):
        self.args = ["syscount-bpfcc"] + (["-L"] if latency else [])

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        line = self.proc.stdout.readline()  # "Tracing syscalls, ..." once attached
        if "Tracing" not in line:
            raise RuntimeError(f"syscount did not start: {line}")
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=30)


class Podsnoop:
    def __init__(self, factory: PodFactory):
        self.exporter = ExporterProcess("--kube", "off", "--interfaces", "none",
                                        "--kubepods-root", str(factory.kubepods),
                                        "--log-level", "warning")

    def __enter__(self):
        self.exporter.start()
        return self

    def __exit__(self, *exc):
        self.exporter.stop()


class Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def ns_per_call(argv: list[str]) -> float:
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2_000_000)
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = ap.parse_args()
    graceful()
    loop = build_loop()
    configs = {"nothing attached": lambda f: Nothing(), "podsnoop": Podsnoop,
               "syscount-bpfcc": lambda f: Syscount(False),
               "syscount-bpfcc -L": lambda f: Syscount(True)}
    results = {(c, w): [] for c in configs for w in ("pod", "host")}
    with PodFactory(prefix="bs") as factory:
        pod = factory.create()
        for rep in range(args.reps):
            for name, make in configs.items():
                with make(factory):
                    time.sleep(0.5)
                    results[(name, "pod")].append(
                        float(pod.exec([loop, str(args.calls)]).stdout))
                    results[(name, "host")].append(ns_per_call([loop, str(args.calls)]))
            print(f"rep {rep + 1}/{args.reps} done", flush=True)
    base = {w: summary(results[("nothing attached", w)])[0] for w in ("pod", "host")}
    rows = []
    for name in configs:
        row = [name]
        for where in ("pod", "host"):
            med, lo, hi = summary(results[(name, where)])
            row += [f"{med:.1f} ({lo:.1f}-{hi:.1f})", f"{med - base[where]:+.1f}"]
        rows.append(row)
    text = table(["configuration", "tracked pod: ns/call (min-max)", "added ns",
                  "untracked host process: ns/call", "added ns"], rows)
    print(text)
    if args.write:
        write_section("syscall_path", header("Syscall path: getppid loop, ns per call") + "\n" +
                      f"{args.reps} reps x {args.calls} calls, configurations alternated per rep. "
                      "podsnoop counts per (cgroup, syscall) and keeps a per-cgroup latency "
                      "histogram, so `syscount-bpfcc -L` is the like-for-like comparison; "
                      "plain syscount counts per syscall only. The host process is not in a "
                      "pod: podsnoop filters it out in the kernel (one helper call and one "
                      "hash lookup per tracepoint), syscount counts it.\n\n" + text + "\n")


if __name__ == "__main__":
    main()

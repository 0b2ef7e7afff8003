#!/usr/bin/env python3
"""The socket path: podsnoop's cgroup_skb programs (DNS, peers) over an empty one.

    .venv/bin/python bench/socket_path.py [--reps 5] [--packets 100000] [--write]

The DNS and peer programs are linked to the kubepods root: they run for every packet of
every pod's sockets (egress once the IP header is built, ingress once the receiving socket
is known), not for the node's own. What they cost per packet is measured as bench/floor.py
measures the TC programs: ns per program run from the kernel's run-time statistics, over
the floor, an empty cgroup_skb program (bpf/testing/floor.c's floor_skb) linked to the
same root, alternated rep by rep. Traffic: `--packets` UDP datagrams of 64 bytes out of a
test pod to the host side of its veth (a node address: the peer table's hit path), as many
from there into the pod's UDP sink, and as many out of the pod to an address no table
names (world: the miss path; with --peer-cidrs also the trie's). Configurations:

  floor               the empty program on both hooks;
  podsnoop            the exporter with its defaults (DNS and peers on), --bpf-stats on;
  podsnoop +cidrs     the same with --peer-cidrs naming a network the traffic is not in
                      (a miss in the hash is then looked up in the trie).

Machines differ 2-3x in a hook's own cost (AMD vs Intel), so the figure that carries over
is the ratio to the floor measured in the same run.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import time

from common import (exported_ns_per_run, floor_ns_per_run, graceful, header, summary, table,
                    write_section)

from exporter.bpfstats import RunTimeStats
from exporter.collectors.container_net import (BPF_CGROUP_INET_EGRESS, BPF_CGROUP_INET_INGRESS,
                                               _libbpf)
from exporter.exporterproc import ExporterProcess
from exporter.testpods import PodFactory

HOOKS = {"ingress": BPF_CGROUP_INET_INGRESS, "egress": BPF_CGROUP_INET_EGRESS}
PROGRAMS = {  # podsnoop's cgroup_skb programs, as the program metrics name them
    ("dns", "ingress"): "dns/podsnoop_dns_ingress", ("dns", "egress"): "dns/podsnoop_dns_egress",
    ("peers", "ingress"): "peers/podsnoop_peers_ingress",
    ("peers", "egress"): "peers/podsnoop_peers_egress"}
WORLD = "198.51.100.7"   # TEST-NET-2: no table names it; the host drops what it cannot route
SINK = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0', 9))\nprint('ready', flush=True)\nwhile True: s.recv(2048)")
SEND = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(int(sys.argv[2])): s.sendto(b'x' * 64, (sys.argv[1], 9))")


def traffic(pod, packets: int) -> None:
    """Out of the pod to the node and to the world; into the pod's sink from the node."""
    pod.exec(["python3", "-c", SEND, pod.host_ip, str(packets)])
    pod.exec(["python3", "-c", SEND, WORLD, str(packets)])
    subprocess.run(["python3", "-c", SEND, pod.pod_ip, str(packets)], check=True)


def floor_skb(factory, pod, packets: int) -> dict[str, float]:
    """ns per run of the empty program linked to the kubepods root on both hooks."""
    lib = _libbpf()
    cg = os.open(str(factory.kubepods), os.O_RDONLY | os.O_DIRECTORY)

    def attach(fd: int) -> list[int]:
        links = []
        for kind in HOOKS.values():
            link = lib.bpf_link_create(fd, cg, kind, None)
            if link < 0:
                for made in links:
                    os.close(made)
                raise OSError(ctypes.get_errno(), "bpf_link_create")
            links.append(link)
        return links
    try:
        per_run = floor_ns_per_run("floor_skb", "CGROUP_SKB", attach,
                                   lambda: traffic(pod, packets))
    finally:
        os.close(cg)
    return {hook: per_run for hook in HOOKS}   # one program on both hooks


def podsnoop_skb(factory, pod, packets: int, *extra: str) -> dict[tuple[str, str], float]:
    proc = ExporterProcess("--kube", "off", "--interfaces", "none", "--kubepods-root",
                           str(factory.kubepods), "--log-level", "warning",
                           "--syscalls", "off", "--exec", "off", "--tcp", "off",
                           "--drops", "off", "--bpf-stats", "on", *extra).start()
    try:
        time.sleep(0.5)
        m0 = proc.metrics()
        traffic(pod, packets)
        m1 = proc.metrics()
    finally:
        proc.stop()
    return {key: exported_ns_per_run(m0, m1, prog) for key, prog in PROGRAMS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = ap.parse_args()
    graceful()
    configs = {"podsnoop": (), "podsnoop +cidrs": ("--peer-cidrs", "bench=203.0.113.0/24")}
    floor: dict[str, list[float]] = {h: [] for h in HOOKS}
    ours: dict[tuple[str, str, str], list[float]] = {
        (c, *k): [] for c in configs for k in PROGRAMS}
    with PodFactory(prefix="bs") as factory:
        pod = factory.create()
        sink = pod.run(["python3", "-u", "-c", SINK], stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().strip() == "ready"
        pod.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", pod.host_ip], check=False)
        for rep in range(args.reps):
            stats = RunTimeStats()
            stats.enable()
            try:
                for hook, ns in floor_skb(factory, pod, args.packets).items():
                    floor[hook].append(ns)
            finally:
                stats.close()
            for name, extra in configs.items():
                for key, ns in podsnoop_skb(factory, pod, args.packets, *extra).items():
                    ours[(name, *key)].append(ns)
            print(f"rep {rep + 1}/{args.reps} done", flush=True)
    rows = []
    for hook in HOOKS:
        f_med, f_lo, f_hi = summary(floor[hook])
        rows.append([f"floor (empty)", hook, f"{f_med:.1f} ({f_lo:.1f}-{f_hi:.1f})", "", ""])
        for name in configs:
            for collector in ("dns", "peers"):
                med, lo, hi = summary(ours[(name, collector, hook)])
                rows.append([f"{name}: {collector}", hook, f"{med:.1f} ({lo:.1f}-{hi:.1f})",
                             f"{med - f_med:+.1f}", f"{med / f_med:.2f}x"])
    text = table(["program", "hook", "ns/run (min-max)", "over the floor",
                  "ratio to the floor"], rows)
    print(text)
    if args.write:
        write_section("socket_path", header("Socket path: podsnoop's cgroup_skb programs "
                                            "over an empty one (bench/socket_path.py)") +
                      "\n" + f"{args.reps} reps, floor and configurations alternated per rep; "
                      f"{args.packets} UDP datagrams of 64 B per flow and measurement (pod -> "
                      "node, pod -> world, node -> pod): egress runs are two flows' packets, "
                      "ingress one. ns per program run from the kernel's run-time statistics. "
                      "Each program runs once per packet: DNS's and peers' costs add.\n\n"
                      + text + "\n")


if __name__ == "__main__":
    main()

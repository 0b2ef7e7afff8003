#!/usr/bin/env python3
"""Packet-path cost of podsnoop's TC programs: iperf3 between the host and one test pod.

    .venv/bin/python bench/packet_path.py [--mode pods|restart] [--reps 12] [--seconds 2] [--write]

Each test pod (netns + veth + kubepods cgroup) runs `iperf3 -s`; the host runs the client
against the pod's address over its veth. Configurations:

  none      nothing attached to the host veth (no clsact qdisc at all);
  none-b    a second `none` pod: the A/A control, showing how much noise is left after
            pairing (only meaningful in --mode pods);
  floor     bpf/testing/foreign.c's `passthrough` (returns TC_ACT_UNSPEC, nothing else) on
            clsact ingress + egress, direct-action, attached with pyroute2 as exporter/tc.py
            does (same priority and handle): the cost of having *any* TC program there;
  podsnoop-net  the real exporter process (python -m exporter --kube off --interfaces
            <veth>) with every collector but the network one turned off (--syscalls off
            etc., whichever of those flags the tree under test has): the TC programs'
            cost plus an idle exporter;
  podsnoop  the exporter with its default collectors (--mode restart only): its syscall,
            exec, tcp and drop tracepoints also cost the pod's iperf3 server something.

--mode pods (default): one identical test pod per configuration, all made at once; the
exporter (podsnoop-net) runs throughout, attached to its pod only; every test is run on each
configuration back to back (order rotated rep by rep), so the runs compared are seconds
apart. This is what makes the comparison usable on a shared 2-core VM, whose background
load swings by 2x within a minute.
--mode restart: one pod; configurations switched on its veth rep by rep (floor attached /
detached, the exporter started / stopped with SIGTERM); this is the mode for `podsnoop`
with its defaults, whose tracepoints would otherwise trace the other configurations' pods.

Set PODSNOOP_BENCH_TREE to a snapshot (python bench/common.py snapshot) to measure one
commit while the working tree changes.

Tests, each `--seconds` long (TCP after a 1 s omitted warm-up):
  tcp-rx  single TCP stream host -> pod   (pod receive; TC egress of the host veth)
  tcp-tx  single TCP stream pod -> host   (iperf3 -R; pod transmit; TC ingress)
  udp-rx  UDP, 64-byte payloads, -b 0 (as fast as possible) host -> pod
  udp-tx  the same, pod -> host
The figure of merit is the receiver's rate (TCP throughput, UDP datagrams/s delivered);
the cost of a configuration is its rate versus `none` in the same rep (paired), reported
as the median over reps with the IQR and min..max spread. Before the network runs, the
programs alone are timed with BPF_PROG_TEST_RUN (ns per packet, no network, no noise from
other processes to speak of), which tells what the network figures can at best resolve. Targets (issue 6): TCP <= 2% loss, UDP
packets/s <= 5% loss for podsnoop.

Every pod, filter, qdisc and process made here is removed on exit, Ctrl-C or SIGTERM.
Traffic goes only between the host and the test pod's own addresses.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BatchPodFactory, ProcStat, graceful, header,  # noqa: E402
                    network_only_flags, summary, table, write_section)

from exporter import bpfload  # noqa: E402
from exporter.exporterproc import ExporterProcess  # noqa: E402
from exporter.tc import DEFAULT_PRIORITY, HANDLE, TC_H_EGRESS, TC_H_INGRESS  # noqa: E402

CONFIGS = ("none", "none-b", "floor", "podsnoop-net", "podsnoop")
DEFAULT_CONFIGS = {"pods": "none,none-b,floor,podsnoop-net",
                   "restart": "none,floor,podsnoop-net,podsnoop"}
TESTS = {  # name -> (extra iperf3 args, kind)
    "tcp-rx": ([], "tcp"),
    "tcp-tx": (["-R"], "tcp"),
    "udp-rx": (["-u", "-b", "0"], "udp"),
    "udp-tx": (["-u", "-b", "0", "-R"], "udp"),
}
PORT = 5201
TARGET = {"tcp": 2.0, "udp": 5.0}  # max % loss versus none


def tc_show(dev: str) -> str:
    out = subprocess.run(["tc", "qdisc", "show", "dev", dev], capture_output=True, text=True).stdout
    for hook in ("ingress", "egress"):
        out += subprocess.run(["tc", "filter", "show", "dev", dev, hook],
                              capture_output=True, text=True).stdout
    return out


class Floor:
    """The passthrough program on both clsact hooks, attached and removed with pyroute2."""

    def __init__(self):
        self.bpf = bpfload.compile_program("testing/foreign", [])
        self.fd = self.bpf.load_func("passthrough", self.bpf.SCHED_CLS).fd
        self.index: int | None = None

    def attach(self, index: int) -> None:
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            ipr.tc("add", "clsact", index)
            self.index = index
            for hook in (TC_H_INGRESS, TC_H_EGRESS):
                ipr.tc("add-filter", "bpf", index, HANDLE, fd=self.fd, name="bench_passthrough",
                       parent=hook, classid=1, direct_action=True, prio=DEFAULT_PRIORITY)

    def detach(self) -> None:
        if self.index is None:
            return
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
        with IPRoute() as ipr:
            try:
                ipr.tc("del", "clsact", self.index)  # takes its filters with it
            except NetlinkError:
                pass
        self.index = None

    def close(self) -> None:
        self.detach()
        self.bpf.cleanup()


# ---------------------------------------------------------------- BPF_PROG_TEST_RUN

SYS_BPF = 321            # x86_64
BPF_PROG_TEST_RUN = 10


class _TestRunAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


def _prog_test_run(attr: _TestRunAttr) -> _TestRunAttr:
    """BPF_PROG_TEST_RUN; the kernel fills in attr's results."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
        raise OSError(ctypes.get_errno(), "BPF_PROG_TEST_RUN")
    return attr


def test_run(fd: int, frame: bytes, repeat: int) -> tuple[int, int]:
    """(return value, mean ns per run) of the kernel running the program `repeat` times
    on this frame (BPF_PROG_TEST_RUN; no network, no other process involved)."""
    buf = ctypes.create_string_buffer(frame, len(frame))
    attr = _prog_test_run(_TestRunAttr(prog_fd=fd, data_size_in=len(frame),
                                       data_in=ctypes.addressof(buf), repeat=repeat))
    return ctypes.c_int32(attr.retval).value, attr.duration


def raw_tp_run(fd: int, args: list[int]) -> int:
    """Run a raw tracepoint program once as the calling task, on its CPU, with the
    tracepoint's u64 arguments `args`; its return value."""
    ctx = (ctypes.c_uint64 * len(args))(*args)
    return _prog_test_run(_TestRunAttr(prog_fd=fd, ctx_in=ctypes.addressof(ctx),
                                       ctx_size_in=ctypes.sizeof(ctx))).retval


def _frames() -> dict[str, bytes]:
    eth4 = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    eth6 = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"
    ip4 = lambda proto, n: (struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + n, 1, 0, 64, proto, 0,  # noqa
                                         bytes([10, 222, 0, 1]), bytes([10, 222, 0, 2])))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 0, 5 << 4, 0x10, 65535, 0, 0)
    udp = struct.pack("!HHHH", 40000, 5201, 8 + 64, 0) + b"u" * 64
    ip6 = lambda nxt, n: (struct.pack("!IHBB", 6 << 28, n, nxt, 64) +  # noqa
                          bytes(15) + b"\x01" + bytes(15) + b"\x02")
    hop = bytes([6, 0]) + bytes(6)  # hop-by-hop options header, then TCP
    vlan = b"\x02" * 6 + b"\x04" * 6 + b"\x81\x00" + b"\x00\x07" + b"\x08\x00"
    arp = b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + bytes(28)
    return {
        "ipv4/tcp": eth4 + ip4(6, len(tcp)) + tcp,
        "ipv4/udp 64B": eth4 + ip4(17, len(udp)) + udp,
        "vlan/ipv4/tcp": vlan + ip4(6, len(tcp)) + tcp,
        "ipv6/hopopts/tcp": eth6 + ip6(0, len(hop) + len(tcp)) + hop + tcp,
        "arp": arp,
    }


def micro(repeat: int, rounds: int) -> str:
    """ns per packet of podsnoop's program vs the passthrough floor, by BPF_PROG_TEST_RUN."""
    from exporter import config, loader
    net = loader.load_object("net", config.parse(["--mode", "node", "--net-map-entries", "64"]), 1)
    floor = bpfload.compile_program("testing/foreign", [])
    try:
        progs = {"passthrough": floor.load_func("passthrough", floor.SCHED_CLS).fd,
                 "podsnoop ingress": net.load_func("podsnoop_tc_ingress", net.SCHED_CLS).fd,
                 "podsnoop egress": net.load_func("podsnoop_tc_egress", net.SCHED_CLS).fd}
        frames = _frames()
        ns: dict[tuple[str, str], list[int]] = {(p, f): [] for p in progs for f in frames}
        for _ in range(rounds):           # alternate programs and frames round by round
            for f, frame in frames.items():
                for p, fd in progs.items():
                    ret, dur = test_run(fd, frame, repeat)
                    assert ret == -1, f"{p} returned {ret}, not TC_ACT_UNSPEC"
                    ns[(p, f)].append(dur)
        counted = sum(sum(v.packets for v in vals) for _, vals in net["net_counters"].items())
        rows = []
        for f in frames:
            base = statistics.median(ns[("passthrough", f)])
            row = [f, f"{base:.0f}"]
            for p in list(progs)[1:]:
                med = statistics.median(ns[(p, f)])
                row.append(f"{med:.0f} (+{med - base:.0f})")
            rows.append(row)
        return (table(["frame", "passthrough ns", *[f"{p} ns (over floor)" for p in
                                                     list(progs)[1:]]], rows) +
                f"\n\nBPF_PROG_TEST_RUN, {repeat} runs per call, median of {rounds} calls "
                f"alternated; podsnoop's own map counted {counted} packets "
                f"(= {len(frames) * 2 * rounds * repeat} expected).")
    finally:
        net.cleanup()
        floor.cleanup()


def iperf(pod, test: str, seconds: float, udp_len: int, pin: str | None) -> dict:
    extra, kind = TESTS[test]
    argv = ["iperf3", "-c", pod.pod_ip, "-B", pod.host_ip, "-p", str(PORT), "-J",
            "-t", str(seconds), *extra]
    if kind == "udp":  # no omitted warm-up: iperf3 then counts omitted datagrams as lost
        argv += ["-l", str(udp_len)]
    else:              # skip slow start
        argv += ["-O", "1"]
    if pin:
        argv += ["-A", pin]
    for attempt in range(3):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        try:
            j = json.loads(r.stdout)
        except json.JSONDecodeError:
            j = {"error": r.stderr or r.stdout}
        if "error" not in j:
            break
        time.sleep(1)  # "the server is busy" right after the previous test: retry
    else:
        raise RuntimeError(f"iperf3 {' '.join(argv)} failed: {j['error']}")
    end = j["end"]
    if kind == "tcp":
        return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
                "retrans": end["sum_sent"].get("retransmits", 0)}
    rcv, snd = end["sum_received"], end["sum_sent"]
    return {"rx_kpps": rcv["bytes"] / udp_len / rcv["seconds"] / 1e3,
            "tx_kpps": snd["packets"] / snd["seconds"] / 1e3,
            "lost_pct": rcv.get("lost_percent", 0.0)}


def save_raw(args, results, checks) -> None:
    """Every run so far, to bench/out/packet_path-<mode>.json (survives a crash)."""
    out = Path(__file__).resolve().parent / "out" / f"packet_path-{args.mode}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "checks": checks,
                               "results": {f"{c}/{t}": v for (c, t), v in results.items()}},
                              indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("pods", "restart"), default="pods",
                    help="pods: one identical test pod per configuration, tests alternated "
                         "config by config every few seconds, the exporter running throughout "
                         "(default); restart: one pod, configurations switched on its veth "
                         "rep by rep, the exporter started and stopped each rep")
    ap.add_argument("--reps", type=int, default=12, help="repetitions of each configuration")
    ap.add_argument("--seconds", type=float, default=2, help="length of each iperf3 run")
    ap.add_argument("--udp-len", type=int, default=64, help="UDP payload bytes (default 64)")
    ap.add_argument("--tests", default=",".join(TESTS), help="comma list of " + ", ".join(TESTS))
    ap.add_argument("--configs", default=None,
                    help="comma list of " + ", ".join(CONFIGS) + " (none-b: a second 'none', "
                         "the A/A control that shows the noise left after pairing; "
                         "podsnoop-net: the exporter with every collector but the network "
                         "one off; podsnoop: the exporter with its defaults, --mode restart "
                         "only). Default: " + "; ".join(f"{m}: {c}" for m, c in
                                                        DEFAULT_CONFIGS.items()))
    ap.add_argument("--pin", default="0,1", metavar="C,S",
                    help="iperf3 -A: client CPU,server CPU (default 0,1; 'none' to not pin)")
    ap.add_argument("--micro-repeat", type=int, default=1_000_000,
                    help="BPF_PROG_TEST_RUN repetitions per call (0: skip that part)")
    ap.add_argument("--write", action="store_true", help="replace this section of bench/RESULTS.md")
    args = ap.parse_args()
    tests = args.tests.split(",")
    configs = (args.configs or DEFAULT_CONFIGS[args.mode]).split(",")
    if args.mode == "pods" and "podsnoop" in configs:
        ap.error("--mode pods runs one exporter throughout, next to the other pods: its "
                 "syscall/exec/tcp/drop tracepoints would trace every test pod, so only "
                 "podsnoop-net there; measure the defaults with --mode restart")
    net_only = network_only_flags()
    exporter_args = {"podsnoop-net": net_only, "podsnoop": []}
    pin = None if args.pin == "none" else args.pin
    graceful()

    results = {(c, t): [] for c in configs for t in tests}   # list of per-rep dicts
    checks: list[str] = []
    factory = BatchPodFactory(prefix="bpp")
    floor = exporter = None
    started = time.monotonic()
    micro_text = ""
    try:
        if args.micro_repeat:
            micro_text = micro(args.micro_repeat, 7)
            print(micro_text, flush=True)
        floor = Floor() if "floor" in configs else None

        def run(rep, config, test, pod):
            r = iperf(pod, test, args.seconds, args.udp_len, pin)
            results[(config, test)].append(r)
            print(f"rep {rep + 1}/{args.reps} {config:8} {test}: " +
                  " ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)

        def check_attached(config, pod):
            shown = tc_show(pod.host_if)
            if config.startswith("none"):
                assert "clsact" not in shown, f"'{config}' but something is attached:\n{shown}"
            else:
                want = (["bench_passthrough"] if config == "floor" else
                        ["podsnoop_tc_ingress@", "podsnoop_tc_egress@"])
                assert all(w in shown for w in want) and shown.count(" pref ") == 4, \
                    f"{config}: filters not attached as expected:\n{shown}"

        def counted_check(label, pod, before):
            m, after = exporter.metrics(), pod.host_stats()
            got = (m.value("podsnoop_network_receive_packets_total", interface=pod.host_if),
                   m.value("podsnoop_network_transmit_packets_total", interface=pod.host_if))
            kernel = (after["tx_packets"] - before["tx_packets"],
                      after["rx_packets"] - before["rx_packets"])
            checks.append(f"{label}: podsnoop counted receive {got[0]:.0f} / transmit "
                          f"{got[1]:.0f} packets; the veth's own counters moved {kernel[0]} / "
                          f"{kernel[1]}")

        if args.mode == "pods":
            pods = dict(zip(configs, factory.create_many(len(configs))))
            for pod in pods.values():
                pod.run(["iperf3", "-s", "-p", str(PORT)])
            if "floor" in pods:
                floor.attach(pods["floor"].host_ifindex())
            if "podsnoop-net" in pods:
                exporter = ExporterProcess("--kube", "off", "--log-level", "info",
                                           "--interfaces", pods["podsnoop-net"].host_if,
                                           *net_only).start()
                before = pods["podsnoop-net"].host_stats()
                cpu = ProcStat(exporter.proc.pid)
                cpu0, wall0 = cpu.cpu_seconds(), time.monotonic()
            time.sleep(0.5)
            for config, pod in pods.items():
                check_attached(config, pod)
            for rep in range(args.reps):
                order = configs[rep % len(configs):] + configs[:rep % len(configs)]
                for test in tests:
                    for config in order:
                        run(rep, config, test, pods[config])
                for config, pod in pods.items():  # nobody else touched our hooks meanwhile?
                    try:
                        check_attached(config, pod)
                        if exporter is not None and config == "podsnoop-net":
                            owner = f"@{exporter.proc.pid} "
                            assert tc_show(pod.host_if).count(owner) == 2, \
                                f"podsnoop-net's filters are not this exporter's:\n{tc_show(pod.host_if)}"
                    except AssertionError as e:
                        checks.append(f"rep {rep + 1}: {config}: {e}")
                if exporter is not None:
                    counted_check(f"after rep {rep + 1}", pods["podsnoop-net"], before)
                save_raw(args, results, checks)
            if exporter is not None:
                try:
                    log_text = exporter.output()
                except OSError as e:  # something on the machine cleaned /tmp meanwhile
                    log_text = f"(exporter log unreadable: {e})"
                events = [ln.split(": ", 1)[-1] for ln in log_text.splitlines()
                          if "exporter.links" in ln or "unreadable" in ln]
                checks.append(f"exporter link events: {events[:6]}"
                              + (f" (+{len(events) - 6} more)" if len(events) > 6 else ""))
                checks.append(f"exporter process CPU during the run: "
                              f"{(cpu.cpu_seconds() - cpu0) / (time.monotonic() - wall0) * 100:.2f}"
                              f"% of a core")
                code = exporter.stop()
                exporter = None
                assert code == 0, f"exporter exited {code}"
        else:
            pod = factory.create_many(1)[0]
            pod.run(["iperf3", "-s", "-p", str(PORT)])
            time.sleep(0.5)
            for rep in range(args.reps):
                for config in configs:
                    if config == "floor":
                        floor.attach(pod.host_ifindex())
                    elif config.startswith("podsnoop"):
                        exporter = ExporterProcess("--kube", "off", "--interfaces", pod.host_if,
                                                   "--log-level", "warning",
                                                   *exporter_args[config]).start()
                        before = pod.host_stats()
                    check_attached(config, pod)
                    for test in tests:
                        run(rep, config, test, pod)
                    if config == "floor":
                        floor.detach()
                    elif config.startswith("podsnoop"):
                        counted_check(f"rep {rep + 1} {config}", pod, before)
                        code = exporter.stop()
                        exporter = None
                        assert code == 0, f"exporter exited {code}"
                        assert "podsnoop" not in tc_show(pod.host_if), "exporter left filters"
                save_raw(args, results, checks)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        if exporter is not None:
            exporter.stop()
        if floor is not None:
            floor.close()
        factory.close()
    elapsed = time.monotonic() - started

    out = [report(results, configs, tests, args), "", "Sanity (podsnoop's counters vs the "
           "veth's kernel counters over the same interval):", ""]
    out += [f"- {c}" for c in checks]
    if micro_text:
        out += ["", "### Program cost alone (no network)", "", micro_text]
    text = "\n".join(out)
    print("\n" + text)
    print(f"\n({elapsed:.0f} s)")
    if args.write:
        how = ("one test pod per configuration (identical veths), the exporter running "
               "throughout, attached to its pod only; each test run for every configuration "
               "back to back (order rotated each rep)" if args.mode == "pods" else
               "one test pod; configurations switched on its veth rep by rep, the exporter "
               "started and stopped each rep")
        write_section(f"packet_path_{args.mode}",
                      header(f"Packet path, mode {args.mode} (bench/packet_path.py)") + "\n" +
                      f"Mode {args.mode}: {how}. podsnoop-net = exporter flags "
                      f"`--kube off --interfaces <veth> {' '.join(net_only)}`; podsnoop = "
                      f"`--kube off --interfaces <veth>` (all default collectors). {args.reps} reps x {args.seconds:g} s per test "
                      f"(TCP +1 s omitted); iperf3 pinned "
                      f"{'client,server CPUs ' + pin if pin else 'nowhere'}; UDP payload "
                      f"{args.udp_len} B. \"vs none\" is the median (min..max) over reps of the "
                      f"ratio to `none` in the same rep.\n\n" + text)
    return 0


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def report(results, configs, tests, args) -> str:
    lines = []
    for test in tests:
        kind = TESTS[test][1]
        key, unit = ("gbps", "Gbit/s") if kind == "tcp" else ("rx_kpps", "kpps recv")
        rows, ratio_of = [], {}
        base = results.get(("none", test))
        for config in configs:
            runs = results[(config, test)]
            if not runs:
                continue
            vals = [r[key] for r in runs]
            med, lo, hi = summary(vals)
            row = [config, f"{med:.2f}" if kind == "tcp" else f"{med:.1f}",
                   f"{lo:.2f}..{hi:.2f}" if kind == "tcp" else f"{lo:.1f}..{hi:.1f}"]
            if kind == "tcp":
                row.append(f"{statistics.median(r['retrans'] for r in runs):.0f}")
            else:
                row.append(f"{statistics.median(r['tx_kpps'] for r in runs):.1f}")
                row.append(f"{statistics.median(r['lost_pct'] for r in runs):.1f}%")
            if base and config != "none":
                ratios = [(r[key] / b[key] - 1) * 100 for r, b in zip(runs, base)]
                ratio_of[config] = ratios
                med_r, lo_r, hi_r = summary(ratios)
                q1, q3 = _quartiles(ratios)
                row += [f"{med_r:+.1f}%", f"{q1:+.1f}..{q3:+.1f}", f"{lo_r:+.0f}..{hi_r:+.0f}"]
            else:
                row += ["", "", ""]
            rows.append(row)
        if kind == "tcp":
            heads = ["config", unit + " (median)", "min..max", "retransmits"]
        else:
            heads = ["config", unit + " (median)", "min..max", "kpps sent", "datagram loss"]
        heads += ["vs none (median)", "IQR", "min..max"]
        lines += [f"### {test}", "", table(heads, rows), ""]
        for pconf in [c for c in ratio_of if c.startswith("podsnoop")]:
            med_r = statistics.median(ratio_of[pconf])
            verdict = "ok" if -med_r <= TARGET[kind] else "MISSED"
            note = ""
            if "none-b" in ratio_of:
                q1, q3 = _quartiles(ratio_of["none-b"])
                half = (q3 - q1) / 2
                c_med = statistics.median(ratio_of["none-b"])
                note = (f"; A/A control none-b: median {c_med:+.1f}%, IQR half-width "
                        f"{half:.1f}%")
                if half > TARGET[kind] or abs(c_med) > TARGET[kind]:
                    note += " (noise here exceeds the target: not resolvable by this run)"
            lines += [f"{pconf} vs none, {test}: {med_r:+.1f}% (target: loss <= "
                      f"{TARGET[kind]:g}%): {verdict}{note}", ""]
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    sys.exit(main())

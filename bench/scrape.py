#!/usr/bin/env python3
"""Scrape cost of podsnoop with many pods: /metrics latency, size, series, CPU and memory.

    .venv/bin/python bench/scrape.py [--pods 110,500] [--scrapes 200] [--write]

One phase per size, smallest first: test pods are added (bench/common.py's batch creator:
netns + veth + kubepods cgroup + one process each) until exactly N exist, and one exporter
per variant is started, limited with --interfaces to this run's veths, each with its own
--tc-priority so they attach side by side without touching each other's filters; they are
stopped at the end of the phase. Variants: `default` (the exporter's default collectors)
and `net` (every collector but the network one turned off). Every pod then gets a little traffic
from the host (3 pings, one UDP datagram and one TCP SYN to closed ports, plus ARP), so it
has counters in tcp, udp, icmp and other, both directions.

Measured per exporter, in alternating blocks (variant A 20 scrapes, B 20, A, B, ...):
- /metrics latency over a keep-alive connection (what Prometheus does), p50 / p99 / max,
  and the spread of the per-block medians;
- response size, number of samples, number of per-pod network samples;
- exporter CPU per scrape: utime+stime of the exporter process over a block / scrapes;
- the exporter's own podsnoop_scrape_collector_duration_seconds per collector, and the
  samples by metric family;
- VmRSS and VmHWM after the scrapes (VmHWM includes the BPF compile at start);
- idle CPU: % of one core over --idle-seconds with one scrape every --idle-interval s.
Targets (issue 6): p99 <= 50 ms at 110 pods, <= 250 ms at 500; RSS <= 150 MB; idle CPU
<= 1% of a core.

Everything made here (pods, exporters and their filters) is removed on exit, Ctrl-C or
SIGTERM; the traffic goes only from the host to the test pods' own addresses.
"""
from __future__ import annotations

import argparse
import collections
import http.client
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BatchPodFactory, ProcStat, graceful, header,  # noqa: E402
                    network_only_flags, percentile, poke, summary, table, write_section)

from exporter.exporterproc import ExporterProcess  # noqa: E402

ACCEPT = {
    "text": "text/plain;version=0.0.4",
    # What Prometheus 2.x/3.x sends by default.
    "openmetrics": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                   "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
}
TARGET_P99_MS = {110: 50.0, 500: 250.0}
TARGET_RSS_MB = 150.0
TARGET_IDLE_PCT = 1.0
NET_SAMPLE = re.compile(rb"^podsnoop_network_\w+_total\{", re.M)
COLLECTOR_DURATION = re.compile(
    rb'^podsnoop_scrape_collector_duration_seconds\{collector="(\w+)"\} (\S+)', re.M)
SAMPLE_NAME = re.compile(rb"^([a-zA-Z_:][a-zA-Z0-9_:]*)", re.M)
VARIANTS = ("default", "net")  # the exporter's default collectors; network collector only


class Target:
    """One exporter under test and what was measured on it."""

    def __init__(self, size: int, variant: str, proc: ExporterProcess):
        self.size = size
        self.variant = variant
        self.label = f"{size} pods, {variant}"
        self.proc = proc
        self.stat = ProcStat(proc.proc.pid)
        self.conn: http.client.HTTPConnection | None = None
        self.latencies: list[float] = []
        self.block_medians: list[float] = []
        self.cpu_per_scrape: list[float] = []   # per block
        self.collector_s: dict[str, list[float]] = {}
        self.body = b""

    def scrape(self, accept: str) -> float:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.proc.port, timeout=30)
        t0 = time.perf_counter()
        self.conn.request("GET", "/metrics", headers={"Accept": accept})
        resp = self.conn.getresponse()
        body = resp.read()
        dt = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"/metrics answered {resp.status}: {body[:200]!r}")
        self.body = body
        for name, value in COLLECTOR_DURATION.findall(body):
            self.collector_s.setdefault(name.decode(), []).append(float(value))
        return dt

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def interface_regex(tags: list[str]) -> str:
    return rf"(?:{'|'.join(tags)})h\d+"


def wait_counted(target: Target, pods, timeout: float = 90) -> str:
    """Wait until every pod has tcp, udp and icmp samples with its pod_uid resolved; pods
    still missing some are poked again every few seconds (a first packet can be lost while
    a neighbour entry is being resolved on a loaded machine). Returns a note if some pods
    never got there (the measurement goes on with them)."""
    want = {p.host_if: p for p in pods}
    deadline = time.monotonic() + timeout
    next_poke = time.monotonic() + 5
    while True:
        m = target.proc.metrics()
        seen: dict[str, set] = {}
        for labels, _ in m.samples.get("podsnoop_network_receive_packets_total", []):
            pod = want.get(labels["interface"])
            if pod is not None and labels["pod_uid"] == pod.uid:
                seen.setdefault(labels["interface"], set()).add(labels["protocol"])
        missing = [p for name, p in want.items() if not {"tcp", "udp", "icmp"} <= seen.get(name, set())]
        if not missing:
            return ""
        if time.monotonic() > deadline:
            note = (f"{target.label}: {len(missing)}/{len(want)} pods never showed tcp+udp+icmp "
                    f"samples with their pod_uid within {timeout:g} s")
            print("warning: " + note, file=sys.stderr)
            return note
        if time.monotonic() >= next_poke:
            poke(missing)
            next_poke = time.monotonic() + 5
        time.sleep(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", default="110,500", help="comma list of pod counts (default 110,500)")
    ap.add_argument("--scrapes", type=int, default=200, help="scrapes per size (default 200)")
    ap.add_argument("--block", type=int, default=20, help="scrapes per alternating block")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="default: the exporter with its default collectors; net: every "
                         "collector but the network one off (default: both, side by side)")
    ap.add_argument("--accept", choices=sorted(ACCEPT), default="text",
                    help="exposition format asked for (default text; openmetrics = what "
                         "Prometheus asks for)")
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--idle-interval", type=float, default=15)
    ap.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                    help="after the measurements, profile the largest size's exporter with "
                         "py-spy (must be installed: .venv/bin/pip install py-spy) while "
                         "scraping it back to back for SECONDS; folded stacks go to "
                         "bench/out/scrape-<pods>.folded and a summary is printed")
    ap.add_argument("--profile-idle", type=float, default=0, metavar="SECONDS",
                    help="the same without scraping: where the idle exporter's CPU goes "
                         "(bench/out/idle-<pods>.folded)")
    ap.add_argument("--write", action="store_true", help="replace this section of bench/RESULTS.md")
    args = ap.parse_args()
    sizes = sorted({int(n) for n in args.pods.split(",")})
    variants = args.variants.split(",")
    flags = {"default": [], "net": network_only_flags()}
    accept = ACCEPT[args.accept]
    graceful()

    factories: list[BatchPodFactory] = []
    targets: list[Target] = []      # every exporter measured
    running: list[Target] = []      # the current phase's exporters
    timing: dict[str, float] = {"create": 0.0, "traffic": 0.0}
    profile_text = ""

    def stop_running():
        for t in running:
            t.close()
            code = t.proc.stop()
            if code:
                print(f"{t.label}: exporter exited {code}", file=sys.stderr)
        running.clear()

    try:
        made = 0
        for i, size in enumerate(sizes):
            # Phase `size`: exactly `size` test pods exist (plus other runs' pods, if any).
            t0 = time.monotonic()
            f = BatchPodFactory(prefix="bsc")
            factories.append(f)
            f.create_many(size - made)
            made = size
            timing["create"] += time.monotonic() - t0
            pods = [p for f in factories for p in f.pods]
            print(f"{size} pods: {size - (sizes[i - 1] if i else 0)} more test pods made in "
                  f"{time.monotonic() - t0:.1f} s", flush=True)
            for j, variant in enumerate(variants):
                t1 = time.monotonic()
                proc = ExporterProcess(
                    "--kube", "off", "--log-level", "warning",
                    "--interfaces", interface_regex([f.tag for f in factories]),
                    "--tc-priority", str(50000 + j), *flags[variant])
                proc.start(wait_ready=0)
                running.append(Target(size, variant, proc))  # from here on, stopped at exit
                proc.wait_ready(300)
                print(f"exporter for {running[-1].label} ready in "
                      f"{time.monotonic() - t1:.1f} s (pid {proc.proc.pid})", flush=True)
            targets += running

            t1 = time.monotonic()
            poke(pods)
            for t in running:
                note = wait_counted(t, pods)
                if note:
                    timing.setdefault("notes", []).append(note)
            timing["traffic"] += time.monotonic() - t1
            for t in running:  # warm-up, not measured
                for _ in range(5):
                    t.scrape(accept)

            blocks = max(1, args.scrapes // args.block)
            for b in range(blocks):
                for t in running:
                    cpu0 = t.stat.cpu_seconds()
                    lat = [t.scrape(accept) for _ in range(args.block)]
                    t.cpu_per_scrape.append((t.stat.cpu_seconds() - cpu0) / args.block)
                    t.latencies += lat
                    t.block_medians.append(statistics.median(lat))
                print(f"block {b + 1}/{blocks}: " + ", ".join(
                    f"{t.label} p50 {t.block_medians[-1] * 1e3:.1f} ms" for t in running),
                    flush=True)
            for t in running:
                t.rss, t.hwm = t.stat.rss_mb(), t.stat.hwm_mb()
                t.anon = t.stat.status_kb("RssAnon") / 1024
                t.file = t.stat.status_kb("RssFile") / 1024

            print(f"idle: {args.idle_seconds:.0f} s, one scrape every {args.idle_interval:g} s",
                  flush=True)
            cpu0 = {t.label: t.stat.cpu_seconds() for t in running}
            t_idle = time.monotonic()
            next_scrape = t_idle
            while time.monotonic() - t_idle < args.idle_seconds:
                if time.monotonic() >= next_scrape:
                    for t in running:
                        t.scrape(accept)
                    next_scrape += args.idle_interval
                time.sleep(min(0.5, max(0.0, next_scrape - time.monotonic())))
            idle_wall = time.monotonic() - t_idle
            for t in running:
                t.idle_pct = (t.stat.cpu_seconds() - cpu0[t.label]) / idle_wall * 100
            if size == sizes[-1]:
                for t in running:
                    if args.profile:
                        profile_text += profile(t, args.profile, accept) + "\n\n"
                    if args.profile_idle:
                        profile_text += profile(t, args.profile_idle, None) + "\n\n"
            stop_running()
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        t2 = time.monotonic()
        stop_running()
        for f in factories:
            f.close()
        timing["teardown"] = time.monotonic() - t2

    print()
    text = report(targets, timing, args)
    print(text)
    if profile_text:
        print("\n" + profile_text)
    if args.write:
        key = "scrape" if args.accept == "text" else f"scrape_{args.accept}"
        if profile_text:
            text += ("\n\nProfile (taken after the measurements above, so it does not disturb "
                     "them):\n\n```\n" + profile_text.strip() + "\n```")
        write_section(key, header(f"Scrape, {args.accept} format (bench/scrape.py)") + "\n" +
                      text)
    return 0


def profile(target: Target, seconds: float, accept: str | None) -> str:
    """py-spy the exporter while scraping it back to back (accept None: not scraping at
    all); summarise where its CPU time went."""
    import collections
    import shutil
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    kind = "scrape" if accept else "idle"
    out = (Path(__file__).resolve().parent / "out" /
           f"{kind}-{target.size}-{target.variant}.folded")
    out.parent.mkdir(exist_ok=True)
    proc = subprocess.Popen([spy, "record", "--pid", str(target.proc.proc.pid), "--rate", "250",
                             "--duration", str(int(seconds)), "--format", "raw", "--threads",
                             "--nonblocking", "--output", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        n = 0
        while proc.poll() is None:
            if accept:
                target.scrape(accept)
                n += 1
            else:
                time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
    if not out.exists():
        return f"py-spy produced nothing: {proc.stderr.read()[-500:]}"
    own, total, samples = collections.Counter(), collections.Counter(), 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        c = int(count)
        if accept and not any("generate_latest" in f for f in frames):
            continue  # scraping: only the collection thread
        if "idle" in frames[-1] or "select" in frames[-1] or "poll (" in frames[-1] or \
                "_worker" in frames[-1] and "wait" in frames[-1]:
            continue
        samples += c
        own[frames[-1]] += c
        for f in set(frames):
            total[f] += c
    where = (f"{n} scrapes in {seconds:g} s, {samples} samples in the collection thread"
             if accept else f"idle for {seconds:g} s, {samples} non-idle samples")
    lines = [f"py-spy {kind}, {target.label}, {where} "
             f"({out.relative_to(Path(__file__).resolve().parent.parent)}):",
             "", "self time (top 12):"]
    lines += [f"  {c / samples * 100:5.1f}%  {f}" for f, c in own.most_common(12)]
    lines += ["", "inclusive (top 15):"]
    lines += [f"  {c / samples * 100:5.1f}%  {f}" for f, c in total.most_common(15)]
    return "\n".join(lines)


def report(targets: list[Target], timing: dict, args) -> str:
    rows, verdicts, breakdown = [], [], []
    for t in targets:
        lat_ms = [x * 1e3 for x in t.latencies]
        p50, p99 = percentile(lat_ms, 50), percentile(lat_ms, 99)
        bm, blo, bhi = summary([x * 1e3 for x in t.block_medians])
        names = [m.decode() for m in SAMPLE_NAME.findall(t.body)]
        samples = len(names)
        net = len(NET_SAMPLE.findall(t.body))
        cpu_ms = statistics.median(t.cpu_per_scrape) * 1e3
        coll = t.collector_s.get("network", [])
        coll_ms = statistics.median(coll) * 1e3 if coll else float("nan")
        rows.append([t.size, t.variant, len(t.latencies), f"{p50:.1f}", f"{p99:.1f}",
                     f"{max(lat_ms):.1f}", f"{blo:.1f}..{bhi:.1f}", f"{coll_ms:.1f}",
                     f"{cpu_ms:.1f}", f"{len(t.body) / 1024:.0f} KiB", samples, net,
                     f"{t.rss:.0f} ({t.anon:.0f}+{t.file:.0f}) / {t.hwm:.0f}",
                     f"{t.idle_pct:.2f}%"])
        fams = collections.Counter(re.sub(r"_(total|bucket|sum|count|created)$", "", n)
                                   for n in names)
        colls = ", ".join(f"{c} {statistics.median(v) * 1e3:.1f}"
                          for c, v in sorted(t.collector_s.items()))
        breakdown.append(f"- {t.label}: collector ms (p50): {colls}; samples by family: " +
                         ", ".join(f"{n} {c}" for n, c in fams.most_common(6)) +
                         (f", {len(fams) - 6} more families" if len(fams) > 6 else ""))
        target = TARGET_P99_MS.get(t.size)
        if target is not None:
            verdicts.append(f"p99 at {t.label}: {p99:.1f} ms (target <= {target:g} ms): "
                            + ("ok" if p99 <= target else "MISSED"))
        verdicts.append(f"RSS at {t.label}: {t.rss:.0f} MB (VmHWM {t.hwm:.0f} MB; target "
                        f"<= {TARGET_RSS_MB:g} MB): "
                        + ("ok" if t.rss <= TARGET_RSS_MB else "MISSED")
                        + ("" if t.hwm <= TARGET_RSS_MB else " (peak over target)"))
        verdicts.append(f"idle CPU at {t.label}: {t.idle_pct:.2f}% of a core (target <= "
                        f"{TARGET_IDLE_PCT:g}%): "
                        + ("ok" if t.idle_pct <= TARGET_IDLE_PCT else "MISSED"))
    heads = ["pods", "collectors", "scrapes", "p50 ms", "p99 ms", "max ms",
             "block p50 min..max", "network collector ms (p50)", "CPU ms/scrape", "size",
             "samples", "pod net samples", "RSS (anon+file) / HWM MB", "idle CPU"]
    out = [f"Format: {args.accept} (Accept: `{ACCEPT[args.accept]}`), uncompressed. "
           f"{args.scrapes} scrapes per exporter in alternating blocks of {args.block} over one "
           f"keep-alive connection each, after 5 warm-up scrapes. Set-up: "
           f"{max(t.size for t in targets)} pods made in {timing['create']:.1f} s (batch "
           f"creator), traffic + all pods counted in {timing['traffic']:.1f} s, teardown "
           f"{timing['teardown']:.1f} s. Idle: {args.idle_seconds:g} s with one scrape every "
           f"{args.idle_interval:g} s. Sizes are measured one after the other (phase N: "
           f"exactly N test pods exist); within a phase the variants run at the same time, "
           f"each attached to all N pods (own --tc-priority); collectors `default` = the "
           f"exporter's defaults "
           f"(`--kube off`), `net` = `--kube off {' '.join(network_only_flags())}`. The "
           f"syscall collector is not limited by --interfaces: it reports every pod on the "
           f"machine (the phase's test pods, and other runs' test pods if any were "
           f"present).", "", table(heads, rows), ""]
    out += breakdown + [""] + [f"- {v}" for v in verdicts]
    out += [f"- note: {n}" for n in timing.get("notes", [])]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())

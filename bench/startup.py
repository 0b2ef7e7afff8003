#!/usr/bin/env python3
"""Start-up of podsnoop: process start to /readyz 200 (program load + attach), peak memory.

    .venv/bin/python bench/startup.py [--pods 110] [--reps 5] [--tc-attach clsact] [--write]

Makes --pods test pods (bench/common.py's batch creator), then starts the exporter
(python -m exporter --kube off, exactly as a user does) again and again, alternating two
configurations:

  pods      --interfaces matching the test pods: compile, list links, attach to every one;
  no-pods   --interfaces matching nothing: the same start without attaching (what the
            imports, the program loads and the rest cost alone);
  --tc-attach X  (repeatable) the pods start again with that attach method, side by side:
            tcx (the default where the kernel has it) against clsact shows what the tcx
            attaches themselves cost (each one waits for an RCU grace period in the kernel).

For each start: seconds from spawning the process to the first 200 from /readyz (polled
every 20 ms), where the time went (from the exporter's own log timestamps: start -> first
"attached" line, i.e. imports + program loads + link listing; first attach -> "ready"), the
process's VmHWM (peak RSS) and VmRSS at ready, the attached-interface count it reports,
and the time a SIGTERM takes to detach everything and exit. Target (issue 20): <= 1 s to
ready with 110 pods.

Everything made here is removed on exit, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import datetime
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BatchPodFactory, ProcStat, attachments_left, graceful, header,  # noqa: E402
                    summary, table, wait_ready_since,
                    write_section)

from exporter.exporterproc import ExporterProcess  # noqa: E402

TARGET_S = 1.0   # issue 20
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")


def log_times(text: str) -> tuple[float | None, float | None]:
    """Wall-clock times of the first "attached to" line and of the "ready (...)" line."""
    first = ready = None
    for line in text.splitlines():
        m = LOG_TIME.match(line)
        if not m:
            continue
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if first is None and m.group(2).startswith("attached to "):
            first = t
        if m.group(2).startswith("ready ("):  # "ready (node mode): N pod interfaces, ..."
            ready = t
    return first, ready


def one_start(regex: str, timeout: float, extra: tuple[str, ...] = ()) -> dict:
    proc = ExporterProcess("--kube", "off", "--interfaces", regex, "--log-level", "info", *extra)
    wall0, t0 = time.time(), time.monotonic()
    proc.start(wait_ready=0)
    stat = ProcStat(proc.proc.pid)
    try:
        ready_s = wait_ready_since(proc, t0, timeout)
        r = {"ready_s": ready_s, "hwm_mb": stat.hwm_mb(), "rss_mb": stat.rss_mb(),
             "anon_mb": stat.status_kb("RssAnon") / 1024,
             "file_mb": stat.status_kb("RssFile") / 1024,
             "attached": proc.metrics().value("podsnoop_attached_interfaces")}
        first, ready = log_times(proc.output())
        r["to_first_attach_s"] = (first - wall0) if first else (ready - wall0 if ready else None)
        r["attach_s"] = (ready - first) if first and ready else 0.0
    finally:
        t1 = time.monotonic()
        code = proc.stop()
        stop_s = time.monotonic() - t1
    if code != 0:
        raise RuntimeError(f"exporter exited {code} on SIGTERM:\n{proc.output()[-2000:]}")
    r["stop_s"] = stop_s
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=110)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--tc-attach", action="append", default=[], choices=["tcx", "clsact"],
                    help="also start with this --tc-attach (repeatable), side by side")
    ap.add_argument("--write", action="store_true", help="replace this section of bench/RESULTS.md")
    args = ap.parse_args()
    graceful()

    factory = BatchPodFactory(prefix="bst")
    configs = {f"{args.pods} pods": (rf"{factory.tag}h\d+", ()),
               "no pods": (rf"{factory.tag}h-none", ())}
    for attach in args.tc_attach:
        configs[f"{args.pods} pods {attach}"] = (rf"{factory.tag}h\d+", ("--tc-attach", attach))
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    try:
        t0 = time.monotonic()
        pods = factory.create_many(args.pods)
        print(f"{len(pods)} test pods made in {time.monotonic() - t0:.1f} s", flush=True)
        for rep in range(args.reps):
            for name, (regex, extra) in configs.items():
                r = one_start(regex, args.timeout, extra)
                runs[name].append(r)
                print(f"rep {rep + 1}/{args.reps} {name:9}: ready {r['ready_s']:.2f} s, "
                      f"attached {r['attached']:.0f}, VmHWM {r['hwm_mb']:.0f} MB, "
                      f"stop {r['stop_s']:.2f} s", flush=True)
                leftover = attachments_left(pods[0].host_if)
                assert not leftover, f"left behind: {leftover}"
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        factory.close()

    rows = []
    for name, rs in runs.items():
        def cell(key, fmt="{:.2f}"):
            vals = [r[key] for r in rs if r[key] is not None]
            if not vals:
                return "n/a"
            med, lo, hi = summary(vals)
            return f"{fmt.format(med)} ({fmt.format(lo)}..{fmt.format(hi)})"
        rows.append([name, cell("ready_s"), cell("to_first_attach_s"), cell("attach_s"),
                     cell("stop_s"), cell("hwm_mb", "{:.0f}"), cell("rss_mb", "{:.0f}"),
                     cell("anon_mb", "{:.0f}"), cell("file_mb", "{:.0f}"),
                     f"{statistics.median(r['attached'] for r in rs):.0f}"])
    med_ready = statistics.median(r["ready_s"] for r in runs[f"{args.pods} pods"])
    text = "\n".join([
        f"{args.reps} starts per configuration, alternated; median (min..max). "
        f"\"to 1st attach\" = process spawn to the first 'attached to' log line (imports, "
        f"preflight, program loads, cgroup + netns index, link listing); \"attach\" = first "
        f"attach to the 'ready' line.", "",
        table(["config", "to /readyz 200 s", "to 1st attach s", "attach s", "SIGTERM exit s",
               "VmHWM MB", "VmRSS at ready MB", "RssAnon MB", "RssFile MB", "attached"],
              rows), "",
        f"- start-up with {args.pods} pods: {med_ready:.2f} s median (target <= {TARGET_S:g} s): "
        + ("ok" if med_ready <= TARGET_S else "MISSED")])
    print("\n" + text)
    if args.write:
        write_section("startup", header("Start-up (bench/startup.py)") + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Memory of the serving process and start-up, two code versions side by side (issue 11).

    .venv/bin/python bench/serving_memory.py [--before REV] [--after REV] [--pods 110,500]
                                             [--reps 3] [--write]

Both versions are frozen copies (bench/common.py snapshot: bench/out/tree-<sha>); each
exporter process imports only its own copy (PYTHONPATH and working directory). One phase
per size, smallest first: test pods are added until exactly N exist (the batch creator),
then per rep each version is started once, one at a time, alternating (order rotated per
rep), exactly as a user starts it: `python -m exporter --kube off --interfaces <this run's
veths>`, default collectors (network, syscalls, exec, tcp, drops). Per start:

- start to ready: spawn to the first 200 from /readyz (polled every 20 ms);
- every pod gets a little traffic (bench/common.py poke) and the run waits until every pod
  has tcp, udp and icmp samples with its pod_uid; then 40 scrapes of /metrics, 5 s pause,
  10 more: "steady" is VmRSS (RssAnon + RssFile) after that, and VmHWM (the process's peak
  since it started: the bcc compile when it runs in the process);
- the serving process's children at that point (the loader processes must be gone), and
  whether libLLVM / libclang / libbcc are mapped in it.

Targets (issue 11): steady RSS <= 80 MB at 110 pods, <= 100 MB at 500 with the default
collectors; start to ready <= 5 s with 110 pods. Everything made here is removed on exit,
Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, BatchPodFactory, ProcStat, _git, graceful,  # noqa: E402
                    header, poke, wait_ready_since,
                    snapshot, summary, table, write_section)

from exporter.exporterproc import ExporterProcess  # noqa: E402

TARGET_RSS_MB = {110: 60.0, 500: 100.0}  # issue 20: <= 60 MB at 110 pods, --kube auto
TARGET_READY_S = 1.0  # issue 20
COMPILER = ("libLLVM", "libclang", "libbcc.so")


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def compiler_mapped(pid: int) -> bool:
    text = Path(f"/proc/{pid}/maps").read_text()
    return any(lib in text for lib in COMPILER)


def wait_counted(proc: ExporterProcess, pods, timeout: float = 120) -> int:
    """Until every pod has tcp, udp, icmp samples with its pod_uid (re-poking the missing
    ones every 5 s); returns how many never got there."""
    want = {p.host_if: p for p in pods}
    deadline = time.monotonic() + timeout
    next_poke = time.monotonic() + 5
    while True:
        m = proc.metrics()
        seen: dict[str, set] = {}
        for labels, _ in m.samples.get("podsnoop_network_receive_packets_total", []):
            pod = want.get(labels["interface"])
            if pod is not None and labels["pod_uid"] == pod.uid:
                seen.setdefault(labels["interface"], set()).add(labels["protocol"])
        missing = [p for n, p in want.items() if not {"tcp", "udp", "icmp"} <= seen.get(n, set())]
        if not missing or time.monotonic() > deadline:
            return len(missing)
        if time.monotonic() >= next_poke:
            poke(missing)
            next_poke = time.monotonic() + 5
        time.sleep(1)


def one_run(tree: Path, regex: str, pods, kube_args: tuple[str, ...] = ("--kube", "off"),
            timeout: float = 180) -> dict:
    env = {"PYTHONPATH": str(tree)}
    proc = ExporterProcess(*kube_args, "--log-level", "warning", "--interfaces", regex,
                           env=env, cwd=str(tree))
    t0 = time.monotonic()
    proc.start(wait_ready=0)
    try:
        stat = ProcStat(proc.proc.pid)
        r = {"ready_s": wait_ready_since(proc, t0, timeout), "rss_ready_mb": stat.rss_mb()}
        poke(pods)
        r["uncounted"] = wait_counted(proc, pods)
        for _ in range(40):
            proc.metrics()
        time.sleep(5)
        for _ in range(10):
            body = proc.get("/metrics")[1]
        r.update(rss_mb=stat.rss_mb(), hwm_mb=stat.hwm_mb(),
                 anon_mb=stat.status_kb("RssAnon") / 1024,
                 file_mb=stat.status_kb("RssFile") / 1024,
                 children=len(children(proc.proc.pid)),
                 compiler=compiler_mapped(proc.proc.pid),
                 samples=sum(1 for ln in body.splitlines() if ln and not ln.startswith("#")))
    finally:
        code = proc.stop()
    if code != 0:
        raise RuntimeError(f"exporter exited {code} on SIGTERM:\n{proc.output()[-2000:]}")
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="9fe0886",
                    help="the version to compare with (default 9fe0886: bcc compiles in the "
                         "serving process)")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--pods", default="110,500")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kube", default="off,auto",
                    help="off: --kube off; auto: --kube auto against the project's test API "
                         "server (exporter/testapiserver.py) holding every test pod, so the "
                         "Kubernetes client, its pod watch and the labels are in the figures")
    ap.add_argument("--write", action="store_true", help="replace this section of bench/RESULTS.md")
    args = ap.parse_args()
    sizes = sorted({int(n) for n in args.pods.split(",")})
    trees = {"before": snapshot(args.before), "after": snapshot(args.after)}
    shas = {k: _git("rev-parse", "--short=12", v) for k, v in
            (("before", args.before), ("after", args.after))}
    graceful()

    kube_modes = [k.strip() for k in args.kube.split(",") if k.strip()]
    api = None
    if "auto" in kube_modes:
        from exporter.testapiserver import DEFAULT_NODE, KubeApiServer
        api = KubeApiServer()
        api.__enter__()
    kube_args = {"off": ("--kube", "off")}
    if api is not None:
        kube_args["auto"] = ("--kube", "auto", "--kubeconfig", api.kubeconfig_path,
                             "--node-name", DEFAULT_NODE)
    factories: list[BatchPodFactory] = []
    runs: dict[tuple[int, str], list[dict]] = {}
    try:
        made = 0
        for size in sizes:
            f = BatchPodFactory(prefix="bsm")
            factories.append(f)
            for p in f.create_many(size - made):
                if api is not None:
                    api.add_pod(p.name, "bench", DEFAULT_NODE, uid=p.uid,
                                containers={c.name: c.id for c in p.containers.values()})
            made = size
            pods = [p for f in factories for p in f.pods]
            regex = rf"(?:{'|'.join(f.tag for f in factories)})h\d+"
            for rep in range(args.reps):
                order = list(trees) if rep % 2 == 0 else list(reversed(trees))
                for name, kube in ((n, k) for n in order for k in kube_modes):
                    r = one_run(trees[name], regex, pods, kube_args[kube])
                    runs.setdefault((size, name, kube), []).append(r)
                    print(f"{size} pods, {name} ({shas[name]}), --kube {kube}, rep {rep + 1}: "
                          f"ready "
                          f"{r['ready_s']:.2f} s, steady RSS {r['rss_mb']:.1f} MB "
                          f"(anon {r['anon_mb']:.1f} + file {r['file_mb']:.1f}), VmHWM "
                          f"{r['hwm_mb']:.1f} MB, children {r['children']}, compiler mapped "
                          f"{r['compiler']}, uncounted pods {r['uncounted']}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        for f in reversed(factories):
            f.close()
        if api is not None:
            api.__exit__(None, None, None)

    def cell(rs, key, fmt="{:.1f}"):
        med, lo, hi = summary([r[key] for r in rs])
        return f"{fmt.format(med)} ({fmt.format(lo)}..{fmt.format(hi)})"

    rows, verdicts = [], []
    for (size, name, kube), rs in sorted(runs.items(), key=lambda kv: (
            kv[0][0], kv[0][2], kv[0][1] != "before")):
        rows.append([size, f"{name} ({shas[name]})", kube, len(rs),
                     cell(rs, "ready_s", "{:.2f}"),
                     cell(rs, "rss_mb"), cell(rs, "anon_mb"), cell(rs, "file_mb"),
                     cell(rs, "hwm_mb"), cell(rs, "rss_ready_mb"),
                     max(r["children"] for r in rs), any(r["compiler"] for r in rs),
                     max(r["samples"] for r in rs), max(r["uncounted"] for r in rs)])
        if name == "after":
            rss = summary([r["rss_mb"] for r in rs])[0]
            target = TARGET_RSS_MB.get(size)
            if target:
                verdicts.append(f"- steady RSS at {size} pods, --kube {kube}: {rss:.1f} MB "
                                f"median (target <= {target:g} MB): "
                                f"{'ok' if rss <= target else 'MISSED'}")
            if size == 110:
                ready = summary([r["ready_s"] for r in rs])[0]
                verdicts.append(f"- start to ready with 110 pods, --kube {kube}: {ready:.2f} s "
                                f"median (target "
                                f"<= {TARGET_READY_S:g} s): "
                                f"{'ok' if ready <= TARGET_READY_S else 'MISSED'}")
    text = "\n".join([
        f"Versions: before = {shas['before']} ({trees['before'].relative_to(REPO)}), after = "
        f"{shas['after']} ({trees['after'].relative_to(REPO)}). {args.reps} starts per version "
        f"and size, one exporter at a time, alternated (order rotated per rep); median "
        f"(min..max). Default collectors; `--kube off`, or `--kube auto` against the "
        f"project's test API server holding every test pod. Steady = after every pod is counted, "
        f"50 scrapes and a 5 s pause.", "",
        table(["pods", "version", "kube", "runs", "start to ready s", "steady VmRSS MB", "RssAnon MB",
               "RssFile MB", "VmHWM MB", "VmRSS at ready MB", "children", "compiler mapped",
               "samples", "uncounted pods"], rows), "",
        *verdicts])
    print("\n" + text)
    if args.write:
        write_section("serving_memory", header("Serving-process memory and start-up, before/"
                                               "after (bench/serving_memory.py)") + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

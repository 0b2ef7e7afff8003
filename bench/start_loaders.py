#!/usr/bin/env python3
"""Start to ready without pods: a before version against this tree with one, two, or the
automatic number of loader processes (exporter/loader.py loader_count), alternated.

    .venv/bin/python bench/start_loaders.py [--before REV] [--reps 5]

Prints spawn-to-/readyz seconds and the CPU seconds the exporter used until its exit
(its own and its reaped loader children's), medians over the reps. Not written to
RESULTS.md; quoted in its issue 11 summary.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, snapshot  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="9fe0886")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    before = snapshot(args.before)
    run = "import sys; import exporter.loader as p; {}from exporter.cli import main; " \
          "sys.exit(main(sys.argv[1:]))"
    variants = {
        "before": (["-m", "exporter"], {"PYTHONPATH": str(before)}, before),
        "auto": (["-c", run.format("")], {}, REPO),
        "two loaders": (["-c", run.format("p.loader_count = lambda n: 2; ")], {}, REPO),
        "one loader": (["-c", run.format("p.loader_count = lambda n: 1; ")], {}, REPO),
    }
    res: dict[str, list] = {k: [] for k in variants}
    for rep in range(args.reps):
        for name, (argv, env, cwd) in variants.items():
            port = 19400 + rep
            t0 = time.monotonic()
            p = subprocess.Popen([sys.executable, *argv, "--kube", "off", "--listen",
                                  f"127.0.0.1:{port}", "--interfaces", "none",
                                  "--log-level", "warning"],
                                 env={**os.environ, **env}, cwd=cwd, stderr=subprocess.DEVNULL)
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                    break
                except OSError:
                    if p.poll() is not None:
                        raise RuntimeError(f"{name}: exited {p.returncode}")
                    time.sleep(0.02)
            ready = time.monotonic() - t0
            p.terminate()
            _, _, ru = os.wait4(p.pid, 0)
            res[name].append((ready, ru.ru_utime + ru.ru_stime))
            print(f"rep {rep + 1} {name:12}: ready {ready:.2f} s, CPU {ru.ru_utime + ru.ru_stime:.2f} s, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    for name, v in res.items():
        print(f"{name:12}: ready {statistics.median(r for r, _ in v):.2f} s median, "
              f"CPU {statistics.median(c for _, c in v):.2f} s median")
    return 0


if __name__ == "__main__":
    sys.exit(main())

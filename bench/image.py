#!/usr/bin/env python3
"""The image: its size, and podsnoop's container start with 110 test pods: time to ready and
the container's peak memory, from its cgroup.

    .venv/bin/python bench/image.py [--pods 110] [--reps 5] [--write]

Builds (or reuses) the default image with scripts/image.sh (deploy/Dockerfile's last stage:
podsnoop's programs are precompiled CO-RE objects that libbpf loads in the serving process,
nothing compiles at start; bcc and its compiler are only in the -bcc image, for user programs
in bcc C), makes --pods test pods, then starts the image with runc again and again as
deploy/daemonset.yaml says (scripts/podrunc.py; plus `--kube off`, `--interfaces` matching
the test pods and their `--kubepods-root`, so it attaches to all of them and nothing else),
alternating the configurations:

  no limits        the manifest without its resources.limits, so the peak is not cut by them:
                   what the limits must cover;
  manifest limits  the manifest as it is (memory limit, CPU quota): what a node sees;
  cold, ...        the same after the image's files were dropped from the page cache
                   (POSIX_FADV_DONTNEED on each): a node's first start, where the pages of
                   Python, the stdlib, the venv's modules and libraries the container reads
                   are charged to it.

For each start: seconds from `runc run` to the first 200 from /readyz (polled every 20 ms);
the cgroup's peak usage (memory.max_usage_in_bytes on cgroup v1, memory.peak on v2; page
cache included) read at ready; the highest anonymous memory (memory.stat rss, v1 / anon, v2)
sampled at each poll; the limit's failcnt (times the limit was hit: page cache reclaimed);
then SIGTERM: exit code 0 and no podsnoop filter left. The page cache of the image's files
is charged to the first container that reads them: warm starts show less than a node's
first start (the "cold" configurations). Targets: the image <= 150 MB, the first start's
peak (cold, no limits) <= 128 MiB, so that a 256Mi limit leaves room.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))
from common import (BatchPodFactory, attachments_left, graceful, header,  # noqa: E402
                    ready_now, summary, table, write_section)

import podrunc  # noqa: E402

MANIFEST = HERE.parent / "deploy" / "daemonset.yaml"
MiB = 1024 * 1024
IMAGE_TARGET_MB = 150       # the default image's size, MB (podman's Size, 10^6 bytes)
PEAK_TARGET_MIB = 128       # the container's peak at a first start (cold, no limits)


def anon_bytes(c: podrunc.ManifestContainer) -> int:
    try:
        st = c.memory_stat()
    except (OSError, TypeError):
        return 0
    return st.get("rss", st.get("anon", 0))


def evict_image_cache(image: str) -> None:
    """Drop the image's files from the page cache (POSIX_FADV_DONTNEED on each, through a
    buildah mount: overlayfs passes it to the layer files), as on a node that has never run
    it; the rest of the machine's cache is left alone."""
    ctr = subprocess.run(["buildah", "from", "--pull=never", image], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        mnt = subprocess.run(["buildah", "mount", ctr], capture_output=True, text=True,
                             check=True).stdout.strip()
        for path in Path(mnt).rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True)
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


def one_start(image: str, factory, limits: bool, timeout: float, cold: bool = False) -> dict:
    if cold:
        evict_image_cache(image)
    c = podrunc.ManifestContainer(
        image, MANIFEST, apply_resources=limits,
        extra_args=["--kube", "off", "--interfaces", rf"{factory.tag}h\d+",
                    "--kubepods-root", str(factory.kubepods)])
    try:
        t0 = time.monotonic()
        c.start(wait_ready=0)
        anon = 0
        while not ready_now(c.proc.url):
            if c.proc.proc.poll() is not None:
                raise RuntimeError(f"container exited {c.proc.proc.returncode}:\n{c.output()}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"not ready after {timeout} s:\n{c.output()[-2000:]}")
            anon = max(anon, anon_bytes(c))
            time.sleep(0.02)
        r = {"ready_s": time.monotonic() - t0, "peak_mib": c.memory_peak() / MiB,
             "anon_peak_mib": max(anon, anon_bytes(c)) / MiB,
             "anon_ready_mib": anon_bytes(c) / MiB,
             "attached": c.proc.metrics().value("podsnoop_attached_interfaces")}
        fc = c.memory_cgroup() / "memory.failcnt"
        r["failcnt"] = int(fc.read_text()) if fc.exists() else 0
        code = c.stop()
        if code != 0:
            raise RuntimeError(f"exit {code} on SIGTERM:\n{c.output()[-2000:]}")
    finally:
        c.close()
    return r


def image_size(image: str) -> int:
    return int(subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", image],
                              capture_output=True, text=True, check=True).stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=110)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--write", action="store_true", help="replace this section of bench/RESULTS.md")
    args = ap.parse_args()
    graceful()
    image = subprocess.run([str(HERE.parent / "scripts" / "image.sh")], capture_output=True,
                           text=True, check=True).stdout.split()[-1]
    size = image_size(image)
    size_verdict = "ok" if size / 1e6 <= IMAGE_TARGET_MB else "over"
    print(f"image {image}: {size / 1e6:.0f} MB (target <= {IMAGE_TARGET_MB} MB: {size_verdict})",
          flush=True)

    factory = BatchPodFactory(prefix="bim")
    configs = {"no limits": (False, False), "cold, no limits": (False, True),
               "manifest limits": (True, False), "cold, limits": (True, True)}
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    try:
        pods = factory.create_many(args.pods)
        for rep in range(args.reps):
            for name, (limits, cold) in configs.items():
                r = one_start(image, factory, limits, args.timeout, cold)
                runs[name].append(r)
                print(f"rep {rep + 1}/{args.reps} {name:15}: ready {r['ready_s']:.2f} s, "
                      f"peak {r['peak_mib']:.0f} MiB, anon peak {r['anon_peak_mib']:.0f} MiB, "
                      f"failcnt {r['failcnt']}, attached {r['attached']:.0f}", flush=True)
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
            med, lo, hi = summary([r[key] for r in rs])
            return f"{fmt.format(med)} ({fmt.format(lo)}..{fmt.format(hi)})"
        rows.append([name, cell("ready_s"), cell("peak_mib", "{:.0f}"),
                     cell("anon_peak_mib", "{:.0f}"), cell("anon_ready_mib", "{:.0f}"),
                     cell("failcnt", "{:.0f}"),
                     f"{statistics.median(r['attached'] for r in rs):.0f}"])
    cold_peaks = [r["peak_mib"] for r in runs["cold, no limits"]]
    cold_peak = statistics.median(cold_peaks)
    wl = podrunc.load_workload(MANIFEST)
    res = wl["spec"]["template"]["spec"]["containers"][0]["resources"]
    text = "\n".join([
        f"- image: `{image}` (`./dev image`: deploy/Dockerfile, buildah), "
        f"{size / 1e6:.0f} MB (`podman image inspect --format '{{{{.Size}}}}' {image}`)",
        f"- run by runc as deploy/daemonset.yaml says (scripts/podrunc.py), with "
        f"`--kube off --interfaces <the {args.pods} test pods' veths> --kubepods-root <theirs>`"
        f" appended; manifest resources when measured: {res}", "",
        f"{args.reps} starts per configuration, alternated; median (min..max). Peak = the "
        f"container cgroup's memory.max_usage_in_bytes at ready (page cache included); anon "
        f"= memory.stat rss sampled every 20 ms until ready, and at ready.", "",
        table(["config", "runc run to /readyz 200 s", "peak MiB", "anon peak MiB",
               "anon at ready MiB", "limit failcnt", "attached"], rows), "",
        f"- image size: {size / 1e6:.0f} MB (target <= {IMAGE_TARGET_MB} MB): {size_verdict}",
        f"- container peak at a first start (cold, no limits): {cold_peak:.0f} MiB median, "
        f"max {max(cold_peaks):.0f} (target <= {PEAK_TARGET_MIB} MiB): "
        f"{'ok' if max(cold_peaks) <= PEAK_TARGET_MIB else 'over'}"])
    print("\n" + text)
    if args.write:
        write_section("image", header("Image and container start (bench/image.py)") + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

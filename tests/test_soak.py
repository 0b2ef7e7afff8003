"""Soak: pod churn on a busy node leaves nothing behind and keeps the exporter's memory flat.

Real test pods (netns + veth + kubepods cgroup + processes), the real exporter process
(`--grace-period 2`), and a thread scraping /metrics the whole time (75 ms after each
answer; every answer must be 200 and parse).
"""
from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from exporter import names
from exporter.links import MAX_RETRY_SECONDS
from conftest import our_filters, run_exporter
from soak_helpers import (Scraper, ThreadSafePodFactory, bucket_owners, net_keys, rss_kb,
                          syscall_keys)
from test_network import wait_for
from test_syscalls import GETSID

TX = names.NET_TRANSMIT_PACKETS + "_total"
RX = names.NET_RECEIVE_PACKETS + "_total"
CALLS = names.SYSCALLS + "_total"
NET_FAMILIES = [f + "_total" for f in (names.NET_RECEIVE_BYTES, names.NET_TRANSMIT_BYTES,
                                       names.NET_RECEIVE_PACKETS, names.NET_TRANSMIT_PACKETS)]
POD_FAMILIES = NET_FAMILIES + [CALLS, names.SYSCALL_ERRORS + "_total",
                               names.SYSCALL_DURATION + "_count"]

GRACE = 2            # --grace-period, seconds
SURVIVORS = 5        # pods alive from start to end
WAVES = 8            # wave 0 is the warm-up; RSS is measured after it and at the end
WAVE_SIZE = 25       # pods per wave: at most SURVIVORS + WAVE_SIZE = 30 alive at once
GETSID_EVERY = 10    # every 10th pod of a wave also runs an exact getsid workload
GETSID_CALLS = 200
PINGS = 2
# A new pod's counters must carry its own pod_uid within this. Not a speed target (the
# seconds each wave took are printed): the bound of the mechanism, links.py retrying
# unresolved links with a backoff capped at MAX_RETRY_SECONDS, plus slack for a busy
# machine. (5 s failed on a loaded shared machine: a wave then took 23 s to create.)
LABEL_TIMEOUT = MAX_RETRY_SECONDS + 10.0
RSS_SLACK_KB = 20 * 1024


@pytest.fixture
def churn_pods(kernel):
    """Pods made and removed by two threads at once."""
    with ThreadSafePodFactory("soak") as factory:
        yield factory


def cgroup_ids(pod) -> set[int]:
    ids = {os.stat(pod.cgroup).st_ino}
    ids |= {os.stat(c.cgroup).st_ino for c in pod.containers.values()}
    return ids


def labelled_correctly(m, pod) -> str | None:
    """None if the pod's ping counts are there, exact, and only under its own pod_uid."""
    series = m.series(TX, interface=pod.host_if)
    if not series:
        return f"{pod.host_if}: no series yet"
    wrong = {s["pod_uid"] for s in series} - {pod.uid}
    if wrong:
        return f"{pod.host_if} (pod {pod.uid}) exported under pod_uid {sorted(wrong)}"
    got = m.value(TX, interface=pod.host_if, protocol="icmp")
    if got != PINGS:
        return f"{pod.host_if}: {got} icmp packets, want {PINGS}"
    return None


def test_churn_leaves_nothing_behind_and_memory_flat(churn_pods):
    """Sizes: 5 survivors + 8 waves x 25 pods = 205 pods created, 200 deleted, at most 30
    alive at once (a wave is made and removed by 2 threads); each pod pings the host twice
    (exact ICMP count checked, under its own pod_uid, within 5 s) from its app container
    while its sidecar container runs `true` (~60 syscall series per pod in all), every
    10th also makes exactly 200 getsid calls (24 pods). About 70-130 s on 2 busy cores.
    Figures (RSS, scrape latency, seconds per wave) are printed (`pytest -s`) and are in
    the assertion messages."""
    pods = churn_pods
    survivors = [pods.create() for _ in range(SURVIVORS)]
    # Limited to this factory's veths and kubepods root (other tests' pods on the node
    # must not change the figures).
    proc = run_exporter(pods, "--grace-period", str(GRACE))
    pid = proc.proc.pid
    pool = ThreadPoolExecutor(2)
    gone_uids: set[str] = set()
    gone_ifs: set[str] = set()
    gone_ifindexes: set[int] = set()
    gone_cgroups: set[int] = set()
    gone_netns: set[str] = set()
    label_problems: list[str] = []
    label_seconds: list[float] = []
    rss: dict[str, int] = {"start": rss_kb(pid)}
    rss_per_wave: list[int] = []
    wave_seconds: list[float] = []
    created = len(survivors)

    def gone_state(m):
        """What still refers to deleted pods: series, map keys."""
        left = []
        for fam in POD_FAMILIES:
            for s in m.samples.get(fam, []):
                lab = s[0]
                if lab.get("pod_uid") in gone_uids or lab.get("interface") in gone_ifs:
                    left.append(f"{fam}{lab}")
        nk = [k for k in net_keys(pid) if k[0] in gone_ifindexes] + \
            sorted(bucket_owners(pid) & gone_ifindexes)
        sk = [k for k in syscall_keys(pid) if k[0] in gone_cgroups]
        lk = [k for k in syscall_keys(pid, "syscall_latency") if k[0] in gone_cgroups]
        return left, nk, sk, lk

    def settle(what: str, timeout: float = 30.0) -> float:
        """Wait until nothing refers to deleted pods (grace period + a cgroup rescan)."""
        t0 = time.monotonic()
        wait_for(lambda: not any(gone_state(proc.metrics())), timeout=timeout, interval=0.5,
                 what=f"{what}: series and map entries of deleted pods to go")
        return time.monotonic() - t0

    def make(n):
        return [pods.create(containers=("app", "sidecar")) for _ in range(n)]

    def remove(part):
        for p in part:
            pods.delete(p)

    try:
        wait_for(lambda: proc.metrics().value(names.ATTACHED_INTERFACES) == SURVIVORS,
                 what="the survivors' interfaces")
        with Scraper(proc.url, interval=0.075) as scraper:
            for wave in range(WAVES):
                wave_start = time.monotonic()
                half = WAVE_SIZE // 2
                parts = list(pool.map(make, (half, WAVE_SIZE - half)))
                batch = parts[0] + parts[1]
                created += len(batch)
                alive = SURVIVORS + len(batch)
                wait_for(lambda: proc.metrics().value(names.ATTACHED_INTERFACES) == alive,
                         timeout=20, what=f"wave {wave}: attach to {alive} interfaces")
                started = [p.run(["ping", "-c", str(PINGS), "-i", "0.01", "-W", "2", "-q",
                                  p.host_ip]) for p in batch]
                started += [p.run(["true"], container="sidecar") for p in batch]
                for proc_ in started:
                    proc_.wait(timeout=30)
                workers = batch[::GETSID_EVERY]
                for p in workers:
                    p.exec(["python3", "-c", GETSID, str(GETSID_CALLS)])
                # Every pod's counters exact and under its own pod_uid, within LABEL_TIMEOUT.
                t0 = time.monotonic()
                while True:
                    m = proc.metrics()
                    problems = [x for x in (labelled_correctly(m, p) for p in batch) if x]
                    problems += [f"{p.first_container.id[:12]}: getsid {got}" for p, got in (
                        (p, m.value(CALLS, pod_uid=p.uid, container_id=p.first_container.id,
                                    syscall="getsid")) for p in workers) if got != GETSID_CALLS]
                    if not problems or time.monotonic() - t0 > LABEL_TIMEOUT:
                        break
                    time.sleep(0.1)
                label_seconds.append(time.monotonic() - t0)
                if problems:
                    label_problems.append(f"wave {wave}: {len(problems)} pods still wrong after "
                                          f"{LABEL_TIMEOUT}s, e.g. {problems[:3]}")
                for p in batch:
                    gone_uids.add(p.uid)
                    gone_ifs.add(p.host_if)
                    gone_ifindexes.add(p.host_ifindex())
                    gone_cgroups.update(cgroup_ids(p))
                    gone_netns.add(p.netns)
                list(pool.map(remove, parts))
                rss_per_wave.append(rss_kb(pid))
                wave_seconds.append(round(time.monotonic() - wave_start, 1))
                if wave == 0:
                    settle("after the warm-up wave")
                    rss["plateau"] = rss_kb(pid)
            took = settle("after the last wave")
            rss["end"] = rss_kb(pid)
            m = proc.metrics()
        log = scraper.log

        figures = (f"pods created {created}, deleted {len(gone_uids)}; RSS kB start "
                   f"{rss['start']} after warm-up {rss['plateau']} end {rss['end']} "
                   f"(growth {rss['end'] - rss['plateau']} kB), per wave {rss_per_wave}; "
                   f"scrapes under churn: {log.summary()}; seconds until a wave was "
                   f"exported exactly under its own pod_uids: "
                   f"{[round(s, 2) for s in label_seconds]}; seconds per wave {wave_seconds}; "
                   f"final settle {took:.1f}s")
        print("\nSOAK:", figures)

        # Every scrape answered 200 and parsed.
        assert log.count > 100, figures
        assert not log.failures, f"{log.failures[:5]}\n{figures}"
        # Each pod's counters were exact and carried its own pod_uid.
        assert not label_problems, "\n".join(label_problems) + "\n" + figures
        # Nothing of the deleted pods left: series, buckets, net_counters and syscall keys.
        assert gone_state(m) == ([], [], [], [])
        # What is left in net_buckets and net_counters is the survivors' only: each one
        # counts in its bucket or, where the bucket is another's, in the hash.
        keys, owners = net_keys(pid), bucket_owners(pid)
        live = {p.host_ifindex() for p in survivors}
        assert ({k[0] for k in keys} | owners) <= live and not {k[0] for k in keys} & owners
        series = [s for fam in (RX, TX) for s in m.series(fam)]
        assert {s["interface"] for s in series} <= {p.host_if for p in survivors}
        assert m.value(names.BPF_MAP_ENTRIES, map="net_counters") == len(keys)
        assert m.value(names.BPF_MAP_ENTRIES, map="net_buckets") == len(owners)
        # syscall_counts: no key of any cgroup this test made, except the survivors'.
        live_cgroups = {i for p in survivors for i in cgroup_ids(p)}
        assert not {k[0] for k in syscall_keys(pid)} & gone_cgroups
        assert m.value(names.ATTACHED_INTERFACES) == SURVIVORS
        for p in survivors:
            assert len(our_filters(p.host_if)) == 2, p.host_if
        # The survivors still count exactly, under their own pod_uid.
        before = {p.host_if: m.value(TX, interface=p.host_if, protocol="icmp") for p in survivors}
        for p in survivors:
            p.exec(["ping", "-c", "3", "-i", "0.01", "-q", p.host_ip])
            p.exec(["python3", "-c", GETSID, "100"])
        m2 = proc.metrics()
        for p in survivors:
            assert m2.value(TX, interface=p.host_if, protocol="icmp") - before[p.host_if] == 3
            assert {s["pod_uid"] for s in m2.series(TX, interface=p.host_if)} == {p.uid}
            assert m2.value(CALLS, pod_uid=p.uid, syscall="getsid") == 100
        assert live_cgroups & {k[0] for k in syscall_keys(pid)}
        # Memory back near its plateau.
        assert rss["end"] - rss["plateau"] < RSS_SLACK_KB, figures
    finally:
        pool.shutdown()
        code = proc.stop()
    out = proc.output()
    assert code == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    # After SIGTERM: no podsnoop filter (nor the clsact it made) on the surviving links.
    for p in survivors:
        assert our_filters(p.host_if) == [], p.host_if
        assert "clsact" not in subprocess.run(["tc", "qdisc", "show", "dev", p.host_if],
                                              capture_output=True, text=True).stdout
    # No netns, link or cgroup of a deleted pod is left.
    netns = set(subprocess.run(["ip", "netns", "list"], capture_output=True,
                               text=True).stdout.split())
    assert not (netns & gone_netns)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert not [i for i in gone_ifs if f" {i}@" in links or f" {i}:" in links]
    root = Path(pods.cgroup_root)
    tree = {p for p in root.rglob("*") if p.is_dir()}
    wanted = {Path(c.cgroup) for p in survivors for c in p.containers.values()}
    wanted |= {Path(p.cgroup) for p in survivors}
    wanted |= {q for w in wanted for q in w.parents if root in q.parents}
    assert tree == wanted

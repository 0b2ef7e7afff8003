"""Per-container syscall counts, errors and latency, against known workloads in real test
pods (processes really in the pod's container cgroups), with the real exporter process."""
from __future__ import annotations

import os

import pytest

from exporter import names
from conftest import run_exporter
from test_network import wait_for

CALLS, ERRORS = names.SYSCALLS + "_total", names.SYSCALL_ERRORS + "_total"
HIST_COUNT = names.SYSCALL_DURATION + "_count"
# The interpreter by its path, one task from exec to exit (python3-bpfcc depends on it).
DEBIAN_PYTHON = "/usr/bin/python3"
# getsid and rmdir: syscalls neither the shell nor `ip netns exec` that start a workload in
# a test pod make, so a workload's count is exact.
GETSID = "import os, sys\nfor _ in range(int(sys.argv[1])): os.getsid(0)"
RMDIR = ("import os, sys\nfor _ in range(int(sys.argv[1])):\n"
         "    try: os.rmdir('/nonexistent/podsnoop')\n    except OSError: pass")


def calls(exporter, container, syscall, metric=CALLS):
    return exporter.metrics().value(metric, container_id=container.id, syscall=syscall)


@pytest.fixture(scope="module")
def pod(factory, exporter):
    return factory.create(containers=("app", "sidecar"))


def test_exact_getsid_count_per_container(exporter, pod):
    app, sidecar = pod.containers["app"], pod.containers["sidecar"]
    before_app, before_side = calls(exporter, app, "getsid"), calls(exporter, sidecar, "getsid")
    pod.exec(["python3", "-c", GETSID, "1000"], container="app")
    pod.exec(["python3", "-c", GETSID, "300"], container="sidecar")
    assert calls(exporter, app, "getsid") - before_app == 1000
    assert calls(exporter, sidecar, "getsid") - before_side == 300


def test_failing_calls_count_as_errors(exporter, pod):
    app = pod.containers["app"]
    c0, e0 = calls(exporter, app, "rmdir"), calls(exporter, app, "rmdir", ERRORS)
    pod.exec(["python3", "-c", RMDIR, "5000"], container="app")
    assert calls(exporter, app, "rmdir") - c0 == 5000
    assert calls(exporter, app, "rmdir", ERRORS) - e0 == 5000


def test_samples_carry_pod_uid_and_container_id(exporter, pod):
    app = pod.containers["app"]
    pod.exec(["python3", "-c", GETSID, "5"], container="app")
    series = exporter.metrics().series(CALLS, container_id=app.id, syscall="getsid")
    assert series == [{"namespace": "", "pod": "", "pod_uid": pod.uid, "container": "",
                       "container_id": app.id, "syscall": "getsid"}]


def test_host_processes_are_not_counted(exporter, pod):
    before = exporter.metrics().value(CALLS, syscall="getsid")
    for _ in range(777):
        os.getsid(0)
    assert exporter.metrics().value(CALLS, syscall="getsid") == before


def test_a_thread_that_moves_into_a_pod_is_counted_from_then_on(exporter, pod):
    """The pod filter follows a thread's cgroup, not where it started: the same thread,
    moved into a container's cgroup, counts exactly the calls it makes there, none of those
    before, and none once it has moved out again."""
    import subprocess
    import sys
    app = pod.containers["app"]
    script = ("import os, sys\n"
              "def calls(n):\n"
              "    for _ in range(n): os.getsid(0)\n"
              "calls(400)\n"                                      # on the host: not counted
              "open(sys.argv[1], 'w').write(str(os.getpid()))\n"  # into the container
              "calls(123)\n"
              "open(sys.argv[2], 'w').write(str(os.getpid()))\n"  # and back out
              "calls(500)\n")
    before = calls(exporter, app, "getsid")
    home = next(line[3:].strip() for line in open(f"/proc/{os.getpid()}/cgroup")
                if line.startswith("0::"))
    from exporter.cgroups import find_cgroup2_mount
    back = os.path.join(find_cgroup2_mount(), home.lstrip("/"), "cgroup.procs")
    subprocess.run([sys.executable, "-c", script, str(app.cgroup / "cgroup.procs"), back],
                   check=True, timeout=60)
    assert calls(exporter, app, "getsid") - before == 123


def timed_and_counted(proc, app, run) -> tuple[float, float]:
    """The histogram's _count and all calls the container made while run() ran."""
    m0 = proc.metrics()
    run()
    m1 = proc.metrics()
    calls_added = sum(v for lab, v in m1.samples[CALLS] if lab["container_id"] == app.id) \
        - sum(v for lab, v in m0.samples.get(CALLS, []) if lab["container_id"] == app.id)
    timed = m1.value(HIST_COUNT, container_id=app.id) - m0.value(HIST_COUNT, container_id=app.id)
    return timed, calls_added


def test_latency_histogram_counts_each_call_with_every_1(pods):
    """--syscall-latency-every 1 times every call: the histogram gains each call the
    container made (to within a call or two at the edges of the window)."""
    pod = pods.create(containers=("app",))
    proc = run_exporter(pods, "--syscall-latency-every", "1")
    try:
        app = pod.containers["app"]
        timed, calls_added = timed_and_counted(
            proc, app, lambda: pod.exec([DEBIAN_PYTHON, "-c", GETSID, "2000"], container="app"))
        assert calls_added > 2000
        assert calls_added - 2 <= timed <= calls_added, (timed, calls_added)
        m1 = proc.metrics()
        buckets = [(float(lab["le"]), v)
                   for lab, v in m1.samples[names.SYSCALL_DURATION + "_bucket"]
                   if lab["container_id"] == app.id]
        values = [v for _, v in sorted(buckets)]
        assert values == sorted(values), "buckets must be cumulative"
        assert values[-1] == m1.value(HIST_COUNT, container_id=app.id)
        assert m1.value(names.SYSCALL_DURATION + "_sum", container_id=app.id) > 0
    finally:
        assert proc.stop() == 0, proc.output()


def test_latency_histogram_by_default_times_one_call_in_16(exporter, pod):
    """The default (--syscall-latency-every 16): a sixteenth of the calls, to within the one
    task's rounding (see the every-4 test), while getsid's count stays exact."""
    app = pod.containers["app"]
    before = calls(exporter, app, "getsid")
    timed, calls_added = timed_and_counted(
        exporter, app, lambda: pod.exec([DEBIAN_PYTHON, "-c", GETSID, "4000"], container="app"))
    assert calls(exporter, app, "getsid") - before == 4000
    assert calls_added > 4000, calls_added
    assert calls_added // 16 - 2 <= timed <= calls_added // 16 + 1, (timed, calls_added)


def test_top_n_bounds_series_and_keeps_totals(pods):
    proc = run_exporter(pods, "--syscall-top", "3")
    try:
        pod = pods.create()
        app = pod.first_container
        pod.exec(["python3", "-c", GETSID, "5000"])
        m = proc.metrics()
        series = m.series(CALLS, container_id=app.id)
        assert len(series) <= 4
        assert {s["syscall"] for s in series} >= {"getsid", "other"}
        assert m.value(CALLS, container_id=app.id, syscall="getsid") == 5000
        assert m.value(CALLS, container_id=app.id, syscall="other") > 0
        # A later, busier syscall displaces a named one: no exported counter goes down,
        # and the displaced syscall's series ends.
        before = {s["syscall"]: v for s, v in m.samples[CALLS]
                  if s["container_id"] == app.id}
        pod.exec(["python3", "-c", RMDIR, "20000"])
        m = proc.metrics()
        after = {s["syscall"]: v for s, v in m.samples[CALLS] if s["container_id"] == app.id}
        assert after["rmdir"] == 20000 and after["getsid"] == 5000
        assert len(after) <= 4
        for name in set(before) & set(after):
            assert after[name] >= before[name], name
        assert sum(after.values()) > sum(before.values())
    finally:
        assert proc.stop() == 0


def test_allowlist_names_only_those(pods):
    proc = run_exporter(pods, "--syscall-allowlist", "getsid,rmdir")
    try:
        pod = pods.create()
        app = pod.first_container
        pod.exec(["python3", "-c", GETSID, "10"])
        m = proc.metrics()
        assert {s["syscall"] for s in m.series(CALLS, container_id=app.id)} == {"getsid", "other"}
        assert m.value(CALLS, container_id=app.id, syscall="getsid") == 10
    finally:
        assert proc.stop() == 0


def test_scope_all_exports_host_processes_unresolved(pods):
    # getsid is named by the allowlist: with every host process in one unresolved group,
    # the top 20 depend on what else runs on the host (the exporter's own start-up too),
    # and 777 calls need not displace a named syscall (the 2x rule).
    proc = run_exporter(pods, "--syscall-scope", "all", "--syscall-allowlist", "getsid")
    try:
        before = proc.metrics().value(CALLS, pod_uid="", syscall="getsid")
        for _ in range(777):
            os.getsid(0)
        m = proc.metrics()
        assert m.value(CALLS, pod_uid="", syscall="getsid") - before >= 777
        assert m.value(names.UNRESOLVED_CGROUPS) >= 1
    finally:
        assert proc.stop() == 0


def test_deleted_container_leaves_the_maps_and_series(pods):
    proc = run_exporter(pods, "--grace-period", "2")
    try:
        pod = pods.create()
        app = pod.first_container
        pod.exec(["python3", "-c", GETSID, "4200"])
        assert calls(proc, app, "getsid") == 4200
        entries = proc.metrics().value(names.BPF_MAP_ENTRIES, map="syscall_counts")
        pods.delete(pod)
        # Retired after the next cgroup rescan: final values stay for the grace period...
        wait_for(lambda: proc.metrics().value(names.BPF_MAP_ENTRIES, map="syscall_counts")
                 < entries, timeout=20, interval=0.5, what="map entries of the gone cgroup")
        # ...then no series of the container is left.
        wait_for(lambda: not proc.metrics().series(CALLS, container_id=app.id), timeout=10,
                 what="series to expire")
    finally:
        assert proc.stop() == 0


def test_syscalls_off_loads_no_tracepoint_programs(pods):
    proc = run_exporter(pods, "--syscalls", "off")
    try:
        m = proc.metrics()
        assert not m.samples.get(CALLS)
        assert m.value(names.SCRAPE_COLLECTOR_SUCCESS, collector="syscalls") == 0
        assert not m.series(names.SCRAPE_COLLECTOR_SUCCESS, collector="syscalls")
    finally:
        assert proc.stop() == 0


def test_counts_only_mode_has_no_entry_program_and_counts_exactly(pods):
    """--syscall-latency off: sys_exit alone, the syscall number from the saved registers."""
    pod = pods.create(containers=("app",))
    proc = run_exporter(pods, "--syscall-latency", "off")
    try:
        app = pod.containers["app"]
        pod.exec(["python3", "-c", GETSID, "1500"], container="app")
        pod.exec(["python3", "-c", RMDIR, "4000"], container="app")  # in the top N
        m = proc.metrics()
        assert m.value(CALLS, container_id=app.id, syscall="getsid") == 1500
        assert m.value(ERRORS, container_id=app.id, syscall="rmdir") == 4000
        assert not m.samples.get(HIST_COUNT)
        programs = {lab["program"] for lab in m.series(names.BPF_PROGRAM_RUNS + "_total")
                    if lab["program"].startswith("syscalls/")}
        assert programs == {"syscalls/sys_exit"}, programs
    finally:
        assert proc.stop() == 0, proc.output()


def test_latency_every_n_times_one_call_in_n_and_counts_all(pods):
    """--syscall-latency-every 4: each thread times its 4th, 8th, ... tracked call; the
    counts stay exact. The histogram gains a quarter of the calls the container made, to
    within the one task's rounding (sh execs ip, which execs the interpreter by its path:
    a `python3` found on PATH may be a shim that forks a dozen shells, each rounding down
    its own count, which made the bound depend on the machine; exit_group enters and never
    exits), and getsid's count is exact."""
    pod = pods.create(containers=("app",))
    proc = run_exporter(pods, "--syscall-latency-every", "4")
    try:
        app = pod.containers["app"]
        timed, calls_added = timed_and_counted(
            proc, app, lambda: pod.exec([DEBIAN_PYTHON, "-c", GETSID, "4000"], container="app"))
        assert calls(proc, app, "getsid") == 4000
        assert calls_added > 4000, calls_added
        assert calls_added // 4 - 2 <= timed <= calls_added // 4 + 1, (timed, calls_added)
    finally:
        assert proc.stop() == 0, proc.output()

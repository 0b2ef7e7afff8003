"""`./dev demo` unattended: 60 s without a terminal, through the real entry point. It must
show `podsnoop top` with every demo pod and every signal, report the alerts of its faulty
pods, stop by itself, and leave nothing behind: no test pod netns, veth or cgroup, no TC
filter of its exporter, no process it started."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.run import EXPECTED_ALERTS, PODS  # noqa: E402
from exporter.cgroups import find_cgroup2_mount  # noqa: E402
from exporter.top.view import COLUMNS  # noqa: E402

COLS = [c.key for c in COLUMNS]


def proc_start(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time): a pid with it is the same process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def descendants(root: int) -> set[tuple[int, str]]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if (start := proc_start(child)) is not None:
                out.add((child, start))
                todo.append(child)
    return out


def tables(out: str) -> list[dict[str, dict]]:
    """Every table top printed: pod -> {column key: cell}."""
    found = []
    for block in out.split("podsnoop top  ")[1:]:
        rows = {}
        for line in block.splitlines()[3:]:   # after top's 2 header lines and the table's
            words = line.split()
            if not words or "/" not in words[0] or len(words) != len(COLS):
                break
            rows[words[0]] = dict(zip(COLS, words))
        found.append(rows)
    return found


def number(cell: str) -> float:
    cell = cell.rstrip("%")
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}
    return float(cell[:-1]) * scale[cell[-1]] if cell[-1] in scale else float(cell)


@pytest.mark.timeout(240)
def test_demo_runs_unattended_and_leaves_nothing_behind(kernel):
    proc = subprocess.Popen([str(ROOT / "dev"), "demo", "--duration", "60", "--interval", "5"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    seen: set[tuple[int, str]] = set()
    top_started = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("podsnoop top  "):
                top_started.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # While it runs (top's tables are coming), note every process the demo started.
        while not top_started.wait(1):
            assert proc.poll() is None, "".join(lines)
        seen |= descendants(proc.pid)
        time.sleep(20)
        seen |= descendants(proc.pid)
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    out = "".join(lines)
    assert code == 0, out
    assert "Traceback" not in out, out
    assert "\x1b" not in out, "escape codes without a terminal"

    # What it showed: every pod, each with its signals. A signal is checked in any of the
    # run's tables (about 11, one per 5 s), not in one interval, which a loaded machine or
    # TCP's retransmission backoff could leave empty.
    shown = tables(out)
    pods = {f"{ns}/{name}" for ns, name, *_ in PODS}
    assert len(shown) >= 5 and all(set(t) == pods for t in shown), out

    def seen_in_a_table(pod: str, check) -> bool:
        return any(check(t[pod]) for t in shown)

    for pod in pods:
        assert seen_in_a_table(pod, lambda r: number(r["syscalls"]) > 0
                               and r["syscall_p99"] != "-"), pod
    for pod in ("shop/web-0", "shop/cache-0", "batch/flaky-0"):
        for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
            assert seen_in_a_table(pod, lambda r: number(r[k]) > 0), (pod, k)
    assert seen_in_a_table("shop/web-0", lambda r: number(r["connects"]) > 0
                           and r["connect_p99"] != "-")
    assert seen_in_a_table("batch/cruncher-0", lambda r: number(r["execs"]) > 0)
    assert any(max(t.values(), key=lambda r: number(r["syscalls"])) is t["batch/cruncher-0"]
               for t in shown), "the syscall-heavy pod never had the most syscalls"
    assert seen_in_a_table("batch/flaky-0", lambda r: number(r["errors"]) > 50)
    assert seen_in_a_table("batch/flaky-0", lambda r: number(r["connect_failures"]) > 0)
    assert seen_in_a_table("batch/flaky-0", lambda r: number(r["retransmits"]) > 0)
    assert seen_in_a_table("batch/flaky-0", lambda r: number(r["drops"]) > 0
                           and r["drop_reason"] != "-")
    # The alerts of the faulty pods (pending at least: their `for:` may still be running).
    report = out.rsplit("alerts after", 1)[1]
    got = set(re.findall(r"^\s+(FIRING|PENDING)\s+(\w+)\s+(\w+)/([\w-]+)", report, re.M))
    named = {(name, ns, pod) for _, name, ns, pod in got}
    assert EXPECTED_ALERTS <= named, report
    assert not {a for a in named if a[1] == "shop"}, report   # healthy pods stay quiet

    assert_nothing_left(out, seen)


def assert_nothing_left(out: str, seen: set[tuple[int, str]]) -> None:
    tag = re.search(r"test pods: tag (\w+)", out).group(1)
    exporter_pid = re.search(r"podsnoop \(pid (\d+)\)", out).group(1)
    assert seen, "no demo processes seen"
    alive = {(pid, start) for pid, start in seen if proc_start(pid) == start}
    assert not alive, f"processes left: {alive}"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag not in netns, netns
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert tag not in links, links
    assert not Path(find_cgroup2_mount(), f"podsnoop-test-{tag}").exists(), "cgroups left"
    for name in re.findall(r"^\d+: ([^:@]+)", links, re.M):
        for hook in ("ingress", "egress"):
            filters = subprocess.run(["tc", "filter", "show", "dev", name, hook],
                                     capture_output=True, text=True).stdout
            assert f"@{exporter_pid}" not in filters, (name, filters)


@pytest.mark.timeout(180)
def test_ctrl_c_removes_everything(kernel):
    """Ctrl-C as a terminal sends it: SIGINT to the demo's whole process group."""
    proc = subprocess.Popen([str(ROOT / "dev"), "demo", "--interval", "2"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    first_table = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("podsnoop top  "):
                first_table.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not first_table.wait(1):
            assert proc.poll() is None, "".join(lines)
        seen = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    out = "".join(lines)
    assert code == 0, out
    assert "Traceback" not in out, out
    assert "demo stopped" in out, out
    assert_nothing_left(out, seen)

"""Shared helpers for podsnoop's hand-run benchmarks (bench/*.py).

- machine(): what RESULTS.md records about the machine a figure came from;
- write_section(): append or replace one benchmark's section of bench/RESULTS.md;
- summary(), pct(): median and spread of repeated measurements;
- ProcStat: CPU seconds (utime+stime) and VmRSS / VmHWM of a process, from /proc;
- BatchPodFactory: exporter.testpods.PodFactory plus create_many(), which makes hundreds
  of test pods in seconds (one `ip -batch` for the host side, setns() + netlink for the
  pod side, one process per pod) and a batch close();
- poke(): a little traffic from the host to every pod, in several protocols;
- graceful(): SIGTERM/SIGHUP end a benchmark like Ctrl-C does, so `finally` cleans up.

Nothing here touches any address but the test pods' own.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import re
import secrets
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The podsnoop tree under test: the repository itself, or a frozen copy of a commit made by
# `python bench/common.py snapshot` (PODSNOOP_BENCH_TREE=<dir>), so that a benchmark measures
# one known version even while the working tree changes. The exporter child processes get
# the same tree through PYTHONPATH (it comes before the venv's editable install).
ROOT = Path(os.environ.get("PODSNOOP_BENCH_TREE") or REPO).resolve()
sys.path.insert(0, str(ROOT))
if ROOT != REPO:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    # `python -m exporter` puts its working directory first on sys.path: run from the tree.
    os.chdir(ROOT)

from exporter.testpods import Container, PodFactory, TestPod, _rmdir, sh  # noqa: E402

RESULTS = HERE / "RESULTS.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLONE_NEWNET = 0x40000000


# --------------------------------------------------------------------------- reporting

def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"nproc": str(os.cpu_count()), "kernel": os.uname().release, "cpu": cpu,
            "mem": f"{mem_kb / 1024 / 1024:.1f} GiB",
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}


def command_line() -> str:
    env = f"PODSNOOP_BENCH_TREE={ROOT} " if ROOT != REPO else ""
    return env + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, REPO)
                                                   if sys.executable.startswith(str(REPO))
                                                   else sys.executable, *sys.argv])


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                          text=True).stdout.rstrip("\n")


def exporter_source() -> str:
    """Where a child `python -m exporter` started by a benchmark imports podsnoop from."""
    return subprocess.run([sys.executable, "-c", "import exporter; print(exporter.__file__)"],
                          capture_output=True, text=True).stdout.strip()


def code_state() -> str:
    """Which podsnoop code a figure is for (checked: where the exporter imports from)."""
    src = exporter_source()
    if not src.startswith(str(ROOT) + os.sep):
        return f"UNCLEAR: exporter processes import {src or 'nothing'}, not the tree {ROOT}"
    commit_file = ROOT / ".bench-commit"
    if ROOT != REPO and commit_file.exists():
        return f"snapshot of commit {commit_file.read_text().strip()[:12]} ({ROOT})"
    head = _git("rev-parse", "--short=12", "HEAD")
    dirty = [ln[3:] for ln in _git("status", "--porcelain", "--", "exporter", "bpf").splitlines()]
    return f"working tree at commit {head}" + (
        f" with uncommitted changes in {', '.join(dirty)}" if dirty else " (clean)")


def snapshot(rev: str = "HEAD") -> Path:
    """Extract `rev` of the repository into bench/out/tree-<sha> (git-ignored; read-only use
    of git; not /tmp, which other test runs on a shared machine may clean)."""
    sha = _git("rev-parse", rev)
    dest = HERE / "out" / f"tree-{sha[:12]}"
    if not (dest / ".bench-commit").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "exporter", "bpf"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        if (dest / "bpf" / "Makefile").exists():  # precompiled CO-RE objects: build them
            subprocess.run(["make", "-s", "-C", str(dest / "bpf"), f"REPO={dest}"], check=True)
        (dest / ".bench-commit").write_text(sha + "\n")
    return dest


def header(title: str) -> str:
    m = machine()
    return (f"## {title}\n\n"
            f"- command: `{command_line()}`\n"
            f"- date: {m['date']}\n"
            f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem']} RAM, kernel {m['kernel']}\n"
            f"- code: {code_state()}\n"
            f"- load average when written (1/5/15 min): "
            f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} on {m['nproc']} CPUs "
            f"(other sessions' test suites share this machine)\n")


def write_section(key: str, body: str, path: Path = RESULTS) -> None:
    """Replace the section `key` of RESULTS.md (or append it); other sections stay."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else (
        "# podsnoop benchmark results\n\nWritten by the scripts in bench/ (see bench/README.md);"
        " each section is replaced by the next run of its benchmark with --write.\n\n")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table that also reads well in a terminal."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa
    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def summary(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def pct(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.1f}%" if base else "n/a"


# ------------------------------------------------------------------------------- /proc

class ProcStat:
    def __init__(self, pid: int):
        self.pid = pid

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads), in seconds."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def rss_mb(self) -> float:
        return self.status_kb("VmRSS") / 1024

    def hwm_mb(self) -> float:
        return self.status_kb("VmHWM") / 1024


# ------------------------------------------------------------------------ signals

def graceful() -> None:
    """Turn SIGTERM / SIGHUP into KeyboardInterrupt so every `finally` runs."""
    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


@contextlib.contextmanager
def no_interrupts():
    """Hold SIGINT/SIGTERM/SIGHUP while a clean-up runs, deliver them afterwards."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ------------------------------------------------------------------ many test pods fast

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(name: str):
    """Run the block with this thread in /run/netns/<name> (sockets made inside stay there)."""
    host = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if _libc.setns(host, CLONE_NEWNET) != 0:  # cannot go on in the wrong netns
                print("setns back to the host network namespace failed", file=sys.stderr)
                os._exit(70)
    finally:
        os.close(target)
        os.close(host)


def _ip_batch(lines: list[str]) -> None:
    if lines:
        r = subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n",
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ip -batch failed: {r.stderr.strip()[:500]}")


class BatchPodFactory(PodFactory):
    """PodFactory with create_many(): same pod shape (netns, veth, /30, kubepods cgroups with
    containerd names, one long-lived process in the pod's netns and first container's
    cgroup, IPv6 off), made in bulk. Pods are TestPod objects in self.pods, so
    TestPod.run()/exec() and PodFactory.delete() work on them as usual."""

    def create_many(self, n: int, qos: str = "burstable") -> list[TestPod]:
        from pyroute2 import IPRoute

        new: list[TestPod] = []
        for block in self._free_blocks(n):
            self._count += 1
            k = self._count
            uid = str(uuid.uuid4())
            slice_uid = uid.replace("-", "_")
            pod_cg = (self.kubepods / f"kubepods-{qos}.slice" /
                      f"kubepods-{qos}-pod{slice_uid}.slice")
            cid = secrets.token_hex(32)
            conts = {"app": Container("app", cid, pod_cg / f"cri-containerd-{cid}.scope")}
            pod = TestPod(f"pod-{self.tag}-{k}", uid, f"{self.tag}-{k}", f"{self.tag}h{k}",
                          str(block[1]), str(block[2]), pod_cg, conts)
            self.pods.append(pod)  # before anything exists, so close() sees partial pods
            new.append(pod)
        for pod in new:
            pod.first_container.cgroup.mkdir(parents=True, exist_ok=True)
        # Host side: namespaces and veth pairs, in one ip process.
        _ip_batch([line for pod in new for line in (
            f"netns add {pod.netns}",
            f"link add {pod.host_if} type veth peer name eth0 netns {pod.netns}")])
        for pod in new:
            Path(f"/proc/sys/net/ipv6/conf/{pod.host_if}/disable_ipv6").write_text("1")
        _ip_batch([line for pod in new for line in (
            f"addr add {pod.host_ip}/30 dev {pod.host_if}", f"link set {pod.host_if} up")])
        # Pod side: enter each netns (this thread only) and configure it over netlink.
        for pod in new:
            with in_netns(pod.netns):
                for dev in ("eth0", "lo", "default"):
                    Path(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").write_text("1")
                with IPRoute() as ipr:
                    eth0 = ipr.link_lookup(ifname="eth0")[0]
                    lo = ipr.link_lookup(ifname="lo")[0]
                    ipr.addr("add", index=eth0, address=pod.pod_ip, prefixlen=30)
                    ipr.link("set", index=eth0, state="up")
                    ipr.link("set", index=lo, state="up")
                    ipr.route("add", dst="0.0.0.0/0", gateway=pod.host_ip)
        # The pod's long-lived process (the pause container's role), one exec each.
        for pod in new:
            proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{pod.netns}", "--",
                                     "sleep", "infinity"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pod.procs.append(proc)
            Path(pod.first_container.cgroup, "cgroup.procs").write_text(str(proc.pid))
        return new

    def close(self) -> None:
        """Remove every pod: processes, links and namespaces in bulk, then the cgroups."""
        with no_interrupts():
            pods = list(self.pods)
            for pod in pods:
                for proc in pod.procs:
                    if proc.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
            for pod in pods:
                for c in pod.containers.values():  # anything pod.run() started, too
                    kill = c.cgroup / "cgroup.kill"
                    with contextlib.suppress(OSError):
                        kill.write_text("1")
            for pod in pods:
                for proc in pod.procs:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10)
            links = {ln.split(": ")[1].split("@")[0]
                     for ln in sh("ip -o link show", check=False).stdout.splitlines()
                     if ": " in ln}
            netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
            lines = [f"link del {p.host_if}" for p in pods if p.host_if in links]
            lines += [f"netns del {p.netns}" for p in pods if p.netns in netns]
            if lines:
                subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                               capture_output=True, text=True)
            for pod in pods:
                for c in pod.containers.values():
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline:
                        try:
                            if not (c.cgroup / "cgroup.procs").read_text().strip():
                                break
                        except OSError:
                            break
                        time.sleep(0.02)
                    _rmdir(c.cgroup)
                _rmdir(pod.cgroup)
                self.pods.remove(pod)
            super().close()  # whatever is left (pods made by create()), and the cgroup root


# ------------------------------------------------------------------------ exporter flags

FEATURE_FLAGS = ("--syscalls", "--exec", "--tcp", "--drops", "--container-network")


def network_only_flags() -> list[str]:
    """Flags that turn off every collector but the network one, for the tree under test
    (only the flags its --help knows: the set grows as collectors are added)."""
    text = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True,
                          text=True, cwd=str(ROOT)).stdout
    known = set(re.findall(r"^\s+(--[a-z-]+)", text, re.M))
    return [arg for flag in FEATURE_FLAGS if flag in known for arg in (flag, "off")]


# --------------------------------------------------------------------------- traffic

def _icmp_echo(ident: int, seq: int, payload: bytes = b"podsnoop-bench") -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    data = header + payload
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return struct.pack("!BBHHH", 8, 0, ~s & 0xFFFF, ident, seq) + payload


def poke(pods: list[TestPod], pings: int = 3) -> None:
    """From the host to each test pod's own address only: `pings` ICMP echoes (answered:
    icmp both ways), one UDP datagram to a closed port (answered by ICMP port unreachable)
    and one TCP SYN to a closed port (answered by RST). ARP (protocol "other") comes with
    it. Every pod ends up with counters in tcp, udp, icmp and other."""
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcps = []
    try:
        for pod in pods:  # first packet of each pod also resolves its neighbour
            udp.sendto(b"podsnoop-bench", (pod.pod_ip, 9))
        time.sleep(0.2)
        for seq in range(pings):
            for pod in pods:
                icmp.sendto(_icmp_echo(os.getpid() & 0xFFFF, seq), (pod.pod_ip, 0))
        for pod in pods:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setblocking(False)
            with contextlib.suppress(BlockingIOError, OSError):
                t.connect((pod.pod_ip, 9))
            tcps.append(t)
        time.sleep(0.5)
    finally:
        for t in tcps:
            t.close()
        icmp.close()
        udp.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["snapshot"]:
        print(snapshot(*sys.argv[2:3]))
    else:
        print("usage: python bench/common.py snapshot [REV]   (prints the directory to pass as "
              "PODSNOOP_BENCH_TREE)", file=sys.stderr)
        sys.exit(2)


def ready_now(url: str) -> bool:
    """Whether a podsnoop at `url` answers /readyz with 200 right now."""
    import urllib.request
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def attachments_left(host_if: str) -> list[str]:
    """podsnoop's filters or tcx links still on an interface (after an exporter stopped)."""
    from exporter import tcx
    out = [ln for hook in ("ingress", "egress")
           for ln in subprocess.run(["tc", "filter", "show", "dev", host_if, hook],
                                    capture_output=True, text=True).stdout.splitlines()
           if "podsnoop" in ln]
    index = int(Path(f"/sys/class/net/{host_if}/ifindex").read_text())
    out += [f"tcx {hook} {name}" for hook in ("ingress", "egress")
            for name in map(tcx.prog_name, tcx.chain(index, hook)) if name.startswith("podsnoop")]
    return out


def wait_ready_since(proc, t0: float, timeout: float) -> float:
    """Poll an ExporterProcess started at monotonic time t0 until /readyz answers 200;
    returns the seconds from t0 (a failed start or the timeout raises, with its log)."""
    while not ready_now(proc.url):
        if proc.proc.poll() is not None:
            raise RuntimeError(f"exporter exited {proc.proc.returncode}:\n{proc.output()}")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"not ready after {timeout} s:\n{proc.output()[-2000:]}")
        time.sleep(0.02)
    return time.monotonic() - t0


def floor_ns_per_run(function: str, prog_type: str, attach, load) -> float:
    """ns per run of the empty program `function` of bpf/testing/floor.c (bcc's program
    type `prog_type`: "SCHED_CLS", "CGROUP_SKB") while load() runs; attach(prog_fd) returns
    the link fds, closed afterwards. Needs the kernel's run-time statistics on
    (bpfstats.RunTimeStats)."""
    from exporter import bpfload
    from exporter.bpfstats import run_stats
    bpf = bpfload.compile_program("testing/floor", [])
    fd = bpf.load_func(function.encode(), getattr(bpf, prog_type)).fd
    links: list[int] = []
    try:
        links = attach(fd)
        ns0, n0 = run_stats(fd)
        load()
        ns1, n1 = run_stats(fd)
    finally:
        for link in links:
            os.close(link)
        bpf.cleanup()
    return (ns1 - ns0) / max(n1 - n0, 1)


def exported_ns_per_run(m0, m1, program: str) -> float:
    """ns per run of one of podsnoop's programs between two of its scrapes (with
    --bpf-stats on: podsnoop_bpf_program_run_seconds_total / _runs_total)."""
    from exporter import names
    runs, secs = names.BPF_PROGRAM_RUNS + "_total", names.BPF_PROGRAM_RUN_SECONDS + "_total"
    n = m1.value(runs, program=program) - m0.value(runs, program=program)
    if n <= 0:
        raise RuntimeError(f"{program} did not run: is its collector on?")
    return (m1.value(secs, program=program) - m0.value(secs, program=program)) * 1e9 / n

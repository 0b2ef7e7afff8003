"""The demo: podsnoop on this node with test pods that exercise every signal.

    ./dev demo [--duration S] [--interval S] [--alerts-after S]
    (or, after ./dev setup: .venv/bin/python -m demo ...)

Four test pods (netns + veth + kubepods cgroup + real processes, exporter/testpods.py),
named by the local test Kubernetes API (exporter/testapiserver.py):

  shop/web-0        web: a steady TCP upload and a successful connect every 2 s;
                    sidecar: ping (ICMP); both steady syscalls
  shop/cache-0      cache: UDP echo, ping over IPv6 (ICMPv6), steady syscalls
  batch/cruncher-0  crunch: syscall-heavy (20,000 getsid/s); jobs: 5 execs/s;
                    sleeper: only 1.2 s sleeps (slow syscalls)
  batch/flaky-0     app: error-heavy (90 % of its syscalls fail), a refused connect every
                    0.5 s, a TCP upload through 20 % induced loss (retransmits; the lost
                    segments are TC_INGRESS drops), UDP to a closed host port (transmit
                    NO_SOCKET drops); the host also sends it UDP to a closed port
                    (receive NO_SOCKET drops)

The loss is made by bpf/testing/impair.c, a TC filter in front of podsnoop's on flaky-0's
host veth (this kernel has no netem). The exporter serves 127.0.0.1:9435 when that port is
free (so a plain `podsnoop top` in another terminal finds it), else an ephemeral port; a
real Prometheus (Debian's) scrapes it every 2 s with the shipped alert rules
(deploy/prometheus-rules.yaml), their `for:` durations shortened to DEMO_FOR for the demo
only (the shipped 10-15 minutes would not fire within a demo). The terminal shows
`podsnoop top`; under it, the alerts: from --alerts-after seconds on (default 60), which
fire and which are pending. Ctrl-C (or --duration, or SIGTERM) stops it and removes
everything: pods, veths, netns, cgroups, TC filters, exporter, Prometheus, processes.
Without a terminal (e.g. in the tests) top prints a plain table every interval.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from demo.workloads import ACCEPT_AND_DRAIN, SYSCALL_LOOP, TCP_SENDER

ROOT = Path(__file__).resolve().parent.parent
NODE = "demo-node"
DEMO_FOR = "10s"            # replaces every alert's `for:` in the demo's copy of the rules
SCRAPE_INTERVAL = "2s"
DEFAULT_PORT = 9435
LOSS_PCT = 20
IMPAIR_PRIO, IMPAIR_HANDLE = 1, 0x1A1   # in front of podsnoop's filter (priority 50000)

# --------------------------------------------------------------------------- workloads
# Each runs as `python3 -c SCRIPT ARGS...` in a container of a pod.

CONNECTS = """\
import socket, sys, time
host, port, period = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
t = time.monotonic()
while True:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        pass
    t += period
    time.sleep(max(0.0, t - time.monotonic()))
"""
UDP_SENDER = """\
import socket, sys, time
host, port, per_second, echo = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == 'echo'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.01)
t = time.monotonic()
while True:
    try:
        s.sendto(b'u' * 600, (host, port))
        if echo:
            s.recv(2048)
    except OSError:
        pass
    t += 1 / per_second
    time.sleep(max(0.0, t - time.monotonic()))
"""
EXECS = """\
import os, time
t = time.monotonic()
while True:
    pid = os.fork()
    if pid == 0:
        os.execv('/bin/true', ['true'])
    os.waitpid(pid, 0)
    t += 0.2
    time.sleep(max(0.0, t - time.monotonic()))
"""
SLEEPER = "import time\nwhile True:\n    time.sleep(1.2)\n"
# On the host: TCP listeners (accept and drain), a UDP echo, a TCP and a UDP port bound but
# never served (connects are refused, datagrams dropped as NO_SOCKET), and UDP datagrams to
# the drop targets' port 9, where nothing listens (receive NO_SOCKET drops of those pods).
HOST = """\
import socket, sys, threading, time
drop_targets, per_second = sys.argv[2:], int(sys.argv[1])
ok, lossy, closed = socket.socket(), socket.socket(), socket.socket()
echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
closed_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for s in (ok, lossy, closed, echo):
    s.bind(('0.0.0.0', 0))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
    probe.bind(('0.0.0.0', 0))
    free_udp = probe.getsockname()[1]
ok.listen(64)
lossy.listen(64)
print(*(s.getsockname()[1] for s in (ok, lossy, closed, echo)), free_udp, flush=True)
""" + ACCEPT_AND_DRAIN + """\
def serve_echo():
    while True:
        data, peer = echo.recvfrom(65536)
        echo.sendto(data, peer)
for srv in (ok, lossy):
    threading.Thread(target=accept, args=(srv,), daemon=True).start()
threading.Thread(target=serve_echo, daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t = time.monotonic()
while True:
    for ip in drop_targets:
        u.sendto(b'd', (ip, 9))
    t += 1 / per_second
    time.sleep(max(0.0, t - time.monotonic()))
"""

# (namespace, pod, app label, containers, IPv6)
PODS = [
    ("shop", "web-0", "web", ("web", "sidecar"), False),
    ("shop", "cache-0", "cache", ("cache",), True),
    ("batch", "cruncher-0", "cruncher", ("crunch", "jobs", "sleeper"), False),
    ("batch", "flaky-0", "flaky", ("app",), False),
]
# What the demo's faulty pods should make Prometheus alert on (the demo test checks it).
EXPECTED_ALERTS = {
    ("PodsnoopSyscallErrorRatioHigh", "batch", "flaky-0"),
    ("PodsnoopTcpConnectFailuresHigh", "batch", "flaky-0"),
    ("PodsnoopPodTransmitDropsHigh", "batch", "flaky-0"),
    ("PodsnoopPodReceiveDropsHigh", "batch", "flaky-0"),
    ("PodsnoopSyscallLatencyHigh", "batch", "cruncher-0"),
}


def py(script: str, *args) -> list[str]:
    return ["python3", "-c", script, *map(str, args)]


def demo_rules(path: Path) -> None:
    """The shipped rules with every `for:` set to DEMO_FOR."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = DEMO_FOR
    path.write_text(yaml.safe_dump(rules, sort_keys=False))


def demo_port() -> int:
    from exporter.exporterproc import free_port
    with socket.socket() as s:
        # as the exporter binds (SO_REUSEADDR): a previous run's TIME_WAIT does not count
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", DEFAULT_PORT))
            return DEFAULT_PORT
        except OSError:
            return free_port()


class Demo:
    """Everything the demo runs; `with Demo() as d:` starts it, leaving removes it all."""

    def __init__(self, say=print):
        self.say = say
        self.stack = contextlib.ExitStack()
        self.pods: dict[tuple[str, str], object] = {}
        self.helpers: list[subprocess.Popen] = []
        self.exporter = self.prom = self.factory = None
        self.prom_started = 0.0

    def __enter__(self) -> "Demo":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.stack.close()

    def _start(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))   # tests/prometheus_server.py
        from prometheus_server import PrometheusServer
        from exporter.exporterproc import ExporterProcess
        from exporter.testapiserver import KubeApiServer
        from exporter.testpods import PodFactory, sh

        s = self.stack
        api = s.enter_context(KubeApiServer())
        self.factory = factory = s.enter_context(PodFactory(prefix="demo"))
        self.say(f"test pods: tag {factory.tag} (veths {factory.tag}h*, cgroups "
                 f"{factory.cgroup_root})")
        s.callback(self._stop_helpers)
        for ns, name, app, containers, ipv6 in PODS:
            pod = factory.create(containers=containers, name=name, ipv6=ipv6)
            api.add_pod(name, ns, NODE, uid=pod.uid, labels={"app": app},
                        containers={c.name: c.id for c in pod.containers.values()})
            # ping through ICMP datagram sockets: a raw-socket ping makes one receive drop
            # per echo reply (README, Drops), which would make healthy pods look lossy.
            sh(f"ip netns exec {pod.netns} sysctl -qw net.ipv4.ping_group_range='0 2147483647'")
            self.pods[(ns, name)] = pod
        flaky = self.pods[("batch", "flaky-0")]
        # its own session: the terminal's Ctrl-C is for the demo, which kills it in order
        host = subprocess.Popen([sys.executable, "-c", HOST, "20", flaky.pod_ip],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        self.helpers.append(host)
        ports = host.stdout.readline().split()
        if len(ports) != 5:
            raise RuntimeError(f"the demo's host side did not start (exit {host.poll()})")
        ok, lossy, closed, echo, closed_udp = map(int, ports)

        web = self.pods[("shop", "web-0")]
        web.run(py(TCP_SENDER, web.host_ip, ok, 200_000), container="web")
        web.run(py(CONNECTS, web.host_ip, ok, 2.0), container="web")
        web.run(py(SYSCALL_LOOP, 2000, 50), container="web")
        # ping blocks in recvmsg between echoes (0.27-1.07 s by the histogram): the sidecar
        # also does steady work, so those few calls stay under 1 % and its p99 under the
        # alert's 1 s (an idle pinger alone would trip PodsnoopSyscallLatencyHigh).
        web.run(["ping", "-q", "-i", "0.2", "-s", "300", web.host_ip], container="sidecar")
        web.run(py(SYSCALL_LOOP, 1000, 0), container="sidecar")
        cache = self.pods[("shop", "cache-0")]
        cache.run(py(UDP_SENDER, cache.host_ip, echo, 50, "echo"), container="cache")
        cache.run(["ping", "-6", "-q", "-i", "0.2", cache.host_ip6], container="cache")
        cache.run(py(SYSCALL_LOOP, 1000, 0), container="cache")
        cruncher = self.pods[("batch", "cruncher-0")]
        cruncher.run(py(SYSCALL_LOOP, 20000, 0), container="crunch")
        cruncher.run(py(EXECS), container="jobs")
        cruncher.run(py(SLEEPER), container="sleeper")
        flaky.run(py(SYSCALL_LOOP, 500, 4500), container="app")
        flaky.run(py(CONNECTS, flaky.host_ip, closed, 0.5), container="app")
        flaky.run(py(TCP_SENDER, flaky.host_ip, lossy, 50_000), container="app")
        flaky.run(py(UDP_SENDER, flaky.host_ip, closed_udp, 20, "-"), container="app")

        port = demo_port()
        self.exporter = exporter = ExporterProcess(
            "--kube", "auto", "--kubeconfig", str(api.kubeconfig_path), "--node-name", NODE,
            "--pod-labels", "app", "--interfaces", rf"{factory.tag}h\d+",
            "--kubepods-root", str(factory.kubepods),
            # statistics sampled every 10 s (default 120 s): the CPU panels fill at once
            "--bpf-stats-interval", "10")
        exporter.port, exporter.url = port, f"http://127.0.0.1:{port}"
        exporter.args[1] = f"127.0.0.1:{port}"
        s.callback(self._stop_exporter)
        exporter.start(wait_ready=0)
        impair = self._impair_program(lossy)     # compiles while the exporter does
        exporter.wait_ready(120)
        self.say(f"podsnoop (pid {exporter.proc.pid}) serves {exporter.url}/metrics")
        self._impair(impair, flaky)

        rules_dir = Path(tempfile.mkdtemp(prefix="podsnoop-demo-rules-"))
        s.callback(lambda: (Path(rules_dir, "rules.yaml").unlink(missing_ok=True),
                            rules_dir.rmdir()))
        demo_rules(rules_dir / "rules.yaml")
        self.prom = s.enter_context(PrometheusServer(
            [f"127.0.0.1:{port}"], interval=SCRAPE_INTERVAL,
            rule_files=[rules_dir / "rules.yaml"]))
        self.prom_started = time.monotonic()
        self.say(f"Prometheus {self.prom.url} scrapes it every {SCRAPE_INTERVAL} with the "
                 f"shipped alert rules (deploy/prometheus-rules.yaml), every `for:` set to "
                 f"{DEMO_FOR} for the demo")

    def _impair_program(self, port: int):
        from exporter import bpfload
        bpf = bpfload.compile_program("testing/impair", [])
        self.stack.callback(bpf.cleanup)
        cfg = bpf[b"impair_cfg"]
        cfg[cfg.Key(0)] = cfg.Leaf(socket.IPPROTO_TCP, port, 0, LOSS_PCT, 0, 0)
        return bpf

    def _impair(self, bpf, pod) -> None:
        """LOSS_PCT % of the data segments `pod` sends to the lossy port are dropped."""
        from pyroute2 import IPRoute
        from exporter.tc import TC_H_INGRESS
        fn = bpf.load_func(b"impair", bpf.SCHED_CLS)
        idx = pod.host_ifindex()
        with IPRoute() as ipr:
            with contextlib.suppress(Exception):   # podsnoop made it already
                ipr.tc("add", "clsact", idx)
            ipr.tc("add-filter", "bpf", idx, IMPAIR_HANDLE, fd=fn.fd, name="impair",
                   parent=TC_H_INGRESS, classid=1, direct_action=True, prio=IMPAIR_PRIO)

        def remove():
            with IPRoute() as ipr, contextlib.suppress(Exception):   # veth may be gone
                ipr.tc("del-filter", "bpf", idx, IMPAIR_HANDLE, parent=TC_H_INGRESS,
                       prio=IMPAIR_PRIO)
        self.stack.callback(remove)

    def _stop_helpers(self) -> None:
        for p in self.helpers:
            p.kill()
            p.wait()

    def _stop_exporter(self) -> None:
        code = self.exporter.stop()
        if code != 0:
            self.say(f"podsnoop exited with {code}:\n{self.exporter.output()[-2000:]}")

    # ---------------------------------------------------------------------- alerts

    def alerts(self) -> list[tuple[str, str, str, str, str]]:
        """(state, alertname, namespace, pod, container) of every pending or firing
        alert, firing first."""
        r = self.prom.get("/api/v1/alerts")
        out = []
        for a in r.get("data", {}).get("alerts", []):
            lab = a["labels"]
            out.append((a["state"], lab["alertname"], lab.get("namespace", ""),
                        lab.get("pod", ""), lab.get("container", "")))
        return sorted(out, key=lambda a: (a[0] != "firing", a[1:]))


def alert_report(demo: Demo, alerts_after: float, final: bool = False):
    """The footer under top: where things are, and the alerts once alerts_after is over."""
    from rich.text import Text
    since = time.monotonic() - demo.prom_started
    text = Text(f"\nexporter {demo.exporter.url}/metrics   prometheus {demo.prom.url}   "
                f"alert rules: shipped, for: {DEMO_FOR} (demo only)\n")
    if since < alerts_after and not final:
        text.append(f"alerts: shown {alerts_after:.0f} s after Prometheus started "
                    f"(in {alerts_after - since:.0f} s)")
        return text
    try:
        alerts = demo.alerts()
    except OSError as e:
        return text.append(f"alerts: cannot ask Prometheus: {e}")
    text.append(f"alerts after {since:.0f} s ({len(alerts)} pending or firing):", style="bold")
    for state, name, ns, pod, container in alerts:
        where = "/".join(x for x in (ns, pod, container) if x) or "(no pod: host traffic)"
        text.append(f"\n  {state.upper():<8} {name}  {where}",
                    style="bold red" if state == "firing" else "yellow")
    if not alerts:
        text.append("\n  none")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./dev demo", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=0,
                    help="stop after this many seconds of `podsnoop top` (default: Ctrl-C)")
    ap.add_argument("--interval", type=float, default=2.0, help="top's refresh (seconds)")
    ap.add_argument("--alerts-after", type=float, default=60.0,
                    help="seconds after Prometheus starts to show the alerts (default 60)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("./dev demo: error: needs root (test pods, eBPF)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from rich.console import Console
    from exporter import top

    console = Console(highlight=False, soft_wrap=False,
                      width=None if sys.stdout.isatty() else 200)
    say = lambda msg: console.print(msg, markup=False)  # noqa: E731
    code = 0
    demo = Demo(say)
    try:
        demo.__enter__()
        top_args = top.parse_args(["--url", f"{demo.exporter.url}/metrics", "--interval",
                                   str(args.interval), "--sort", "pod"])
        deadline = time.monotonic() + args.duration if args.duration else None
        if not console.is_terminal:
            say("podsnoop top (no terminal: a table every interval)")
        top.run_live(top_args, console, footer=lambda: alert_report(demo, args.alerts_after),
                     deadline=deadline)
        if console.is_terminal:   # top's screen is gone: the alerts once more
            console.print(alert_report(demo, args.alerts_after, final=True))
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            console.print(alert_report(demo, args.alerts_after, final=True))
    except top.ScrapeError as e:
        say(f"./dev demo: error: {e}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not stop the
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # clean-up half way
        say("stopping: Prometheus, exporter, test pods...")
        demo.close()
        say("demo stopped: Prometheus and the exporter stopped, test pods, veths, netns, "
            "cgroups and TC filters removed")
    return code

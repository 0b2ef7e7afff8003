"""Draw what podsnoop's Grafana dashboards show, from a real Prometheus, with matplotlib.

No Grafana renderer can be had here, so this runs the dashboards' own panel queries
(dashboards/generate.py, Grafana variables substituted the way Grafana would) against a
Prometheus and lays the panels out on the dashboard's grid: time series as lines (legend
from the panel's legendFormat), bar gauges as bars, the pie chart as a donut, the latency
heatmap as a heatmap. A panel without data says "No data", as Grafana does.

    python -m dashboards.render --prometheus http://127.0.0.1:9090 [--minutes 15]
    python -m dashboards.render --demo      # test pods + exporter + Prometheus, ~3 minutes

--demo (root, real kernel) starts 3 test pods making traffic, syscalls, execs, TCP
connects (a few refused, a few retransmitted: the demo drops some of their packets with
bpf/testing/impair.c) and drops, publishes them on the local test Kubernetes API, runs the
exporter (with --container-network on) and a real Prometheus scraping it every
second (tests/prometheus_server.py), waits one rate interval (1m: until rate() windows are
full of data) plus --wait seconds (default 90), draws those 90 s, and removes everything
(on Ctrl-C and SIGTERM too). tests/test_prometheus_e2e.py uses the same DemoStack.
Pictures go to docs/ (dashboard-network.png, dashboard-syscalls.png).
Needs matplotlib (not a runtime dependency of the exporter).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # python dashboards/render.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "dashboards"

from dashboards import generate as gen  # noqa: E402
from demo.workloads import ACCEPT_AND_DRAIN, SYSCALL_LOOP, TCP_SENDER  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PICTURES = {"podsnoop-network": "dashboard-network.png",
            "podsnoop-syscalls": "dashboard-syscalls.png",
            "podsnoop-exporter": "dashboard-exporter.png"}

# --------------------------------------------------------------------------- demo workload

NODE = "node-e2e"
# The pods of the demo (and of tests/test_prometheus_e2e.py): namespace, name, app label, and
# per container what it runs. Syscall loops call getsid (always succeeds) and rmdir on a
# missing path (always fails, ENOENT) at a steady rate; report-0's worker fails most of its
# calls, so PodsnoopSyscallErrorRatioHigh goes pending for it (and only it).
PODS = [
    ("shop", "web-0", "web", {"web": ("tcp", (1500, 100)), "sidecar": ("ping", (300, 0))}),
    ("shop", "cache-0", "cache", {"cache": ("udp", (800, 50))}),
    ("batch", "report-0", "report", {"worker": ("ping", (100, 600))}),
]
NAMESPACES = sorted({ns for ns, *_ in PODS})
# Each pod's controller, as (kind, name) in its ownerReferences: the workload panels' groups.
WORKLOADS = {"web-0": ("StatefulSet", "web"), "cache-0": ("StatefulSet", "cache"),
             "report-0": ("Job", "report")}

UDP_SENDER = """\
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.01)
t = time.monotonic()
while True:
    s.sendto(b'u' * 600, (host, port))
    try:
        s.recv(2048)
    except OSError:
        pass
    t += 0.02
    time.sleep(max(0.0, t - time.monotonic()))
"""
# On the host side of a pod: a TCP sink and a UDP echo, both on ephemeral ports.
SINK = """\
import socket, sys, threading
ip = sys.argv[1]
t = socket.socket()
t.bind((ip, 0))
t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((ip, 0))
print(t.getsockname()[1], u.getsockname()[1], flush=True)
def drain(c):
    while c.recv(65536):
        pass
def accept():
    while True:
        c, _ = t.accept()
        threading.Thread(target=drain, args=(c,), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
while True:
    data, peer = u.recvfrom(65536)
    u.sendto(data, peer)
"""
# In every container: exec /bin/true every PROBE_TICK s (the exec counter). With the host
# side's ports (one container per pod): every CONNECT_EVERY ticks a TCP connect to a listener
# and one to the lossy listener, sending 100 bytes (the demo drops LOSS_PCT % of the data
# segments pods send there, so they are retransmitted: retransmits, and TC_INGRESS drops);
# every FAIL_EVERY ticks a connect to a port where nothing listens (refused: a connect
# failure, and the host drops the SYN as NO_SOCKET, a transmit drop of the pod). Few
# packets, so cache-0's UDP echo of 50 packets/s stays within the rate test's tolerance, and
# few failures: the connect failure ratio stays under PodsnoopTcpConnectFailuresHigh's.
# Every DNS_EVERY ticks a DNS query (UDP) to DNS_HOST on the pod's host side, every
# NXDOMAIN_EVERY-th of them for a name it answers NXDOMAIN (the DNS panels).
PROBE_TICK, CONNECT_EVERY, FAIL_EVERY, DNS_EVERY, NXDOMAIN_EVERY = 0.2, 10, 50, 10, 4
EXECS_PER_SECOND = 1 / PROBE_TICK
CONNECTS_PER_SECOND = 2 / (CONNECT_EVERY * PROBE_TICK)        # established
CONNECT_FAILURES_PER_SECOND = 1 / (FAIL_EVERY * PROBE_TICK)
PROBES = f"""\
import os, socket, struct, sys, time
connects = len(sys.argv) == 5
if connects:
    host, ok, lossy, closed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.settimeout(1)

def lookup(n, name):
    labels = b''.join(bytes([len(x)]) + x for x in name.split(b'.')) + b'\\0'
    try:
        dns.sendto(struct.pack('!6H', n & 0xffff, 0x0100, 1, 0, 0, 0) + labels
                   + struct.pack('!2H', 1, 1), (host, 53))
        dns.recv(512)
    except OSError:
        pass

def connect(port, data=b''):
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            if data:
                s.sendall(data)
    except OSError:
        pass

t, n = time.monotonic(), 0
while True:
    pid = os.fork()   # not posix_spawn: glibc's resets every signal, 128 extra syscalls
    if pid == 0:
        os.execv('/bin/true', ['true'])
    os.waitpid(pid, 0)
    if connects and n % {CONNECT_EVERY} == 0:
        connect(ok)
        connect(lossy, b'r' * 100)
    if connects and n % {FAIL_EVERY} == {FAIL_EVERY // 2}:
        connect(closed)
    if connects and n % {DNS_EVERY} == {DNS_EVERY // 2}:
        missing = n // {DNS_EVERY} % {NXDOMAIN_EVERY} == 0
        lookup(n, b'missing.demo' if missing else b'www.demo')
    n += 1
    t += {PROBE_TICK}
    time.sleep(max(0.0, t - time.monotonic()))
"""
# On the host, for every pod: the probes' listeners (accept and drain), a port bound but
# never listening (connects to it are refused) and, every RECEIVE_DROP_PERIOD s, a UDP
# datagram to each pod's port 9, where nothing listens (a receive NO_SOCKET drop of the pod).
RECEIVE_DROP_PERIOD = 2
PROBE_HOST = f"""\
import socket, sys, threading, time
pod_ips = sys.argv[1:]
ok, lossy, closed = socket.socket(), socket.socket(), socket.socket()
for s in (ok, lossy, closed):
    s.bind(('0.0.0.0', 0))
ok.listen(64)
lossy.listen(64)
print(ok.getsockname()[1], lossy.getsockname()[1], closed.getsockname()[1], flush=True)
{ACCEPT_AND_DRAIN}for srv in (ok, lossy):
    threading.Thread(target=accept, args=(srv,), daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t = time.monotonic()
while True:
    for ip in pod_ips:
        u.sendto(b'd', (ip, 9))
    t += {RECEIVE_DROP_PERIOD}
    time.sleep(max(0.0, t - time.monotonic()))
"""
# On the host: a DNS responder on port 53 of each pod's host-side address (not 0.0.0.0, where
# a resolver of the machine may listen): NOERROR, or NXDOMAIN for names with "missing".
DNS_HOST = """\
import socket, sys, threading
def serve(ip):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((ip, 53))
    while True:
        q, peer = u.recvfrom(512)
        if len(q) >= 12:
            rcode = 3 if b'missing' in q else 0
            u.sendto(q[:2] + bytes([0x81, 0x80 | rcode]) + q[4:6] + bytes(6) + q[12:], peer)
for ip in sys.argv[1:]:
    threading.Thread(target=serve, args=(ip,), daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
"""
LOSS_PCT = 50         # of the data segments pods send to PROBE_HOST's lossy listener
IMPAIR_PRIO, IMPAIR_HANDLE = 1, 0x1A1   # in front of podsnoop's TC filter (priority 50000)


class DemoStack:
    """Test API server + test pods making traffic and syscalls + the exporter + a real
    Prometheus scraping it every second with the alert rules loaded. Use with `with`."""

    def __init__(self, prefix: str = "pe", exporter_args: tuple[str, ...] = ()):
        self.prefix = prefix
        self.exporter_args = exporter_args
        self.api = self.factory = self.exporter = self.prom = None
        self.pods: dict[tuple[str, str], object] = {}     # (namespace, pod) -> TestPod
        self.containers: set[tuple[str, str, str]] = set()  # (namespace, pod, container)
        self.sinks: list[subprocess.Popen] = []
        self.exporter_exit: int | None = None
        self.exporter_log = ""
        self.started = 0.0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "DemoStack":
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _start(self) -> None:
        if str(ROOT / "tests") not in sys.path:  # tests/prometheus_server.py
            sys.path.insert(0, str(ROOT / "tests"))
        from prometheus_server import PrometheusServer
        from exporter.exporterproc import ExporterProcess
        from exporter.testapiserver import KubeApiServer
        from exporter.testpods import PodFactory, sh

        s = self._stack
        self.api = s.enter_context(KubeApiServer())
        self.factory = s.enter_context(PodFactory(prefix=self.prefix))
        s.callback(self._kill_sinks)
        for ns, name, app, containers in PODS:
            pod = self.factory.create(containers=tuple(containers), name=name)
            self.api.add_pod(name, ns, NODE, uid=pod.uid, labels={"app": app},
                             containers={c.name: c.id for c in pod.containers.values()},
                             owner=WORKLOADS[name])
            self.pods[(ns, name)] = pod
            # ping through an ICMP datagram socket (container runtimes commonly allow these
            # for pods with this sysctl): with a raw socket, ping makes one receive drop per
            # echo reply (README, Drops), 5/s that would swamp the probes' few deliberate
            # drops and make PodsnoopPodReceiveDropsHigh go pending.
            sh(f"ip netns exec {pod.netns} sysctl -qw net.ipv4.ping_group_range='0 2147483647'")
            for cname, (traffic, (ok, bad)) in containers.items():
                self.containers.add((ns, name, cname))
                pod.run(["python3", "-c", SYSCALL_LOOP, str(ok), str(bad)], container=cname)
                pod.run(self._traffic(pod, traffic), container=cname)
        ports = self._probe_host()
        self._dns_host()
        for pod in self.pods.values():
            for i, cname in enumerate(pod.containers):
                pod.run(["python3", "-c", PROBES, *((pod.host_ip, *ports) if i == 0 else ())],
                        container=cname)
        self.exporter = ExporterProcess(
            "--kube", "auto", "--kubeconfig", str(self.api.kubeconfig_path),
            "--node-name", NODE, "--pod-labels", "app",
            "--interfaces", rf"{self.factory.tag}h\d+",
            # only this stack's pods (not other test runs' kubepods trees on this machine)
            "--kubepods-root", str(self.factory.kubepods),
            "--container-network", "on",
            # the kernel's run-time statistics sampled every 10 s, not every 120 s: this
            # stack lives minutes, and the CPU panels divide by the sampled on-time
            "--bpf-stats-interval", "10", *self.exporter_args)
        s.callback(self._stop_exporter)
        self.exporter.start(wait_ready=0)
        impair = self._impair_program(int(ports[1]))   # compiles while the exporter does
        self.exporter.wait_ready(60)
        self._impair(impair)
        self.prom = s.enter_context(PrometheusServer([f"127.0.0.1:{self.exporter.port}"]))
        self.started = time.time()

    def _probe_host(self) -> list[str]:
        """Start PROBE_HOST; its ports: listening, lossy listening, refusing."""
        host = subprocess.Popen([sys.executable, "-c", PROBE_HOST,
                                 *(p.pod_ip for p in self.pods.values())],
                                stdout=subprocess.PIPE, text=True)
        self.sinks.append(host)
        ports = host.stdout.readline().split()
        if len(ports) != 3:
            raise RuntimeError(f"the host side of the probes did not start (exit {host.poll()})")
        return ports

    def _dns_host(self) -> None:
        """Start DNS_HOST on every pod's host-side address."""
        dns = subprocess.Popen([sys.executable, "-c", DNS_HOST,
                                *(p.host_ip for p in self.pods.values())],
                               stdout=subprocess.PIPE, text=True)
        self.sinks.append(dns)
        if dns.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the host-side DNS responder did not start (exit {dns.poll()})")

    def _impair_program(self, port: int):
        """bpf/testing/impair.c (this kernel has no netem), set to drop LOSS_PCT % of the data
        segments pods send to `port`."""
        from exporter import bpfload

        bpf = bpfload.compile_program("testing/impair", [])
        self._stack.callback(bpf.cleanup)
        cfg = bpf[b"impair_cfg"]
        cfg[cfg.Key(0)] = cfg.Leaf(socket.IPPROTO_TCP, port, 0, LOSS_PCT, 0, 0)
        return bpf

    def _impair(self, bpf) -> None:
        """The impairment on every pod's host veth (packets leaving the pod), in front of
        podsnoop's filter."""
        from pyroute2 import IPRoute
        from exporter.tc import TC_H_INGRESS

        fn = bpf.load_func(b"impair", bpf.SCHED_CLS)
        with IPRoute() as ipr:
            for pod in self.pods.values():
                idx = pod.host_ifindex()
                with contextlib.suppress(Exception):   # podsnoop made it already
                    ipr.tc("add", "clsact", idx)
                ipr.tc("add-filter", "bpf", idx, IMPAIR_HANDLE, fd=fn.fd, name="impair",
                       parent=TC_H_INGRESS, classid=1, direct_action=True, prio=IMPAIR_PRIO)
        self._stack.callback(self._unimpair, [p.host_ifindex() for p in self.pods.values()])

    @staticmethod
    def _unimpair(indexes: list[int]) -> None:
        from pyroute2 import IPRoute
        from exporter.tc import TC_H_INGRESS

        with IPRoute() as ipr:
            for idx in indexes:
                with contextlib.suppress(Exception):   # the veth may be gone already
                    ipr.tc("del-filter", "bpf", idx, IMPAIR_HANDLE, parent=TC_H_INGRESS,
                           prio=IMPAIR_PRIO)

    def _traffic(self, pod, kind: str) -> list[str]:
        if kind == "ping":
            return ["ping", "-q", "-i", "0.2", "-s", "300", pod.host_ip]
        sink = subprocess.Popen([sys.executable, "-c", SINK, pod.host_ip],
                                stdout=subprocess.PIPE, text=True)
        self.sinks.append(sink)
        ports = sink.stdout.readline().split()
        if len(ports) != 2:
            raise RuntimeError(f"the host-side sink on {pod.host_ip} did not start "
                               f"(exit {sink.poll()})")
        tcp_port, udp_port = ports
        if kind == "tcp":
            return ["python3", "-c", TCP_SENDER, pod.host_ip, tcp_port, "200000"]
        return ["python3", "-c", UDP_SENDER, pod.host_ip, udp_port]

    def _kill_sinks(self) -> None:
        for sink in self.sinks:
            sink.kill()
            sink.wait()

    def _stop_exporter(self) -> None:
        try:
            self.exporter_exit = self.exporter.stop()
        finally:
            if self.exporter.log_path:  # keep the log's text, not the temp file
                self.exporter_log = self.exporter.output()
                with contextlib.suppress(OSError):
                    os.unlink(self.exporter.log_path)

    @property
    def instance(self) -> str:
        """The exporter's `instance` label in Prometheus."""
        return f"127.0.0.1:{self.exporter.port}"

    def stalled(self, window: str = "15s") -> list[str]:
        """Pods whose network traffic or TCP connects, or containers whose syscalls or
        execs Prometheus saw stop over the last `window` (empty: all flowing). On a shared
        machine, worth checking before a picture is trusted."""
        ns = "|".join(NAMESPACES)
        problems = []
        for metric, keys, want in (
                ("podsnoop_network_receive_bytes_total", ("namespace", "pod"), set(self.pods)),
                ("podsnoop_network_transmit_bytes_total", ("namespace", "pod"), set(self.pods)),
                ("podsnoop_syscalls_total", ("namespace", "pod", "container"),
                 self.containers),
                ("podsnoop_exec_total", ("namespace", "pod", "container"), self.containers),
                ("podsnoop_tcp_connect_duration_seconds_count", ("namespace", "pod"),
                 set(self.pods))):
            expr = (f'sum by ({", ".join(keys)}) (rate({metric}{{namespace=~"{ns}"}}'
                    f'[{window}])) > 0')
            got = {tuple(r["metric"].get(k, "") for k in keys) for r in self.prom.result(expr)}
            problems += [f"{'/'.join(w)}: no {metric} increase in the last {window}"
                         for w in sorted(want - got)]
        return problems

    def wait_for_data(self, min_scrapes: int = 15, timeout: float = 90) -> None:
        """Until Prometheus has scraped the exporter `min_scrapes` times in the last minute
        and every demo pod and container has a non-zero rate of everything the workload
        makes: network and container network traffic, syscalls, execs, TCP connects,
        connect failures, retransmits, and drops in both directions."""
        prom = self.prom
        prom.wait_for(lambda: (prom.value(f'count_over_time(up{{job="podsnoop"}}[1m])')
                               or 0) >= min_scrapes and prom.value('min(up{job="podsnoop"})') == 1,
                      timeout=timeout, what=f"{min_scrapes} successful scrapes")
        ns = "|".join(NAMESPACES)

        def have(expr: str, keys: tuple[str, ...], want: set) -> bool:
            got = {tuple(r["metric"].get(k, "") for k in keys) for r in prom.result(expr)}
            return want <= got

        pods = set(self.pods)
        for metric in ("podsnoop_network_receive_bytes_total",
                       "podsnoop_network_transmit_bytes_total"):
            prom.wait_for(lambda m=metric: have(
                f'sum by (namespace, pod) (rate({m}{{namespace=~"{ns}"}}[1m])) > 0',
                ("namespace", "pod"), pods), timeout=timeout, what=f"{metric} of every pod")
        for metric in ("podsnoop_syscalls_total", "podsnoop_syscall_duration_seconds_count",
                       "podsnoop_exec_total", "podsnoop_container_network_receive_bytes_total",
                       "podsnoop_container_network_transmit_bytes_total"):
            prom.wait_for(lambda m=metric: have(
                f'sum by (namespace, pod, container) (rate({m}{{namespace=~"{ns}"}}[1m])) > 0',
                ("namespace", "pod", "container"), self.containers),
                timeout=timeout, what=f"{metric} of every container")
        for metric in ("podsnoop_tcp_connect_duration_seconds_count",
                       "podsnoop_tcp_connect_failures_total", "podsnoop_tcp_retransmits_total",
                       "podsnoop_dns_request_duration_seconds_count"):
            prom.wait_for(lambda m=metric: have(
                f'sum by (namespace, pod) (rate({m}{{namespace=~"{ns}"}}[1m])) > 0',
                ("namespace", "pod"), pods), timeout=timeout, what=f"{metric} of every pod")
        prom.wait_for(lambda: have(
            f'sum by (namespace, pod, direction) (rate(podsnoop_network_drops_total'
            f'{{namespace=~"{ns}"}}[1m])) > 0', ("namespace", "pod", "direction"),
            {(*p, d) for p in pods for d in ("receive", "transmit")}),
            timeout=timeout, what="podsnoop_network_drops_total of every pod, both directions")


# --------------------------------------------------------------------------- querying

def _get(url: str, path: str, params: dict) -> dict:
    full = f"{url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(full, timeout=30) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{params.get('query')}: {body.get('error')}")
    return body["data"]


def _legend(fmt: str, metric: dict) -> str:
    if not fmt or fmt == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()))
        return "{" + inner + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


class Panel:
    def __init__(self, panel: dict):
        self.panel = panel
        self.type = panel["type"]
        self.title = panel["title"]
        self.unit = (panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
                     or panel.get("options", {}).get("yAxis", {}).get("unit") or "short")
        self.grid = panel["gridPos"]
        self.series: list[tuple[str, list[float], list[float]]] = []   # legend, times, values
        self.error = ""


def query_dashboard(url: str, dash: dict, start: float, end: float, step: float,
                    values: dict[str, str]) -> list[Panel]:
    """Every panel of `dash` with the data its queries return over [start, end]."""
    vals = {"__range": f"{int(end - start)}s", "__range_s": str(int(end - start)),
            **values}
    out = []
    for p in dash["panels"]:
        for raw in [p, *p.get("panels", [])]:
            panel = Panel(raw)
            out.append(panel)
            if raw["type"] == "row":
                continue
            for t in raw.get("targets", []):
                expr = gen.substitute(t["expr"], vals)
                try:
                    if t.get("instant"):
                        data = _get(url, "/api/v1/query", {"query": expr, "time": end})
                        for s in data["result"]:
                            panel.series.append((_legend(t.get("legendFormat"), s["metric"]),
                                                 [float(s["value"][0])],
                                                 [float(s["value"][1])]))
                    else:
                        data = _get(url, "/api/v1/query_range",
                                    {"query": expr, "start": start, "end": end, "step": step})
                        for s in data["result"]:
                            panel.series.append((_legend(t.get("legendFormat"), s["metric"]),
                                                 [float(v[0]) for v in s["values"]],
                                                 [float(v[1]) for v in s["values"]]))
                except RuntimeError as e:
                    panel.error = str(e)
    return out


# --------------------------------------------------------------------------- drawing

_SI = [(1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")]
_SMALL = [(1, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")]


def fmt_value(v: float, unit: str) -> str:
    if v != v:
        return "NaN"
    if unit == "percentunit":
        return f"{v * 100:.3g}%"
    if unit == "s":
        if v == 0:
            return "0"
        for scale, suffix in _SMALL:
            if abs(v) >= scale:
                return f"{v / scale:.3g} {suffix}"
        return f"{v / 1e-9:.3g} ns"
    suffix = {"Bps": "B/s", "bytes": "B", "pps": "p/s", "ops": "ops/s"}.get(unit, "")
    for scale, prefix in _SI:
        if abs(v) >= scale:
            return f"{v / scale:.3g} {prefix}{suffix}".rstrip()
    return f"{v:.3g} {suffix}".rstrip()


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v) and not math.isinf(v)]


def draw(panels: list[Panel], title: str, path: Path, subtitle: str = "",
         missing: set[str] = frozenset()) -> Path:
    """Lay the panels out on Grafana's 24-column grid (inches computed from gridPos) and
    write a PNG. `missing`: podsnoop metrics Prometheus has no series of (named on empty
    panels)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    width, row_h, margin, head = 22.0, 0.42, 0.25, 0.9
    col_w = (width - 2 * margin) / 24
    rows = max(p.grid["y"] + p.grid["h"] for p in panels)
    height = head + rows * row_h + margin
    fig = plt.figure(figsize=(width, height), dpi=90)
    fig.patch.set_facecolor("#f4f5f8")

    def rect(left: float, top: float, w: float, h: float) -> list[float]:
        """Inches from the figure's top-left -> figure fraction [l, b, w, h]."""
        return [left / width, 1 - (top + h) / height, w / width, h / height]

    fig.text(margin / width, 1 - 0.45 / height, title, fontsize=18, fontweight="bold",
             va="center")
    if subtitle:
        fig.text(1 - margin / width, 1 - 0.45 / height, subtitle, ha="right", va="center",
                 fontsize=9, color="#555", parse_math=False)
    for p in panels:
        g = p.grid
        left, top = margin + g["x"] * col_w, head + g["y"] * row_h
        w, h = g["w"] * col_w, g["h"] * row_h
        if p.type == "row":
            fig.text(left / width, 1 - (top + h * 0.6) / height, p.title, fontsize=14,
                     fontweight="bold", color="#333", va="center")
            continue
        pad = 0.06
        box = fig.add_axes(rect(left + pad, top + pad, w - 2 * pad, h - 2 * pad))
        box.set_axis_off()
        box.add_patch(FancyBboxPatch((0, 0), 1, 1, boxstyle="round,pad=0,rounding_size=0.01",
                                     transform=box.transAxes, facecolor="white",
                                     edgecolor="#d0d3da", linewidth=1))
        box.text(0.012, 1 - 0.2 / (h - 2 * pad), p.title, transform=box.transAxes,
                 fontsize=11, fontweight="bold", va="center")
        inner_left, inner_top = left + pad, top + pad + 0.4
        inner_w, inner_h = w - 2 * pad, h - 2 * pad - 0.4
        series = [(lg, t, v) for lg, t, v in p.series if _finite(v)]
        if not series:
            box.text(0.5, 0.45, _no_data(p, missing), transform=box.transAxes, ha="center",
                     va="center", fontsize=11, color="#888")
            continue
        if p.type == "heatmap":
            ax = fig.add_axes(rect(inner_left + 0.85, inner_top, inner_w - 1.75, inner_h - 0.35))
            cax = fig.add_axes(rect(inner_left + inner_w - 0.75, inner_top, 0.12, inner_h - 0.35))
            _heatmap(ax, cax, series, p.unit)
        elif p.type in ("bargauge", "stat", "table") or (p.type == "piechart"
                                                         and len(series) < 2):
            ax = fig.add_axes(rect(inner_left + 0.15, inner_top, inner_w - 0.4, inner_h - 0.35))
            _bars(ax, series, p.unit)
        elif p.type == "piechart":
            ax = fig.add_axes(rect(inner_left + 0.1, inner_top, inner_h, inner_h - 0.1))
            lax = fig.add_axes(rect(inner_left + inner_h + 0.2, inner_top,
                                    inner_w - inner_h - 0.3, inner_h - 0.1))
            _pie(ax, lax, series, p.unit)
        else:
            ncol = 1 if len(series) <= 4 else 2 if len(series) <= 10 else 3
            legend_h = 0.16 * math.ceil(len(series) / ncol) + 0.1
            ax = fig.add_axes(rect(inner_left + 0.85, inner_top,
                                   inner_w - 1.0, inner_h - legend_h - 0.35))
            lax = fig.add_axes(rect(inner_left + 0.1, inner_top + inner_h - legend_h,
                                    inner_w - 0.2, legend_h))
            _lines(ax, lax, series, p.unit, ncol)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor=fig.get_facecolor())
    plt.close(fig)
    return path


def _no_data(p: Panel, missing: set[str]) -> str:
    if p.error:
        return "query error:\n" + p.error[:160]
    absent = sorted({m for t in p.panel.get("targets", [])
                     for m in re.findall(r"\bpodsnoop_\w+", t.get("expr", ""))} & missing)
    return "No data" + (f"\n({', '.join(absent)}: no such series)" if absent else "")


def _style(ax) -> None:
    ax.tick_params(labelsize=8, colors="#444")
    for side, spine in ax.spines.items():
        spine.set_visible(side in ("left", "bottom"))
        spine.set_color("#bbb")
    ax.grid(True, color="#eee", linewidth=0.8)
    ax.set_axisbelow(True)


def _lines(ax, lax, series, unit: str, ncol: int) -> None:
    import matplotlib.dates as mdates
    from datetime import datetime
    from matplotlib.ticker import FuncFormatter

    def mean(v: list[float]) -> float:
        f = _finite(v)
        return sum(f) / len(f)

    series = sorted(series, key=lambda s: -mean(s[2]))
    handles = []
    for lg, t, v in series:
        (line,) = ax.plot([datetime.fromtimestamp(x) for x in t], v, lw=1.5)
        f = _finite(v)
        handles.append((line, f"{lg or '(empty)'}    mean {fmt_value(mean(v), unit)}"
                              f"   max {fmt_value(max(f), unit)}   last {fmt_value(f[-1], unit)}"))
    _style(ax)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: fmt_value(v, unit)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    if min(min(_finite(v)) for _, _, v in series) >= 0:
        ax.set_ylim(bottom=0)
    if unit == "percentunit" and max(max(_finite(v)) for _, _, v in series) <= 1:
        ax.set_ylim(top=1.05)
    lax.set_axis_off()
    lax.legend([h for h, _ in handles], [t for _, t in handles], loc="upper left", ncol=ncol,
               fontsize=7.5, frameon=False, borderaxespad=0, handlelength=1.5,
               columnspacing=2.0)


def _bars(ax, series, unit: str) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    ordered = sorted(series, key=lambda s: s[2][-1])
    vals = [v[-1] for _, _, v in ordered]
    top = max(vals) or 1
    colors = plt.cm.tab10([len(vals) - 1 - i for i in range(len(vals))])
    bars = ax.barh(range(len(vals)), vals, color=colors, height=0.45)
    for b, (lg, _, _), v in zip(bars, ordered, vals):   # name above the bar, as Grafana
        y = b.get_y() + b.get_height() / 2
        ax.text(0, y + 0.28, lg or "(empty)", va="bottom", fontsize=9, color="#222")
        ax.text(b.get_width(), y, "  " + fmt_value(v, unit), va="center", fontsize=9,
                fontweight="bold")
    ax.set_ylim(-0.5, len(vals) - 0.1)
    ax.set_yticks([])
    ax.set_xlim(0, top * 1.15)
    _style(ax)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: fmt_value(v, unit)))


def _pie(ax, lax, series, unit: str) -> None:
    import matplotlib.pyplot as plt

    series = sorted(series, key=lambda s: -s[2][-1])
    vals = [v[-1] for _, _, v in series]
    total = sum(vals) or 1
    colors = plt.cm.tab10(range(len(vals)))
    ax.pie(vals, colors=colors, wedgeprops={"width": 0.42, "edgecolor": "white"},
           startangle=90, counterclock=False)
    ax.set_aspect("equal")
    lax.set_axis_off()
    from matplotlib.patches import Patch
    lax.legend([Patch(color=c) for c in colors],
               [f"{lg or '(empty)'}   {fmt_value(v, unit)}   {v / total:.1%}"
                for (lg, _, _), v in zip(series, vals)],
               loc="center left", fontsize=9, frameon=False)


def _heatmap(ax, cax, series, unit: str) -> None:
    """Grafana's heatmap of ready-made buckets: cumulative `le` series -> per-bucket rates,
    colour on a square-root scale (the panel's exponent 0.5)."""
    import matplotlib.dates as mdates
    import numpy as np
    from datetime import datetime
    from matplotlib.colors import PowerNorm

    def le(lg: str) -> float:
        return math.inf if lg in ("+Inf", "Inf") else float(lg)

    series = sorted(series, key=lambda s: le(s[0]))
    times = sorted({x for _, t, _ in series for x in t})
    col = {x: i for i, x in enumerate(times)}
    grid = np.full((len(series), len(times)), np.nan)
    for row, (_, t, v) in enumerate(series):
        for x, y in zip(t, v):
            grid[row, col[x]] = y
    per_bucket = np.clip(np.diff(np.vstack([np.zeros(len(times)), grid]), axis=0), 0, None)
    keep = [i for i in range(len(series)) if np.nansum(per_bucket[i]) > 0]
    if keep:
        per_bucket = per_bucket[keep[0]:keep[-1] + 1]
        series = series[keep[0]:keep[-1] + 1]
    x = [datetime.fromtimestamp(t) for t in times]
    step = (times[1] - times[0]) if len(times) > 1 else 1
    edges = x + [datetime.fromtimestamp(times[-1] + step)]
    mesh = ax.pcolormesh(edges, range(len(series) + 1), np.ma.masked_invalid(per_bucket),
                         cmap="Oranges", norm=PowerNorm(0.5), shading="flat")
    ax.set_yticks([i + 0.5 for i in range(len(series))],
                  ["≤ " + (fmt_value(le(lg), unit) if le(lg) != math.inf else "+Inf")
                   for lg, _, _ in series])
    ax.tick_params(labelsize=8, colors="#444")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    cb = ax.figure.colorbar(mesh, cax=cax)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("calls/s", fontsize=8)


def present_metrics(url: str) -> set[str]:
    """podsnoop metric names Prometheus holds series of."""
    data = _get(url, "/api/v1/label/__name__/values", {})
    return {m for m in data if m.startswith("podsnoop_")}


def render(url: str, out: Path = DOCS, start: float | None = None, end: float | None = None,
           values: dict[str, str] | None = None,
           dashboards: tuple[str, ...] = ("podsnoop-network", "podsnoop-syscalls")) -> list[Path]:
    """Query and draw `dashboards` over [start, end] (default: the last 15 minutes).
    `values`: dashboard variables ($namespace...) and Grafana built-ins ($__rate_interval
    defaults to 1m, $__range to the drawn range), as regexes / durations."""
    end = end or time.time()
    start = start or end - 15 * 60
    step = max(1.0, round((end - start) / 240))
    values = dict(values or {})
    by_uid = {d["uid"]: d for d in gen.dashboards().values()}
    from dashboards.promql import EXPORTED
    missing = set(EXPORTED) - present_metrics(url)
    paths = []
    for uid in dashboards:
        dash = by_uid[uid]
        panels = query_dashboard(url, dash, start, end, step, values)
        shown = ", ".join(f"${k}={v}" for k, v in values.items()
                          if not k.startswith("__")) or "All"
        rate_interval = values.get("__rate_interval", gen.BUILTINS["__rate_interval"])
        subtitle = (f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(start))} - "
                    f"{time.strftime('%H:%M:%S', time.localtime(end))}   step {step:g}s   "
                    f"$__rate_interval={rate_interval}   {shown}   "
                    f"(the dashboard's own queries, drawn by dashboards/render.py)")
        paths.append(draw(panels, dash["title"], out / PICTURES[uid], subtitle, missing))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", metavar="URL", help="Prometheus to query")
    ap.add_argument("--demo", action="store_true",
                    help="set up test pods, the exporter and Prometheus, then render (root)")
    ap.add_argument("--wait", type=float, default=90,
                    help="--demo: seconds to draw, after one rate interval of warm-up (90)")
    ap.add_argument("--minutes", type=float, default=15, help="time range to draw (15)")
    ap.add_argument("--out", type=Path, default=DOCS, help="directory for the PNGs (docs/)")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="a dashboard variable (regex), e.g. --var namespace=shop, or a "
                         "built-in, e.g. --var __rate_interval=2m (default: All, 1m)")
    ap.add_argument("--dashboard", action="append", choices=sorted(PICTURES),
                    help="dashboards to draw (default: network and syscalls)")
    args = ap.parse_args(argv)
    values = dict(v.split("=", 1) for v in args.var)
    dashboards = tuple(args.dashboard or ("podsnoop-network", "podsnoop-syscalls"))
    if args.demo == bool(args.prometheus):
        ap.error("give exactly one of --prometheus URL and --demo")
    if args.prometheus:
        end = time.time()
        paths = render(args.prometheus, args.out, end - args.minutes * 60, end, values,
                       dashboards)
    else:
        # The demo's own namespaces: other test pods on this machine (their cgroups are
        # counted too, with empty labels) stay out of the picture.
        values.setdefault("namespace", "|".join(NAMESPACES))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on SIGTERM too
        # rate() over a window reaches the true rate only once the window is full of data:
        # draw from one rate interval after the first scrape.
        warmup = _seconds(values.get("__rate_interval", gen.BUILTINS["__rate_interval"]))
        with DemoStack(prefix="rdr") as stack:
            print(f"exporter {stack.exporter.url}, Prometheus {stack.prom.url}: "
                  f"{warmup + args.wait:.0f}s of data to collect...", flush=True)
            stack.wait_for_data()
            start = stack.started + warmup + 5   # + the first scrapes' few seconds
            time.sleep(max(0.0, start + args.wait - time.time()))
            paths = render(stack.prom.url, args.out, start, time.time(), values, dashboards)
            problems = stack.stalled()
            if problems:
                for p in paths:
                    print(f"wrote {p}")
                print("podsnoop-render: warning: the demo's traffic or syscalls stopped during "
                      "the run, so the pictures show a stall; run again:\n  "
                      + "\n  ".join(problems) + "\nexporter log (tail):\n"
                      + stack.exporter.output()[-2000:], file=sys.stderr)
                return 1
    for p in paths:
        print(f"wrote {p}")
    return 0


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)",
                                                          duration))


if __name__ == "__main__":
    sys.exit(main())

"""`podsnoop top --once` against the real exporter and real test pods with known traffic.

Between top's two scrapes each test pod sends a known number of UDP datagrams of a known
size. The exporter is reached through a small HTTP relay in the test, so the test knows
when top scrapes: the pods send only after the relay has answered the first scrape, and the
relay holds the second one until the exporter has counted every datagram. So exactly the
known packets fall between the two scrapes, and ARP cannot add any (static neighbours,
IPv6 off). The bounds of the rates come from measured times, never from wall-clock
thresholds: top waits at least --interval between its scrapes (so rate <= N / interval), and
its second scrape starts before the relay receives it, at most t2 - t0 after top was
started (so rate >= N / (t2 - t0)); the rate must also equal N / the elapsed time top
prints, to display precision.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from exporter import names
from exporter.exporterproc import Metrics
from exporter.testapiserver import KubeApiServer
from exporter.testpods import sh
from exporter.top.view import COLUMNS, percent
from conftest import run_exporter
from test_network import wait_for
from test_syscalls import RMDIR

NODE = "node-top"
TX = names.NET_TRANSMIT_PACKETS + "_total"
PAYLOAD = 200
FRAME = PAYLOAD + 8 + 20 + 14   # UDP + IPv4 + Ethernet headers: what the veth counts
INTERVAL = 3.0
# (namespace, pod, datagrams to a listening port, datagrams to a closed port, failing rmdirs)
PODS = [("shop", "big", 300, 0, 0), ("shop", "mid", 200, 0, 2000),
        ("shop", "small", 100, 0, 0), ("batch", "dropper", 150, 100, 0)]
COLS = [c.key for c in COLUMNS]
SO_RCVBUFFORCE = 33


def static_neighbours(pod) -> None:
    """No ARP on the pod's link while top measures: permanent entries both ways."""
    host_mac = open(f"/sys/class/net/{pod.host_if}/address").read().strip()
    pod_mac = sh(f"ip netns exec {pod.netns} cat /sys/class/net/eth0/address").stdout.strip()
    sh(f"ip -n {pod.netns} neigh replace {pod.host_ip} lladdr {host_mac} dev eth0 nud permanent")
    sh(f"ip neigh replace {pod.pod_ip} lladdr {pod_mac} dev {pod.host_if} nud permanent")


def send_udp(pod, port: int, n: int) -> None:
    pod.exec(["python3", "-c", "import socket\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"for _ in range({n}): s.sendto(b'x' * {PAYLOAD}, ('{pod.host_ip}', {port}))"])


class Relay:
    """An HTTP relay to the exporter's /metrics that records when each scrape arrives,
    calls `on_first` after answering the first, and holds the second until `release` is
    set. Keeps the texts it served."""

    def __init__(self, target: str):
        self.target = target
        self.release = threading.Event()
        self.first_done = threading.Event()
        self.arrivals: list[float] = []
        self.texts: list[str] = []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                relay.arrivals.append(time.monotonic())
                n = len(relay.arrivals)
                if n == 2:
                    relay.release.wait(60)
                with urllib.request.urlopen(relay.target + self.path, timeout=30) as r:
                    body = r.read()
                relay.texts.append(body.decode())
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if n == 1:
                    relay.first_done.set()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(factory):
    with KubeApiServer() as api:
        pods = {}
        for ns, name, *_ in PODS:
            pod = factory.create()
            api.add_pod(name, ns, NODE, uid=pod.uid,
                        containers={c.name: c.id for c in pod.containers.values()})
            static_neighbours(pod)
            pods[(ns, name)] = pod
        exporter = run_exporter(factory, "--kube", "auto", "--kubeconfig",
                                str(api.kubeconfig_path), "--node-name", NODE)
        try:
            wait_for(lambda: {(lab["namespace"], lab["pod"]) for lab in
                              exporter.metrics().series(names.POD_INFO)} >= set(pods),
                     timeout=30, what="the pods' names")
            yield exporter, pods
        finally:
            assert exporter.stop() == 0, exporter.output()


def listener(ip: str) -> tuple[socket.socket, threading.Thread, threading.Event]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # room for every datagram even if the drain thread falls behind (no RCVBUFF drops)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    s.bind((ip, 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def drain():
        while not stop.is_set():
            try:
                s.recv(65536)
            except OSError:
                pass
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    return s, t, stop


def closed_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def top_once(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", "top", "--once", *args],
                          capture_output=True, text=True, timeout=120)


def parse_table(out: str) -> tuple[float, list[dict]]:
    """The elapsed seconds top printed, and its rows as {column key: cell text}."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    words = lines[0].split()
    elapsed = float(words[words.index("interval") + 1])
    rows = [dict(zip(COLS, ln.split())) for ln in lines[3:]]   # after 2 header lines
    assert all(len(r) == len(COLS) for r in rows), out
    return elapsed, rows


def number(cell: str) -> float:
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}
    return float(cell[:-1]) * scale[cell[-1]] if cell[-1] in scale else float(cell)


def close_to(shown: str, exact: float) -> bool:
    """`shown` is `exact` to the 3 significant figures top prints."""
    return abs(number(shown) - exact) <= 0.005 * exact + 1e-9


def measured_run(stack, *args):
    exporter, pods = stack
    relay = Relay(exporter.url)
    socks = {key: listener(pod.host_ip) for key, pod in pods.items()}
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "top", "--once", "--url",
                                 relay.url, "--interval", str(INTERVAL), "--sort", "tx_packets",
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "COLUMNS": "80"})
        assert relay.first_done.wait(60), proc.communicate(timeout=5)
        expected = {}
        for (ns, name, ok, bad, rmdirs) in PODS:
            pod = pods[(ns, name)]
            send_udp(pod, socks[(ns, name)][0].getsockname()[1], ok)
            if bad:
                send_udp(pod, closed_port(pod.host_ip), bad)
            if rmdirs:
                pod.exec(["python3", "-c", RMDIR, str(rmdirs)])
            expected[f"{ns}/{name}"] = ok + bad
        # Hold top's second scrape until the exporter has counted every datagram.
        first = Metrics(relay.texts[0])
        wait_for(lambda: all(
            exporter.metrics().value(TX, pod_uid=pods[(ns, n)].uid)
            - first.value(TX, pod_uid=pods[(ns, n)].uid) >= ok + bad
            for ns, n, ok, bad, _ in PODS), timeout=30, what="the datagrams to be counted")
        relay.release.set()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "\x1b" not in out, "escape codes in output to a pipe"
        t2 = relay.arrivals[1]
    finally:
        relay.close()
        for s, t, stop in socks.values():
            stop.set()
            t.join(2)
            s.close()
    a, b = Metrics(relay.texts[0]), Metrics(relay.texts[1])
    for (ns, name, ok, bad, _) in PODS:   # exactly the known packets between the scrapes
        uid = pods[(ns, name)].uid
        assert b.value(TX, pod_uid=uid) - a.value(TX, pod_uid=uid) == ok + bad
    return out, expected, t2 - t0, a, b


def test_once_shows_each_pod_s_known_rates_and_sorts_them(stack):
    exporter, pods = stack
    out, expected, upper, a, b = measured_run(stack)
    print("\n" + out)
    elapsed, rows = parse_table(out)
    assert INTERVAL <= elapsed <= upper, (elapsed, upper)
    by_name = {r["pod"]: r for r in rows}
    assert set(expected) <= set(by_name), out
    for name, n in expected.items():
        r = by_name[name]
        assert close_to(r["tx_packets"], n / elapsed), (name, r, n, elapsed)
        assert n / upper * 0.995 <= number(r["tx_packets"]) <= n / INTERVAL * 1.005, r
        ok = next(p[2] for p in PODS if f"{p[0]}/{p[1]}" == name)
        bad = n - ok
        assert close_to(r["tx_bytes"], n * FRAME / elapsed), (name, r)
        if bad == 0:
            assert r["rx_packets"] == "0" and r["rx_bytes"] == "0", r   # nothing answers
            assert r["drops"] == "0" and r["drop_reason"] == "-", r
        else:   # datagrams to a closed host port: the host drops them, NO_SOCKET
            assert number(r["drops"]) >= bad / elapsed * 0.995, r
            assert r["drop_reason"] == "NO_SOCKET", r
        # Syscalls: the pod's calls and failures between the same two scrapes, as summed
        # from the texts top was given; the rmdir pod's include its 2000 failures.
        uid = pods[tuple(name.split("/"))].uid
        calls = b.value(names.SYSCALLS + "_total", pod_uid=uid) - a.value(
            names.SYSCALLS + "_total", pod_uid=uid)
        errs = b.value(names.SYSCALL_ERRORS + "_total", pod_uid=uid) - a.value(
            names.SYSCALL_ERRORS + "_total", pod_uid=uid)
        assert calls > 0 and close_to(r["syscalls"], calls / elapsed), (r, calls)
        assert r["errors"] == percent(errs / calls), (r, errs, calls)
        assert number(r["execs"]) > 0, r    # python3 was exec'd in the pod
        assert r["syscall_p99"] != "-", r
    assert number(by_name["shop/mid"]["errors"].rstrip("%")) > 0
    # Sorted by packets out, biggest first: big 300, dropper 250, mid 200, small 100.
    ours = [r["pod"] for r in rows if r["pod"] in expected]
    assert ours == ["shop/big", "batch/dropper", "shop/mid", "shop/small"], out


def test_namespace_filter_and_sort_by_name(stack):
    exporter, pods = stack
    out, expected, upper, *_ = measured_run(stack, "--namespace", "shop", "--sort", "pod")
    elapsed, rows = parse_table(out)
    assert [r["pod"] for r in rows] == ["shop/big", "shop/mid", "shop/small"], out
    for r in rows:
        assert close_to(r["tx_packets"], expected[r["pod"]] / elapsed), r


def test_narrow_layout_fits_80_columns(stack):
    exporter, pods = stack
    r = top_once("--url", exporter.url + "/metrics", "--interval", "0.5", "--layout", "narrow")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(ln) for ln in lines[1:]) <= 80, r.stdout
    for ns, name, *_ in PODS:
        assert any(ln.split()[:1] == [ns] for ln in lines), r.stdout
        assert any(ln.split()[:1] == [name] for ln in lines), r.stdout


@pytest.mark.parametrize("url,needle", [
    ("nonsense", "is not an http(s) URL"),
    ("http://127.0.0.1:1/metrics", "Connection refused"),
    ("http://no-such-host.invalid:9435/", "cannot read http://no-such-host.invalid:9435/metrics"),
])
def test_bad_url_is_one_line_and_exit_1(url, needle):
    r = top_once("--url", url, "--interval", "0.1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("podsnoop top: error:"), r.stderr
    assert needle in r.stderr, r.stderr
    assert r.stdout == ""


def test_not_metrics_is_one_line_and_exit_1(stack):
    exporter, _ = stack
    r = top_once("--url", exporter.url + "/readyz", "--interval", "0.1")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("podsnoop top: error:") and r.stderr.count("\n") == 1, r.stderr


def test_live_view_in_an_80_column_terminal_keys_and_quit(stack):
    """On a real pseudo-terminal of 80x24: the narrow table, '>' moves the sort column,
    'r' reverses it, 'q' quits with exit code 0 and leaves the alternate screen."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    exporter, pods = stack
    for pod in pods.values():   # every pod has series (execs, syscalls) even if run alone
        pod.exec(["true"])
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "top", "--url",
                             exporter.url + "/metrics", "--interval", "0.5"],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env={**env, "TERM": "xterm-256color"})
    os.close(slave)
    seen = ""

    def read_until(needle: str, timeout: float = 30) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while needle not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} never shown:\n{seen[-3000:]}"
            if select.select([master], [], [], left)[0]:
                try:
                    seen += os.read(master, 65536).decode(errors="replace")
                except OSError:   # the child closed the terminal
                    break
    try:
        read_until("\x1b[?1049h")             # the alternate screen, like top
        read_until("sort tx_bytes")
        read_until("dropper")                 # a table with our pods
        assert "RX B/s" in seen and "TX B/s" in seen
        os.write(master, b">")
        read_until("sort rx_packets")
        os.write(master, b"r")
        read_until("sort rx_packets (reversed)")
        os.write(master, b"q")
        assert proc.wait(timeout=20) == 0
        read_until("\x1b[?1049l")             # back to the normal screen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert "Traceback" not in seen

"""The demo: podsnoop on this node with a few test pods making traffic.

    ./dev demo            (or: python -m exporter.demo [--pods N] [--listen HOST:PORT])

Creates test pods (netns + veth + kubepods cgroup + processes), each making a different kind
of traffic, starts the exporter, prints a sample of /metrics every few seconds, and removes
every test pod on Ctrl-C or exit.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from . import names
from .exporterproc import ExporterProcess
from .testpods import PodFactory

TRAFFIC = [  # what each demo pod does, round-robin
    ("ping", lambda pod: ["ping", "-i", "0.5", "-s", "400", pod.host_ip]),
    ("udp", lambda pod: ["python3", "-c",
                         "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                         f"while True:\n s.sendto(b'u'*800,('{pod.host_ip}',9999)); time.sleep(0.02)"]),
    ("tcp", lambda pod: ["sh", "-c", f"while true; do iperf3 -c {pod.host_ip} -p {pod.iperf_port}"
                                     " -t 5 -b 2M >/dev/null 2>&1; sleep 1; done"]),
]


def show(exporter: ExporterProcess, pods) -> None:
    m = exporter.metrics()
    print(f"\n--- {exporter.url}/metrics (per-pod sample) " + "-" * 30)
    for pod in pods:
        for metric in (names.NET_RECEIVE_BYTES, names.NET_TRANSMIT_BYTES):
            for labels, value in m.samples.get(metric + "_total", []):
                if labels["interface"] == pod.host_if and value:
                    pairs = ",".join(f'{k}="{v}"' for k, v in labels.items())
                    print(f"{metric}_total{{{pairs}}} {value:.0f}")
    print(f"{names.ATTACHED_INTERFACES} {m.value(names.ATTACHED_INTERFACES):.0f}")
    sys.stdout.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="podsnoop-demo", description=__doc__.split("\n")[1])
    ap.add_argument("--pods", type=int, default=3, help="number of test pods (default 3)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--duration", type=float, default=0,
                    help="stop after this many seconds (default: until Ctrl-C)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    servers: list[subprocess.Popen] = []
    with PodFactory(prefix="demo") as factory:
        exporter = ExporterProcess("--kube", "off", "--interfaces", rf"{factory.tag}h\d+")
        try:
            exporter.start()
            print(f"podsnoop is serving {exporter.url}/metrics (log: {exporter.log_path})")
            pods = []
            for i in range(args.pods):
                pod = factory.create(containers=("app", "sidecar"))
                pod.iperf_port = 5201 + i
                servers.append(subprocess.Popen(
                    ["iperf3", "-s", "-B", pod.host_ip, "-p", str(pod.iperf_port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                kind, argv_of = TRAFFIC[i % len(TRAFFIC)]
                pod.run(argv_of(pod))
                print(f"test pod {pod.name}: uid {pod.uid}, veth {pod.host_if}, {kind} traffic")
                pods.append(pod)
            started = time.monotonic()
            while not args.duration or time.monotonic() - started < args.duration:
                time.sleep(args.interval)
                show(exporter, pods)
        except KeyboardInterrupt:
            pass
        finally:
            for s in servers:
                s.kill()
            exporter.stop()
            print("\ndemo stopped: exporter detached, test pods removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

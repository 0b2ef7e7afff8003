"""The demo: podsnoop on this node with a few test pods making traffic.

    ./dev demo            (or: python -m exporter.demo [--pods N] [--listen HOST:PORT])

Creates test pods (netns + veth + kubepods cgroup + processes), each making a different kind
of traffic and syscalls, publishes them on a small local Kubernetes API (the test API
server, so samples carry namespace/pod/container labels), starts the exporter, prints a
sample of /metrics every few seconds, and removes every test pod on Ctrl-C or exit.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from . import names
from .exporterproc import ExporterProcess
from .testapiserver import KubeApiServer
from .testpods import PodFactory

NODE = "demo-node"

TRAFFIC = [  # what each demo pod does, round-robin
    ("ping", lambda pod: ["ping", "-i", "0.5", "-s", "400", pod.host_ip]),
    ("udp", lambda pod: ["python3", "-c",
                         "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                         f"while True:\n s.sendto(b'u'*800,('{pod.host_ip}',9999)); time.sleep(0.02)"]),
    ("tcp", lambda pod: ["sh", "-c", f"while true; do iperf3 -c {pod.host_ip} -p {pod.iperf_port}"
                                     " -t 5 -b 2M >/dev/null 2>&1; sleep 1; done"]),
]


def _line(name: str, labels: dict, value: float) -> str:
    pairs = ",".join(f'{k}="{v}"' for k, v in labels.items() if v and k != "pod_uid"
                     and k != "container_id")
    return f"{name}{{{pairs}}} {value:.0f}"


def show(exporter: ExporterProcess, pods) -> None:
    m = exporter.metrics()
    print(f"\n--- {exporter.url}/metrics (a sample; pod_uid/container_id labels hidden) ---")
    uids = {pod.uid for pod in pods}
    for metric in (names.NET_RECEIVE_BYTES, names.NET_TRANSMIT_BYTES):
        for labels, value in m.samples.get(metric + "_total", []):
            if labels["pod_uid"] in uids and value:
                print(_line(metric + "_total", labels, value))
    top = sorted(((v, lab) for lab, v in m.samples.get(names.SYSCALLS + "_total", [])
                  if lab["pod_uid"] in uids), key=lambda t: -t[0])[:6]
    for value, labels in top:
        print(_line(names.SYSCALLS + "_total", labels, value))
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
    with PodFactory(prefix="demo") as factory, KubeApiServer() as api:
        exporter = ExporterProcess("--kube", "auto", "--kubeconfig", api.kubeconfig_path,
                                   "--node-name", NODE, "--pod-labels", "app",
                                   "--interfaces", rf"{factory.tag}h\d+")
        try:
            exporter.start()
            print(f"podsnoop is serving {exporter.url}/metrics (log: {exporter.log_path})")
            pods = []
            for i in range(args.pods):
                kind = TRAFFIC[i % len(TRAFFIC)][0]
                pod = factory.create(containers=("app", "sidecar"), name=f"{kind}-demo-{i}")
                api.add_pod(pod.name, "demo", NODE, uid=pod.uid, labels={"app": kind},
                            containers={c.name: c.id for c in pod.containers.values()})
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

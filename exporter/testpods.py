"""Test pods: the kernel-side shape of a Kubernetes pod, for tests, the demo and benchmarks.

A test pod is what a kubelet + CNI leave behind for a real pod: a network namespace, a veth
pair (host side in the host namespace, eth0 in the pod's), a kubepods-style cgroup v2 tree
(systemd driver, containerd names) and real processes in the pod's cgroups and namespace.
Everything is made with iproute2 and plain cgroupfs writes, and removed by delete()/close().
"""
from __future__ import annotations

import ipaddress
import os
import random
import secrets
import shlex
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import find_cgroup2_mount

SUBNET = ipaddress.ip_network("10.222.0.0/16")  # carved into /30s, one per pod
SUBNET6 = ipaddress.ip_network("fd00:5053::/64")


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)


def in_cgroup(cgroup: Path, argv: list[str]) -> list[str]:
    """argv, run by a shell that first moves itself into `cgroup` (cgroup v2)."""
    script = f'echo $$ > {shlex.quote(str(cgroup))}/cgroup.procs && exec "$@"'
    return ["sh", "-c", script, "sh", *argv]


@dataclass
class Container:
    name: str
    id: str
    cgroup: Path


@dataclass
class TestPod:
    name: str
    uid: str
    netns: str
    host_if: str
    host_ip: str
    pod_ip: str
    cgroup: Path
    containers: dict[str, Container]
    host_ip6: str = ""
    pod_ip6: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def first_container(self) -> Container:
        return next(iter(self.containers.values()))

    def _argv(self, container: str | None, argv: list[str]) -> list[str]:
        c = self.containers[container] if container else self.first_container
        return in_cgroup(c.cgroup, ["ip", "netns", "exec", self.netns, *argv])

    def run(self, argv: list[str], container: str | None = None, **popen) -> subprocess.Popen:
        """Start a process inside the pod: in the container's cgroup and the pod's netns."""
        popen.setdefault("stdout", subprocess.DEVNULL)
        popen.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(self._argv(container, argv), **popen)
        self.procs.append(proc)
        return proc

    def exec(self, argv: list[str], container: str | None = None, timeout: float = 60,
             check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self._argv(container, argv), capture_output=True, text=True,
                              timeout=timeout, check=check)

    def host_stats(self) -> dict[str, int]:
        """The kernel's own counters of the host-side veth."""
        base = Path("/sys/class/net", self.host_if, "statistics")
        return {k: int((base / k).read_text())
                for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}

    def host_ifindex(self) -> int:
        return int(Path("/sys/class/net", self.host_if, "ifindex").read_text())


class PodFactory:
    """Makes and removes test pods under a private kubepods tree of the cgroup v2 mount."""

    def __init__(self, prefix: str = "ps"):
        self.tag = f"{prefix}{secrets.token_hex(2)}"
        self.cgroup_root = Path(find_cgroup2_mount(), f"podsnoop-test-{self.tag}")
        self.kubepods = self.cgroup_root / "kubepods.slice"
        self.pods: list[TestPod] = []
        self._count = 0
        # Made now, so an exporter started before the first pod already sees the root.
        self.kubepods.mkdir(parents=True, exist_ok=True)

    def _free_blocks(self, n: int) -> list[ipaddress.IPv4Network]:
        """n free /30s of SUBNET (from a random start, so parallel factories rarely meet)."""
        used = set()
        for line in sh("ip -4 -o addr show", check=False).stdout.splitlines():
            for word in line.split():
                if word.startswith("10.222."):
                    used.add(ipaddress.ip_interface(word).network.supernet(new_prefix=30))
        blocks = list(SUBNET.subnets(new_prefix=30))
        start = random.randrange(len(blocks))
        free = [b for b in blocks[start:] + blocks[:start] if b not in used]
        if len(free) < n:
            raise RuntimeError(f"only {len(free)} free /30s left in {SUBNET}, {n} needed")
        return free[:n]

    def _free_subnet(self) -> ipaddress.IPv4Network:
        return self._free_blocks(1)[0]

    def create(self, containers: tuple[str, ...] = ("app",), qos: str = "burstable",
               ipv6: bool = False, name: str | None = None, start: bool = True) -> TestPod:
        self._count += 1
        n = self._count
        uid = str(uuid.uuid4())
        netns, host_if = f"{self.tag}-{n}", f"{self.tag}h{n}"
        block = self._free_subnet()
        host_ip, pod_ip = str(block[1]), str(block[2])
        slice_uid = uid.replace("-", "_")
        if qos == "guaranteed":
            pod_cg = self.kubepods / f"kubepods-pod{slice_uid}.slice"
        else:
            pod_cg = (self.kubepods / f"kubepods-{qos}.slice" /
                      f"kubepods-{qos}-pod{slice_uid}.slice")
        conts = {}
        for cname in containers:
            cid = secrets.token_hex(32)
            conts[cname] = Container(cname, cid, pod_cg / f"cri-containerd-{cid}.scope")
        pod = TestPod(name or f"pod-{self.tag}-{n}", uid, netns, host_if, host_ip, pod_ip,
                      pod_cg, conts)
        self.pods.append(pod)
        for c in conts.values():
            c.cgroup.mkdir(parents=True, exist_ok=True)
        v6 = "0" if ipv6 else "1"
        cmds = [
            f"ip netns add {netns}",
            f"ip link add {host_if} type veth peer name eth0 netns {netns}",
            f"sysctl -qw net.ipv6.conf.{host_if}.disable_ipv6={v6}",
            f"ip netns exec {netns} sysctl -qw net.ipv6.conf.eth0.disable_ipv6={v6}",
            f"ip netns exec {netns} sysctl -qw net.ipv6.conf.lo.disable_ipv6={v6}",
            f"ip addr add {host_ip}/30 dev {host_if}",
            f"ip -n {netns} addr add {pod_ip}/30 dev eth0",
        ]
        if ipv6:
            pod.host_ip6 = str(SUBNET6[(n << 2) + 1])
            pod.pod_ip6 = str(SUBNET6[(n << 2) + 2])
            cmds += [f"ip addr add {pod.host_ip6}/126 dev {host_if} nodad",
                     f"ip -n {netns} addr add {pod.pod_ip6}/126 dev eth0 nodad"]
        cmds += [f"ip link set {host_if} up", f"ip -n {netns} link set eth0 up",
                 f"ip -n {netns} link set lo up",
                 f"ip -n {netns} route add default via {host_ip}"]
        sh(" && ".join(cmds))
        if start:  # the pod's long-lived process (what the pause container is to a pod)
            pod.run(["sleep", "infinity"])
        return pod

    def delete(self, pod: TestPod) -> None:
        for proc in pod.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        for proc in pod.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Children the pod's processes started (e.g. by a shell) must leave the cgroups too.
        for c in pod.containers.values():
            _kill_cgroup(c.cgroup)
        sh(f"ip link del {pod.host_if}", check=False)
        sh(f"ip netns del {pod.netns}", check=False)
        for c in pod.containers.values():
            _rmdir(c.cgroup)
        _rmdir(pod.cgroup)
        if pod in self.pods:
            self.pods.remove(pod)

    def close(self) -> None:
        for pod in list(self.pods):
            self.delete(pod)
        if self.cgroup_root.exists():
            for path in sorted(self.cgroup_root.rglob("*"), key=lambda p: -len(p.parts)):
                if path.is_dir():
                    _rmdir(path)
            _rmdir(self.cgroup_root)

    def __enter__(self) -> "PodFactory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kill_cgroup(path: Path) -> None:
    kill = path / "cgroup.kill"
    if kill.exists():
        try:
            kill.write_text("1")
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if not (path / "cgroup.procs").read_text().strip():
                return
        except OSError:
            return
        time.sleep(0.02)


def _rmdir(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)

"""Who an address is: the peer identities of the per-pod traffic matrix (issue 21).

An identity is the tuple of names.PEER_ID_LABELS values, (peer_namespace, peer_workload,
peer_service, peer_network), exactly one of workload / service / network naming it:

- a pod's address: (namespace, workload, "", ""); the workload is the pod's controller as
  kube.workload_of names it (a Deployment, not its ReplicaSet), a bare pod's own name;
- a Service's ClusterIP: (namespace, "", service, "");
- a node's address (the node this runs on, and any pod's hostIP): ("", "", "", "node");
- an address in a configured CIDR (--peer-cidr name=prefix): ("", "", "", name);
- anything else: ("", "", "", "world"), which the kernel counts as peer id 0 (no lookup hit).

`PeerDirectory` holds what the API says (pods of every node, Services), fed by the peer
watchers (exporter/peerwatch.py) from their own thread; `addresses()` is the current
address -> identity table that collectors/peers.py writes into the kernel's lookup map.
Pods that are done (Succeeded, Failed) or share the node's network own no address: their
IPs are free for another pod, or are the node's.
"""
from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import names

WORLD = ("", "", "", names.PEER_WORLD)
NODE = ("", "", "", names.PEER_NODE)
DONE_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class PeerPod:
    uid: str
    namespace: str
    workload: str             # the controller's name, or the pod's own for a bare pod
    ips: tuple[str, ...]
    host_ip: str = ""
    host_network: bool = False
    phase: str = ""


@dataclass(frozen=True)
class PeerService:
    uid: str
    namespace: str
    name: str
    cluster_ips: tuple[str, ...]  # "None" (headless) and empty are left out


def normalize(address: str) -> str | None:
    """An address in one canonical text form ("10.0.0.1", "fd00::1"), or None."""
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        return None


class PeerDirectory:
    """Pods and Services by uid, and the address table they imply. Thread-safe: the
    watchers write, the scrape reads `addresses()` (rebuilt only after a change)."""

    def __init__(self, node_addresses: Iterable[str] = ()):
        self._lock = threading.Lock()
        self._pods: dict[str, PeerPod] = {}
        self._services: dict[str, PeerService] = {}
        self._node = {a for a in map(normalize, node_addresses) if a}
        self.generation = 0
        self._table: dict[str, tuple] | None = None

    # -- writers (the watchers) --

    def _changed(self) -> None:
        self.generation += 1
        self._table = None

    def set_node_addresses(self, addresses: Iterable[str]) -> None:
        new = {a for a in map(normalize, addresses) if a}
        with self._lock:
            if new != self._node:
                self._node = new
                self._changed()

    def replace_pods(self, pods: Iterable[PeerPod]) -> None:
        with self._lock:
            self._pods = {p.uid: p for p in pods}
            self._changed()

    def upsert_pod(self, pod: PeerPod) -> None:
        with self._lock:
            if self._pods.get(pod.uid) != pod:
                self._pods[pod.uid] = pod
                self._changed()

    def delete_pod(self, uid: str) -> None:
        with self._lock:
            if self._pods.pop(uid, None) is not None:
                self._changed()

    def replace_services(self, services: Iterable[PeerService]) -> None:
        with self._lock:
            self._services = {s.uid: s for s in services}
            self._changed()

    def upsert_service(self, service: PeerService) -> None:
        with self._lock:
            if self._services.get(service.uid) != service:
                self._services[service.uid] = service
                self._changed()

    def delete_service(self, uid: str) -> None:
        with self._lock:
            if self._services.pop(uid, None) is not None:
                self._changed()

    # -- reader (the collector) --

    def addresses(self) -> Mapping[str, tuple]:
        """address -> identity. Where two claim one address, a Service beats a pod, a
        running pod beats one that is not yet, and the node's own addresses beat all."""
        with self._lock:
            if self._table is not None:
                return self._table
            table: dict[str, tuple] = {}
            pods = sorted(self._pods.values(), key=lambda p: p.phase == "Running")
            for p in pods:
                if p.host_ip and (a := normalize(p.host_ip)):
                    table[a] = NODE
            for p in pods:
                if p.host_network or p.phase in DONE_PHASES:
                    continue
                for ip in p.ips:
                    if (a := normalize(ip)) and table.get(a) != NODE:
                        table[a] = (p.namespace, p.workload, "", "")
            for s in self._services.values():
                for ip in s.cluster_ips:
                    if a := normalize(ip):
                        table[a] = (s.namespace, "", s.name, "")
            for a in self._node:
                table[a] = NODE
            self._table = table
            return table


def parse_cidrs(specs: Iterable[str]) -> list[tuple[str, ipaddress._BaseNetwork]]:
    """--peer-cidr NAME=PREFIX[,PREFIX...] values -> [(name, network)]; ValueError with a
    one-line reason."""
    out = []
    reserved = {names.PEER_WORLD, names.PEER_NODE, names.PEER_OTHER}
    for spec in specs:
        name, sep, prefixes = spec.partition("=")
        name = name.strip()
        if not sep or not name or not prefixes.strip():
            raise ValueError(f"{spec!r}: expected NAME=PREFIX[,PREFIX...], "
                             "e.g. corp=10.0.0.0/8")
        if name in reserved:
            raise ValueError(f"{spec!r}: {name!r} is reserved "
                             f"({', '.join(sorted(reserved))})")
        for prefix in prefixes.split(","):
            try:
                out.append((name, ipaddress.ip_network(prefix.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{spec!r}: {prefix.strip()!r} is not an IP prefix") from None
    return out

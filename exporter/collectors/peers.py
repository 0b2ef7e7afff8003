"""Per-pod traffic and TCP connects by peer, from bpf/peers.bpf.c's maps (issue 21).

- podsnoop_peer_bytes_total / podsnoop_peer_packets_total{namespace, pod, pod_uid,
  direction, peer_namespace, peer_workload, peer_service, peer_network}: the IP packets of
  the pod's sockets, by who is at the other end (exporter/peers.py: a workload, a Service's
  ClusterIP, the node, a --peer-cidrs name, or "world"). direction is the pod's: receive
  (from the peer), transmit (to it).
- podsnoop_peer_tcp_connects_total / _tcp_connect_failures_total{namespace, pod, pod_uid,
  peer_*}: the pod's TCP connects to the peer that were established / that ended before.

Counted in the kernel: the programs look an address up in the kernel's address -> peer id
table, which `PeerTable` keeps equal to the directory's (once a second, when it changed);
no event per packet or connect reaches userspace. Peer ids are never reused, so a counter
key always means the identity it was counted for, even after the address moved on.

Cardinality is bounded twice, as syscalls and comms are (topn.TopN): each pod names the
--peer-top peers with the most bytes (a newcomer replaces the weakest only with twice its
bytes), the rest is peer_network="other"; and a node-wide --peer-series-cap on named peers,
beyond which they fold into "other" too (podsnoop_series_cap_dropped_total{collector=
"peers"} counts it). Addresses are never labels. The kernel's counter map holds one entry
per container, peer id and direction (--peer-map-entries; a full map counts update
failures).
"""
from __future__ import annotations

import ipaddress
import logging
import time

from prometheus_client.core import CounterMetricFamily

from .. import loader, names
from ..kuberoots import RootSync, choose_level
from ..peers import WORLD, PeerDirectory
from .bpfmaps import read_summed
from .cgroupdeltas import CgroupDeltas, map_families, percpu_slot
from .container_net import (BPF_CGROUP_INET_EGRESS, BPF_CGROUP_INET_INGRESS, CgroupLinks,
                            link_to_roots)
from .topn import NamedCounters, TopN

log = logging.getLogger(__name__)

TRAFFIC_MAP, CONNECTS_MAP, CONNECTING_MAP = "peer_traffic", "peer_connects", "peer_connecting"
ADDRS_MAP, CIDRS_MAP = "peer_addrs", "peer_cidrs"
PROGRAMS = (("podsnoop_peers_ingress", BPF_CGROUP_INET_INGRESS),
            ("podsnoop_peers_egress", BPF_CGROUP_INET_EGRESS))
OTHER = ("", "", "", names.PEER_OTHER)
# A pod's counters per peer: [bytes (ranks), receive bytes, transmit bytes, receive packets,
# transmit packets, connects, connect failures].
RANK, BYTES, PACKETS, CONNECTS, FAILURES = 0, 1, 3, 5, 6
WIDTH = 7


def load_programs(cfg, resolver):
    """The peer programs (what they are given: loader._peers_object): the connect
    tracepoint attached by libbpf, the cgroup_skb pair linked to the kubepods roots."""
    bpf = loader.load("peers", cfg, resolver)
    roots = RootSync(bpf["kubepods_roots"], resolver, choose_level(resolver))
    links = link_to_roots(CgroupLinks(bpf, resolver, PROGRAMS, "peer programs"), bpf,
                          "--peers off")
    return bpf, roots, links


def address_key(address: str) -> bytes:
    """The kernel's 16-byte form: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def node_addresses() -> list[str]:
    """The addresses of this network namespace's interfaces (the node's, in node mode).
    Read in a thread of its own: pyroute2's synchronous IPRoute runs an event loop, which
    it cannot inside the serving process's running one."""
    from concurrent.futures import ThreadPoolExecutor

    from pyroute2 import IPRoute

    def read() -> list[str]:
        with IPRoute() as ipr:
            return [a for msg in ipr.get_addr() if (a := msg.get_attr("IFA_ADDRESS"))]
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(read).result()


class PeerTable:
    """The kernel's address -> peer id map, kept equal to the directory's table, and the
    ids' identities for the collector. Ids start at 1 (0: world) and are never reused."""

    def __init__(self, bpf, directory: PeerDirectory, cidrs=(), node_addresses=None,
                 node_refresh_seconds: float = 30.0, clock=time.monotonic):
        self.addrs = bpf[ADDRS_MAP]
        self.directory = directory
        self.identities: dict[int, tuple] = {0: WORLD}
        self._ids: dict[tuple, int] = {WORLD: 0}
        self._written: dict[bytes, int] = {}  # address key -> id, as the kernel has it
        self._generation = None
        self.left_out = 0          # addresses the full map could not take (last sync)
        self.node_addresses = node_addresses   # () -> the node's addresses, or None
        self.node_refresh_seconds = node_refresh_seconds
        self.clock = clock
        self._node_checked = None
        trie = bpf[CIDRS_MAP]
        for name, net in cidrs:
            key = trie.Key()
            plen = net.prefixlen + (96 if net.version == 4 else 0)
            key.prefixlen = plen
            packed = address_key(str(net.network_address))
            for i, b in enumerate(packed):
                key.a[i] = b
            trie[key] = trie.Leaf(self.id_of(("", "", "", name)))

    def id_of(self, identity: tuple) -> int:
        pid = self._ids.get(identity)
        if pid is None:
            pid = self._ids[identity] = len(self.identities)
            self.identities[pid] = identity
        return pid

    def sync(self) -> int:
        """Write what changed; the number of addresses the kernel knows."""
        now = self.clock()
        if self.node_addresses is not None and (
                self._node_checked is None or now - self._node_checked >= self.node_refresh_seconds):
            self._node_checked = now
            try:
                self.directory.set_node_addresses(self.node_addresses())
            except OSError as e:
                log.warning("reading the node's addresses failed: %s", e)
        if self.directory.generation == self._generation:
            return len(self._written)
        self._generation = self.directory.generation
        want = {address_key(a): self.id_of(ident)
                for a, ident in self.directory.addresses().items()}
        for key in [k for k in self._written if k not in want]:
            try:
                del self.addrs[self._key(key)]
            except KeyError:
                pass
            del self._written[key]
        left_out = 0
        for key, pid in want.items():
            if self._written.get(key) == pid:
                continue
            try:
                self.addrs[self._key(key)] = self.addrs.Leaf(pid)
                self._written[key] = pid
            except Exception:  # noqa: BLE001 - the map is full (E2BIG): this one is world
                left_out += 1
        if left_out and left_out != self.left_out:
            log.warning("the peer address table is full: %d addresses count as world "
                        "(raise --peer-address-entries)", left_out)
        self.left_out = left_out
        return len(self._written)

    def _key(self, raw: bytes):
        key = self.addrs.Key()
        for i, b in enumerate(raw):
            key.a[i] = b
        return key


class PodPeers:
    __slots__ = ("counters", "last_live")

    def __init__(self, now: float):
        self.counters = NamedCounters(WIDTH)
        self.last_live = now


class PeersCollector:
    def __init__(self, bpf, resolver, labeler, grace_seconds: float, table: PeerTable,
                 top: int = 10, series_cap: int = 10000, clock=time.monotonic):
        self.traffic = bpf[TRAFFIC_MAP]
        self.connects = bpf[CONNECTS_MAP]
        self.connecting = bpf[CONNECTING_MAP]
        self.update_failures = bpf["peer_update_failures"]
        self.table = table
        self.labeler = labeler
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.topn = TopN(top, None, series_cap)
        self.deltas = CgroupDeltas(resolver)
        self.pods: dict[str, PodPeers] = {}

    def _families(self):
        return (CounterMetricFamily(names.PEER_BYTES,
                                    "IP bytes of the pod's sockets by peer (receive: from "
                                    "it, transmit: to it); the pod's top peers, the rest "
                                    "peer_network=\"other\".", labels=list(names.PEER_LABELS)),
                CounterMetricFamily(names.PEER_PACKETS,
                                    "IP packets of the pod's sockets by peer.",
                                    labels=list(names.PEER_LABELS)),
                CounterMetricFamily(names.PEER_TCP_CONNECTS,
                                    "TCP connects of the pod to the peer that were "
                                    "established.", labels=list(names.PEER_CONNECT_LABELS)),
                CounterMetricFamily(names.PEER_TCP_CONNECT_FAILURES,
                                    "TCP connects of the pod to the peer that ended before "
                                    "being established (refused, timed out, reset).",
                                    labels=list(names.PEER_CONNECT_LABELS)))

    def _cap_family(self):
        cap = CounterMetricFamily(names.SERIES_CAP_DROPPED,
                                  'Series folded into "other" by a series cap.',
                                  labels=["collector"])
        cap.add_metric(["peers"], self.topn.cap_dropped)
        return cap

    def describe(self):
        yield from self._families()
        yield self._cap_family()
        yield from self._self_families((0, 0), 0)

    def _self_families(self, entries, connecting: int):
        rows = [(TRAFFIC_MAP, self.traffic, entries[0], percpu_slot(self.update_failures, 0)),
                (CONNECTS_MAP, self.connects, entries[1], percpu_slot(self.update_failures, 1)),
                # LRU: when full the oldest connect in progress is evicted, nothing fails
                (CONNECTING_MAP, self.connecting, connecting, 0),
                # full: an address left out counts as world (PeerTable.left_out, logged)
                (ADDRS_MAP, self.table.addrs, len(self.table._written), self.table.left_out)]
        yield from map_families(rows)

    def collect(self):
        bytes_f, packets_f, connects_f, failures_f = self._families()
        now = self.clock()
        (traffic, connects), live, entries = self.deltas.take([self.traffic, self.connects])
        for uid, _ in live:
            self.pods.setdefault(uid, PodPeers(now)).last_live = now
        identities = self.table.identities
        per_pod: dict[str, dict[tuple, list[int]]] = {}
        for (uid, _), key, (packets, nbytes) in traffic:
            if not (packets or nbytes):
                continue
            acc = per_pod.setdefault(uid, {}).setdefault(identities.get(key.peer, WORLD),
                                                         [0] * WIDTH)
            d = 1 if key.dir == names.DIR_TRANSMIT else 0
            acc[RANK] += nbytes
            acc[BYTES + d] += nbytes
            acc[PACKETS + d] += packets
        for (uid, _), key, (n_ok, n_failed) in connects:
            if not (n_ok or n_failed):
                continue
            acc = per_pod.setdefault(uid, {}).setdefault(identities.get(key.peer, WORLD),
                                                         [0] * WIDTH)
            acc[CONNECTS] += n_ok
            acc[FAILURES] += n_failed
        for uid, deltas in per_pod.items():
            self.topn.apply(self.pods.setdefault(uid, PodPeers(now)).counters, deltas)
        for uid, pod in list(self.pods.items()):
            if now - pod.last_live > self.grace_seconds:
                del self.pods[uid]
                self.topn.release(pod.counters)
        directions = names.DROP_DIRECTIONS  # (receive, transmit), by DIR_*
        for uid, pod in self.pods.items():
            namespace, name = self.labeler.pod(uid)
            base = [namespace, name, uid]
            rows = list(pod.counters.named.items())
            if any(pod.counters.other):
                rows.append((OTHER, pod.counters.other))
            for identity, c in rows:
                peer = list(identity)
                for d, direction in enumerate(directions):
                    if c[BYTES + d] or c[PACKETS + d]:
                        bytes_f.add_metric(base + [direction] + peer, c[BYTES + d])
                        packets_f.add_metric(base + [direction] + peer, c[PACKETS + d])
                if c[CONNECTS] or c[FAILURES]:  # both, so that a ratio has its divisor
                    connects_f.add_metric(base + peer, c[CONNECTS])
                    failures_f.add_metric(base + peer, c[FAILURES])
        yield bytes_f
        yield packets_f
        yield connects_f
        yield failures_f
        yield self._cap_family()
        yield from self._self_families(entries, len(read_summed(self.connecting)))

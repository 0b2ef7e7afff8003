"""Per-container network bytes and packets, from bpf/cgroup_net.bpf.c's container_net map.

`podsnoop_container_network_{receive,transmit}_{bytes,packets}_total{namespace, pod,
pod_uid, container, container_id}` count the IP packets of each container's own sockets.

Why cgroup_skb programs attached once to each kubepods root, and not one per container:
a program attached to a cgroup runs for the sockets of all its descendants, so one pair of
attachments covers every container, including one created a moment ago, from its first
packet, with no per-container attach/detach lifecycle to race with pod churn. The key is the
socket's cgroup (bpf_skb_cgroup_id), which is exactly the container; on the receive path the
current task is unrelated (softirq), so bpf_get_current_cgroup_id would be wrong. The
attachments are BPF links: they run next to any other program on those cgroups (systemd's IP
accounting, a CNI's), and the kernel removes them when the exporter exits, even on SIGKILL.

How the figures relate to the pod's veth counters (podsnoop_network_*): these count from
the IP header on (the veth adds 14 bytes of Ethernet header per frame), only for sockets
(not ARP, not ICMP errors or TCP resets the kernel sends by itself, not forwarded traffic),
and a GSO super-packet is one packet. For socket traffic only, the sum over a pod's
containers equals the veth's bytes minus 14 per packet.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time

from prometheus_client.core import CounterMetricFamily

from .. import loader, names
from ..errors import CollectorUnavailable
from .cgroupdeltas import CgroupDeltas, container_labels, map_families, percpu_slot

log = logging.getLogger(__name__)

MAP = "container_net"
BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS = 0, 1
PROGRAMS = (("podsnoop_cgroup_ingress", BPF_CGROUP_INET_INGRESS),
            ("podsnoop_cgroup_egress", BPF_CGROUP_INET_EGRESS))
FAMILIES = (  # (direction, field, metric name, help)
    (names.DIR_RECEIVE, "bytes", names.CONTAINER_NET_RECEIVE_BYTES,
     "IP bytes received by the container's sockets."),
    (names.DIR_TRANSMIT, "bytes", names.CONTAINER_NET_TRANSMIT_BYTES,
     "IP bytes sent by the container's sockets."),
    (names.DIR_RECEIVE, "packets", names.CONTAINER_NET_RECEIVE_PACKETS,
     "IP packets received by the container's sockets."),
    (names.DIR_TRANSMIT, "packets", names.CONTAINER_NET_TRANSMIT_PACKETS,
     "IP packets sent by the container's sockets."),
)


def _libbpf():
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.bpf_link_create.restype = ctypes.c_int
    return lib


class CgroupLinks:
    """Keeps the two programs linked to every kubepods root: new roots get links, the
    links of a root that is gone are closed. The kernel detaches a link when its last fd
    closes, so nothing outlives the exporter."""

    def __init__(self, bpf, resolver, programs=PROGRAMS,
                 what: str = "container network programs"):
        self.resolver = resolver
        self.what = what  # for the log
        self.fns = [(bpf.load_func(name, bpf.CGROUP_SKB).fd, kind) for name, kind in programs]
        self.lib = _libbpf()
        self.links: dict[str, list[int]] = {}  # root path -> link fds
        self._failed: set[str] = set()

    def _link(self, path: str) -> list[int]:
        cg = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fds = []
        try:
            for prog_fd, kind in self.fns:
                fd = self.lib.bpf_link_create(prog_fd, cg, kind, None)
                if fd < 0:
                    err = ctypes.get_errno() or -fd
                    for f in fds:
                        os.close(f)
                    raise OSError(err, os.strerror(err))
                fds.append(fd)
        finally:
            os.close(cg)
        return fds

    def sync(self) -> int:
        wanted = set(self.resolver.kubepods_roots)
        for path in wanted - set(self.links):
            try:
                self.links[path] = self._link(path)
                self._failed.discard(path)
                log.info("%s linked to %s", self.what, path)
            except OSError as e:
                if os.path.isdir(path) and path not in self._failed:  # retried each sync
                    self._failed.add(path)
                    log.error("linking the %s to %s failed: %s", self.what, path, e.strerror)
        for path in set(self.links) - wanted:
            self._close(path)
        return len(self.links)

    def _close(self, path: str) -> None:
        for fd in self.links.pop(path, []):
            os.close(fd)

    def close(self) -> None:
        for path in list(self.links):
            self._close(path)


def load_programs(cfg, resolver):
    """Load the cgroup_skb programs and link them to the kubepods roots."""
    bpf = loader.load("cgroup_net", cfg, resolver)  # given: loader._cgroup_net_object
    return bpf, link_to_roots(CgroupLinks(bpf, resolver), bpf, "--container-network off")


def link_to_roots(links: CgroupLinks, bpf, off_flag: str) -> CgroupLinks:
    """Link the programs to every kubepods root now; a kernel that refuses turns only that
    collector off (CollectorUnavailable), with nothing left loaded or linked."""
    roots = list(links.resolver.kubepods_roots)
    for root in roots:
        try:
            links.links[root] = links._link(root)
        except OSError as e:
            links.close()
            bpf.cleanup()
            raise CollectorUnavailable(f"cannot attach the {links.what} to {root}: "
                                       f"{e.strerror}",
                                       "this needs a kernel with BPF links for cgroups (5.7+) "
                                       f"and CAP_BPF + CAP_NET_ADMIN, or run with {off_flag}",
                                       reason="attach failed") from None
    if roots:
        log.info("%s linked to %s", links.what, ", ".join(roots))
    return links


class ContainerTotals:
    __slots__ = ("values", "last_live")

    def __init__(self, now: float):
        self.values = {(d, f): 0 for d in (names.DIR_RECEIVE, names.DIR_TRANSMIT)
                       for f in ("packets", "bytes")}
        self.last_live = now


class ContainerNetworkCollector:
    def __init__(self, bpf, resolver, labeler, grace_seconds: float, clock=time.monotonic):
        self.table = bpf[MAP]
        self.failures = bpf["container_net_update_failures"]
        self.labeler = labeler
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.deltas = CgroupDeltas(resolver)
        self.containers: dict[tuple, ContainerTotals] = {}

    def _families(self):
        return {(d, f): CounterMetricFamily(n, h, labels=list(names.CONTAINER_NET_LABELS))
                for d, f, n, h in FAMILIES}

    def describe(self):
        yield from self._families().values()
        yield from map_families([(MAP, self.table, 0, 0)])

    def collect(self):
        families = self._families()
        now = self.clock()
        (rows,), live, (entries,) = self.deltas.take([self.table])  # (packets, bytes)
        for owner in live:
            self.containers.setdefault(owner, ContainerTotals(now)).last_live = now
        for owner, key, (packets, nbytes) in rows:
            totals = self.containers.setdefault(owner, ContainerTotals(now))
            totals.values[(key.dir, "packets")] += packets
            totals.values[(key.dir, "bytes")] += nbytes
        for owner, totals in list(self.containers.items()):
            if now - totals.last_live > self.grace_seconds:
                del self.containers[owner]
        labels_of = container_labels(self.labeler)
        for owner, totals in self.containers.items():
            labels = labels_of(owner)
            for k, family in families.items():
                family.add_metric(labels, totals.values[k])
        yield from families.values()
        yield from map_families([(MAP, self.table, entries, percpu_slot(self.failures, 0))])

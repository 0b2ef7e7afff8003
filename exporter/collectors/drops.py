"""Per-pod packet drops by the kernel's drop reason, from bpf/drops.bpf.c's drop_counts map.

`podsnoop_network_drops_total{namespace,pod,pod_uid,direction,reason}`: packets of a pod
that the kernel freed as dropped (skb:kfree_skb), where the drop happened in the pod's
network namespace (any of its devices or sockets) or on its host-side veth. direction is
from the pod's point of view, like the network counters: receive = on the way into the pod,
transmit = on the way out (see bpf/drops.bpf.c for how each drop is placed).

reason is the kernel's `enum skb_drop_reason` name without the SKB_DROP_REASON_ prefix
(NO_SOCKET, TC_INGRESS, NETFILTER_DROP, SOCKET_RCVBUFF, ...), read from the running kernel's
BTF, so a kernel with new reasons names them without a podsnoop update. Reasons of a
subsystem (the value's upper 16 bits, e.g. openvswitch) are named <SUBSYS>_<code>.
SKB_CONSUMED (packets freed after normal use) is never a drop. NOT_SPECIFIED (a drop site
the kernel has not annotated yet) is counted unless --drop-not-specified off: it is a real
drop, but on older kernels a large share of drops carry it.

The map is keyed by (network namespace inode or host veth ifindex, direction, reason). A
namespace or veth that belonged to a pod and is gone has its keys deleted after the final
increase is taken (the kernel reuses both numbers); drops in namespaces that are no pod's
are exported with empty pod labels and drained each scrape.
"""
from __future__ import annotations

import ctypes
import logging
import os
import time

from prometheus_client.core import CounterMetricFamily

from .. import bpfload, btf, loader, names
from ..podnetns import first_pid
from .cgroupdeltas import KeyedDeltas, map_families, percpu_slot

log = logging.getLogger(__name__)

MAP = "drop_counts"
PREFIX = "SKB_DROP_REASON_"


def reason_names(b: btf.BTF | None = None) -> dict[int, str]:
    """enum skb_drop_reason value -> name without the prefix, from the kernel's BTF."""
    b = b or btf.vmlinux()
    return {v: k[len(PREFIX):] for k, v in b.enum("skb_drop_reason").items()
            if k.startswith(PREFIX) and not k.startswith(PREFIX + "SUBSYS_")}


def subsystem_names(b: btf.BTF | None = None) -> dict[int, str]:
    b = b or btf.vmlinux()
    try:
        enum = b.enum("skb_drop_reason_subsys")
    except btf.BTFError:
        return {}
    return {v: k[len(PREFIX + "SUBSYS_"):] for k, v in enum.items()
            if k != PREFIX + "SUBSYS_NUM"}


class ReasonNamer:
    def __init__(self, b: btf.BTF | None = None, core: dict[int, str] | None = None,
                 subsys: dict[int, str] | None = None):
        """From BTF, or from the names the loader read (reading BTF here would keep
        ~40 MB of parsed types in the serving process)."""
        self.core = reason_names(b) if core is None else core
        self.subsys = subsystem_names(b) if subsys is None else subsys

    def __call__(self, value: int) -> str:
        if value in self.core and value >> 16 == 0:
            return self.core[value]
        sub = value >> 16
        if sub:
            return f"{self.subsys.get(sub, f'SUBSYS{sub}')}_{value & 0xFFFF}"
        return f"REASON_{value}"


def host_netns_inum() -> int:
    return os.stat("/proc/self/ns/net").st_ino


FORMAT = bpfload.TRACEFS + "/events/skb/kfree_skb/format"


def load_programs(cfg):
    """The drop program, precompiled, loaded and attached by libbpf (constants, and the
    check that the tracepoint has a reason: loader._drops_object; a sidecar counts only its
    own, the pod's, network namespace)."""
    return loader.load("drops", cfg)


class PodNetns:
    """Network namespace inode -> pod UID, from one process of each pod's cgroups.

    Kept off the scrape's critical path: each scrape only looks up pods it has not seen
    yet (one cgroup.procs read and one stat each) and forgets pods the resolver no longer
    knows. A namespace inode nobody maps (a recreated pod sandbox, or a pod's namespace
    the first time it drops something) triggers one full re-read, once per inode. When
    the kernel reuses a gone pod's inode for a new pod's namespace, the newer pod wins.
    """

    MAX_MISSED = 4096  # inodes remembered as unmappable (then forgotten, re-tried once)

    def __init__(self, resolver):
        self.resolver = resolver
        self._by_uid: dict[str, int] = {}    # pod uid -> netns inode, oldest first
        self._by_inum: dict[int, str] = {}
        self._missed: set[int] = set()
        self._warned = False

    def _inum_of(self, cgroups) -> int | None:
        pid = first_pid(c.path for c in cgroups)
        if pid is None:
            return None
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino
        except PermissionError:
            if not self._warned:
                self._warned = True
                log.warning("cannot read /proc/%d/ns/net (needs CAP_SYS_PTRACE when pod "
                            "processes run as other users or with other capabilities): "
                            "drops inside pods' network namespaces are exported without "
                            "pod labels; drops on their host veths are not affected", pid)
        except OSError:  # exited meanwhile
            pass
        return None

    def refresh(self, full: bool = False) -> None:
        pods = self.resolver.pods()
        by_uid = {uid: inum for uid, inum in self._by_uid.items()
                  if uid in pods and not full}
        for uid, cgroups in pods.items():
            if uid not in by_uid:
                inum = self._inum_of(cgroups)
                if inum is not None:
                    by_uid[uid] = inum
        self._by_uid = by_uid
        self._by_inum = {inum: uid for uid, inum in by_uid.items()}  # later (newer) wins

    def resolve(self, inums) -> dict[int, str | None]:
        self.refresh()
        unknown = [i for i in inums if i not in self._by_inum and i not in self._missed]
        if unknown:
            if len(self._missed) > self.MAX_MISSED:
                self._missed.clear()
            self.refresh(full=True)
            self._missed.update(i for i in unknown if i not in self._by_inum)
        return {i: self._by_inum.get(i) for i in inums}


class OwnNetns:
    """Sidecar mode's netns -> pod map: the only namespace its program counts is its own."""

    def __init__(self, pod_uid: str):
        self.inum, self.uid = host_netns_inum(), pod_uid

    def resolve(self, inums) -> dict[int, str | None]:
        return {i: self.uid if i == self.inum else None for i in inums}


class PodInterfaces:
    """Keeps bpf/drops.bpf.c's pod_ifindexes equal to the link manager's attached pod veths."""

    def __init__(self, table, links):
        self.table = table
        self.links = links

    def sync(self) -> int:
        wanted = {i for i, link in list(self.links.links.items()) if link.attached}
        present = {k.value for k in self.table.keys()}
        for idx in wanted - present:
            self.table[ctypes.c_uint(idx)] = ctypes.c_ubyte(1)
        for idx in present - wanted:
            try:
                del self.table[ctypes.c_uint(idx)]
            except KeyError:
                pass
        return len(wanted)


class PodDrops:
    __slots__ = ("counts", "last_live")

    def __init__(self, now: float):
        self.counts: dict[tuple[int, str], int] = {}   # (dir, reason) -> drops
        self.last_live = now


class DropCollector:
    def __init__(self, bpf, links, resolver, labeler, grace_seconds: float,
                 clock=time.monotonic, netns=None):
        self.table = bpf[MAP]
        self.failures = bpf["drop_update_failures"]
        self.links = links
        self.labeler = labeler
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.netns = netns or PodNetns(resolver)  # netns inode -> pod uid
        info = getattr(bpf, "info", None) or {}
        self.reason = ReasonNamer(core=info.get("reasons"), subsys=info.get("subsystems"))
        self.deltas = KeyedDeltas(self._resolve, lambda key: (key.netns, key.ifindex),
                                  unresolved_owner="")
        self.pods: dict[str, PodDrops] = {}

    def _resolve(self, ids) -> dict:
        ids = set(ids)
        netns = self.netns.resolve({n for n, i in ids if n})
        links = dict(self.links.links)
        out = {}
        for n, i in ids:
            if n:
                out[(n, i)] = netns.get(n)
            else:
                link = links.get(i)
                out[(n, i)] = (link.pod_uid or None) if link is not None else None
        return out

    def _family(self):
        return CounterMetricFamily(names.NET_DROPS, "Packets of the pod the kernel dropped, "
                                   "by direction and the kernel's drop reason.",
                                   labels=list(names.NET_DROP_LABELS))

    def describe(self):
        yield self._family()
        yield from map_families([(MAP, self.table, 0, 0)])

    def collect(self):
        family = self._family()
        now = self.clock()
        (rows,), live, (entries,) = self.deltas.take([self.table])
        for uid in live:
            self.pods.setdefault(uid, PodDrops(now)).last_live = now
        for uid, key, (n,) in rows:
            if n:
                pod = self.pods.setdefault(uid, PodDrops(now))
                k = (key.dir, self.reason(key.reason))
                pod.counts[k] = pod.counts.get(k, 0) + n
        for uid, pod in list(self.pods.items()):
            if now - pod.last_live > self.grace_seconds:
                del self.pods[uid]
        for uid, pod in self.pods.items():
            namespace, name = self.labeler.pod(uid)
            for (direction, reason), n in pod.counts.items():
                family.add_metric([namespace, name, uid, names.DROP_DIRECTIONS[direction],
                                   reason], n)
        yield family
        yield from map_families([(MAP, self.table, entries, percpu_slot(self.failures, 0))])

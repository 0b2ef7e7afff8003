"""Which pod owns the network namespace at the far end of a host veth.

CNI-agnostic: the host veth carries the peer's netnsid (IFLA_LINK_NETNSID, as the host
namespace numbers it). For each pod cgroup we take one process, ask the kernel for the
netnsid of that process's namespace (RTM_GETNSID by pid), and so map netnsid -> pod UID.
No CNI state files, no veth naming conventions.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

NSID_NOT_ASSIGNED = (None, -1, 0xFFFFFFFF)


def first_pid(cgroup_paths) -> int | None:
    """Any process in the given cgroups (pod-level first, then its containers)."""
    for path in cgroup_paths:
        try:
            text = Path(path, "cgroup.procs").read_text()
        except OSError:
            continue
        for line in text.split():
            return int(line)
    return None


class PodNetnsIndex:
    def __init__(self, ipr, resolver, min_refresh_interval: float = 1.0, clock=time.monotonic):
        self.ipr = ipr
        self.resolver = resolver
        self.min_refresh_interval = min_refresh_interval
        self.clock = clock
        self._by_nsid: dict[int, str] = {}
        self._last_refresh = float("-inf")
        self.refreshes = 0

    def pod_uid(self, nsid: int | None) -> str:
        return self._by_nsid.get(nsid, "") if nsid is not None else ""

    def forget(self, nsid: int | None) -> None:
        """A pod veth with this peer netnsid is gone. The kernel gives a destroyed
        namespace's id to the next namespace that needs one, so a kept entry would hand
        the next pod's veth this pod's UID."""
        self._by_nsid.pop(nsid, None)

    async def refresh(self, force: bool = False) -> bool:
        """Rebuild the map (rate-limited unless forced). Returns whether it ran."""
        now = self.clock()
        if not force and now - self._last_refresh < self.min_refresh_interval:
            return False
        self._last_refresh = now
        self.refreshes += 1
        self.resolver.rescan()
        # Pods mapped before keep their netnsid (a pod's network namespace lives as long as
        # the pod): only new pods cost a netlink round trip.
        known = {uid: nsid for nsid, uid in self._by_nsid.items()}
        mapping: dict[int, str] = {}
        for uid, cgroups in self.resolver.pods().items():
            if uid in known:
                mapping[known[uid]] = uid
                continue
            pid = first_pid(c.path for c in cgroups)
            if pid is None:
                continue
            try:
                reply = await self.ipr.get_netnsid(pid=pid)
            except NetlinkError:  # the process exited meanwhile
                continue
            nsid = reply and reply.get("nsid")
            if nsid not in NSID_NOT_ASSIGNED:
                mapping[nsid] = uid
        self._by_nsid = mapping
        return True

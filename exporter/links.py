"""Find pod veths, keep following them, and keep our TC programs attached to each.

A pod veth is, from the host's side, a veth whose peer lives in another network namespace
(the link carries IFLA_LINK_NETNSID). We list them at start, then follow RTM_NEWLINK /
RTM_DELLINK: a new pod's veth is attached as soon as its event arrives; a deleted one is
forgotten (the kernel removed its filters with it) and its counters are retired. We also
follow the TC group: when a filter in our slot or the clsact qdisc of an attached veth is
deleted under us (an admin, a CNI, a newer podsnoop of a rolling update that exited first),
our filter is put back at once (TcAttacher.repair) and the repair counted.
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Callable

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK, RTMGRP_TC

from .tc import GONE, HOOK_NAMES, ForeignFilterError, TcAttacher

log = logging.getLogger(__name__)

UNRESOLVED_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


@dataclass
class PodLink:
    index: int
    name: str
    netnsid: int | None
    pod_uid: str = ""
    attached: bool = False
    behind_tcx: bool = False  # tcx programs run first and may hide packets from us


def is_pod_veth(msg) -> bool:
    """Node mode: a host-side veth whose peer is in another namespace."""
    kind = msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
    return kind == "veth" and msg.get("IFLA_LINK_NETNSID") is not None


IFF_LOOPBACK = 0x8


def is_own_interface(msg) -> bool:
    """Sidecar mode: any interface of the pod's namespace (eth0, a second network's) but
    loopback, whose traffic never leaves the pod."""
    return not msg.get("flags", 0) & IFF_LOOPBACK


class OwnPodNetns:
    """Sidecar mode's stand-in for PodNetnsIndex: every interface here is the pod's own."""

    def __init__(self, pod_uid: str):
        self.uid = pod_uid

    def pod_uid(self, nsid) -> str:
        return self.uid

    def forget(self, nsid) -> None:
        pass

    async def refresh(self, force: bool = False) -> bool:
        return False


class LinkManager:
    def __init__(self, attacher: TcAttacher, netns_index, name_pattern: str | None = None,
                 on_removed: Callable[[PodLink], None] = lambda link: None,
                 selects: Callable[[object], bool] = is_pod_veth,
                 on_adding: Callable[[PodLink], None] = lambda link: None):
        self.attacher = attacher
        self.selects = selects  # which links of this namespace are a pod's
        self.netns_index = netns_index
        self.name_re = re.compile(name_pattern) if name_pattern else None
        self.on_removed = on_removed
        self.on_adding = on_adding  # before the link is attached (its counters' bucket)
        self.links: dict[int, PodLink] = {}
        self.attach_failures = 0
        self.repairs = 0          # hooks whose filter we put back after it was deleted
        self._events: AsyncIPRoute | None = None
        self._tasks: list[asyncio.Task] = []
        self._new_link_seen = False

    def _wanted(self, msg) -> bool:
        return self.selects(msg) and (self.name_re is None or
                                     bool(self.name_re.fullmatch(msg.get("ifname") or "")))

    async def start(self) -> None:
        # Subscribe before listing, so a link created in between is not missed.
        self._events = AsyncIPRoute()
        await self._events.bind(groups=RTMGRP_LINK | RTMGRP_TC)
        await self.netns_index.refresh(force=True)
        for msg in [m async for m in await self.attacher.ipr.get_links()]:
            if self._wanted(msg):
                await self._add(msg)
            elif await self.attacher.sweep(msg["index"]):
                log.info("removed a leftover podsnoop filter from %s", msg.get("ifname"))
        self._tasks = [asyncio.create_task(self._follow_events(), name="link-events"),
                       asyncio.create_task(self._resolve_pods(), name="link-pods")]

    async def stop(self) -> None:
        """Detach everything we attached; leave every other filter alone."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in list(self.links.values()):
            await self._detach_quietly(link)
        self.links.clear()
        if self._events is not None:
            self._events.close()

    async def _add(self, msg) -> None:
        index, name = msg["index"], msg.get("ifname") or f"if{msg['index']}"
        known = self.links.get(index)
        if known and known.name == name and known.attached:
            return
        if known:  # ifindex reused by a new device
            self._forget(index)
        link = PodLink(index, name, msg.get("IFLA_LINK_NETNSID"))
        link.pod_uid = self.netns_index.pod_uid(link.netnsid)
        self.links[index] = link
        self._new_link_seen = True
        self.on_adding(link)
        try:
            await self.attacher.attach(index)
            link.attached = True
            log.info("attached to %s (ifindex %d, pod %s)", name, index, link.pod_uid or "?")
        except ForeignFilterError as e:
            self.attach_failures += 1
            log.error("not attaching to %s: %s", name, e)
        except NetlinkError as e:
            if e.code in GONE:  # the link went away while we attached
                self.links.pop(index, None)
            else:
                self.attach_failures += 1
                log.error("attaching to %s failed: %s", name, e)

    def check_tcx(self) -> int:
        """Mark pod links that carry tcx programs; warn once per link. Returns how many."""
        hooks = self.attacher.hooks_in_front()
        for link in self.links.values():
            found = hooks.get(link.index)
            if found and not link.behind_tcx:
                log.warning("%s has tcx programs on %s (e.g. Cilium in TCX mode) that run "
                            "before podsnoop's, and packets they pass, redirect or drop are "
                            "not counted for pod %s", link.name,
                            "/".join(sorted(found)), link.pod_uid or "?")
            link.behind_tcx = bool(found)
        return sum(link.behind_tcx for link in self.links.values())

    async def _detach_quietly(self, link: PodLink) -> None:
        if link.attached:
            try:
                await self.attacher.detach(link.index)
            except NetlinkError as e:
                log.warning("detaching from %s failed: %s", link.name, e)

    def _forget(self, index: int) -> None:
        link = self.links.pop(index, None)
        self.attacher.forget(index)
        if link is not None:
            log.info("%s (ifindex %d) is gone", link.name, index)
            if all(other.netnsid != link.netnsid for other in self.links.values()):
                self.netns_index.forget(link.netnsid)
            self.on_removed(link)

    async def _follow_events(self) -> None:
        while True:
            async for msg in self._events.get():
                event = msg.get("event")  # None for TC group messages pyroute2 does not parse
                try:
                    if event == "RTM_NEWLINK" and self._wanted(msg):
                        await self._add(msg)
                    elif event == "RTM_NEWLINK" and msg["index"] in self.links:
                        # Still there but no longer wanted (renamed out of --interfaces):
                        # our filters must not stay behind on it.
                        await self._detach_quietly(self.links[msg["index"]])
                        self._forget(msg["index"])
                    elif event == "RTM_DELLINK":
                        self._forget(msg["index"])
                    elif event in ("RTM_DELTFILTER", "RTM_DELQDISC") and self._lost_ours(msg):
                        await self._repair(self.links[msg["index"]])
                except Exception:  # one bad event must not stop the watch
                    log.exception("handling %s failed", event)

    def _lost_ours(self, msg) -> bool:
        """A deletion that may have taken our filter off an attached pod veth."""
        link = self.links.get(msg["index"])
        if link is None or not link.attached:
            return False
        if msg["event"] == "RTM_DELQDISC":
            return msg.get("TCA_KIND") == "clsact"
        return msg["parent"] in HOOK_NAMES and msg["info"] >> 16 == self.attacher.priority

    async def _repair(self, link: PodLink) -> None:
        try:
            fixed = await self.attacher.repair(link.index)
        except ForeignFilterError as e:
            link.attached = False
            self.attach_failures += 1
            log.error("our filter on %s was replaced by a foreign one: %s", link.name, e)
            return
        except NetlinkError as e:
            if e.code not in GONE:  # gone: the link's own deletion event follows
                log.error("putting our filter back on %s failed: %s", link.name, e)
            return
        if fixed:
            self.repairs += fixed
            log.warning("our filter on %s (pod %s) was deleted by someone else: put back "
                        "on %d hook(s)", link.name, link.pod_uid or "?", fixed)

    async def _resolve_pods(self) -> None:
        """Give links whose pod was not known yet (pod process not started) their pod.

        Runs only while some link is unresolved: a link's peer namespace never changes, so a
        resolved link stays resolved until the link goes. Retries every second, backing off
        to MAX_RETRY_SECONDS when retries find nothing new (veths of non-pod containers stay
        unresolved forever and must not cost a refresh a second).
        """
        delay, waited = UNRESOLVED_RETRY_SECONDS, 0.0
        while True:
            await asyncio.sleep(UNRESOLVED_RETRY_SECONDS)
            waited += UNRESOLVED_RETRY_SECONDS
            new_link, self._new_link_seen = self._new_link_seen, False
            if new_link:
                delay = UNRESOLVED_RETRY_SECONDS
            unresolved = sum(1 for link in self.links.values() if not link.pod_uid)
            # A new link resolved from the map is checked once too: the map may predate it.
            if not (unresolved or new_link) or (waited < delay and not new_link):
                continue
            waited = 0.0
            try:
                await self.netns_index.refresh(force=True)
            except Exception:
                log.exception("refreshing the pod network namespaces failed")
                continue
            for link in self.links.values():
                link.pod_uid = self.netns_index.pod_uid(link.netnsid) or link.pod_uid
            still = sum(1 for link in self.links.values() if not link.pod_uid)
            delay = delay if still < unresolved else min(delay * 2, MAX_RETRY_SECONDS)

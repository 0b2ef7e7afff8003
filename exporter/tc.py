"""Attach and detach podsnoop's TC filters on one interface, touching nothing else.

Ownership rule: a filter is podsnoop's only if it sits at our priority, with our handle, and
its name starts with "podsnoop". The name also carries the owning process id
("podsnoop_tc_ingress@1234"), so that:
- attach takes over a podsnoop filter in our slot (a crashed run's leftover, or an older
  instance during a rolling update) by replacing it: never two of ours on one hook;
- detach deletes only the filters this process attached, never a newer instance's;
- sweep (at start) deletes podsnoop filters whose owner process is gone;
- repair puts ours back on a hook whose slot was emptied while we run (links.py follows the
  kernel's filter and qdisc deletions), unless a live podsnoop instance holds it.
We never delete a filter by priority alone, never replace a filter that is not podsnoop's,
and delete a clsact qdisc only if this process created it and it is empty. CNIs (Cilium,
Calico) keep their own filters on the same hooks.
"""
from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field

from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

TC_H_INGRESS = 0xFFFFFFF2  # clsact ingress hook (ffff:fff2)
TC_H_EGRESS = 0xFFFFFFF3   # clsact egress hook (ffff:fff3)
HOOK_NAMES = {TC_H_INGRESS: "ingress", TC_H_EGRESS: "egress"}
DEFAULT_PRIORITY = 50000   # high number: runs after a CNI's filters at lower numbers
HANDLE = 0x50D5
PROGRAM_PREFIX = "podsnoop"
GONE = (errno.ENODEV, errno.ENOENT, errno.EINVAL)


def owned_name(program: str, pid: int | None = None) -> str:
    return f"{program}@{pid or os.getpid()}"


def owner_alive(name: str) -> bool:
    """Whether the podsnoop process named in a filter name still runs."""
    _, _, pid = name.partition("@")
    try:
        cmdline = open(f"/proc/{int(pid)}/cmdline", "rb").read()
    except (ValueError, OSError):
        return False
    return b"podsnoop" in cmdline or b"exporter" in cmdline


class ForeignFilterError(Exception):
    """Our priority/handle slot is taken by somebody else's filter."""


@dataclass
class TcAttacher:
    ipr: object                      # pyroute2 AsyncIPRoute
    programs: dict[int, tuple[str, int]]  # hook -> (filter name, program fd)
    priority: int = DEFAULT_PRIORITY
    created_qdisc: set[int] = field(default_factory=set)

    async def _filters(self, index: int, hook: int) -> list:
        return [f async for f in await self.ipr.get_filters(index=index, parent=hook)]

    async def our_filters(self, index: int, hook: int) -> list[str]:
        """Program names of the filters in our slot that are ours."""
        found = []
        for f in await self._filters(index, hook):
            if f["handle"] != HANDLE or f["info"] >> 16 != self.priority:
                continue
            name = f.get(("TCA_OPTIONS", "TCA_BPF_NAME")) or ""
            if not name.startswith(PROGRAM_PREFIX):
                raise ForeignFilterError(
                    f"hook {HOOK_NAMES[hook]} priority {self.priority} handle {HANDLE:#x} "
                    f"holds a filter that is not podsnoop's ({name or 'unnamed'})")
            found.append(name)
        return found

    async def _ensure_clsact(self, index: int) -> None:
        try:
            await self.ipr.tc("add", "clsact", index)
            self.created_qdisc.add(index)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise

    async def attach(self, index: int) -> None:
        """Attach (or re-attach over a crashed run's leftover) our filters on both hooks."""
        if not self.programs:  # the network collector is off (app.load_collector)
            return
        await self._ensure_clsact(index)
        for hook, (name, fd) in self.programs.items():
            command = "replace-filter" if await self.our_filters(index, hook) else "add-filter"
            await self.ipr.tc(command, "bpf", index, HANDLE, fd=fd, name=name, parent=hook,
                              classid=1, direct_action=True, prio=self.priority)

    async def repair(self, index: int) -> int:
        """Put our filter back on each hook whose podsnoop slot is empty (someone deleted
        our filter, or the clsact qdisc with it). A hook holding any live podsnoop
        instance's filter is left alone: it counts the same packets. Returns hooks fixed."""
        if not self.programs:
            return 0
        await self._ensure_clsact(index)
        fixed = 0
        for hook, (name, fd) in self.programs.items():
            if any(owner_alive(n) for n in await self.our_filters(index, hook)):
                continue
            command = "replace-filter" if await self.our_filters(index, hook) else "add-filter"
            await self.ipr.tc(command, "bpf", index, HANDLE, fd=fd, name=name, parent=hook,
                              classid=1, direct_action=True, prio=self.priority)
            fixed += 1
        return fixed

    async def detach(self, index: int) -> None:
        """Remove our filters; the qdisc too, if we made it and nothing else uses it."""
        for hook in self.programs:
            try:
                if self.programs[hook][0] in await self.our_filters(index, hook):
                    await self.ipr.tc("del-filter", "bpf", index, HANDLE, parent=hook,
                                      prio=self.priority)
            except NetlinkError as e:
                if e.code not in GONE:
                    raise
        if index in self.created_qdisc:
            self.created_qdisc.discard(index)
            try:
                if not any([await self._filters(index, h) for h in HOOK_NAMES]):
                    await self.ipr.tc("del", "clsact", index)
            except NetlinkError as e:
                if e.code not in GONE:
                    raise

    def forget(self, index: int) -> None:
        """The interface is gone: the kernel removed its filters with it."""

    def hooks_in_front(self) -> dict[int, set[str]]:
        """ifindex -> hooks with tcx programs: they all run before any clsact filter."""
        from . import tcx
        return tcx.tcx_hooks()

    async def sweep(self, index: int) -> bool:
        """Remove a crashed podsnoop's leftovers from a link we will not attach to."""
        found = False
        for hook in HOOK_NAMES:
            try:
                names = await self.our_filters(index, hook)
                if names and not any(owner_alive(n) for n in names):
                    found = True
                    await self.ipr.tc("del-filter", "bpf", index, HANDLE, parent=hook,
                                      prio=self.priority)
            except (NetlinkError, ForeignFilterError):
                pass
        return found

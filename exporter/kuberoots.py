"""Keep bpf/syscalls.bpf.c's kubepods_roots map equal to the node's kubepods root cgroups.

The syscall programs count a task only if its ancestor cgroup at KUBEPODS_LEVEL is a
kubepods root, so a new container is counted from its first syscall without userspace
having to learn its cgroup id first. Roots at another depth than the one compiled in
cannot be matched and are logged once.
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

DEFAULT_LEVEL = 1  # /kubepods.slice or /kubepods directly under the cgroup v2 root
# Root ids the programs compare against (bpf/podfilter.h): a node has one or two kubepods
# roots, a sidecar one pod cgroup.
MAX_ROOTS = 4


def filter_defines(level: int, filter_pods: bool = True) -> dict[str, int]:
    """The -D values bpf/podfilter.h needs: where tracing programs may not call
    bpf_get_current_ancestor_cgroup_id (before 5.14), the BTF offsets to read the same id
    from the task instead."""
    from . import kfeatures
    flags = dict(FILTER_PODS=int(filter_pods), KUBEPODS_LEVEL=level,
                 MAX_KUBEPODS_ROOTS=MAX_ROOTS, ANCESTOR_HELPER=1)
    if not kfeatures.tracing_ancestor_cgroup_helper():
        from . import btf
        flags.update(ANCESTOR_HELPER=0, **btf.socket_offsets(), **btf.task_cgroup_offsets())
    return flags


def level_of(path: str, mount: str) -> int:
    return len(os.path.relpath(path, mount).split(os.sep))


def choose_level(resolver) -> int:
    levels = sorted({level_of(r, resolver.root) for r in resolver.kubepods_roots})
    return levels[0] if levels else DEFAULT_LEVEL


class RootSync:
    def __init__(self, table, resolver, level: int):
        self.table = table
        self.resolver = resolver
        self.level = level
        self._warned: set[str] = set()

    def sync(self) -> int:
        """Make the map hold exactly the ids of the roots at our level; returns how many."""
        wanted = []
        for root in self.resolver.kubepods_roots:
            if level_of(root, self.resolver.root) != self.level:
                if root not in self._warned:
                    self._warned.add(root)
                    log.warning("kubepods root %s is not at cgroup depth %d: its syscalls are "
                                "not counted until podsnoop restarts", root, self.level)
                continue
            try:
                ino = os.stat(root).st_ino
            except OSError:
                continue
            if ino in wanted:
                continue
            if len(wanted) == MAX_ROOTS:
                if root not in self._warned:
                    self._warned.add(root)
                    log.warning("more than %d kubepods roots: %s is not counted",
                                MAX_ROOTS, root)
                continue
            wanted.append(ino)
        zero = ctypes.c_int(0)
        current = self.table[zero]
        new = sorted(wanted) + [0] * (MAX_ROOTS - len(wanted))
        if list(current.ids) != new:
            # The ids first, under the old generation; then the generation, so that a program
            # that read the new generation also reads whole new ids (the verdict caches of
            # bpf/syscalls.bpf.c trust a verdict only under the generation it was made in).
            leaf = self.table.Leaf()
            leaf.ids[:] = new
            leaf.gen = current.gen
            self.table[zero] = leaf
            leaf.gen = current.gen + 1
            self.table[zero] = leaf
        return len(wanted)


class OwnPod:
    """Sidecar mode's scope: its own pod's cgroup stands where node mode has the kubepods
    roots, so every program that counts "tasks in pods" (the kubepods_roots filter, the
    cgroup_skb links) counts only this pod's, in the kernel. Looks like a resolver to
    choose_level, RootSync and the container network links."""

    def __init__(self, resolver, pod_uid: str):
        self.resolver = resolver
        self.pod_uid = pod_uid

    @property
    def root(self) -> str:
        return self.resolver.root

    @property
    def kubepods_roots(self) -> list[str]:
        pod = self.resolver.pod_cgroup(self.pod_uid)
        return [pod.path] if pod is not None else []

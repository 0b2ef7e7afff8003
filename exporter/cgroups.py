"""cgroup id <-> pod / container, from the cgroup v2 tree.

The BPF programs key their counters by `bpf_get_current_cgroup_id()`, which is the inode
number of the task's cgroup v2 directory (`os.stat(path).st_ino`). This module turns those
ids into pod UIDs and container ids by walking the kubelet's cgroup tree once at start and
again only when needed: a lookup of an unknown id triggers a rescan, at most one every
`min_rescan_interval` seconds (ebpf_exporter's lesson: a cache refreshed dozens of times a
second), and a hit never touches the filesystem (the scrape path must not walk).

Layouts understood below a kubepods root (`kubepods.slice`, `*-kubepods.slice`, `kubepods`):

    systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
                  cri-containerd-<id>.scope | crio-<id>.scope | docker-<id>.scope
              kubepods.slice/kubepods-pod<uid_>.slice/...            (guaranteed)
    cgroupfs: kubepods/burstable/pod<uid>/<id>   kubepods/pod<uid>/<id>  (also crio-<id>)

Choices for the cases no layout settles:
- The pod-level cgroup itself resolves with container_id "".
- A cgroup nested below a container cgroup (systemd's `init.scope` in a container, a
  runtime's `container` sub-cgroup) inherits that container's identity: its processes are
  the container's processes.
- CRI-O's `crio-conmon-<id>.scope` (the container monitor, placed in the pod with
  conmon_cgroup="pod") is runtime overhead, not the workload: it resolves to the pod with
  container_id "" and runtime "crio", like the pod-level cgroup.
- Any other directory directly under a pod (e.g. `kata-sandbox-xyz.scope`) resolves to the
  pod with container_id = the raw directory name and runtime "unknown". Unknown directories
  outside a pod dir are not pods. Directories that vanish or cannot be read mid-walk (pod
  deletion races the walk) are skipped.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

QOS_GUARANTEED = "guaranteed"
QOS_BURSTABLE = "burstable"
QOS_BESTEFFORT = "besteffort"

# Unknown ids remembered (to count them and to avoid rescanning for them); an LRU so cgroup
# churn cannot grow memory.
UNRESOLVED_MAX = 4096
# The periodic rescan is a quick one (unchanged pod directories are not walked again) but
# walks everything this often.
FULL_RESCAN_SECONDS = 60.0

_KUBEPODS_ROOT = re.compile(r"^(?:kubepods|kubepods\.slice|[\w.]+-kubepods\.slice)$")
# QoS level: cgroupfs "burstable", systemd "kubepods-burstable.slice" (maybe with a prefix).
_QOS_DIR = re.compile(r"^(?:(?:[\w.]+-)?kubepods-)?(burstable|besteffort)(?:\.slice)?$")
# Pod: cgroupfs "pod<uid>", systemd "...-pod<uid with _ for ->.slice". Static pods have a
# 32-hex config hash as UID, so dashes are optional.
_POD_DIR = re.compile(r"^(?:[\w.-]+-)?pod([0-9a-fA-F][0-9a-fA-F_-]{7,})(?:\.slice)?$")
_CONMON_DIR = re.compile(r"^crio-conmon-([0-9a-fA-F]{12,64})(?:\.scope)?$")
_CONTAINER_DIR = re.compile(
    r"^(cri-containerd|crio|docker)-([0-9a-fA-F]{12,64})(?:\.scope)?$|^([0-9a-fA-F]{64})$")
_RUNTIME = {"cri-containerd": "containerd", "crio": "crio", "docker": "docker"}


class CgroupError(Exception):
    """No cgroup v2 hierarchy to resolve ids from."""


@dataclass(frozen=True)
class CgroupInfo:
    """One cgroup v2 directory that belongs to a pod."""

    cgroup_id: int
    path: str
    pod_uid: str          # dashes form, e.g. "0f1e2d3c-..."
    container_id: str     # without runtime prefix; "" for the pod-level cgroup
    qos: str              # "guaranteed" | "burstable" | "besteffort"
    runtime: str = ""     # "containerd" | "crio" | "docker" | "unknown" | "" (cgroupfs, pod dir)


def _unescape_mount(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def find_cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Mount point of the cgroup v2 hierarchy (unified: /sys/fs/cgroup, hybrid: .../unified).

    If several cgroup2 mounts exist (e.g. a container that also sees the host's), prefer one
    that shows the whole hierarchy (mountinfo root "/"), then the first listed; pass
    CgroupResolver(root=...) to choose explicitly.
    """
    candidates = []
    try:
        with open(mountinfo, encoding="utf-8") as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                if not sep or len(fields) < 5 or not right.split():
                    continue
                if right.split()[0] == "cgroup2":
                    candidates.append((fields[3] != "/", _unescape_mount(fields[4])))
    except OSError as e:
        raise CgroupError(f"cannot read {mountinfo}: {e}") from e
    if not candidates:
        raise CgroupError(f"no cgroup2 filesystem in {mountinfo}: podsnoop needs cgroup v2 "
                          "(unified or hybrid mode) to map cgroup ids to pods")
    return min(candidates, key=lambda c: c[0])[1]


def cgroup_id_of_pid(pid: int, mount: str | None = None) -> int:
    """The cgroup v2 id of a process, as bpf_get_current_cgroup_id() sees it."""
    mount = mount or find_cgroup2_mount()
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        for line in f:
            hier, _, rest = line.rstrip("\n").partition(":")
            ctrl, _, path = rest.partition(":")
            if hier == "0" and ctrl == "":
                return os.stat(os.path.join(mount, path.lstrip("/"))).st_ino
    raise CgroupError(f"process {pid} has no cgroup v2 entry")


def _subdirs(path: str) -> list[tuple[str, str, int]]:
    """(name, path, cgroup id) of the child directories; [] if `path` is gone or unreadable.

    The id is the inode number readdir reports (d_ino), which on kernfs is the same number
    stat() returns (tests check it against os.stat): no stat per directory, a third faster.
    """
    try:
        with os.scandir(path) as it:
            return [(e.name, e.path, e.inode()) for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:  # removed or unreadable while we walk
        return []


def find_kubepods_roots(root: str) -> list[str]:
    """Directories below `root` (or root itself) that are kubelet's pod cgroup roots."""
    if _KUBEPODS_ROOT.match(os.path.basename(root.rstrip("/"))):
        return [root]
    found, todo = [], [root]
    while todo:
        for name, path, _ in _subdirs(todo.pop()):
            if _KUBEPODS_ROOT.match(name):
                found.append(path)  # pods live inside; a nested "kubepods" is not another root
            else:
                todo.append(path)
    return sorted(found)


def _parse_container(name: str) -> tuple[str, str]:
    """(container_id, runtime) for a directory directly under a pod directory."""
    if _CONMON_DIR.match(name):
        return "", "crio"
    if m := _CONTAINER_DIR.match(name):
        if m.group(3):
            return m.group(3).lower(), ""
        return m.group(2).lower(), _RUNTIME[m.group(1)]
    return name, "unknown"


def _has_subdirs(path: str) -> bool:
    """Whether a cgroup directory has child cgroups: on kernfs a directory's link count is
    2 + its subdirectories, so one stat spares listing its ~20 interface files."""
    try:
        return os.stat(path).st_nlink > 2
    except OSError:
        return False


def _walk_pod(pod: CgroupInfo, out: list[CgroupInfo]) -> None:
    """The pod's own cgroup, its containers, and anything nested below them."""
    out.append(pod)
    for name, path, ino in _subdirs(pod.path):
        cid, runtime = _parse_container(name)
        container = CgroupInfo(ino, path, pod.pod_uid, cid, pod.qos, runtime)
        out.append(container)
        todo = [path] if _has_subdirs(path) else []
        while todo:
            for _, sub, sub_ino in _subdirs(todo.pop()):
                out.append(CgroupInfo(sub_ino, sub, pod.pod_uid, cid, pod.qos, runtime))
                todo.append(sub)


# A pod directory's (cgroup id, link count) when it was last walked, and what the walk found.
PodWalks = dict[str, tuple[tuple[int, int], list[CgroupInfo]]]


def walk_kubepods(kubepods_root: str, previous: PodWalks | None = None,
                  walks: PodWalks | None = None) -> list[CgroupInfo]:
    """Every pod cgroup below one kubepods root.

    With `previous` (the `walks` of an earlier call), a pod directory whose id and link
    count are unchanged is not walked again: its containers are taken from then. That
    misses a container replaced by another between the two walks (the count stays the
    same), which is why callers also walk in full (previous=None) when an id is missing.
    """
    out: list[CgroupInfo] = []
    levels = [(kubepods_root, QOS_GUARANTEED)]
    while levels:
        parent, qos = levels.pop()
        for name, path, ino in _subdirs(parent):
            if m := _POD_DIR.match(name):
                found = stamp = None
                if previous is not None or walks is not None:
                    try:
                        stamp = (ino, os.stat(path).st_nlink)
                    except OSError:  # removed meanwhile
                        continue
                    seen = previous.get(path) if previous is not None else None
                    if seen is not None and seen[0] == stamp:
                        found = seen[1]
                if found is None:
                    found = []
                    uid = m.group(1).replace("_", "-").lower()
                    _walk_pod(CgroupInfo(ino, path, uid, "", qos, ""), found)
                if walks is not None:
                    walks[path] = (stamp, found)
                out.extend(found)
            elif parent == kubepods_root and (m := _QOS_DIR.match(name)):
                levels.append((path, m.group(1)))
    return out


class CgroupResolver:
    """In-memory index of the pod cgroups on this node, kept current by miss-driven rescans.

    Thread-safe: a rescan builds new indexes and swaps them in, so readers never see a half
    built one, and a lock keeps two rescans from running at once.
    """

    def __init__(self, root: str | None = None, kubepods_roots: list[str] | None = None,
                 min_rescan_interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root if root is not None else (
            None if kubepods_roots else find_cgroup2_mount())
        self._fixed_roots = list(kubepods_roots) if kubepods_roots else None
        self.kubepods_roots: list[str] = []
        self.min_rescan_interval = min_rescan_interval
        self._clock = clock
        self._lock = threading.RLock()
        self._by_id: dict[int, CgroupInfo] = {}
        self._by_pod: dict[str, list[CgroupInfo]] = {}
        self._pod_level: dict[str, CgroupInfo] = {}
        # unknown id -> value of `full_rescans` when first missed; see lookup().
        self._unresolved: OrderedDict[int, int] = OrderedDict()
        self.rescans = 0
        self.full_rescans = 0  # walks that saw every directory: they prove an id is no pod's
        self._last_full = float("-inf")
        self.unresolved_lookups = 0  # every miss, for a counter metric
        self._last_scan = float("-inf")
        self._walks: PodWalks = {}
        self.rescan()

    @property
    def unresolved(self) -> int:
        """Distinct unknown ids looked up recently (at most UNRESOLVED_MAX)."""
        return len(self._unresolved)

    def rescan(self, full: bool = True) -> None:
        """Walk the kubepods roots again and replace the index.

        Not `full` (the periodic rescan): pod directories whose link count did not change
        since the last walk are not walked again (one stat each instead of listing them
        and their containers), except that a full walk still runs every
        FULL_RESCAN_SECONDS to catch a container replaced by another in between."""
        with self._lock:
            self.rescans += 1
            self._walk(full or self._clock() - self._last_full >= FULL_RESCAN_SECONDS)

    def _rescan_for(self, ids) -> None:
        """One rescan on behalf of missed ids: the quick walk, then a full one if an id is
        still missing (only a full walk proves an id is not a pod's; see lookup())."""
        self.rescans += 1
        self._walk(full=False)
        if any(cid not in self._by_id for cid in ids):
            self._walk(full=True)

    def _walk(self, full: bool) -> None:
        with self._lock:
            self._last_scan = self._clock()
            if full:
                self.full_rescans += 1
                self._last_full = self._last_scan
            if self._fixed_roots is not None:
                self.kubepods_roots = self._fixed_roots
            else:  # cheap: the search does not descend into the pod trees it finds
                self.kubepods_roots = find_kubepods_roots(self.root)
            walks: PodWalks = {}
            previous = None if full else self._walks
            infos = [i for r in self.kubepods_roots for i in walk_kubepods(r, previous, walks)]
            self._walks = walks
            by_pod: dict[str, list[CgroupInfo]] = {}
            # By path, so each pod's own directory comes before its children.
            for info in sorted(infos, key=lambda i: i.path):
                by_pod.setdefault(info.pod_uid, []).append(info)
            self._by_id = {i.cgroup_id: i for i in infos}
            self._by_pod = by_pod
            self._pod_level = {uid: infos[0] for uid, infos in by_pod.items()}
            for cid in [c for c in self._unresolved if c in self._by_id]:
                del self._unresolved[cid]

    def lookup(self, cgroup_id: int) -> CgroupInfo | None:
        """The pod cgroup with this id, or None (not a pod, or gone).

        A miss rescans unless one ran less than min_rescan_interval ago, or one already ran
        after this id was first missed: an id comes from a running task, so its cgroup
        existed at the first miss, and a later walk that did not find it proves it is not a
        pod cgroup. That stops host cgroups from causing a rescan every interval forever.
        """
        info = self._by_id.get(cgroup_id)
        if info is not None:
            return info
        with self._lock:
            self.unresolved_lookups += 1
            first_seen = self._unresolved.get(cgroup_id, self.full_rescans)
            if first_seen == self.full_rescans and \
                    self._clock() - self._last_scan >= self.min_rescan_interval:
                self._rescan_for([cgroup_id])
                info = self._by_id.get(cgroup_id)
                if info is not None:
                    return info
            self._unresolved[cgroup_id] = first_seen
            self._unresolved.move_to_end(cgroup_id)
            while len(self._unresolved) > UNRESOLVED_MAX:
                self._unresolved.popitem(last=False)
            return None

    def resolve_many(self, cgroup_ids) -> dict[int, CgroupInfo | None]:
        """Resolve a scrape's worth of ids with at most one rescan.

        The rescan runs if any id was never missed before (a new container's cgroup appears
        between two scrapes); ids already missed once are not rescanned for again, and the
        time-based rate limit does not apply, since this runs once per scrape.
        """
        out = {cid: self._by_id.get(cid) for cid in cgroup_ids}
        missing = [cid for cid, info in out.items() if info is None]
        if not missing:
            return out
        with self._lock:
            new = [cid for cid in missing if cid not in self._unresolved]
            if new:
                self._rescan_for(new)
            for cid in missing:
                info = out[cid] = self._by_id.get(cid)
                if info is None:
                    self.unresolved_lookups += 1
                    self._unresolved[cid] = self._unresolved.get(cid, self.full_rescans)
                    self._unresolved.move_to_end(cid)
            while len(self._unresolved) > UNRESOLVED_MAX:
                self._unresolved.popitem(last=False)
        return out

    def pods(self) -> dict[str, list[CgroupInfo]]:
        """pod uid -> its cgroups, the pod-level cgroup first, then by path."""
        return {uid: list(infos) for uid, infos in self._by_pod.items()}

    def pod_cgroup(self, pod_uid: str) -> CgroupInfo | None:
        """The pod-level cgroup of a pod (UID with dashes or underscores)."""
        return self._pod_level.get(pod_uid.replace("_", "-").lower())

    def ids_of_pods(self) -> set[int]:
        """Every cgroup id that belongs to a pod (for a BPF filter map)."""
        return set(self._by_id)

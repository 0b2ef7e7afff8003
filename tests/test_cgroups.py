"""The cgroup resolver against real cgroup v2 directories (needs root).

Each test builds kubelet-style trees under its own `<cgroup2 mount>/podsnoop-test-<hex>`
and removes them afterwards, children first, even when the test fails.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time

import pytest

from exporter.cgroups import (UNRESOLVED_MAX, CgroupError, CgroupInfo, CgroupResolver,
                              cgroup_id_of_pid, find_cgroup2_mount, find_kubepods_roots)

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UID2 = "11111111-2222-3333-4444-555555555555"


def _us(uid: str) -> str:
    return uid.replace("-", "_")


def _cid() -> str:
    return secrets.token_hex(32)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tree:
    """A throwaway directory tree in the real cgroup2 hierarchy."""

    def __init__(self, mount: str) -> None:
        self.mount = mount
        self.root = os.path.join(mount, f"podsnoop-test-{secrets.token_hex(6)}")
        os.mkdir(self.root)

    def mk(self, rel: str) -> str:
        path = os.path.join(self.root, rel)
        os.makedirs(path, exist_ok=True)
        return path

    def rm(self, rel: str) -> None:
        path = os.path.join(self.root, rel)
        for dirpath, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
            os.rmdir(dirpath)

    def cleanup(self) -> None:
        if not os.path.isdir(self.root):
            return
        for dirpath, _, _ in sorted(os.walk(self.root), key=lambda w: -len(w[0])):
            for _ in range(50):  # a killed test process may take a moment to leave
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def ino(path: str) -> int:
    return os.stat(path).st_ino


@pytest.fixture
def tree():
    t = Tree(find_cgroup2_mount())
    try:
        yield t
    finally:
        t.cleanup()
        assert not os.path.exists(t.root), f"could not remove {t.root}"


# --- mount discovery ------------------------------------------------------------------------

def test_find_cgroup2_mount_on_this_machine():
    mount = find_cgroup2_mount()
    assert os.path.isfile(os.path.join(mount, "cgroup.controllers")), mount


def test_find_cgroup2_mount_parses_unified_hybrid_and_escapes(tmp_path):
    unified = tmp_path / "unified"
    unified.write_text(
        "25 1 0:23 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n")
    assert find_cgroup2_mount(str(unified)) == "/sys/fs/cgroup"
    hybrid = tmp_path / "hybrid"
    hybrid.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert find_cgroup2_mount(str(hybrid)) == "/sys/fs/cgroup/unified"
    nested = tmp_path / "nested"
    nested.write_text(
        "50 40 0:30 /../.. /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
        "51 40 0:30 / /host/sys\\040fs/cgroup ro shared:3 master:1 - cgroup2 cgroup2 rw\n")
    assert find_cgroup2_mount(str(nested)) == "/host/sys fs/cgroup"
    none = tmp_path / "none"
    none.write_text("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    with pytest.raises(CgroupError, match="no cgroup2"):
        find_cgroup2_mount(str(none))
    with pytest.raises(CgroupError):
        find_cgroup2_mount(str(tmp_path / "missing"))


# --- layouts --------------------------------------------------------------------------------

SYSTEMD_POD = {
    "guaranteed": "kubepods.slice/kubepods-pod{u}.slice",
    "burstable": "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice",
    "besteffort": "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice",
}
SYSTEMD_SCOPE = {"containerd": "cri-containerd-{c}.scope", "crio": "crio-{c}.scope",
                 "docker": "docker-{c}.scope"}


@pytest.mark.parametrize("qos", sorted(SYSTEMD_POD))
@pytest.mark.parametrize("runtime", sorted(SYSTEMD_SCOPE))
def test_systemd_driver(tree, qos, runtime):
    cid = _cid()
    pod = tree.mk(SYSTEMD_POD[qos].format(u=_us(UID)))
    ctr = tree.mk(os.path.join(pod, SYSTEMD_SCOPE[runtime].format(c=cid)))
    r = CgroupResolver(root=tree.root)
    assert r.lookup(ino(ctr)) == CgroupInfo(ino(ctr), ctr, UID, cid, qos, runtime)
    assert r.lookup(ino(pod)) == CgroupInfo(ino(pod), pod, UID, "", qos, "")
    assert r.kubepods_roots == [os.path.join(tree.root, "kubepods.slice")]


CGROUPFS_POD = {"guaranteed": "kubepods/pod{u}", "burstable": "kubepods/burstable/pod{u}",
                "besteffort": "kubepods/besteffort/pod{u}"}


@pytest.mark.parametrize("qos", sorted(CGROUPFS_POD))
def test_cgroupfs_driver(tree, qos):
    cid, crio_cid = _cid(), _cid()
    pod = tree.mk(CGROUPFS_POD[qos].format(u=UID))
    ctr = tree.mk(os.path.join(pod, cid))
    crio = tree.mk(os.path.join(pod, f"crio-{crio_cid}"))
    r = CgroupResolver(root=tree.root)
    assert r.lookup(ino(ctr)) == CgroupInfo(ino(ctr), ctr, UID, cid, qos, "")
    assert r.lookup(ino(crio)) == CgroupInfo(ino(crio), crio, UID, crio_cid, qos, "crio")
    assert r.lookup(ino(pod)) == CgroupInfo(ino(pod), pod, UID, "", qos, "")


def test_static_pod_uid_without_dashes(tree):
    uid = secrets.token_hex(16)  # kubelet uses the manifest hash as a static pod's UID
    ctr = tree.mk(f"kubepods/burstable/pod{uid}/{_cid()}")
    assert CgroupResolver(root=tree.root).lookup(ino(ctr)).pod_uid == uid


def test_pod_level_cgroup_and_pods_listing(tree):
    c1, c2 = _cid(), _cid()
    pod = tree.mk(SYSTEMD_POD["burstable"].format(u=_us(UID)))
    a = tree.mk(f"{pod}/cri-containerd-{c1}.scope")
    b = tree.mk(f"{pod}/cri-containerd-{c2}.scope")
    other = tree.mk(SYSTEMD_POD["guaranteed"].format(u=_us(UID2)))
    r = CgroupResolver(root=tree.root)
    pods = r.pods()
    assert set(pods) == {UID, UID2}
    assert pods[UID][0].path == pod and pods[UID][0].container_id == ""
    assert {i.path for i in pods[UID]} == {pod, a, b}
    assert [i.path for i in pods[UID2]] == [other]
    assert r.pod_cgroup(UID).cgroup_id == ino(pod)
    assert r.pod_cgroup(_us(UID)) == r.pod_cgroup(UID)  # underscores accepted too
    assert r.pod_cgroup("00000000-0000-0000-0000-000000000000") is None
    # The kubepods root and QoS slices are not pods: only pod dirs and below are filtered in.
    assert r.ids_of_pods() == {ino(pod), ino(a), ino(b), ino(other)}
    assert r.lookup(ino(os.path.join(tree.root, "kubepods.slice"))) is None


def test_nested_cgroups_inherit_their_container(tree):
    cid = _cid()
    pod = tree.mk(SYSTEMD_POD["besteffort"].format(u=_us(UID)))
    ctr = tree.mk(f"{pod}/crio-{cid}.scope")
    init = tree.mk(f"{ctr}/init.scope")
    deep = tree.mk(f"{ctr}/system.slice/foo.service")
    conmon = tree.mk(f"{pod}/crio-conmon-{cid}.scope")
    r = CgroupResolver(root=tree.root)
    for path in (init, deep):
        info = r.lookup(ino(path))
        assert (info.pod_uid, info.container_id, info.runtime, info.qos, info.path) == \
            (UID, cid, "crio", "besteffort", path)
    # conmon is CRI-O's monitor process: pod overhead, not the container's workload.
    assert r.lookup(ino(conmon)) == CgroupInfo(ino(conmon), conmon, UID, "", "besteffort", "crio")
    assert r.pod_cgroup(UID).path == pod


def test_unknown_layouts_never_crash(tree):
    pod = tree.mk(SYSTEMD_POD["burstable"].format(u=_us(UID)))
    kata = tree.mk(f"{pod}/kata-sandbox-xyz.scope")
    weird_in_pod = tree.mk(f"{pod}/weird")
    weird_top = tree.mk("kubepods.slice/weird")
    weird_qos = tree.mk("kubepods.slice/kubepods-burstable.slice/weird/pod" + UID2)
    not_kube = tree.mk(f"system.slice/pod{UID2}")
    r = CgroupResolver(root=tree.root)
    assert r.lookup(ino(kata)) == CgroupInfo(ino(kata), kata, UID, "kata-sandbox-xyz.scope",
                                             "burstable", "unknown")
    assert r.lookup(ino(weird_in_pod)).container_id == "weird"
    for path in (weird_top, weird_qos, not_kube):
        assert r.lookup(ino(path)) is None
    assert set(r.pods()) == {UID}


def test_kubepods_root_found_anywhere_or_given(tree):
    ctr1 = tree.mk(f"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
                   f"kubelet-kubepods-burstable-pod{_us(UID)}.slice/cri-containerd-{_cid()}.scope")
    ctr2 = tree.mk(f"deep/er/kubepods/besteffort/pod{UID2}/{_cid()}")
    roots = find_kubepods_roots(tree.root)
    assert roots == sorted([os.path.join(tree.root, "kubelet.slice/kubelet-kubepods.slice"),
                            os.path.join(tree.root, "deep/er/kubepods")])
    r = CgroupResolver(root=tree.root)
    assert r.lookup(ino(ctr1)).qos == "burstable"
    assert r.lookup(ino(ctr2)).pod_uid == UID2
    only = CgroupResolver(kubepods_roots=[os.path.join(tree.root, "deep/er/kubepods")])
    assert set(only.pods()) == {UID2}


# --- keeping current ------------------------------------------------------------------------

def test_deleted_pod_misses_after_rescan(tree):
    rel = SYSTEMD_POD["burstable"].format(u=_us(UID))
    pod = tree.mk(rel)
    ctr = tree.mk(f"{pod}/cri-containerd-{_cid()}.scope")
    keep = tree.mk(SYSTEMD_POD["guaranteed"].format(u=_us(UID2)))
    clock = FakeClock()
    r = CgroupResolver(root=tree.root, clock=clock)
    pod_id, ctr_id = ino(pod), ino(ctr)
    assert r.lookup(ctr_id).pod_uid == UID
    tree.rm(rel)
    r.rescan()
    assert r.lookup(ctr_id) is None and r.lookup(pod_id) is None
    assert set(r.pods()) == {UID2} and r.pod_cgroup(UID) is None
    assert pod_id not in r.ids_of_pods() and ino(keep) in r.ids_of_pods()


def test_deleted_pod_dropped_by_miss_triggered_rescan(tree):
    rel = SYSTEMD_POD["besteffort"].format(u=_us(UID))
    ctr = tree.mk(f"{rel}/docker-{_cid()}.scope")
    ctr_id = ino(ctr)
    clock = FakeClock()
    r = CgroupResolver(root=tree.root, clock=clock)
    tree.rm(rel)
    clock.now = 5
    assert r.lookup(1) is None  # any miss rescans
    assert r.lookup(ctr_id) is None and r.pods() == {}


def test_rescans_are_rate_limited(tree):
    known = tree.mk(f"kubepods/pod{UID}/{_cid()}")
    clock = FakeClock()
    r = CgroupResolver(root=tree.root, clock=clock, min_rescan_interval=2.0)
    assert r.rescans == 1
    clock.now = 0.5
    assert r.lookup(101) is None and r.rescans == 1   # too soon after the first walk
    clock.now = 2.0
    assert r.lookup(102) is None and r.rescans == 2   # interval passed: one rescan
    clock.now = 2.1
    assert r.lookup(103) is None and r.rescans == 2   # too soon again
    for _ in range(100):
        r.lookup(104)
    assert r.rescans == 2
    clock.now = 100
    assert r.lookup(ino(known)) is not None and r.rescans == 2  # a hit never rescans
    # 101 and 102 were missed before rescan #2 ran and that walk did not find them: known
    # non-pod ids, so they do not rescan again however much time passes.
    assert r.lookup(101) is None and r.lookup(102) is None and r.rescans == 2
    assert r.lookup(103) is None and r.rescans == 3   # missed before no walk yet: rescans
    assert r.unresolved == 4 and r.unresolved_lookups == 106


def test_quick_rescan_rewalks_only_changed_pods_and_a_miss_walks_all(tree):
    """The periodic rescan skips pod directories whose link count is unchanged; a container
    replaced by another in between (same count) is still found, by a miss's full walk."""
    pod = tree.mk(SYSTEMD_POD["burstable"].format(u=_us(UID)))
    old = tree.mk(f"{pod}/cri-containerd-{_cid()}.scope")
    clock = FakeClock()
    r = CgroupResolver(root=tree.root, clock=clock)
    old_id = ino(old)
    assert r.lookup(old_id) is not None
    full = r.full_rescans
    added = tree.mk(f"{pod}/cri-containerd-{_cid()}.scope")   # count changes: re-walked
    r.rescan(full=False)
    assert r.lookup(ino(added)) is not None and r.full_rescans == full
    tree.rm(old)
    new_cid = _cid()
    replaced = tree.mk(f"{pod}/cri-containerd-{new_cid}.scope")  # count as before
    r.rescan(full=False)
    assert r._by_id.get(ino(replaced)) is None    # the quick walk cannot see it
    clock.now = 10.0
    assert r.lookup(ino(replaced)).container_id == new_cid   # the miss walks everything
    assert r.full_rescans == full + 1
    assert r._by_id.get(old_id) is None    # and the gone one is gone


def test_new_container_found_by_miss_triggered_rescan(tree):
    pod = tree.mk(SYSTEMD_POD["burstable"].format(u=_us(UID)))
    clock = FakeClock()
    r = CgroupResolver(root=tree.root, clock=clock)
    cid = _cid()
    ctr = tree.mk(f"{pod}/cri-containerd-{cid}.scope")
    clock.now = 1.0
    assert r.lookup(ino(ctr)) is None and r.unresolved == 1   # rate-limited
    clock.now = 3.0
    info = r.lookup(ino(ctr))
    assert info is not None and info.container_id == cid and r.rescans == 2
    assert r.unresolved == 0
    late = tree.mk(f"{SYSTEMD_POD['guaranteed'].format(u=_us(UID2))}/crio-{_cid()}.scope")
    clock.now = 6.0
    assert r.lookup(ino(late)).pod_uid == UID2


def test_kubepods_root_appearing_later_is_found(tree):
    clock = FakeClock()
    r = CgroupResolver(root=tree.root, clock=clock)
    assert r.kubepods_roots == [] and r.pods() == {}
    ctr = tree.mk(f"kubepods/pod{UID}/{_cid()}")
    clock.now = 10
    assert r.lookup(ino(ctr)).pod_uid == UID


def test_unresolved_ids_are_bounded(tree):
    clock = FakeClock()
    r = CgroupResolver(root=tree.root, clock=clock)
    for i in range(UNRESOLVED_MAX + 1000):
        assert r.lookup(10_000_000 + i) is None
    assert r.unresolved == UNRESOLVED_MAX
    assert r.rescans == 1


def test_walk_survives_concurrent_churn(tree):
    """Pods created and deleted while rescans run: vanishing dirs are skipped, never raised."""
    tree.mk("kubepods.slice/kubepods-burstable.slice")
    r = CgroupResolver(root=tree.root)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            n = 0
            while not stop.is_set():
                rel = (f"kubepods.slice/kubepods-burstable.slice/"
                       f"kubepods-burstable-pod{_us(UID)[:-4]}{n % 50:04d}.slice")
                tree.mk(f"{rel}/cri-containerd-{_cid()}.scope/init.scope")
                if n >= 10:
                    old = rel[:-10] + f"{(n - 10) % 50:04d}.slice"
                    tree.rm(old)
                n += 1
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    t = threading.Thread(target=churn)
    t.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            r.rescan()
            for infos in r.pods().values():
                assert infos[0].container_id == ""
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert r.rescans > 5


# --- a real process -------------------------------------------------------------------------

def test_real_process_resolves_to_its_container(tree):
    cid = _cid()
    pod = tree.mk(SYSTEMD_POD["burstable"].format(u=_us(UID)))
    ctr = tree.mk(f"{pod}/cri-containerd-{cid}.scope")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        with open(os.path.join(ctr, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        with open(f"/proc/{proc.pid}/cgroup") as f:
            v2 = [line.rstrip("\n").split(":", 2)[2] for line in f if line.startswith("0::")]
        assert len(v2) == 1
        path = os.path.join(tree.mount, v2[0].lstrip("/"))
        assert path == ctr
        cgroup_id = os.stat(path).st_ino
        assert cgroup_id == cgroup_id_of_pid(proc.pid)
        info = CgroupResolver(root=tree.root).lookup(cgroup_id)
        assert (info.pod_uid, info.container_id, info.runtime) == (UID, cid, "containerd")
    finally:
        proc.kill()
        proc.wait()

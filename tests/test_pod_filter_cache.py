"""The syscall programs' per-CPU verdict cache (bpf/syscalls.bpf.c tracked_cached): a verdict
is reused only for the same cgroup and the same generation of the kubepods roots, so a
change of roots (RootSync) reaches a task whose "not in a pod" was cached before.

The real syscalls object is loaded in a process inside a test pod's container, then
detached, so that nothing but this process's BPF_PROG_TEST_RUN calls runs its programs:
each call runs sys_enter then sys_exit for a syscall number no real call has, as the kernel
would for the calling task, on the one CPU the process is pinned to. Whether that call was
counted is the verdict."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from exporter import kfeatures
from exporter.cgroups import find_cgroup2_mount
from exporter.kuberoots import level_of
from exporter.testpods import in_cgroup

REPO = Path(__file__).resolve().parent.parent

PROBE = r"""
import ctypes as ct, json, os, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from exporter import config, loader
from exporter.kuberoots import RootSync
from packet_path import raw_tp_run

NR = 4000   # no such syscall: only this probe's runs count under it
kubepods, level = sys.argv[2], int(sys.argv[3])
prog = loader.load_object("syscalls", config.parse(["--kube", "off"]), level)
for fd in prog.attachments:
    os.close(fd)
prog.attachments = []
enter, exit_ = prog.funcs["sys_enter"].fd, prog.funcs["sys_exit"].fd
roots, counts = prog["kubepods_roots"], prog["syscall_counts"]


def counted():
    raw_tp_run(enter, [0, NR])
    raw_tp_run(exit_, [0, 0])
    return sum(cpu.calls for k, v in counts.items() if k.nr == NR for cpu in v)


def write(ids, gen):
    leaf = roots.Leaf()
    leaf.ids[:len(ids)] = ids
    leaf.gen = gen
    roots[ct.c_int(0)] = leaf


class Scope:
    def __init__(self, mount):
        self.root, self.kubepods_roots = mount, []


steps = {}
steps["no roots"] = counted()
write([os.stat(kubepods).st_ino], 0)
steps["roots written, same gen"] = counted()
write([os.stat(kubepods).st_ino], 1)
steps["gen bumped"] = counted()
scope = Scope(sys.argv[4])
sync = RootSync(roots, scope, level)
sync.sync()
steps["RootSync: no roots"] = counted()
gen_before = roots[ct.c_int(0)].gen
scope.kubepods_roots = [kubepods]
sync.sync()
steps["RootSync: the root"] = counted()
gen_after = roots[ct.c_int(0)].gen
sync.sync()
steps["gens"] = [gen_before, gen_after, roots[ct.c_int(0)].gen]
prog.cleanup()
print(json.dumps(steps))
"""


def test_a_cached_verdict_is_reused_only_under_its_roots_generation(kernel, factory):
    pod = factory.create()
    mount = find_cgroup2_mount()
    level = level_of(str(factory.kubepods), mount)
    # in the container's cgroup (not its netns: `ip netns exec` would hide the cgroup mount)
    cgroup = pod.containers["app"].cgroup
    out = subprocess.run(in_cgroup(cgroup, [sys.executable, "-c", PROBE, str(REPO),
                                            str(factory.kubepods), str(level), mount]),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    steps = json.loads(out.stdout)
    cached = kfeatures.tracing_task_btf()   # before 5.11 there is no cache: every call asks
    assert steps == {
        "no roots": 0,
        # the roots changed but not their generation: the cached "not in a pod" answers
        "roots written, same gen": 0 if cached else 1,
        "gen bumped": 1 if cached else 2,
        "RootSync: no roots": 1 if cached else 2,        # cleared: not counted
        "RootSync: the root": 2 if cached else 3,        # back: counted at once
        "gens": [2, 3, 3],      # one more per change of ids, none without one
    }, steps

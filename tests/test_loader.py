"""The serving process never compiles: podsnoop's programs are precompiled objects that
libbpf loads in it (exporter/loader.py, exporter/bpfobject.py), and the fd-only tables
(exporter/bpffd.py) behave like bcc's for everything the collectors use."""
from __future__ import annotations

import ctypes as ct
import errno
import os
import platform
import signal
import struct
from pathlib import Path

import pytest

from exporter import bpfload
from exporter.bpffd import FdTable, PERCPU_TYPES, type_spec
from exporter.collectors import bpfmaps
from conftest import our_filters, run_exporter
from test_exec import fdinfo_values
from test_network import wait_for

REPO = Path(__file__).resolve().parent.parent
COMPILER_LIBRARIES = ("libLLVM", "libclang", "libbcc.so")   # libbcc maps LLVM in
BPF_PROG_GET_FD_BY_ID = 13
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def compiler_mappings(pid: int) -> set[str]:
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1]
        if any(lib in path for lib in COMPILER_LIBRARIES):
            out.add(path)
    return out


def children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.update(int(p) for p in (task / "children").read_text().split())
        except OSError:  # the thread ended meanwhile
            pass
    return out


def held_programs(pid: int) -> set[int]:
    """Ids of the BPF programs process `pid` holds fds of (programs and links)."""
    return set(fdinfo_values(pid, "prog_id"))


def program_exists(prog_id: int) -> bool:
    attr = ct.create_string_buffer(64)
    struct.pack_into("<I", attr, 0, prog_id)
    fd = _libc.syscall(ct.c_long(_NR_BPF), ct.c_int(BPF_PROG_GET_FD_BY_ID), attr,
                       ct.c_uint(ct.sizeof(attr)))
    if fd < 0:
        assert ct.get_errno() == errno.ENOENT, os.strerror(ct.get_errno())
        return False
    os.close(fd)
    return True


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # dead, waiting to be reaped by its (new) parent


# -- the serving process ------------------------------------------------------------------
def test_serving_process_has_not_compiled(pods):
    """Every program on (container network, exec log with its ring buffer too): after ready
    the exporter has no compiler library mapped, started no child, and holds the maps."""
    pod = pods.create()
    proc = run_exporter(pods, "--container-network", "on", "--exec-log", "5")
    try:
        pid = proc.proc.pid
        wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="attach")
        assert compiler_mappings(pid) == set()
        assert not children(pid)
        from soak_helpers import map_ids
        held = set(map_ids(pid))
        for name in ("net_counters", "syscall_counts", "syscall_latency", "exec_counts",
                     "exec_events", "tcp_retransmits", "drop_counts", "container_net"):
            assert name in held, held
        m = proc.metrics()
        for collector in ("network", "syscalls", "exec", "tcp", "drops", "container_network"):
            assert m.value("podsnoop_scrape_collector_success", collector=collector) == 1
    finally:
        assert proc.stop() == 0, proc.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_exit_leaves_no_program_behind(pods, sig):
    """Without TC filters (no interface matches), everything loaded lives by the serving
    process's fds: once it exits, SIGKILL included, every program it held is gone."""
    proc = run_exporter(pods, "--interfaces", "nothing-matches", "--container-network", "on")
    ids = held_programs(proc.proc.pid)
    assert len(ids) >= 7, ids  # 2 TC, 2 syscall, exec, tcp, drops, 2 cgroup_skb at least
    assert all(program_exists(i) for i in ids)
    code = proc.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), proc.output()
    wait_for(lambda: not any(program_exists(i) for i in ids), timeout=30,
             what="the programs to be freed")


# -- fd-only tables against bcc's ----------------------------------------------------------
@pytest.fixture(scope="module")
def maps(kernel):
    bpf = bpfload.compile_program("testing/maps", [])
    yield bpf
    bpf.cleanup()


def fd_table(bcc_table, name: str) -> FdTable:
    """The same map as the loader hands it over: its own fd, types rebuilt from data."""
    leaf = bcc_table.sLeaf if bcc_table.ttype in PERCPU_TYPES else bcc_table.Leaf
    return FdTable(name, os.dup(bcc_table.map_fd), bcc_table.ttype, bcc_table.max_entries,
                   bcc_table.flags, type_spec(bcc_table.Key), type_spec(leaf))


@pytest.mark.parametrize("name", ["percpu_pairs", "percpu_counts", "plain_pairs"])
def test_fd_tables_read_and_write_like_bcc(maps, name):
    ours, theirs = fd_table(maps[name], name), maps[name]
    try:
        theirs.clear()
        assert ours.max_entries == theirs.max_entries == 4096
        assert ct.sizeof(ours.Key) == ct.sizeof(theirs.Key)
        assert ct.sizeof(ours.Leaf) == ct.sizeof(theirs.Leaf)
        percpu = theirs.ttype in PERCPU_TYPES
        for i in range(50):  # written through ours, read through bcc's, and back
            key = ours.Key(i * 3, i % 4) if name == "percpu_pairs" else ours.Key(i)
            value = ours.Leaf()
            cells = value if percpu else [value]
            for cpu, cell in enumerate(cells):
                if isinstance(cell, ct.Structure):
                    cell.first, cell.second = i + cpu, (1 << 40) + i
                else:
                    cells[cpu] = i * 7 + cpu
            ours[key] = value
        assert sorted(bytes(k) for k in ours.keys()) == sorted(bytes(k) for k in theirs.keys())
        assert {bytes(k): bytes(v) for k, v in ours.items()} == \
            {bytes(k): bytes(v) for k, v in theirs.items()}
        assert sorted(bpfmaps.read_summed(ours)) == sorted(bpfmaps.read_summed(theirs))
        some = next(iter(theirs.keys()))
        del ours[theirs.Key.from_buffer_copy(bytes(some))]
        with pytest.raises(KeyError):
            theirs[some]
        with pytest.raises(KeyError):
            ours[ours.Key.from_buffer_copy(bytes(some))]
        with pytest.raises(KeyError):
            del ours[ours.Key.from_buffer_copy(bytes(some))]
        assert len(ours) == len(list(theirs.keys())) == 49
        ours.clear()
        assert list(theirs.keys()) == []
    finally:
        os.close(ours.map_fd)


# -- every object, as the app loads them -------------------------------------------------
def test_every_object_loads_with_every_option(kernel):
    from exporter import config
    from exporter import loader as programs
    from exporter.bpffd import MAP_RINGBUF
    from exporter.collectors.drops import reason_names
    cfg = config.parse(["--kube", "off", "--container-network", "on", "--exec-log", "3",
                        "--resize", "dry-run", "--net-map-entries", "1234"])
    got = {}
    try:
        for name in programs.OBJECTS:
            got[name] = programs.load(name, cfg)
        assert got["net"]["net_counters"].max_entries == 1234
        assert got["net"].load_func("podsnoop_tc_ingress", got["net"].SCHED_CLS).fd > 2
        assert len(got["cgroup_net"].funcs) == 2
        assert sorted(got["syscalls"].funcs) == ["sys_enter", "sys_exit"]
        assert len(got["syscalls"].attachments) == 2   # sys_enter, sys_exit
        events = got["exec"]["exec_events"]
        assert events.ttype == MAP_RINGBUF
        assert {"pid", "ppid", "comm", "filename"} <= {f[0] for f in events._event_class._fields_}
        assert got["resize"]["resize_events"]._event_class is not None
        assert got["drops"].info["reasons"] == reason_names()  # read from BTF at load
        # the kubepods filter maps the serving process writes
        for name in ("syscalls", "exec", "tcp"):
            table = got[name]["kubepods_roots"]
            leaf = table.Leaf()
            leaf.ids[0] = 42
            table[ct.c_int(0)] = leaf
            assert list(table[ct.c_int(0)].ids)[:2] == [42, 0]
    finally:
        for program in got.values():
            program.cleanup()

"""Podsnoop's BPF programs: what to compile for each (run in the loader process), and how the
serving process gets them, compiled and loaded, as file descriptors.

Why a loader process: a bcc compile maps libLLVM and libclang into the process (~60 MB
resident just to import bcc, VmHWM ~240 MB during the compiles), and glibc keeps much of the
compiler's heap afterwards. The serving process therefore never imports bcc. At start it
spawns one or two short-lived children (exporter/bpfchild.py in a fresh interpreter;
two only when a CPU is idle for the second, see loader_count);
each checks that bcc imports and the kernel headers exist (the preflight, answered before
anything else happens, so its errors stay the same one-line `podsnoop: error:` + `fix:`),
then compiles and loads the programs it is given, and sends back over a unix socket
(SCM_RIGHTS) the fds of every map (with its name, type, size and key/value layout), every
loaded function, and every attachment that lives as long as its fd (tracepoints, raw
tracepoints). Then it exits. TC filters and cgroup links are made by the serving process
from the program fds, as before. Two children compile at the same time, the programs
spread by expected compile time (WEIGHTS); a child dies with the serving process
(PR_SET_PDEATHSIG), and everything it handed over dies with the serving process's fds,
SIGKILL included.

A builder (BUILDERS) runs in the child: it turns the configuration and the kubepods cgroup
level into the source name, -D flags (BTF offsets, tracepoint fields, ...), the functions
to load, and extra data the collectors need (the drop reason names); reading the kernel's
BTF costs ~40 MB of Python objects, so that stays in the child too.
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

from . import bpfload
from .bpffd import FdProgram, FdTable
from .errors import CollectorUnavailable, PodsnoopError

log = logging.getLogger(__name__)

LOADERS = 2            # children compiling at once, at most (more does not help on 2 cores)
MAX_FDS = 253          # SCM_MAX_FD: fds in one message
MAX_MESSAGE = 1 << 20
# Rough compile seconds (measured on a 2-vCPU VM), to spread the programs over the children.
WEIGHTS = {"net": 0.6, "syscalls": 0.55, "tcp": 0.5, "exec": 0.15, "drops": 0.2,
           "cgroup_net": 0.15, "resize": 0.2}
BTF_WEIGHT = 0.25      # parsing the kernel's BTF, once per child that needs it
PSI_CONTENDED = 40.0   # % of the last 10 s some task waited for a CPU: no second loader
LOADER_PEAK = 256 << 20  # bytes a loader may reach (VmHWM 190-215 MB measured)
LATENCY_MAX_ENTRIES = 32768
INFLIGHT_MAX_ENTRIES = 32768   # threads in a syscall at once, where task storage is missing


# -- builders (run in the loader process) ------------------------------------------------
def _net(cfg, level):
    # cfg.mode is resolved (node or sidecar) before the loaders start: app.run()
    return dict(program="net", cflags=bpfload.defines(cfg.mode,
                                                      NET_MAX_ENTRIES=cfg.net_map_entries),
                functions=[("podsnoop_tc_ingress", "SCHED_CLS"), ("podsnoop_tc_egress", "SCHED_CLS")])


def _syscalls(cfg, level):
    from . import btf
    from .kuberoots import filter_defines
    # Counts only: no entry program, the number comes from the saved registers at exit.
    nr_offsets = {} if cfg.syscall_latency else btf.syscall_nr_offsets()

    def flags(inflight_hash: bool) -> list[str]:
        return bpfload.defines(
            **filter_defines(level, cfg.syscall_scope == "pods"),
            LATENCY=int(cfg.syscall_latency), INFLIGHT_HASH=int(inflight_hash),
            INFLIGHT_MAX_ENTRIES=INFLIGHT_MAX_ENTRIES,
            SYSCALL_MAX_ENTRIES=cfg.syscall_map_entries, LATENCY_MAX_ENTRIES=LATENCY_MAX_ENTRIES,
            **nr_offsets) + [f"-I{bpfload.BPF_DIR}"]  # bpf/podfilter.h
    if cfg.syscall_latency and not btf.has_map_type("BPF_MAP_TYPE_TASK_STORAGE"):
        log.info("syscalls: this kernel has no task storage (5.11+, tracing programs 5.13+): "
                 "the latency keeps syscalls in flight in a per-thread hash")
        return dict(program="syscalls", cflags=flags(True))
    spec = dict(program="syscalls", cflags=flags(False))
    if cfg.syscall_latency:  # 5.11, 5.12: the map type exists, tracing may not use it
        spec["fallback"] = (flags(True), "no task storage for tracing programs (5.13+)")
    return spec


def _exec(cfg, level):
    from . import btf
    from .collectors.exec import FILENAME_LEN, RINGBUF_PAGES
    from .kuberoots import filter_defines
    extra = {}
    if cfg.exec_log:
        b = btf.vmlinux()
        extra = dict(EXEC_RINGBUF_PAGES=RINGBUF_PAGES, EXEC_FILENAME_LEN=FILENAME_LEN,
                     TASK_REAL_PARENT_OFF=b.offset("task_struct", "real_parent"),
                     TASK_TGID_OFF=b.offset("task_struct", "tgid"))
    return dict(program="exec", cflags=bpfload.defines(
        **filter_defines(level), EXEC_MAX_ENTRIES=cfg.exec_map_entries,
        EXEC_EVENTS=int(cfg.exec_log > 0), **extra) + [f"-I{bpfload.BPF_DIR}"])


def _tcp(cfg, level):
    from . import btf
    from .collectors.tcp import COUNTER_ENTRIES_PER_MAP, bucket_macro
    from .kuberoots import filter_defines
    return dict(program="tcp", cflags=bpfload.defines(
        **{**filter_defines(level), **btf.socket_offsets()}, TCP_MAX_ENTRIES=cfg.tcp_map_entries,
        TCP_COUNTER_ENTRIES=COUNTER_ENTRIES_PER_MAP,
        **btf.tcp_skb_offsets(),
        RETRANSMIT_HAS_ERR=int("err" in bpfload.tracepoint_fields("tcp", "tcp_retransmit_skb")),
        **{"CONNECT_BUCKET(ns)": bucket_macro()}) + [f"-I{bpfload.BPF_DIR}"])


def _drops(cfg, level):
    from . import btf
    from .collectors.drops import PREFIX, host_netns_inum, reason_names, subsystem_names
    fields = bpfload.tracepoint_fields("skb", "kfree_skb")
    if "reason" not in fields:
        raise CollectorUnavailable("the skb:kfree_skb tracepoint of this kernel has no drop "
                                   "reason (it came in 5.17)",
                                   "run on kernel 5.17 or later for drops",
                                   reason="kernel<5.17: drop reasons")
    b = btf.vmlinux()
    enum = b.enum("skb_drop_reason")
    # Not drops: SKB_CONSUMED (6.2+), else SKB_NOT_DROPPED_YET (6.0, 6.1), else none.
    consumed = enum.get("SKB_CONSUMED", enum.get("SKB_NOT_DROPPED_YET", -1))
    return dict(program="drops", cflags=bpfload.defines(
        DROP_MAX_ENTRIES=cfg.drop_map_entries,
        # A sidecar counts only its own (the pod's) network namespace: bpf/drops.c.
        HOST_NETNS_INUM=0 if cfg.mode == "sidecar" else host_netns_inum(),
        ONLY_NETNS_INUM=host_netns_inum() if cfg.mode == "sidecar" else 0,
        REASON_CONSUMED=consumed,
        REASON_NOT_SPECIFIED=enum[PREFIX + "NOT_SPECIFIED"],
        COUNT_NOT_SPECIFIED=int(cfg.drop_not_specified), HAS_RX_SK=int("rx_sk" in fields),
        SKB_DEV_OFF=b.offset("sk_buff", "dev"), SKB_SK_OFF=b.offset("sk_buff", "sk"),
        SKB_IIF_OFF=b.offset("sk_buff", "skb_iif"),
        NETDEV_IFINDEX_OFF=b.offset("net_device", "ifindex"),
        NETDEV_NET_OFF=b.offset("net_device", "nd_net.net"),
        **btf.socket_offsets(b)) + [f"-I{bpfload.BPF_DIR}"],
        info={"reasons": reason_names(b), "subsystems": subsystem_names(b)})


def _cgroup_net(cfg, level):
    from .collectors.container_net import PROGRAMS
    return dict(program="cgroup_net", cflags=bpfload.defines(
        CNET_MAX_ENTRIES=cfg.container_net_map_entries),
        functions=[(name, "CGROUP_SKB") for name, _ in PROGRAMS])


def _resize(cfg, level):
    from .resize.programs import (EVENT_EXEC, EVENT_EXIT, MAX_LIVE, MAX_RULES,
                                  RINGBUF_PAGES)
    return dict(program="resize", cflags=bpfload.defines(
        RESIZE_MAX_RULES=MAX_RULES, RESIZE_MAX_LIVE=MAX_LIVE,
        RESIZE_RINGBUF_PAGES=RINGBUF_PAGES, RESIZE_EVENT_EXEC=EVENT_EXEC,
        RESIZE_EVENT_EXIT=EVENT_EXIT))


LEVEL_FREE = {"net", "drops", "cgroup_net", "resize"}  # builders that ignore `level`
BUILDERS = {"net": _net, "syscalls": _syscalls, "exec": _exec, "tcp": _tcp,
            "drops": _drops, "cgroup_net": _cgroup_net, "resize": _resize}


def needs_btf(name: str, cfg) -> bool:
    return name in ("syscalls", "tcp", "drops") or (name == "exec" and bool(cfg.exec_log))


def cpu_contended() -> bool:
    """Whether tasks have been waiting for a CPU much of the last 10 s (PSI; without PSI,
    a 1-minute load average that leaves no CPU idle)."""
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        return float(some[1].split("=")[1]) >= PSI_CONTENDED
    except (OSError, IndexError, ValueError):
        try:
            return os.getloadavg()[0] > len(os.sched_getaffinity(0)) - 1
        except OSError:
            return True


def memory_headroom() -> int | None:
    """Bytes this process's memory cgroup (or an ancestor, the tightest) may still grow by,
    cgroup v2 or v1; None without a limit. Loaders are charged to the same cgroup."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            try:
                from .cgroups import find_cgroup2_mount
                base, files = Path(find_cgroup2_mount()), ("memory.max", "memory.current")
            except Exception:  # noqa: BLE001 - no v2 hierarchy: no limit from it
                continue
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory")
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        here = Path(path)
        for d in (here, *here.parents):
            try:
                limit = (base / d.relative_to("/") / files[0]).read_text().strip()
                usage = int((base / d.relative_to("/") / files[1]).read_text())
            except (OSError, ValueError):
                continue
            if limit != "max" and int(limit) < 1 << 60:  # v1 says "unlimited" with 2^63-4096
                room = int(limit) - usage
                best = room if best is None else min(best, room)
    return best


def loader_count(programs: int) -> int:
    """Two loaders only when a second CPU is there for them: each loader costs ~0.3 s of
    CPU of its own (interpreter, bcc and LLVM start-up, the BTF parse), which pays only when
    it runs beside the other. Measured on 2 CPUs: to ready in 1.8 s instead of 2.3 s with a
    CPU mostly free, but 7.3 s instead of 5.8 s at load 6-8. And only when the memory
    cgroup has room for two loaders at their peak at once (a pod's memory limit)."""
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2 or programs < 2 or cpu_contended():
        return 1
    headroom = memory_headroom()
    if headroom is not None and headroom < LOADERS * LOADER_PEAK:
        return 1
    return LOADERS


def enabled(cfg) -> list[str]:
    """The programs a configuration loads, in the order app.run() asks for them."""
    flags = [("syscalls", cfg.syscalls), ("exec", cfg.exec),
             ("resize", getattr(cfg, "resize", "off") != "off"), ("tcp", cfg.tcp),
             ("cgroup_net", cfg.container_network), ("drops", cfg.drops)]
    return ["net"] + [name for name, on in flags if on]


# -- the serving process's side ------------------------------------------------------------
def _receive(sock: socket.socket):
    """One message: (object, fds), or (None, []) at the end of the stream."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise PodsnoopError("a message from the BPF loader process was truncated",
                            "report this as a podsnoop bug")
    if not data:
        return None, []
    return pickle.loads(data), fds


class _Loader:
    """One child process (exporter/bpfchild.py) and the programs asked of it."""

    def __init__(self, log_level: str):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_parent = str(Path(__file__).resolve().parent.parent)
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from exporter.bpfchild import main; sys.exit(main(sys.argv[2:]))")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, package_parent, str(theirs.fileno()),
             str(os.getpid()), log_level], pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL)
        theirs.close()
        self.asked: list[str] = []
        self.results: dict[str, tuple] = {}
        self.hello: dict | None = None
        self.done = False  # told that nothing more will be asked

    def ask(self, name: str, cfg, level: int) -> None:
        self.send({"op": "build", "name": name, "cfg": cfg, "level": level})
        self.asked.append(name)

    def no_more(self) -> None:
        if not self.done:
            self.send({"op": "done"})
            self.done = True

    def send(self, message: dict) -> None:
        try:
            self.sock.send(pickle.dumps(message))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child ended (its preflight failed): its hello says why

    def next_message(self):
        try:
            message, fds = _receive(self.sock)
        except OSError as e:
            message, fds = None, []
            log.debug("reading from the BPF loader failed: %s", e)
        if message is None:
            code = self.proc.wait()
            raise PodsnoopError(f"the BPF loader process exited (code {code}) before it "
                                "sent every program", "see the lines logged before this one; "
                                "report a crash as a podsnoop bug")
        return message, fds

    def wait_hello(self) -> dict:
        if self.hello is None:
            self.hello, _ = self.next_message()
        return self.hello

    def result(self, name: str):
        self.wait_hello()
        while name not in self.results:
            message, fds = self.next_message()
            self.results[message["name"]] = (message, fds)
        return self.results.pop(name)

    def finished(self) -> bool:
        return self.done and not self.asked

    def close(self) -> None:
        for message, fds in self.results.values():  # received, never asked for
            for fd in fds:
                os.close(fd)
        self.results.clear()
        self.sock.close()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ProgramLoader:
    """Compiles in loader children; hands the serving process FdPrograms."""

    def __init__(self, cfg, loaders: int | None = None):
        self.cfg = cfg
        self.names = enabled(cfg)
        n = loaders or loader_count(len(self.names))
        self.loaders = [_Loader(cfg.log_level) for _ in range(n)]
        self.owner: dict[str, _Loader] = {}
        self._load: dict[int, float] = {}   # id(loader) -> expected seconds of work
        self._btf: set[int] = set()          # loaders that will parse BTF

    def preflight(self) -> None:
        """Every child imported bcc and found the kernel headers, or the first's error."""
        for loader in self.loaders:
            hello = loader.wait_hello()
            if "error" in hello:
                raise PodsnoopError(hello["error"], hello.get("fix"))

    def request(self, level: int | None, names: list[str] | None = None,
                last: bool = True) -> None:
        """Ask for programs (default: every enabled one not asked for yet) now, spread over
        the children by expected compile time, in the order they will be asked for. `last`:
        nothing more will be asked (the children exit once done)."""
        def cost(loader, name):
            extra = BTF_WEIGHT if needs_btf(name, self.cfg) and id(loader) not in self._btf \
                else 0
            return self._load.get(id(loader), 0.0) + WEIGHTS.get(name, 0.3) + extra

        for name in self.names if names is None else names:
            if name in self.owner:
                continue
            loader = min(self.loaders, key=lambda x: cost(x, name))
            self._load[id(loader)] = cost(loader, name)
            if needs_btf(name, self.cfg):
                self._btf.add(id(loader))
            loader.ask(name, self.cfg, level)
            self.owner[name] = loader
        if last:
            for loader in self.loaders:
                loader.no_more()

    def get(self, name: str, level: int) -> FdProgram:
        if name not in self.owner:  # not asked for ahead: a child that still takes work
            loader = next((x for x in self.loaders if not x.done), None)
            if loader is None:
                loader = _Loader(self.cfg.log_level)
                self.loaders.append(loader)
            hello = loader.wait_hello()
            if "error" in hello:
                raise PodsnoopError(hello["error"], hello.get("fix"))
            loader.ask(name, self.cfg, level)
            loader.no_more()
            self.owner[name] = loader
        loader = self.owner[name]
        hello = loader.wait_hello()  # bcc and the headers are there, or why not
        if "error" in hello:
            raise PodsnoopError(hello["error"], hello.get("fix"))
        message, fds = loader.result(name)
        loader.asked.remove(name)
        del self.owner[name]
        if loader.finished():
            loader.close()  # the child exits by itself: reap it
        if "error" in message:
            for fd in fds:
                os.close(fd)
            if message.get("reason"):  # this kernel cannot run it: the collector may go off
                raise CollectorUnavailable(message["error"], message.get("fix"),
                                           message["reason"])
            raise PodsnoopError(message["error"], message.get("fix"))
        return _program(message, fds)

    def close(self) -> None:
        for loader in self.loaders:
            if loader.proc.poll() is None and not loader.finished():
                loader.proc.kill()
            loader.close()


def _program(message: dict, fds: list[int]) -> FdProgram:
    tables = {}
    for name, index, ttype, max_entries, flags, key, leaf, event in message["tables"]:
        tables[name] = FdTable(name, fds[index], ttype, max_entries, flags, key, leaf, event)
    funcs = {name: fds[index] for name, index in message["funcs"]}
    attachments = [fds[index] for index in message["attachments"]]
    return FdProgram(message["name"], tables, funcs, attachments, message.get("info"))


_active: ProgramLoader | None = None


def start(cfg, need_tracefs: bool) -> ProgramLoader:
    """The serving process's preflight and the loaders' start: privileges and tracefs are
    checked here; bcc and the kernel headers by the children (importing bcc here is what
    this avoids), whose answer the first load() raises if it is an error. The programs
    that do not depend on the kubepods cgroup level start compiling at once, while the
    serving process goes on (HTTP server, cgroup walk) until request()."""
    global _active
    bpfload.check_privileges()
    stop()
    _active = ProgramLoader(cfg)
    try:
        if need_tracefs:
            bpfload.ensure_tracefs()
        _active.request(None, [n for n in _active.names if n in LEVEL_FREE], last=False)
    except BaseException:
        stop()
        raise
    return _active


def request(resolver) -> None:
    """Start compiling every enabled program (resolver: its kubepods roots' cgroup level)."""
    from .kuberoots import choose_level
    if _active is not None:
        _active.request(choose_level(resolver))


def load(name: str, cfg, resolver=None) -> FdProgram:
    """The compiled and loaded program `name` (see BUILDERS), as fds in this process."""
    global _active
    from .kuberoots import DEFAULT_LEVEL, choose_level
    level = choose_level(resolver) if resolver is not None else DEFAULT_LEVEL
    if _active is None:  # outside app.run(): a loader for just this one
        _active = ProgramLoader(cfg, loaders=1)
        _active.preflight()
    return _active.get(name, level)


def stop() -> None:
    """Kill loader children still running (after an error) and reap them."""
    global _active
    if _active is not None:
        _active.close()
        _active = None

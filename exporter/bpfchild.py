"""The loader process: compile and load podsnoop's BPF programs with bcc, hand their fds to
the serving process, exit. Started by exporter/loader.py; see there for why.

Protocol, over a SOCK_SEQPACKET unix socket (one pickled dict per message, fds as
SCM_RIGHTS): the child first answers {"hello": True} or the preflight's {"error", "fix"};
then takes {"op": "build", "name", "cfg", "level"} requests until {"op": "done"} or the
end of the stream, answering each with the program's description and fds, or with
{"name", "error", "fix"} (after a failed preflight it reads them and answers none). It never cleans up what it loaded (bcc's atexit cleanup would
disable the tracepoint perf events the serving process now shares): it leaves with
os._exit, and the serving process's copies of the fds keep everything alive.
"""
from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import socket
import sys
import time

from . import bpfload
from .bpffd import PERCPU_TYPES, MAP_RINGBUF, type_spec
from .errors import CollectorUnavailable, PodsnoopError
from .loader import BUILDERS, MAX_MESSAGE

log = logging.getLogger("podsnoop.loader")
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)


def describe(name: str, bpf, spec: dict) -> tuple[dict, list[int]]:
    """The program's maps, functions and fd-lifetime attachments: (message, fds)."""
    from bcc import BPF
    from bcc.libbcc import lib
    from bcc.table import _get_event_class
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]       # not declared by bcc's libbcc.py
    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.bpf_table_name.restype = ctypes.c_char_p
    for fn, prog_type in spec.get("functions", ()):
        bpfload.load_function(bpf, fn, getattr(BPF, prog_type), f"{spec['program']}.c")
    for kind in ("kprobe_fds", "uprobe_fds", "kfunc_entry_fds", "kfunc_exit_fds", "lsm_fds",
                 "perf_buffers", "open_perf_events"):
        if getattr(bpf, kind, None):
            raise PodsnoopError(f"{name}.c uses {kind}, which the loader cannot hand over",
                                "report this as a podsnoop bug")
    fds: list[int] = []

    def index(fd: int) -> int:
        fds.append(fd)
        return len(fds) - 1

    tables = []
    for i in range(lib.bpf_num_tables(bpf.module)):
        table_name = lib.bpf_table_name(bpf.module, i).decode()
        try:
            t = bpf[table_name]
        except Exception as e:  # e.g. task storage: bcc has no table type for it, and only
            log.debug("%s: map %s not handed over: %s", name, table_name, e)  # BPF uses it
            continue
        event = None
        if t.ttype == MAP_RINGBUF and lib.bpf_perf_event_fields(bpf.module, t._name) > 0:
            try:
                event = type_spec(_get_event_class(t))
            except (Exception, SystemExit):  # bcc exits on a type it cannot map
                event = None
        leaf = t.sLeaf if t.ttype in PERCPU_TYPES else t.Leaf
        tables.append((table_name, index(t.map_fd), t.ttype, t.max_entries, t.flags,
                       type_spec(t.Key), type_spec(leaf), event))
    funcs = [(fn.decode() if isinstance(fn, bytes) else fn, index(f.fd))
             for fn, f in bpf.funcs.items()]
    attachments = [index(fd) for fd in (*bpf.tracepoint_fds.values(),
                                        *bpf.raw_tracepoint_fds.values())]
    message = {"name": name, "tables": tables, "funcs": funcs, "attachments": attachments,
               "info": spec.get("info") or {}}
    return message, fds


def build(request: dict, keep: list) -> tuple[dict, list[int]]:
    name = request["name"]
    try:
        t0 = time.monotonic()
        spec = BUILDERS[name](request["cfg"], request["level"])
        t1 = time.monotonic()
        try:
            bpf = bpfload.compile_program(spec["program"], spec["cflags"])
        except CollectorUnavailable as e:
            if not spec.get("fallback"):
                raise
            # A feature BTF cannot show (e.g. task storage for tracing programs, 5.13,
            # where the map type exists since 5.11): the builder's second choice.
            cflags, why = spec["fallback"]
            log.info("%s: %s (%s): using the fallback", name, why, e.message)
            bpf = bpfload.compile_program(spec["program"], cflags)
        keep.append(bpf)  # alive until os._exit: no cleanup, no __del__
        described = describe(name, bpf, spec)
        log.debug("%s: flags in %.2f s, compiled and loaded in %.2f s", name, t1 - t0,
                  time.monotonic() - t1)
        return described
    except PodsnoopError as e:
        return {"name": name, "error": e.message, "fix": e.fix,
                "reason": getattr(e, "reason", None)}, []
    except Exception as e:  # noqa: BLE001 - still one clean line in the serving process
        log.exception("loading the %s program failed", name)
        return {"name": name, "error": f"loading the {name} BPF program failed: {e}",
                "fix": "see the traceback logged above; report it as a podsnoop bug"}, []


def main(argv: list[str]) -> int:
    sock_fd, parent_pid, log_level = int(argv[0]), int(argv[1]), argv[2]
    _die_with_parent(parent_pid)
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = socket.socket(fileno=sock_fd)
    keep: list = []
    try:
        try:
            bpfload.import_bcc()
            bpfload.check_kernel_headers()
            hello = {"hello": True}
        except PodsnoopError as e:
            hello = {"error": e.message, "fix": e.fix}
        sock.send(pickle.dumps(hello))
        log.debug("loader %d: bcc imported, headers found", os.getpid())
        while True:
            data = sock.recv(MAX_MESSAGE)
            if not data:
                break
            request = pickle.loads(data)
            if request.get("op") != "build":
                break
            if "error" in hello:
                continue  # read (not answered) until the end: leaving requests unread
                #           would reset the socket and lose the hello with the error
            message, fds = build(request, keep)
            socket.send_fds(sock, [pickle.dumps(message)], fds)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the serving process is gone or gave up: nothing to hand over
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0

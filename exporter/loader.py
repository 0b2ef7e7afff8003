"""Podsnoop's BPF programs: what each precompiled object (bpf/<name>.bpf.o, CO-RE, built by
clang at build time) is given before its load, and the load itself, by libbpf in the
serving process (exporter/bpfobject.py).

Nothing is compiled at start: what differs per start, per node or per kernel is set before
the load instead (.rodata constants, map sizes, program variants and maps left out), from
the configuration, the kubepods cgroup level and what the kernel has (exporter/kfeatures.py
probes, tracefs fields). A load takes tens of milliseconds and maps no compiler, so there
is no loader process any more; bcc is imported only for user programs in bcc C
(exporter/programs/).
"""
from __future__ import annotations

import logging
import mmap

from . import bpfload, names
from .bpffd import FdProgram
from .errors import CollectorUnavailable

log = logging.getLogger(__name__)

LATENCY_MAX_ENTRIES = 32768
INFLIGHT_MAX_ENTRIES = 32768   # threads in a syscall at once, where task storage is missing


# -- what each object is given before its load ----------------------------------------
def _net_object(cfg, level):
    from .bpffd import possible_cpus
    from .collectors.netbuckets import entries
    ingress, egress = names.HOOK_DIRECTIONS["sidecar" if cfg.mode == "sidecar" else "node"]
    ncpus = possible_cpus()
    return dict(rodata={"ingress_dir": ingress, "egress_dir": egress, "ncpus": ncpus,
                        "use_buckets": int(cfg.net_buckets > 0),
                        "net_bucket_mask": max(cfg.net_buckets - 1, 0)},
                max_entries={"net_counters": cfg.net_map_entries,
                             "net_buckets": entries(cfg.net_buckets, ncpus)})


def _syscalls_object(cfg, level):
    from . import kfeatures
    variant = "counts"
    if cfg.syscall_latency:
        variant = "task" if kfeatures.tracing_task_storage() else "hash"
        if variant == "hash":
            log.info("syscalls: no task storage for tracing programs on this kernel (5.13+): "
                     "the latency keeps syscalls in flight in a per-thread hash")
    programs = {"task": ("sys_enter__task", "sys_exit__task"),
                "hash": ("sys_enter__hash", "sys_exit__hash"), "counts": ("sys_exit__counts",)}
    return dict(
        rodata=dict(**_pod_filter(level, cfg.syscall_scope == "pods"),
                    latency_every=cfg.syscall_latency_every),
        max_entries={"syscall_counts": cfg.syscall_map_entries,
                     "syscall_latency": LATENCY_MAX_ENTRIES,
                     "syscall_inflight_hash": INFLIGHT_MAX_ENTRIES},
        autoload={p: v == variant for v, progs in programs.items() for p in progs},
        autocreate={"syscall_inflight": variant == "task",
                    "syscall_inflight_hash": variant == "hash"})


def _pod_filter(level: int, filter_pods: bool = True) -> dict[str, int]:
    """bpf/podfilter.bpf.h's constants."""
    from . import kfeatures
    return dict(filter_pods=int(filter_pods), kubepods_level=level,
                ancestor_helper=int(kfeatures.tracing_ancestor_cgroup_helper()),
                task_btf=int(kfeatures.tracing_task_btf()))


def _exec_object(cfg, level):
    from .bpfconsts import EXEC_RINGBUF_PAGES
    # the ring buffer exists either way (the program refers to it), at one page when off
    pages = EXEC_RINGBUF_PAGES if cfg.exec_log else 1
    return dict(rodata=dict(**_pod_filter(level), send_events=int(cfg.exec_log > 0)),
                max_entries={"exec_counts": cfg.exec_map_entries,
                             "exec_events": pages * mmap.PAGESIZE},
                events={"exec_events": "exec_event"})


def _cgroup_net_object(cfg, level):
    return dict(max_entries={"container_net": cfg.container_net_map_entries})


def _dns_object(cfg, level):
    n = cfg.dns_map_entries
    return dict(rodata={"timeout_ns": round(cfg.dns_timeout * 1e9),
                        "count_domains": int(cfg.dns_domains > 0)},
                max_entries={"dns_inflight": n, "dns_requests": n, "dns_latency": n,
                             "dns_domains": n if cfg.dns_domains else 1})


def _peers_object(cfg, level):
    n = cfg.peer_map_entries
    return dict(rodata=dict(**_pod_filter(level), cidr_count=len(cfg.peer_cidrs)),
                max_entries={"peer_traffic": n, "peer_connects": max(n // 2, 64),
                             "peer_connecting": cfg.tcp_map_entries,
                             "peer_addrs": cfg.peer_address_entries,
                             "peer_cidrs": max(len(cfg.peer_cidrs), 1)})


def _tcp_object(cfg, level):
    from .collectors.tcp import COUNTER_ENTRIES_PER_MAP
    # the tracepoint's err argument (6.18 has it): a program reading it cannot attach where
    # it is missing, so the field decides
    has_err = "err" in bpfload.tracepoint_fields("tcp", "tcp_retransmit_skb")
    return dict(rodata=dict(**_pod_filter(level), retransmit_has_err=int(has_err)),
                max_entries={"tcp_connecting": cfg.tcp_map_entries,
                             **{m: COUNTER_ENTRIES_PER_MAP for m in (
                                 "tcp_connect_latency", "tcp_connect_failures",
                                 "tcp_retransmits")}})


def _drops_object(cfg, level):
    from . import btf
    from .collectors.drops import host_netns_inum, reason_names, subsystem_names
    fields = bpfload.tracepoint_fields("skb", "kfree_skb")
    if "reason" not in fields:  # 5.10: the raw tracepoint has no reason argument either
        raise CollectorUnavailable("the skb:kfree_skb tracepoint of this kernel has no drop "
                                   "reason (it came in 5.17)",
                                   "run on kernel 5.17 or later for drops",
                                   reason="kernel<5.17: drop reasons")
    inum, sidecar = host_netns_inum(), cfg.mode == "sidecar"
    b = btf.vmlinux_enums("skb_drop_reason", "skb_drop_reason_subsys")  # the reason names
    info = {"reasons": reason_names(b), "subsystems": subsystem_names(b)}
    # A sidecar counts only its own (the pod's) network namespace: bpf/drops.bpf.c. rx_sk
    # (the tracepoint's 4th argument) came with the field, in 6.11: attaching a program
    # that reads it where it is missing fails, so the field decides.
    return dict(rodata=dict(host_netns_inum=0 if sidecar else inum,
                            only_netns_inum=inum if sidecar else 0,
                            count_not_specified=int(cfg.drop_not_specified),
                            has_rx_sk=int("rx_sk" in fields)),
                max_entries={"drop_counts": cfg.drop_map_entries}, info=info)


def _resize_object(cfg, level):
    from .resize.programs import EVENT_EXEC, EVENT_EXIT, MAX_LIVE, MAX_RULES, RINGBUF_PAGES
    return dict(rodata={"resize_event_exec": EVENT_EXEC, "resize_event_exit": EVENT_EXIT},
                max_entries={"resize_rules": MAX_RULES, "resize_live": MAX_LIVE,
                             "resize_events": RINGBUF_PAGES * mmap.PAGESIZE},
                events={"resize_events": "resize_event"})


OBJECTS = {"net": _net_object, "syscalls": _syscalls_object, "exec": _exec_object,
           "tcp": _tcp_object, "cgroup_net": _cgroup_net_object, "dns": _dns_object,
           "peers": _peers_object, "drops": _drops_object, "resize": _resize_object}


def load_object(name: str, cfg, level: int) -> FdProgram:
    from . import bpfobject
    return bpfobject.load(bpfload.OBJECT_DIR / f"{name}.bpf.o", name,
                          **OBJECTS[name](cfg, level))


def start(cfg, need_tracefs: bool) -> None:
    """The serving process's preflight: privileges, and tracefs where a collector reads a
    tracepoint's format (drops, tcp) or a user program attaches through it."""
    bpfload.check_privileges()
    if need_tracefs:
        bpfload.ensure_tracefs()


def load(name: str, cfg, resolver=None) -> FdProgram:
    """The loaded program `name` (see OBJECTS), as fds in this process; resolver: its
    kubepods roots' cgroup level, for the programs with a pod filter."""
    from .kuberoots import DEFAULT_LEVEL, choose_level
    level = choose_level(resolver) if resolver is not None else DEFAULT_LEVEL
    return load_object(name, cfg, level)

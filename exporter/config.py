"""Command-line flags, each also settable by a PODSNOOP_* environment variable.

Bad values end in one argparse error line (exit 2), never a traceback.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass

from . import __version__

DEFAULT_PORT = 9435
# Prometheus marks a vanished series stale after 5 minutes; keep a gone pod's final
# counters one 30 s scrape beyond that so the last increments are scraped.
DEFAULT_GRACE_SECONDS = 330.0


def on_off(value: str) -> bool:
    v = value.strip().lower()
    if v not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{value!r} is not on or off")
    return v == "on"


def syscall_list(value: str) -> frozenset[str] | None:
    from .syscall_names import syscall_number
    items = frozenset(x.strip() for x in value.split(",") if x.strip())
    if not items:
        return None
    unknown = sorted(x for x in items if syscall_number(x) is None and x != "other")
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown syscall name(s): {', '.join(unknown)}")
    return items


def peer_cidrs(value: str) -> tuple:
    """--peer-cidrs "corp=10.0.0.0/8,172.16.0.0/12;vpn=100.64.0.0/10" -> ((name, net), ...)"""
    from .peers import parse_cidrs
    try:
        return tuple(parse_cidrs(e for e in value.split(";") if e.strip()))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def label_keys(value: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    bad = [k for k in keys if not re.fullmatch(r"([A-Za-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?", k)]
    if bad:
        raise argparse.ArgumentTypeError(f"not a Kubernetes label key: {', '.join(bad)}")
    return keys


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    kube: str
    kubeconfig: str | None
    node_name: str | None
    log_level: str
    interfaces: str | None
    tc_priority: int
    grace_seconds: float
    net_map_entries: int
    syscalls: bool
    syscall_scope: str
    syscall_top: int
    syscall_allowlist: frozenset[str] | None
    syscall_series_cap: int
    syscall_map_entries: int
    pod_labels: tuple[str, ...]
    kubepods_root: str | None
    # Issue 7 features; defaults here too, so a Config built without them keeps working.
    exec: bool = True
    exec_top: int = 10
    exec_series_cap: int = 10000
    exec_map_entries: int = 16384
    exec_log: int = 0
    tcp: bool = True
    tcp_map_entries: int = 65536
    drops: bool = True
    drop_not_specified: bool = True
    drop_map_entries: int = 16384
    container_network: bool = False
    container_net_map_entries: int = 16384
    dns: bool = True
    dns_timeout: float = 5.0
    dns_map_entries: int = 16384
    dns_domains: int = 0
    # Peers per pod (issue 21).
    peers: bool = True
    peer_top: int = 10
    peer_series_cap: int = 10000
    peer_cidrs: tuple = ()   # ((name, ipaddress network), ...)
    peer_map_entries: int = 32768
    peer_address_entries: int = 65536
    net_buckets: int = 256
    # Resize on exec (issue 8).
    resize: str = "off"
    resize_hold_seconds: float = 30.0
    resize_min_interval: float = 5.0
    # Node exporter or a pod's sidecar (issue 12); "auto" is resolved at start (mode.py).
    mode: str = "auto"
    tc_attach: str = "auto"
    bpf_stats: str = "sampled"
    bpf_stats_window: float = 0.2
    bpf_stats_interval: float = 120.0
    syscall_latency: bool = True
    # One call in 16 of each thread is timed: the two clock reads were most of a tracked
    # syscall's cost (bench/floor.py, figures in bench/RESULTS.md); the counts stay exact
    # and a histogram's quantiles do not depend on the sampling.
    syscall_latency_every: int = 16
    pod_info_dir: str = "/etc/podinfo"
    # Web conventions (issue 15).
    web_config_file: str | None = None
    max_requests: int = 40
    programs: str | None = None  # user programs (issue 14)
    program_crds: bool = False
    # Flags the user set (command line or environment), by Config field name: a collector
    # this kernel cannot run turns off alone only when its flag was left at the default.
    explicit: frozenset[str] = frozenset()

    def is_explicit(self, field: str) -> bool:
        return field in self.explicit


def listen_address(value: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d+)", value.strip())
    if not m or not 0 <= int(m.group(2)) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:{DEFAULT_PORT})")
    host = m.group(1) or "0.0.0.0"
    try:
        host.encode("idna")   # what getaddrinfo does; a bad name raises UnicodeError there
    except UnicodeError as e:
        raise argparse.ArgumentTypeError(f"{value!r}: {host!r} is not a valid host name "
                                         f"({e})") from None
    return (host, int(m.group(2)))


def regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a valid regular expression: {e}")
    return value


def bounded_int(lo: int, hi: int):
    def parse(value: str) -> int:
        try:
            n = int(value, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{n} is outside {lo}..{hi}")
        return n
    return parse


def power_of_two(hi: int):
    def parse(value: str) -> int:
        n = bounded_int(0, hi)(value)
        if n & (n - 1):
            raise argparse.ArgumentTypeError(f"{n} is not 0 or a power of two")
        return n
    return parse


def seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 <= n <= 86400:
        raise argparse.ArgumentTypeError(f"{n} is outside 0..86400 seconds")
    return n


def positive_seconds(value: str) -> float:
    n = seconds(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{n:g} must be more than 0 seconds")
    return n


# (flag, env var, default, type, help, extra argparse kwargs)
FLAGS = [
    ("--mode", "PODSNOOP_MODE", "auto", str.lower,
     "node: count every pod through its host veth (a DaemonSet in the host network "
     "namespace); sidecar: count only this pod, from inside it; auto: node in the host's "
     "network namespace, else sidecar", {"choices": ["auto", "node", "sidecar"]}),
    ("--pod-info-dir", "PODSNOOP_POD_INFO_DIR", "/etc/podinfo", str,
     "sidecar mode: a downward API volume (files uid, name, namespace, labels) used where "
     "POD_UID, POD_NAME, POD_NAMESPACE are not set", {}),
    ("--listen", "PODSNOOP_LISTEN", f"0.0.0.0:{DEFAULT_PORT}", listen_address,
     "HOST:PORT to serve /metrics, /healthz and /readyz on", {}),
    ("--kube", "PODSNOOP_KUBE", "auto", str,
     "auto: label samples from the Kubernetes API (in-cluster or kubeconfig) when one is "
     "configured; off: pod_uid / container_id labels only", {"choices": ["auto", "off"]}),
    ("--kubeconfig", "KUBECONFIG", None, str, "kubeconfig file for --kube auto", {}),
    ("--node-name", "NODE_NAME", None, str,
     "this node's name, to watch only its pods (default: the hostname)", {}),
    ("--log-level", "PODSNOOP_LOG_LEVEL", "info", str.lower, "log level",
     {"choices": ["debug", "info", "warning", "error"]}),
    ("--interfaces", "PODSNOOP_INTERFACES", None, regex,
     "only attach to host veths whose name fully matches this regex (default: every veth "
     "whose peer is in another network namespace)", {}),
    ("--tc-attach", "PODSNOOP_TC_ATTACH", "auto", str.lower,
     "tcx: attach the packet programs as tcx links at the head of each chain, before any "
     "CNI program (kernel >= 6.6); clsact: classic TC filters (older kernels); auto: tcx "
     "where the kernel has it", {"choices": ["auto", "tcx", "clsact"]}),
    ("--tc-priority", "PODSNOOP_TC_PRIORITY", "50000", bounded_int(1, 65535),
     "TC filter priority of podsnoop's programs; higher runs later, after a CNI's filters", {}),
    ("--grace-period", "PODSNOOP_GRACE_PERIOD", str(DEFAULT_GRACE_SECONDS), seconds,
     "seconds a deleted pod's last counters stay exported", {}),
    ("--net-map-entries", "PODSNOOP_NET_MAP_ENTRIES", "16384", bounded_int(64, 1 << 22),
     "capacity of the network counter map (10 entries per interface at most)", {}),
    ("--net-buckets", "PODSNOOP_NET_BUCKETS", f"{Config.net_buckets}", power_of_two(1 << 16),
     "interfaces that count in their own bucket of the packet counters (ifindex modulo "
     "this, a power of two; 2 x 128 bytes per bucket per CPU): the cheapest path per "
     "packet; one whose bucket is taken counts in the --net-map-entries hash (0: all do)",
     {}),
    ("--kubepods-root", "PODSNOOP_KUBEPODS_ROOT", None, str,
     "the kubelet's pod cgroup directory (default: found below the cgroup v2 mount, e.g. "
     "/sys/fs/cgroup/kubepods.slice)", {}),
    ("--pod-labels", "PODSNOOP_POD_LABELS", "", label_keys,
     "comma-separated pod label keys exported on podsnoop_pod_info as label_<key> "
     "(e.g. app,team)", {}),
    ("--bpf-stats", "PODSNOOP_BPF_STATS", "sampled", str.lower,
     "export the kernel's run-time statistics of podsnoop's programs "
     "(podsnoop_bpf_program_run_seconds_total): sampled turns them on for "
     "--bpf-stats-window seconds of every --bpf-stats-interval (timing costs every BPF "
     "program of the node two clock reads per run while on), on keeps them on while "
     "podsnoop runs; needs CAP_SYS_ADMIN unless kernel.bpf_stats_enabled is already 1",
     {"choices": ["sampled", "on", "off"]}),
    ("--bpf-stats-window", "PODSNOOP_BPF_STATS_WINDOW", f"{Config.bpf_stats_window:g}", seconds,
     "seconds the statistics are on in each sampled window", {}),
    ("--bpf-stats-interval", "PODSNOOP_BPF_STATS_INTERVAL", f"{Config.bpf_stats_interval:g}",
     seconds,
     "seconds from one sampled window to the next", {}),
    ("--syscalls", "PODSNOOP_SYSCALLS", "on", on_off,
     "per-container syscall counts, errors and latency (off: the programs are not loaded)", {}),
    ("--syscall-latency", "PODSNOOP_SYSCALL_LATENCY", "on", on_off,
     "the syscall latency histogram; off: counts and errors only, without the sys_enter "
     "program (about half the per-syscall cost for every task of the node)", {}),
    ("--syscall-latency-every", "PODSNOOP_SYSCALL_LATENCY_EVERY",
     f"{Config.syscall_latency_every}", bounded_int(1, 1 << 16),
     "time one syscall in N of each thread for the latency histogram (its _count is then "
     "the timed calls; the call and error counts stay exact; 1: time every call): the two "
     "clock reads are most of a tracked syscall's cost", {}),
    ("--syscall-scope", "PODSNOOP_SYSCALL_SCOPE", "pods", str,
     "pods: count only tasks in kubepods cgroups; all: also host processes (exported with "
     "empty pod labels)", {"choices": ["pods", "all"]}),
    ("--syscall-top", "PODSNOOP_SYSCALL_TOP", "20", bounded_int(0, 500),
     "named syscall series per container; the rest is syscall=\"other\"", {}),
    ("--syscall-allowlist", "PODSNOOP_SYSCALL_ALLOWLIST", "", syscall_list,
     "comma-separated syscall names to export by name instead of the top N (e.g. "
     "read,write,openat); everything else is syscall=\"other\"", {}),
    ("--syscall-series-cap", "PODSNOOP_SYSCALL_SERIES_CAP", "20000", bounded_int(0, 10**7),
     "node-wide cap on named syscall series; beyond it syscalls fold into \"other\"", {}),
    ("--syscall-map-entries", "PODSNOOP_SYSCALL_MAP_ENTRIES", "65536", bounded_int(64, 1 << 22),
     "capacity of the syscall counter map (one entry per cgroup and syscall)", {}),
    ("--exec", "PODSNOOP_EXEC", "on", on_off,
     "per-container exec counts by program name (sched_process_exec; off: not loaded)", {}),
    ("--exec-top", "PODSNOOP_EXEC_TOP", "10", bounded_int(0, 500),
     "named comm series per container; the rest is comm=\"other\"", {}),
    ("--exec-series-cap", "PODSNOOP_EXEC_SERIES_CAP", "10000", bounded_int(0, 10**7),
     "node-wide cap on named exec series; beyond it comms fold into \"other\"", {}),
    ("--exec-map-entries", "PODSNOOP_EXEC_MAP_ENTRIES", "16384", bounded_int(64, 1 << 22),
     "capacity of the exec counter map (one entry per cgroup and comm)", {}),
    ("--exec-log", "PODSNOOP_EXEC_LOG", "0", bounded_int(0, 10000),
     "recent execs kept per pod and served at /execs as JSON lines, for auditing "
     "kubectl exec (0: off, no event stream)", {}),
    ("--tcp", "PODSNOOP_TCP", "on", on_off,
     "per-pod TCP connect latency, connect failures and retransmits (inet_sock_set_state, "
     "tcp_retransmit_skb; off: not loaded)", {}),
    ("--tcp-map-entries", "PODSNOOP_TCP_MAP_ENTRIES", "65536", bounded_int(64, 1 << 22),
     "capacity of the map of connects in progress (one entry per SYN_SENT socket)", {}),
    ("--drops", "PODSNOOP_DROPS", "on", on_off,
     "per-pod packet drops by the kernel's drop reason (skb:kfree_skb; off: not loaded)", {}),
    ("--drop-not-specified", "PODSNOOP_DROP_NOT_SPECIFIED", "on", on_off,
     "also count drops the kernel gives no reason for (reason=\"NOT_SPECIFIED\")", {}),
    ("--drop-map-entries", "PODSNOOP_DROP_MAP_ENTRIES", "16384", bounded_int(64, 1 << 22),
     "capacity of the drop counter map (one entry per place, direction and reason)", {}),
    ("--container-network", "PODSNOOP_CONTAINER_NETWORK", "off", on_off,
     "per-container bytes and packets of the containers' sockets (cgroup_skb programs on "
     "the kubepods roots; off: not loaded)", {}),
    ("--container-net-map-entries", "PODSNOOP_CONTAINER_NET_MAP_ENTRIES", "16384",
     bounded_int(64, 1 << 22),
     "capacity of the per-container network map (two entries per container cgroup)", {}),
    ("--dns", "PODSNOOP_DNS", "on", on_off,
     "per-container DNS requests by query type and response code, and their latency "
     "(cgroup_skb programs on the kubepods roots; off: not loaded)", {}),
    ("--dns-timeout", "PODSNOOP_DNS_TIMEOUT", f"{Config.dns_timeout:g}", positive_seconds,
     "seconds after which an unanswered DNS query counts as rcode=\"timeout\" (once; a "
     "later answer is not counted again)", {}),
    ("--dns-map-entries", "PODSNOOP_DNS_MAP_ENTRIES", f"{Config.dns_map_entries}",
     bounded_int(64, 1 << 22),
     "capacity of each DNS map: queries in flight, request counters (one entry per "
     "container, query type and response code), latency buckets", {}),
    ("--dns-domains", "PODSNOOP_DNS_DOMAINS", "0", bounded_int(0, 100),
     "DNS queries by name: the N names each container asks for most, the rest "
     "domain=\"other\" (0: off, nothing counted by name)", {}),
    ("--peers", "PODSNOOP_PEERS", "on", on_off,
     "per-pod traffic and TCP connects by peer workload, Service, node, --peer-cidrs name "
     "or world (cgroup_skb programs on the kubepods roots, and every pod and Service of "
     "the cluster watched; off: not loaded, not watched)", {}),
    ("--peer-top", "PODSNOOP_PEER_TOP", f"{Config.peer_top}", bounded_int(0, 500),
     "named peers per pod (by bytes); the rest is peer_network=\"other\"", {}),
    ("--peer-series-cap", "PODSNOOP_PEER_SERIES_CAP", f"{Config.peer_series_cap}",
     bounded_int(0, 10**7),
     "node-wide cap on named peers (of all pods); beyond it peers fold into \"other\"", {}),
    ("--peer-cidrs", "PODSNOOP_PEER_CIDRS", "", peer_cidrs,
     "names for outside networks: NAME=PREFIX[,PREFIX...] entries separated by \";\" "
     "(e.g. \"corp=10.0.0.0/8;vpn=100.64.0.0/10\"); other outside addresses are \"world\"",
     {}),
    ("--peer-map-entries", "PODSNOOP_PEER_MAP_ENTRIES", f"{Config.peer_map_entries}",
     bounded_int(64, 1 << 22),
     "capacity of the peer traffic map (one entry per container, peer and direction; the "
     "connect counters get half)", {}),
    ("--peer-address-entries", "PODSNOOP_PEER_ADDRESS_ENTRIES",
     f"{Config.peer_address_entries}", bounded_int(64, 1 << 22),
     "capacity of the kernel's address -> peer table (pod IPs of the cluster, ClusterIPs, "
     "node addresses); addresses beyond it count as \"world\"", {}),
    # Resize on exec (issue 8).
    ("--resize", "PODSNOOP_RESIZE", "off", str.lower,
     "resize annotated pods' containers in place when a named command starts "
     "(podsnoop.io/resize-on-exec); dry-run: log and count, send nothing; off: not loaded",
     {"choices": ["on", "dry-run", "off"]}),
    ("--resize-hold-seconds", "PODSNOOP_RESIZE_HOLD_SECONDS", "30", seconds,
     "seconds after the last matched process exits before the resize down (an annotation's "
     "holdSeconds wins)", {}),
    ("--resize-min-interval", "PODSNOOP_RESIZE_MIN_INTERVAL", "5", seconds,
     "minimum seconds between two resizes of the same container", {}),
    # Web conventions (issue 15).
    ("--web-config-file", "PODSNOOP_WEB_CONFIG_FILE", None, str,
     "TLS, client certificate and basic auth configuration (Prometheus exporter-toolkit "
     "format), read at start; applies to every endpoint but /healthz", {}),
    ("--max-requests", "PODSNOOP_MAX_REQUESTS", "40", bounded_int(0, 100000),
     "scrapes of /metrics answered at once; more get 503 at once (0: no limit)", {}),
    # User programs (issue 14).
    ("--programs", "PODSNOOP_PROGRAMS", None, str,
     "directory of user programs, <name>.yaml (ebpf_exporter's config format) beside its "
     "<name>.bpf.c (bcc C) or compiled <name>.bpf.o, each loaded at start and exported as "
     "podsnoop_<metric>", {}),
    ("--program-crds", "PODSNOOP_PROGRAM_CRDS", "off", on_off,
     "load, replace and unload user programs live from PodsnoopProgram objects "
     "(podsnoop.io/v1alpha1, cluster-scoped; needs --kube auto and list/watch on them)", {}),
]


class EnvValue(str):
    """A default that came from an environment variable: errors name the variable."""

    def __new__(cls, value: str, env: str):
        obj = super().__new__(cls, value)
        obj.env = env
        return obj


def _naming_env(kind):
    def parse(value):
        try:
            return kind(value)
        except (argparse.ArgumentTypeError, ValueError) as e:
            if isinstance(value, EnvValue):
                raise argparse.ArgumentTypeError(f"{value.env}={str(value)!r}: {e}") from None
            raise
    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="podsnoop",
        description="eBPF Prometheus exporter: per-pod network and per-container syscall "
                    "statistics. Every flag can also be set by the environment variable "
                    "shown; the flag wins.",
        epilog="podsnoop top [--help]: a live per-pod view of a podsnoop's /metrics.")
    for flag, env, default, kind, text, extra in FLAGS:
        value = EnvValue(os.environ[env], env) if env in os.environ else default
        p.add_argument(flag, default=value, type=_naming_env(kind),
                       help=f"{text} [env {env}; default {default}]", **extra)
    p.add_argument("--version", action="version", version=f"podsnoop {__version__}")
    return p


def parse(argv: list[str] | None = None) -> Config:
    p = parser()
    a = p.parse_args(argv)  # argparse also types (and rejects) string defaults from the env
    for flag, env, _, _, _, extra in FLAGS:
        value = getattr(a, flag[2:].replace("-", "_"))
        if "choices" in extra and value not in extra["choices"]:
            p.error(f"{env}={value!r}: choose from {', '.join(extra['choices'])}")
    if a.bpf_stats == "sampled" and not 0 < a.bpf_stats_window <= a.bpf_stats_interval:
        p.error(f"--bpf-stats-window {a.bpf_stats_window:g} must be more than 0 and at most "
                f"--bpf-stats-interval {a.bpf_stats_interval:g}")
    host, port = a.listen
    given = sys.argv[1:] if argv is None else argv
    explicit = frozenset(
        flag[2:].replace("-", "_") for flag, env, *_ in FLAGS
        if env in os.environ or any(arg == flag or arg.startswith(flag + "=") for arg in given))
    return Config(host=host, port=port, kube=a.kube, kubeconfig=a.kubeconfig,
                  node_name=a.node_name, log_level=a.log_level, interfaces=a.interfaces,
                  tc_priority=a.tc_priority, grace_seconds=a.grace_period,
                  net_map_entries=a.net_map_entries, net_buckets=a.net_buckets,
                  syscalls=a.syscalls,
                  syscall_scope=a.syscall_scope, syscall_top=a.syscall_top,
                  syscall_allowlist=a.syscall_allowlist,
                  syscall_series_cap=a.syscall_series_cap,
                  syscall_map_entries=a.syscall_map_entries, pod_labels=a.pod_labels,
                  kubepods_root=a.kubepods_root, exec=a.exec, exec_top=a.exec_top,
                  exec_series_cap=a.exec_series_cap, exec_map_entries=a.exec_map_entries,
                  exec_log=a.exec_log, tcp=a.tcp, tcp_map_entries=a.tcp_map_entries,
                  drops=a.drops, drop_not_specified=a.drop_not_specified,
                  drop_map_entries=a.drop_map_entries,
                  container_network=a.container_network,
                  container_net_map_entries=a.container_net_map_entries,
                  dns=a.dns, dns_timeout=a.dns_timeout, dns_map_entries=a.dns_map_entries,
                  dns_domains=a.dns_domains,
                  peers=a.peers, peer_top=a.peer_top, peer_series_cap=a.peer_series_cap,
                  peer_cidrs=a.peer_cidrs, peer_map_entries=a.peer_map_entries,
                  peer_address_entries=a.peer_address_entries,
                  resize=a.resize, resize_hold_seconds=a.resize_hold_seconds,
                  resize_min_interval=a.resize_min_interval, mode=a.mode,
                  tc_attach=a.tc_attach, bpf_stats=a.bpf_stats,
                  bpf_stats_window=a.bpf_stats_window,
                  bpf_stats_interval=a.bpf_stats_interval,
                  syscall_latency=a.syscall_latency,
                  syscall_latency_every=a.syscall_latency_every,
                  pod_info_dir=a.pod_info_dir,
                  web_config_file=a.web_config_file, max_requests=a.max_requests,
                  programs=a.programs, program_crds=a.program_crds, explicit=explicit)

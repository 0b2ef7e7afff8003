"""Names and small PromQL builders shared by the dashboards and the alert rules.

Metric and label names come from exporter/names.py. The few label names that module does not
define yet (drops' direction/reason, the self metrics' map/collector/version) are spelled here
once, next to the label tuple they extend, so nothing else spells them again.
"""

from __future__ import annotations

import os
import sys

try:
    from exporter import names
except ImportError:  # run as a script from a checkout without the package installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from exporter import names


def _label(name: str, group: tuple[str, ...]) -> str:
    """Return `name` after checking that names.py still exports it in `group`."""
    if name not in group:
        raise RuntimeError(f"label {name!r} is no longer in {group!r} (exporter/names.py)")
    return name


# Label names (checked against exporter/names.py).
NAMESPACE = _label("namespace", names.POD_LABELS)
POD = _label("pod", names.POD_LABELS)
POD_UID = _label("pod_uid", names.POD_LABELS)
WORKLOAD_KIND = _label("workload_kind", names.POD_INFO_LABELS)
WORKLOAD = _label("workload", names.POD_INFO_LABELS)
WORKLOAD_KEYS = (NAMESPACE, WORKLOAD_KIND, WORKLOAD)
CONTAINER = _label("container", names.CONTAINER_LABELS)
CONTAINER_ID = _label("container_id", names.CONTAINER_LABELS)
SYSCALL = _label("syscall", names.SYSCALL_LABELS)
INTERFACE = _label("interface", names.NET_LABELS)
PROTOCOL = _label("protocol", names.NET_LABELS)

# Labels names.py does not define (yet): see the module docstring.
DROP_LABELS = names.POD_LABELS + ("direction", "reason")
DIRECTION = _label("direction", DROP_LABELS)
REASON = _label("reason", DROP_LABELS)
MAP = "map"              # podsnoop_bpf_map_*{map}
COLLECTOR = "collector"  # podsnoop_scrape_collector_*{collector}, podsnoop_series_cap_dropped_total
VERSION = "version"      # podsnoop_build_info{version}
# Values of the drops' direction label, from the pod's point of view (names.py: receive = into
# the pod).
RECEIVE = "receive"
TRANSMIT = "transmit"

# Target labels Prometheus adds to every scraped series.
JOB = "job"
INSTANCE = "instance"
# The job name Prometheus gives podsnoop's targets: the ServiceMonitor's job label defaults to
# the Service's name, deploy/service.yaml names the Service this, and the alert rules match it.
JOB_NAME = "podsnoop"


def total(name: str) -> str:
    """The exposed name of a counter (prometheus_client appends _total)."""
    return name + "_total"


# Exposed metric names, as Prometheus stores them.
NET_RX_BYTES = total(names.NET_RECEIVE_BYTES)
NET_TX_BYTES = total(names.NET_TRANSMIT_BYTES)
NET_RX_PACKETS = total(names.NET_RECEIVE_PACKETS)
NET_TX_PACKETS = total(names.NET_TRANSMIT_PACKETS)
NET_DROPS = total(names.NET_DROPS)
SYSCALLS = total(names.SYSCALLS)
SYSCALL_ERRORS = total(names.SYSCALL_ERRORS)
SYSCALL_DURATION_BUCKET = names.SYSCALL_DURATION + "_bucket"
SYSCALL_DURATION_SUM = names.SYSCALL_DURATION + "_sum"
SYSCALL_DURATION_COUNT = names.SYSCALL_DURATION + "_count"
POD_INFO = names.POD_INFO
ATTACHED_INTERFACES = names.ATTACHED_INTERFACES
BPF_MAP_ENTRIES = names.BPF_MAP_ENTRIES
BPF_MAP_MAX_ENTRIES = names.BPF_MAP_MAX_ENTRIES
BPF_MAP_UPDATE_FAILURES = total(names.BPF_MAP_UPDATE_FAILURES)
KUBE_WATCH_RESTARTS = total(names.KUBE_WATCH_RESTARTS)
UNRESOLVED_CGROUPS = names.UNRESOLVED_CGROUPS
SERIES_CAP_DROPPED = total(names.SERIES_CAP_DROPPED)
SCRAPE_COLLECTOR_DURATION = names.SCRAPE_COLLECTOR_DURATION
SCRAPE_COLLECTOR_SUCCESS = names.SCRAPE_COLLECTOR_SUCCESS
COLLECTOR_DISABLED = names.COLLECTOR_DISABLED
BUILD_INFO = names.BUILD_INFO
UP = "up"  # from Prometheus, per target

# Execs, TCP, per-container network (issue 7).
COMM = _label("comm", names.EXEC_LABELS)
EXECS = total(names.EXECS)
EXEC_EVENTS_DROPPED = total(names.EXEC_EVENTS_DROPPED)
TCP_CONNECT_DURATION_BUCKET = names.TCP_CONNECT_DURATION + "_bucket"
TCP_CONNECT_DURATION_SUM = names.TCP_CONNECT_DURATION + "_sum"
TCP_CONNECT_DURATION_COUNT = names.TCP_CONNECT_DURATION + "_count"
TCP_CONNECT_FAILURES = total(names.TCP_CONNECT_FAILURES)
TCP_RETRANSMITS = total(names.TCP_RETRANSMITS)
CNET_RX_BYTES = total(names.CONTAINER_NET_RECEIVE_BYTES)
CNET_TX_BYTES = total(names.CONTAINER_NET_TRANSMIT_BYTES)
CNET_RX_PACKETS = total(names.CONTAINER_NET_RECEIVE_PACKETS)
CNET_TX_PACKETS = total(names.CONTAINER_NET_TRANSMIT_PACKETS)
# DNS per container (issue 21).
QTYPE = _label("qtype", names.DNS_REQUEST_LABELS)
RCODE = _label("rcode", names.DNS_REQUEST_LABELS)
DNS_REQUESTS = total(names.DNS_REQUESTS)
DNS_DURATION_BUCKET = names.DNS_REQUEST_DURATION + "_bucket"
DNS_DURATION_SUM = names.DNS_REQUEST_DURATION + "_sum"
DNS_DURATION_COUNT = names.DNS_REQUEST_DURATION + "_count"
# rcodes that mean the resolver failed the client (not an answer about the name)
DNS_FAILURE_RCODES = names.DNS_FAILURE_RCODES
# Peers per pod (issue 21): who the other end is, one of four labels set.
PEER_NAMESPACE = _label("peer_namespace", names.PEER_ID_LABELS)
PEER_WORKLOAD = _label("peer_workload", names.PEER_ID_LABELS)
PEER_SERVICE = _label("peer_service", names.PEER_ID_LABELS)
PEER_NETWORK = _label("peer_network", names.PEER_ID_LABELS)
PEER_KEYS = (PEER_NAMESPACE, PEER_WORKLOAD, PEER_SERVICE, PEER_NETWORK)
PEER_BYTES = total(names.PEER_BYTES)
PEER_PACKETS = total(names.PEER_PACKETS)
PEER_TCP_CONNECTS = total(names.PEER_TCP_CONNECTS)
PEER_TCP_CONNECT_FAILURES = total(names.PEER_TCP_CONNECT_FAILURES)
BPF_PROGRAM_RUN_SECONDS = total(names.BPF_PROGRAM_RUN_SECONDS)
BPF_PROGRAM_RUNS = total(names.BPF_PROGRAM_RUNS)
BPF_STATS_ENABLED = names.BPF_STATS_ENABLED
BPF_STATS_ON_SECONDS = total(names.BPF_STATS_ON_SECONDS)
NODE_CPUS = names.NODE_CPUS
PROGRAM = "program"      # podsnoop_bpf_program_*{program}

# Every series name podsnoop exposes (what a query may reference, besides `up`).
EXPORTED = frozenset({
    NET_RX_BYTES, NET_TX_BYTES, NET_RX_PACKETS, NET_TX_PACKETS, NET_DROPS,
    SYSCALLS, SYSCALL_ERRORS,
    SYSCALL_DURATION_BUCKET, SYSCALL_DURATION_SUM, SYSCALL_DURATION_COUNT,
    POD_INFO, ATTACHED_INTERFACES, BPF_MAP_ENTRIES, BPF_MAP_MAX_ENTRIES,
    BPF_MAP_UPDATE_FAILURES, KUBE_WATCH_RESTARTS, UNRESOLVED_CGROUPS, SERIES_CAP_DROPPED,
    SCRAPE_COLLECTOR_DURATION, SCRAPE_COLLECTOR_SUCCESS, BUILD_INFO,
    EXECS, EXEC_EVENTS_DROPPED, TCP_CONNECT_DURATION_BUCKET, TCP_CONNECT_DURATION_SUM,
    TCP_CONNECT_DURATION_COUNT, TCP_CONNECT_FAILURES, TCP_RETRANSMITS,
    CNET_RX_BYTES, CNET_TX_BYTES, CNET_RX_PACKETS, CNET_TX_PACKETS,
    DNS_REQUESTS, DNS_DURATION_BUCKET, DNS_DURATION_SUM, DNS_DURATION_COUNT,
    PEER_BYTES, PEER_PACKETS, PEER_TCP_CONNECTS, PEER_TCP_CONNECT_FAILURES,
    BPF_PROGRAM_RUN_SECONDS, BPF_PROGRAM_RUNS, BPF_STATS_ENABLED, BPF_STATS_ON_SECONDS,
    NODE_CPUS,
})


def sel(metric: str, *matchers: str) -> str:
    """`metric{m1, m2}` (just `metric` without matchers)."""
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def eq(label: str, value: str) -> str:
    return f'{label}="{value}"'


def re(label: str, value: str) -> str:
    return f'{label}=~"{value}"'


def var(label: str) -> str:
    """A matcher on the dashboard variable of the same name: `label=~"$label"`."""
    return re(label, "$" + label)


def by(*labels: str) -> str:
    return f"by ({', '.join(labels)})"


def rate(selector: str, window: str) -> str:
    return f"rate({selector}[{window}])"


def by_workload(per_pod_uid: str, keep: tuple[str, ...] = ()) -> str:
    """A per-pod expression (aggregated `by (namespace, pod_uid, *keep)`) summed per
    workload (and `keep`): joined on pod_uid with podsnoop_pod_info's workload_kind and
    workload. Pods without pod_info (--kube off) drop out of the join."""
    info = (f"max by ({POD_UID}, {WORKLOAD_KIND}, {WORKLOAD}) "
            f"({POD_INFO})")
    return (f"sum by ({', '.join(WORKLOAD_KEYS + keep)}) (\n  {per_pod_uid}\n"
            f"  * on ({POD_UID}) group_left ({WORKLOAD_KIND}, {WORKLOAD})\n  {info}\n)")


def sum_by(labels: tuple[str, ...], inner: str) -> str:
    return f"sum {by(*labels)} ({inner})"

"""Every metric name and label name podsnoop exports, defined once.

Collectors, dashboards, alert rules and tests import these instead of spelling names again.
Direction is from the pod's point of view: traffic leaving the host-side veth (TC egress)
goes *into* the pod, so it is "receive".
"""

NAMESPACE = "podsnoop"

# Labels that identify a pod / container on every per-pod sample. namespace and pod come
# from the Kubernetes index and are "" when unknown (kube off, API down, not a pod); pod_uid
# comes from the cgroup path and is always there for pod traffic.
POD_LABELS = ("namespace", "pod", "pod_uid")
CONTAINER_LABELS = POD_LABELS + ("container", "container_id")

# Network (TC on host-side veths).
NET_RECEIVE_BYTES = "podsnoop_network_receive_bytes"          # _total added by the client
NET_TRANSMIT_BYTES = "podsnoop_network_transmit_bytes"
NET_RECEIVE_PACKETS = "podsnoop_network_receive_packets"
NET_TRANSMIT_PACKETS = "podsnoop_network_transmit_packets"
NET_DROPS = "podsnoop_network_drops"
NET_LABELS = POD_LABELS + ("interface", "protocol")

# Protocol classes counted by bpf/net.c. The index is the value the BPF program stores; the
# loader passes these to the C code as -DPROTO_<NAME>=<index>, so this tuple is the only list.
PROTOCOLS = ("other", "tcp", "udp", "icmp", "icmpv6")

# Directions as stored in the BPF map key (host veth TC hook -> pod's point of view).
DIR_RECEIVE = 0   # host veth egress: into the pod
DIR_TRANSMIT = 1  # host veth ingress: out of the pod

# Syscalls (raw_syscalls tracepoints keyed by cgroup id).
SYSCALLS = "podsnoop_syscalls"
SYSCALL_ERRORS = "podsnoop_syscall_errors"
SYSCALL_DURATION = "podsnoop_syscall_duration_seconds"
SYSCALL_LABELS = CONTAINER_LABELS + ("syscall",)

# Pod metadata to join on (kube-state-metrics' kube_pod_labels pattern).
POD_INFO = "podsnoop_pod_info"

# Self metrics.
ATTACHED_INTERFACES = "podsnoop_attached_interfaces"
INTERFACES_BEHIND_TCX = "podsnoop_interfaces_behind_tcx"
BPF_MAP_ENTRIES = "podsnoop_bpf_map_entries"
BPF_MAP_MAX_ENTRIES = "podsnoop_bpf_map_max_entries"
BPF_MAP_UPDATE_FAILURES = "podsnoop_bpf_map_update_failures"
KUBE_WATCH_RESTARTS = "podsnoop_kube_watch_restarts"
UNRESOLVED_CGROUPS = "podsnoop_unresolved_cgroups"
SERIES_CAP_DROPPED = "podsnoop_series_cap_dropped"
SCRAPE_COLLECTOR_DURATION = "podsnoop_scrape_collector_duration_seconds"
SCRAPE_COLLECTOR_SUCCESS = "podsnoop_scrape_collector_success"
BUILD_INFO = "podsnoop_build_info"

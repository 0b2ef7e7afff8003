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

# Protocol classes counted by bpf/net.bpf.c. The index is the value the BPF program stores; the
# loader passes these to the C code as -DPROTO_<NAME>=<index>, so this tuple is the only list.
PROTOCOLS = ("other", "tcp", "udp", "icmp", "icmpv6")

# Directions as stored in the BPF map key (host veth TC hook -> pod's point of view).
DIR_RECEIVE = 0   # into the pod
DIR_TRANSMIT = 1  # out of the pod
# (TC ingress, TC egress) directions of the interfaces each mode attaches to: node mode the
# host side of pod veths, sidecar mode the pod's own interfaces (bpf/net.bpf.c).
HOOK_DIRECTIONS = {"node": (DIR_TRANSMIT, DIR_RECEIVE), "sidecar": (DIR_RECEIVE, DIR_TRANSMIT)}

# Syscalls (raw_syscalls tracepoints keyed by cgroup id).
SYSCALLS = "podsnoop_syscalls"
SYSCALL_ERRORS = "podsnoop_syscall_errors"
SYSCALL_DURATION = "podsnoop_syscall_duration_seconds"
SYSCALL_LABELS = CONTAINER_LABELS + ("syscall",)

# Execs (sched:sched_process_exec keyed by cgroup id). comm is the new program's name as the
# kernel sets it (basename of the file, at most 15 bytes); top N per container + "other".
EXECS = "podsnoop_exec"                          # _total added by the client
EXEC_LABELS = CONTAINER_LABELS + ("comm",)
EXEC_EVENTS_DROPPED = "podsnoop_exec_events_dropped"  # recent-exec log: events the ring lost

# TCP (sock:inet_sock_set_state, tcp:tcp_retransmit_skb), per pod.
TCP_CONNECT_DURATION = "podsnoop_tcp_connect_duration_seconds"  # SYN_SENT -> ESTABLISHED
TCP_CONNECT_FAILURES = "podsnoop_tcp_connect_failures"          # SYN_SENT -> CLOSE
TCP_RETRANSMITS = "podsnoop_tcp_retransmits"
TCP_LABELS = POD_LABELS

# Drops (skb:kfree_skb) of pod packets; reason is the kernel's skb_drop_reason name without
# its SKB_DROP_REASON_ prefix (e.g. NO_SOCKET), direction is DROP_DIRECTIONS[dir].
NET_DROP_LABELS = POD_LABELS + ("direction", "reason")
DROP_DIRECTIONS = ("receive", "transmit")  # indexed by DIR_RECEIVE / DIR_TRANSMIT

# Per-container network (cgroup_skb programs: L3 packets of the container's sockets).
CONTAINER_NET_RECEIVE_BYTES = "podsnoop_container_network_receive_bytes"
CONTAINER_NET_TRANSMIT_BYTES = "podsnoop_container_network_transmit_bytes"
CONTAINER_NET_RECEIVE_PACKETS = "podsnoop_container_network_receive_packets"
CONTAINER_NET_TRANSMIT_PACKETS = "podsnoop_container_network_transmit_packets"
CONTAINER_NET_LABELS = CONTAINER_LABELS

# DNS per container (cgroup_skb programs: the queries of the container's sockets and their
# responses). qtype: the query type's name (A, AAAA, ...; "other" beyond a fixed set), rcode:
# the response code's name (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...; 11-15 as numbers) or
# "timeout" (bpfconsts.DNS_QTYPES, DNS_RCODES).
DNS_REQUESTS = "podsnoop_dns_requests"                            # _total added by the client
DNS_REQUEST_DURATION = "podsnoop_dns_request_duration_seconds"    # query -> response
DNS_REQUEST_LABELS = CONTAINER_LABELS + ("qtype", "rcode")
DNS_DURATION_LABELS = CONTAINER_LABELS
DNS_TIMEOUT = "timeout"
DNS_FAILURE_RCODES = ("SERVFAIL", "REFUSED", DNS_TIMEOUT)  # a failed request (alert, top)
# --dns-domains N: queries by name, the top N per container and "other".
DNS_DOMAIN_QUERIES = "podsnoop_dns_domain_queries"                # _total added by the client
DNS_DOMAIN_LABELS = CONTAINER_LABELS + ("domain",)

# Peers per pod (issue 21): traffic of the pod's sockets by who is at the other end
# (exporter/peers.py), counted by bpf/peers.bpf.c. One of peer_workload (a pod's controller,
# or a bare pod's name), peer_service (a ClusterIP) or peer_network (a --peer-cidr name,
# PEER_NODE, PEER_WORLD, or PEER_OTHER: the peers beyond the pod's top N) is set.
PEER_ID_LABELS = ("peer_namespace", "peer_workload", "peer_service", "peer_network")
PEER_BYTES = "podsnoop_peer_bytes"                        # _total added by the client
PEER_PACKETS = "podsnoop_peer_packets"
PEER_LABELS = POD_LABELS + ("direction",) + PEER_ID_LABELS   # direction: DROP_DIRECTIONS
PEER_TCP_CONNECTS = "podsnoop_peer_tcp_connects"           # SYN_SENT -> ESTABLISHED
PEER_TCP_CONNECT_FAILURES = "podsnoop_peer_tcp_connect_failures"  # SYN_SENT -> CLOSE
PEER_CONNECT_LABELS = POD_LABELS + PEER_ID_LABELS
PEER_WORLD = "world"
PEER_NODE = "node"
PEER_OTHER = "other"

# Pod metadata to join on (kube-state-metrics' kube_pod_labels pattern).
POD_INFO = "podsnoop_pod_info"
# workload_kind, workload: the pod's controller (Deployment, StatefulSet, DaemonSet,
# CronJob, Job, ...; empty for a bare pod); then label_<key> for --pod-labels.
POD_INFO_LABELS = ("namespace", "pod", "pod_uid", "node", "workload_kind", "workload")

# Self metrics.
ATTACHED_INTERFACES = "podsnoop_attached_interfaces"
INTERFACES_BEHIND_TCX = "podsnoop_interfaces_behind_tcx"
TC_FILTER_REPAIRS = "podsnoop_tc_filter_repairs"        # counter: filters put back
TC_ATTACH_FAILURES = "podsnoop_tc_attach_failures"      # counter
BPF_MAP_ENTRIES = "podsnoop_bpf_map_entries"
BPF_MAP_MAX_ENTRIES = "podsnoop_bpf_map_max_entries"
BPF_MAP_UPDATE_FAILURES = "podsnoop_bpf_map_update_failures"
KUBE_WATCH_RESTARTS = "podsnoop_kube_watch_restarts"
UNRESOLVED_CGROUPS = "podsnoop_unresolved_cgroups"
SERIES_CAP_DROPPED = "podsnoop_series_cap_dropped"
SCRAPE_COLLECTOR_DURATION = "podsnoop_scrape_collector_duration_seconds"
SCRAPE_COLLECTOR_SUCCESS = "podsnoop_scrape_collector_success"
BUILD_INFO = "podsnoop_build_info"
# Each built-in collector: 1 while it counts, 0 where this kernel cannot run it (its flag
# at the default); podsnoop_collector_disabled says why, with one of a few short reasons.
COLLECTOR_UP = "podsnoop_collector_up"                        # label collector
COLLECTOR_DISABLED = "podsnoop_collector_disabled"            # labels collector, reason
# Reasons other than "kernel<X.Y: <feature>" (the feature a kernel lacks, from the loader).
DISABLED_REASONS = ("verifier refused", "map refused", "compile failed", "attach failed",
                    "load failed")
# What podsnoop's programs cost in the kernel, from the kernel's own run-time statistics.
BPF_PROGRAM_RUN_SECONDS = "podsnoop_bpf_program_run_seconds"  # counter, label program
BPF_PROGRAM_RUNS = "podsnoop_bpf_program_runs"                # counter, label program
BPF_STATS_ENABLED = "podsnoop_bpf_stats_enabled"              # 1 while the figures are kept
BPF_STATS_ON_SECONDS = "podsnoop_bpf_stats_on_seconds"        # counter: statistics on (sampled)
NODE_CPUS = "podsnoop_node_cpus"                              # to express them as a share

# Resize on exec (issue 8): pods opt in with this annotation; bpf/resize.bpf.c matches execs in
# the kernel and exporter/resize/ patches the container's resources through the API.
RESIZE_ANNOTATION = "podsnoop.io/resize-on-exec"
RESIZE_ACTIONS = "podsnoop_resize_actions"                  # _total added by the client
RESIZE_ACTION_LABELS = ("namespace", "pod", "container", "direction", "result")
RESIZE_DIRECTIONS = ("up", "down")
RESIZE_RESULTS = ("applied", "failed", "dry_run")
RESIZE_TRIGGER_LATENCY = "podsnoop_resize_trigger_latency_seconds"  # kernel exec -> PATCH sent
RESIZE_ANNOTATION_ERRORS = "podsnoop_resize_annotation_errors"
RESIZE_ANNOTATION_ERROR_LABELS = ("namespace", "pod", "reason")
RESIZE_ARMED = "podsnoop_resize_armed"                      # 1 per container being watched
RESIZE_MATCHED_PROCESSES = "podsnoop_resize_matched_processes"
RESIZE_STATUS = "podsnoop_resize_status"                    # last read-back, 1 on its status
RESIZE_TARGET_LABELS = ("namespace", "pod", "container")
RESIZE_EVENTS_DROPPED = "podsnoop_resize_events_dropped"

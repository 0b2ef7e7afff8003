// podsnoop: per-cgroup TCP connect latency, connect failures and retransmits (precompiled
// CO-RE; loaded by exporter/bpfobject.py).
//
// inet_sock_set_state (args: sk, oldstate, newstate; the protocol is sk->sk_protocol)
//   -> SYN_SENT: runs in the connecting task (connect(2)), so the current cgroup is the
//      pod's: remember (start time, cgroup id) under the socket's address. Only tasks in
//      pods (podfilter.bpf.h).
//   SYN_SENT -> ESTABLISHED: (softirq, on the SYN-ACK) one connect-latency observation for
//      the remembered cgroup: a count and the exact sum in its bucket (buckets.bpf.h).
//   SYN_SENT -> CLOSE: the connect failed (refused, timed out, reset, or abandoned by the
//      application): one failure for the remembered cgroup.
// tcp_retransmit_skb (args: sk, skb[, err]) fires in softirq/timer context, where the
//   current task is unrelated: the socket's own cgroup (sockcgroup.bpf.h) names the pod,
//   for connected and accepted sockets alike, including those opened before podsnoop
//   started. It counts segments, as the kernel's own RetransSegs does: a retransmitted skb
//   carries tcp_skb_pcount() segments (TCP_SKB_CB(skb)->tcp_gso_segs), for
//   retransmissions that went out (err == 0; older kernels fire only then): the kernel's
//   RetransSegs less TCPRetransFail, counted per pod.
//
// Raw tracepoints: a perf-event tracepoint program running on this CPU when the
// retransmit timer's softirq fires cannot make the kernel skip them (bpf_prog_active).
//
// Set before load (.rodata): podfilter.bpf.h's filter_pods, kubepods_level,
// ancestor_helper, and retransmit_has_err (1 where the tracepoint passes err, newer
// kernels: its tracefs format has the field; 0 leaves args[2] unread, which a kernel whose
// tracepoint has two arguments requires to attach). Map sizes are set before load:
// tcp_connecting from --tcp-map-entries, the counters from exporter/collectors/tcp.py.
// CONNECT_BOUNDS_NS, the buckets' upper bounds in ns (defined once in Python, as
// CONNECT_BUCKETS), comes from the build (exporter/bpfconsts.py).
#include "podfilter.bpf.h"
#include "sockcgroup.bpf.h"
#include "buckets.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#ifndef CONNECT_BOUNDS_NS
#error "CONNECT_BOUNDS_NS comes from the build: make -C bpf (exporter/bpfconsts.py)"
#endif

const volatile u32 retransmit_has_err = 0;

// Counters use atomic adds: these programs run both in process context and in softirq,
// and a softirq can interrupt one on the same CPU between the load and the store of a
// plain += on the per-CPU value, losing an update (tests saw retransmits go missing).

struct connect_start {
    u64 start_ns;
    u64 cgroup_id;
};

struct cgroup_key {
    u64 cgroup_id;
};

// Connects in progress, by socket address. LRU: a socket freed without a state change
// cannot leak an entry for good.
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, u64);
    __type(value, struct connect_start);
} tcp_connecting SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct bucket_key);
    __type(value, struct bucket_value);
} tcp_connect_latency SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct cgroup_key);
    __type(value, u64);
} tcp_connect_failures SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct cgroup_key);
    __type(value, u64);
} tcp_retransmits SEC(".maps");

// Inserts lost because a map was full: 0 tcp_connect_latency, 1 tcp_connect_failures,
// 2 tcp_retransmits.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 3);
    __type(key, u32);
    __type(value, u64);
} tcp_update_failures SEC(".maps");

static const u64 connect_bounds_ns[] = {CONNECT_BOUNDS_NS};
#define CONNECT_BOUNDS (sizeof(connect_bounds_ns) / sizeof(connect_bounds_ns[0]))

#define count_failure(slot) count_in_slot(&tcp_update_failures, (slot))


// args: (const struct sock *sk, const int oldstate, const int newstate)
SEC("raw_tp/inet_sock_set_state")
int inet_sock_set_state(struct bpf_raw_tracepoint_args *ctx)
{
    const struct sock *sk = (const struct sock *)ctx->args[0];
    int oldstate = (int)ctx->args[1];
    int newstate = (int)ctx->args[2];
    if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT)
        return 0;
    // u16 since 5.6, an 8-bit bit field before: read either way.
    if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != IPPROTO_TCP)
        return 0;
    u64 skaddr = (u64)sk;
    if (newstate == TCP_SYN_SENT) {
        if (!tracked())
            return 0;
        struct connect_start start = {.start_ns = bpf_ktime_get_ns(),
                                      .cgroup_id = bpf_get_current_cgroup_id()};
        bpf_map_update_elem(&tcp_connecting, &skaddr, &start, BPF_ANY);
        return 0;
    }
    struct connect_start *start = bpf_map_lookup_elem(&tcp_connecting, &skaddr);
    if (!start)
        return 0;
    if (newstate == TCP_ESTABLISHED) {
        u64 ns = bpf_ktime_get_ns() - start->start_ns;
        if (!observe(&tcp_connect_latency, start->cgroup_id,
                     bucket_of(connect_bounds_ns, CONNECT_BOUNDS, ns), ns))
            count_failure(0);
    } else if (newstate == TCP_CLOSE) {
        struct cgroup_key key = {.cgroup_id = start->cgroup_id};
        u64 zero = 0;
        u64 *n = lookup_or_init(&tcp_connect_failures, &key, &zero);
        if (n)
            __sync_fetch_and_add(n, 1);
        else
            count_failure(1);
    }
    bpf_map_delete_elem(&tcp_connecting, &skaddr);
    return 0;
}

// args: (const struct sock *sk, const struct sk_buff *skb[, int err])
SEC("raw_tp/tcp_retransmit_skb")
int tcp_retransmit_skb(struct bpf_raw_tracepoint_args *ctx)
{
    const struct sock *sk = (const struct sock *)ctx->args[0];
    const struct sk_buff *skb = (const struct sk_buff *)ctx->args[1];
    if (retransmit_has_err && (int)ctx->args[2])
        return 0;
    struct cgroup *cgrp = sk_cgroup(sk);
    if (filter_pods && !in_kubepods_root(cgroup_ancestor_id(cgrp, kubepods_level)))
        return 0;
    struct cgroup_key key = {.cgroup_id = cgroup_id_of(cgrp)};
    if (!key.cgroup_id)
        return 0;
    // TCP_SKB_CB(skb)
    const struct tcp_skb_cb *cb = (const struct tcp_skb_cb *)skb->cb;
    u16 segs = BPF_CORE_READ(cb, tcp_gso_segs);
    u64 zero = 0;
    u64 *n = lookup_or_init(&tcp_retransmits, &key, &zero);
    if (n)
        __sync_fetch_and_add(n, segs ? segs : 1);
    else
        count_failure(2);
    return 0;
}

// podsnoop: per-cgroup TCP connect latency, connect failures and retransmits.
//
// sock:inet_sock_set_state
//   -> SYN_SENT: runs in the connecting task (connect(2)), so the current cgroup is the
//      pod's: remember (start time, cgroup id) under the socket's address. Only tasks in
//      pods (podfilter.h).
//   SYN_SENT -> ESTABLISHED: (softirq, on the SYN-ACK) one connect-latency observation for
//      the remembered cgroup: a count and the exact sum in the bucket CONNECT_BUCKET(ns).
//   SYN_SENT -> CLOSE: the connect failed (refused, timed out, reset, or abandoned by the
//      application): one failure for the remembered cgroup.
// tcp:tcp_retransmit_skb fires in softirq/timer context, where the current task is
//   unrelated: the socket's own cgroup (sockcgroup.h) names the pod, for connected and
//   accepted sockets alike, including those opened before podsnoop started. It counts
//   segments, as the kernel's own RetransSegs does: a retransmitted skb carries
//   tcp_skb_pcount() segments (TCP_SKB_CB(skb)->tcp_gso_segs, SKB_TCP_GSO_SEGS_OFF from
//   BTF), for retransmissions that went out (err == 0; older kernels fire only then):
//   the kernel's RetransSegs less TCPRetransFail, counted per pod.
//
// Compiled by bcc at start with -I<bpf dir>. The loader passes FILTER_PODS, KUBEPODS_LEVEL,
// TCP_MAX_ENTRIES, TCP_COUNTER_ENTRIES, CONNECT_BUCKET(ns) (bucket index of a latency, the
// bounds defined once in exporter/collectors/tcp.py), sockcgroup.h's BTF offsets and
// SKB_TCP_GSO_SEGS_OFF and RETRANSMIT_HAS_ERR (the tracepoint passes err: newer kernels).
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <net/tcp_states.h>

#include "podfilter.h"
#include "sockcgroup.h"

// Counters use atomic adds: these programs run both in process context and in softirq,
// and a softirq can interrupt one on the same CPU between the load and the store of a
// plain += on the per-CPU value, losing an update (tests saw retransmits go missing).

struct connect_start {
    u64 start_ns;
    u64 cgroup_id;
};

struct bucket_key {
    u64 cgroup_id;
    u32 bucket;  // index into the bounds; the last one is +Inf
    u32 pad;
};

struct bucket_value {
    u64 count;
    u64 sum_ns;
};

struct cgroup_key {
    u64 cgroup_id;
};

// Connects in progress, by socket address. LRU: a socket freed without a state change
// cannot leak an entry for good.
BPF_TABLE("lru_hash", u64, struct connect_start, tcp_connecting, TCP_MAX_ENTRIES);
BPF_PERCPU_HASH(tcp_connect_latency, struct bucket_key, struct bucket_value, TCP_COUNTER_ENTRIES);
BPF_PERCPU_HASH(tcp_connect_failures, struct cgroup_key, u64, TCP_COUNTER_ENTRIES);
BPF_PERCPU_HASH(tcp_retransmits, struct cgroup_key, u64, TCP_COUNTER_ENTRIES);
// Inserts lost because a map was full: 0 tcp_connect_latency, 1 tcp_connect_failures,
// 2 tcp_retransmits.
BPF_PERCPU_ARRAY(tcp_update_failures, u64, 3);

static __always_inline int tracked(void)
{
#if FILTER_PODS
    u32 zero = 0;
    return in_kubepods_root(kubepods_roots.lookup(&zero), kubepods_root_id());
#else
    return 1;
#endif
}

static __always_inline int sk_tracked(const void *sk)
{
#if FILTER_PODS
    u32 zero = 0;
    return in_kubepods_root(kubepods_roots.lookup(&zero),
                            sk_ancestor_cgroup_id(sk, KUBEPODS_LEVEL));
#else
    return 1;
#endif
}

static __always_inline void count_failure(u32 slot)
{
    u64 *n = tcp_update_failures.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == TCP_SYN_SENT) {
        if (!tracked())
            return 0;
        struct connect_start start = {.start_ns = bpf_ktime_get_ns(),
                                      .cgroup_id = bpf_get_current_cgroup_id()};
        tcp_connecting.update(&sk, &start);
        return 0;
    }
    if (args->oldstate != TCP_SYN_SENT)
        return 0;
    struct connect_start *start = tcp_connecting.lookup(&sk);
    if (!start)
        return 0;
    if (args->newstate == TCP_ESTABLISHED) {
        u64 ns = bpf_ktime_get_ns() - start->start_ns;
        struct bucket_key key = {.cgroup_id = start->cgroup_id, .bucket = CONNECT_BUCKET(ns)};
        struct bucket_value zero = {};
        struct bucket_value *v = tcp_connect_latency.lookup_or_try_init(&key, &zero);
        if (v) {
            __sync_fetch_and_add(&v->count, 1);
            __sync_fetch_and_add(&v->sum_ns, ns);
        } else {
            count_failure(0);
        }
    } else if (args->newstate == TCP_CLOSE) {
        struct cgroup_key key = {.cgroup_id = start->cgroup_id};
        u64 zero = 0;
        u64 *n = tcp_connect_failures.lookup_or_try_init(&key, &zero);
        if (n)
            __sync_fetch_and_add(n, 1);
        else
            count_failure(1);
    }
    tcp_connecting.delete(&sk);
    return 0;
}

// A raw tracepoint (args: sk, skb[, err]), so that a perf-event tracepoint program running
// on this CPU when the retransmit timer's softirq fires cannot make the kernel skip it
// (bpf_prog_active; see bpf/syscalls.c).
RAW_TRACEPOINT_PROBE(tcp_retransmit_skb)
{
    const void *sk = (const void *)ctx->args[0];
    const void *skb = (const void *)ctx->args[1];
#if RETRANSMIT_HAS_ERR
    if ((int)ctx->args[2])
        return 0;
#endif
    if (!sk_tracked(sk))
        return 0;
    struct cgroup_key key = {.cgroup_id = sk_cgroup_id(sk)};
    if (!key.cgroup_id)
        return 0;
    u16 segs = 0;
    bpf_probe_read_kernel(&segs, sizeof(segs), (const char *)skb + SKB_TCP_GSO_SEGS_OFF);
    u64 zero = 0;
    u64 *n = tcp_retransmits.lookup_or_try_init(&key, &zero);
    if (n)
        __sync_fetch_and_add(n, segs ? segs : 1);
    else
        count_failure(2);
    return 0;
}

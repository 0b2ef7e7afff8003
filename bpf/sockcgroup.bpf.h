// podsnoop: a socket's cgroup v2 id, for tracing programs that fire outside the socket
// owner's context (softirq, timers), where bpf_get_current_cgroup_id() names the wrong
// task and bpf_sk_cgroup_id() is not callable (the cgroup half of the bcc programs'
// bpf/sockcgroup.h, in CO-RE form).
//
// Reads sk->sk_cgrp_data.cgroup->kn->id, as bpf_sk_cgroup_id() does in the kernel. The
// sock_cgroup_data cgroup is the cgroup v2 cgroup of the task that created the socket (an
// accepted socket inherits its listener's). Kernels before 5.15 keep that pointer in
// sock_cgroup_data.val instead (the ___val flavors below); which one this kernel has is a
// CO-RE field test, the branch not taken is pruned by the verifier.
#ifndef PODSNOOP_SOCKCGROUP_BPF_H
#define PODSNOOP_SOCKCGROUP_BPF_H

#include "podsnoop.bpf.h"

// Before 5.15: u64 val, a struct cgroup * unless a low bit is set (sock_cgroup_ptr()).
struct sock_cgroup_data___val {
    u64 val;
} __attribute__((preserve_access_index));

struct sock___val {
    struct sock_cgroup_data___val sk_cgrp_data;
} __attribute__((preserve_access_index));

// The socket's cgroup v2 cgroup, or NULL.
static __always_inline struct cgroup *sk_cgroup(const struct sock *sk)
{
    if (!sk)
        return NULL;
    if (bpf_core_field_exists(sk->sk_cgrp_data.cgroup))
        return BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
    u64 val = BPF_CORE_READ((struct sock___val *)sk, sk_cgrp_data.val);
    // Low bits set mean "net_cls/netprio data, the root cgroup": not a pod.
    if (val & 3)
        return NULL;
    return (struct cgroup *)(unsigned long)val;
}

// A cgroup's id, or 0.
static __always_inline u64 cgroup_id_of(struct cgroup *cgrp)
{
    return cgrp ? BPF_CORE_READ(cgrp, kn, id) : 0;
}

// The socket's cgroup id, or 0.
static __always_inline u64 sk_cgroup_id(const struct sock *sk)
{
    return cgroup_id_of(sk_cgroup(sk));
}

#endif

// podsnoop: a socket's cgroup v2 id, for tracepoints that fire outside the socket owner's
// context (softirq, timers), where bpf_get_current_cgroup_id() names the wrong task and
// bpf_sk_cgroup_id() is not callable.
//
// Reads sk->sk_cgrp_data.cgroup->kn->id with bpf_probe_read_kernel, as bpf_sk_cgroup_id()
// does in the kernel. The sock_cgroup_data cgroup is the cgroup v2 cgroup of the task that
// created the socket (an accepted socket inherits its listener's). The offsets come from the
// running kernel's BTF (exporter/btf.py), because the headers bcc compiles against may be
// older than the kernel: SOCK_CGRP_OFF (sock.sk_cgrp_data + sock_cgroup_data.cgroup, or
// .val before 5.15: SOCK_CGRP_IS_VAL 1), CGROUP_KN_OFF, CGROUP_LEVEL_OFF,
// CGROUP_ANCESTORS_OFF (cgroup.ancestors, or .ancestor_ids before 6.0: CGROUP_ANCESTOR_IDS
// 1), KERNFS_ID_OFF,
// SOCK_NET_OFF (sock.__sk_common.skc_net), NET_INUM_OFF (net.ns.inum).
#ifndef PODSNOOP_SOCKCGROUP_H
#define PODSNOOP_SOCKCGROUP_H

static __always_inline void *sk_cgroup(const void *sk)
{
    void *cgrp = NULL;
    if (sk)
        bpf_probe_read_kernel(&cgrp, sizeof(cgrp), (const char *)sk + SOCK_CGRP_OFF);
#if SOCK_CGRP_IS_VAL
    // Kernels before 5.15 keep the pointer in sock_cgroup_data.val, whose low bits set
    // mean "net_cls/netprio data, the root cgroup" (sock_cgroup_ptr()): not a pod.
    if ((unsigned long)cgrp & 3)
        return NULL;
#endif
    return cgrp;
}

static __always_inline u64 cgroup_id_of(const void *cgrp)
{
    void *kn = NULL;
    u64 id = 0;
    if (!cgrp)
        return 0;
    bpf_probe_read_kernel(&kn, sizeof(kn), (const char *)cgrp + CGROUP_KN_OFF);
    if (kn)
        bpf_probe_read_kernel(&id, sizeof(id), (const char *)kn + KERNFS_ID_OFF);
    return id;
}

// The socket's cgroup id, or 0.
static __always_inline u64 sk_cgroup_id(const void *sk)
{
    return cgroup_id_of(sk_cgroup(sk));
}

// Id of a cgroup's ancestor at depth `level` (the cgroup itself at its own depth), or 0
// if the cgroup is shallower: cgroup->ancestors[level].
static __always_inline u64 cgroup_ancestor_id(const void *cgrp, int level)
{
    int own = 0;
    void *ancestor = NULL;
    if (!cgrp)
        return 0;
    bpf_probe_read_kernel(&own, sizeof(own), (const char *)cgrp + CGROUP_LEVEL_OFF);
    if (own < level)
        return 0;
#if CGROUP_ANCESTOR_IDS
    // Kernels before 6.0 keep the ancestors' ids (u64 ancestor_ids[]), not pointers.
    u64 id = 0;
    bpf_probe_read_kernel(&id, sizeof(id),
                          (const char *)cgrp + CGROUP_ANCESTORS_OFF + level * sizeof(u64));
    return id;
#else
    bpf_probe_read_kernel(&ancestor, sizeof(ancestor),
                          (const char *)cgrp + CGROUP_ANCESTORS_OFF + level * sizeof(void *));
    return cgroup_id_of(ancestor);
#endif
}

// Id of the socket's cgroup ancestor at depth `level`, or 0.
static __always_inline u64 sk_ancestor_cgroup_id(const void *sk, int level)
{
    return cgroup_ancestor_id(sk_cgroup(sk), level);
}

// Inode number of the socket's network namespace, or 0.
static __always_inline u32 sk_netns_inum(const void *sk)
{
    void *net = NULL;
    u32 inum = 0;
    if (!sk)
        return 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + SOCK_NET_OFF);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + NET_INUM_OFF);
    return inum;
}

#endif

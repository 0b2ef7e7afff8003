// podsnoop: "is the current task in a pod?", shared by the tracepoint programs.
//
// A task is in a pod when its cgroup v2 ancestor at depth KUBEPODS_LEVEL is one of the
// kubepods root cgroups (kubepods.slice, kubepods, ...; in sidecar mode the pod's own
// cgroup) that userspace keeps in kubepods_roots (exporter/kuberoots.py RootSync). A new
// container is counted from its first event, without userspace having to learn its cgroup
// first. The roots sit in a one-element array, whose lookup the kernel inlines (no helper
// call), and are compared in a short unrolled loop: a host task costs one helper call (the
// ancestor id) and no hash lookup.
//
// bcc rewrites map calls (kubepods_roots.lookup) only in the main source file, not in an
// included header, so each program writes the one-line lookup itself, in the same
// tracked() shape:
//
//     static __always_inline int tracked(void)
//     {
//     #if FILTER_PODS
//         u32 zero = 0;
//         return in_kubepods_root(kubepods_roots.lookup(&zero), kubepods_root_id());
//     #else
//         return 1;
//     #endif
//     }
//
// The including program is compiled with -I<bpf dir> and passes FILTER_PODS,
// KUBEPODS_LEVEL and MAX_KUBEPODS_ROOTS.
#ifndef PODSNOOP_PODFILTER_H
#define PODSNOOP_PODFILTER_H

// Ids of the kubepods root cgroups, maintained by userspace; unused slots are 0.
struct kubepods_root_ids {
    u64 ids[MAX_KUBEPODS_ROOTS];
};
BPF_ARRAY(kubepods_roots, struct kubepods_root_ids, 1);

// The current task's ancestor cgroup at the kubepods roots' depth.
static __always_inline u64 kubepods_root_id(void)
{
    return bpf_get_current_ancestor_cgroup_id(KUBEPODS_LEVEL);
}

static __always_inline int in_kubepods_root(const struct kubepods_root_ids *roots, u64 id)
{
    if (!roots || !id)
        return 0;
#pragma unroll
    for (int i = 0; i < MAX_KUBEPODS_ROOTS; i++)
        if (roots->ids[i] == id)
            return 1;
    return 0;
}

#endif

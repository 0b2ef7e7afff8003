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
// KUBEPODS_LEVEL, MAX_KUBEPODS_ROOTS and ANCESTOR_HELPER (0: the offsets too), all from
// exporter/kuberoots.py filter_defines().
#ifndef PODSNOOP_PODFILTER_H
#define PODSNOOP_PODFILTER_H

// Ids of the kubepods root cgroups, maintained by userspace; unused slots are 0.
struct kubepods_root_ids {
    u64 ids[MAX_KUBEPODS_ROOTS];
    u64 gen;  // bumped after each change (the precompiled programs' verdict caches)
};
BPF_ARRAY(kubepods_roots, struct kubepods_root_ids, 1);

#if ANCESTOR_HELPER
// The current task's ancestor cgroup at the kubepods roots' depth.
static __always_inline u64 kubepods_root_id(void)
{
    return bpf_get_current_ancestor_cgroup_id(KUBEPODS_LEVEL);
}
#else
// Kernels whose tracing programs may not call bpf_get_current_ancestor_cgroup_id (before
// 5.14): the same id read from the task, task->cgroups->dfl_cgrp, with BTF offsets
// (TASK_CGROUPS_OFF, CSS_SET_DFL_CGRP_OFF and sockcgroup.h's cgroup ones).
#include "sockcgroup.h"

static __always_inline u64 kubepods_root_id(void)
{
    const char *task = (const char *)bpf_get_current_task();
    void *cset = NULL, *cgrp = NULL;
    bpf_probe_read_kernel(&cset, sizeof(cset), task + TASK_CGROUPS_OFF);
    if (!cset)
        return 0;
    bpf_probe_read_kernel(&cgrp, sizeof(cgrp), (const char *)cset + CSS_SET_DFL_CGRP_OFF);
    return cgroup_ancestor_id(cgrp, KUBEPODS_LEVEL);
}
#endif

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

// podsnoop: "is the current task in a pod?", shared by the tracepoint programs.
//
// A task is in a pod when its cgroup v2 ancestor at depth KUBEPODS_LEVEL is one of the
// kubepods root cgroups (kubepods.slice, kubepods, ...) that userspace keeps in
// kubepods_roots (exporter/kuberoots.py RootSync). A new container is counted from its first
// event, without userspace having to learn its cgroup first; a host task costs one helper
// call and one hash lookup. With FILTER_PODS 0 every task is counted.
//
// bcc rewrites map calls (kubepods_roots.lookup) only in the main source file, not in an
// included header ("cannot use map function inside a macro" / an unresolved call at load),
// so each program writes the one-line lookup itself, in the same tracked() shape:
//
//     static __always_inline int tracked(void)
//     {
//     #if FILTER_PODS
//         u64 root = kubepods_root_id();
//         return kubepods_roots.lookup(&root) != NULL;
//     #else
//         return 1;
//     #endif
//     }
//
// The including program is compiled with -I<bpf dir> and passes FILTER_PODS and
// KUBEPODS_LEVEL.
#ifndef PODSNOOP_PODFILTER_H
#define PODSNOOP_PODFILTER_H

// Ids of the kubepods root cgroups, maintained by userspace.
BPF_HASH(kubepods_roots, u64, u8, 64);

// The current task's ancestor cgroup at the kubepods roots' depth.
static __always_inline u64 kubepods_root_id(void)
{
    return bpf_get_current_ancestor_cgroup_id(KUBEPODS_LEVEL);
}

#endif

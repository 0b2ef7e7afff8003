// podsnoop: "is the current task in a pod?", for the precompiled tracing programs (the
// bcc programs' bpf/podfilter.h, in CO-RE form).
//
// A task is in a pod when its cgroup v2 ancestor at depth kubepods_level is one of the
// kubepods root cgroups that userspace keeps in kubepods_roots (exporter/kuberoots.py
// RootSync). The roots sit in a one-element array, whose lookup the kernel inlines, and
// are compared in a short unrolled loop: a host task costs one helper call and no hash
// lookup. Set before load (.rodata): filter_pods (0: every task counts), kubepods_level,
// and ancestor_helper (0 where tracing programs may not call
// bpf_get_current_ancestor_cgroup_id, before 5.14: the id is read from the task instead;
// the verifier prunes the branch not taken, so the helper is never seen there).
// in_kubepods_root(id) is the same test for another cgroup's ancestor (a socket's, in
// tcp.bpf.c). task_btf (1 where tracing programs may call bpf_get_current_task_btf, 5.11+)
// lets current_cgroup_id() read the id from the task with plain loads.
// MAX_KUBEPODS_ROOTS comes from the build (exporter/bpfconsts.py).
#ifndef PODSNOOP_PODFILTER_BPF_H
#define PODSNOOP_PODFILTER_BPF_H

#include "podsnoop.bpf.h"

const volatile u32 filter_pods = 1;
const volatile u32 kubepods_level = 0;
const volatile u32 ancestor_helper = 1;
const volatile u32 task_btf = 0;

// gen: bumped by userspace after each change of ids (exporter/kuberoots.py RootSync), so a
// verdict cached under an older gen is known to be stale.
struct kubepods_root_ids {
    u64 ids[MAX_KUBEPODS_ROOTS];
    u64 gen;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, struct kubepods_root_ids);
} kubepods_roots SEC(".maps");

static __always_inline u64 kubepods_root_id(void)
{
    if (ancestor_helper)
        return bpf_get_current_ancestor_cgroup_id(kubepods_level);
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    return cgroup_ancestor_id(BPF_CORE_READ(task, cgroups, dfl_cgrp), kubepods_level);
}

// The current task's cgroup v2 id (bpf_get_current_cgroup_id's answer). Where the task's
// BTF pointer may be had, three plain loads: the helper call costs ~10 ns more per call
// on the hosts measured (bench/floor.py).
static __always_inline u64 current_cgroup_id(void)
{
    if (task_btf)
        return bpf_get_current_task_btf()->cgroups->dfl_cgrp->kn->id;
    return bpf_get_current_cgroup_id();
}

static __always_inline struct kubepods_root_ids *kubepods_root_ids(void)
{
    u32 zero = 0;
    return bpf_map_lookup_elem(&kubepods_roots, &zero);
}

static __always_inline int in_roots(const struct kubepods_root_ids *roots, u64 id)
{
    if (!roots || !id)
        return 0;
#pragma unroll
    for (int i = 0; i < MAX_KUBEPODS_ROOTS; i++)
        if (roots->ids[i] == id)
            return 1;
    return 0;
}

// Is `id` (a cgroup's ancestor at depth kubepods_level) one of the kubepods roots?
static __always_inline int in_kubepods_root(u64 id)
{
    return in_roots(kubepods_root_ids(), id);
}

static __always_inline int tracked(void)
{
    if (!filter_pods)
        return 1;
    return in_kubepods_root(kubepods_root_id());
}

#endif

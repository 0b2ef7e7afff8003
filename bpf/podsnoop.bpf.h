// podsnoop: what every precompiled (CO-RE) program shares. vmlinux.h is dumped from the
// build machine's BTF (bpf/Makefile); field accesses are relocated by libbpf to the running
// kernel's layout. Struct flavors (name___suffix) describe fields that older kernels had
// under another name or type.
#ifndef PODSNOOP_BPF_H
#define PODSNOOP_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

// bcc's lookup_or_try_init: the entry, created zeroed if it is not there yet (a full map:
// NULL, which the callers count as an update failure).
static __always_inline void *lookup_or_init(void *map, const void *key, const void *zero)
{
    void *value = bpf_map_lookup_elem(map, key);
    if (value)
        return value;
    bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
    return bpf_map_lookup_elem(map, key);
}

// One more in slot `slot` of a per-CPU u64 array (update failures, dropped events); atomic,
// for programs that also run in softirq, where a plain += on the per-CPU value can lose an
// update to an interrupting run on the same CPU.
static __always_inline void count_in_slot(void *array, u32 slot)
{
    u64 *n = bpf_map_lookup_elem(array, &slot);
    if (n)
        __sync_fetch_and_add(n, 1);
}

// Before 6.0 a cgroup listed its ancestors' ids, not pointers to them.
struct cgroup___ancestor_ids {
    int level;
    u64 ancestor_ids[];
} __attribute__((preserve_access_index));

// Id of a cgroup's ancestor at depth `level` (the cgroup itself at its own depth), or 0
// if the cgroup is shallower.
static __always_inline u64 cgroup_ancestor_id(struct cgroup *cgrp, int level)
{
    if (!cgrp || BPF_CORE_READ(cgrp, level) < level)
        return 0;
    if (bpf_core_field_exists(cgrp->ancestors)) {
        struct cgroup *ancestor = NULL;
        bpf_core_read(&ancestor, sizeof(ancestor), &cgrp->ancestors[level]);
        return ancestor ? BPF_CORE_READ(ancestor, kn, id) : 0;
    }
    struct cgroup___ancestor_ids *old = (void *)cgrp;
    u64 id = 0;
    bpf_core_read(&id, sizeof(id), &old->ancestor_ids[level]);
    return id;
}

#endif

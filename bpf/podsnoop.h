// podsnoop: helpers for user programs (--programs DIR, exporter/programs/).
//
// podsnoop inlines this header in front of a program's <name>.bpf.c when it compiles it
// (bcc rewrites map calls such as kubepods_roots.lookup() only in the main source), so a
// program may `#include "podsnoop.h"` or leave it out: the line is dropped either way.
//
//   podsnoop_in_pod()    the current task is in a pod: its cgroup v2 ancestor at the
//                        kubepods level is one of the node's kubepods roots (podfilter.h,
//                        kept current by podsnoop; in sidecar mode: this pod only).
//   podsnoop_selected()  the current task's cgroup belongs to a pod matching the program's
//                        `selector` (namespace + matchLabels; no selector: every pod),
//                        from a map podsnoop keeps current once a second.
//   podsnoop_cgroup_id() the key for the `pod` decoder (8 bytes).
#ifndef PODSNOOP_H
#define PODSNOOP_H

#include <uapi/linux/ptrace.h>

#include "podfilter.h"

BPF_HASH(podsnoop_selected_cgroups, u64, u8, PODSNOOP_SELECTED_MAX);

static __always_inline int podsnoop_in_pod(void)
{
    u32 zero = 0;
    return in_kubepods_root(kubepods_roots.lookup(&zero), kubepods_root_id());
}

static __always_inline u64 podsnoop_cgroup_id(void)
{
    return bpf_get_current_cgroup_id();
}

static __always_inline int podsnoop_selected(void)
{
    u64 id = bpf_get_current_cgroup_id();
    return podsnoop_selected_cgroups.lookup(&id) != NULL;
}

#endif

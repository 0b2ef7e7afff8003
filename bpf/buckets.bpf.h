// podsnoop: per-cgroup histograms with fixed buckets (their upper bounds in ns come from
// the build, exporter/bpfconsts.py), counted into a per-CPU hash of (cgroup id, bucket) ->
// (count, sum): tcp.bpf.c's connect latency and dns.bpf.c's request latency; the
// collectors read them with collectors/cgroupdeltas.py.
#ifndef PODSNOOP_BUCKETS_BPF_H
#define PODSNOOP_BUCKETS_BPF_H

#include "podsnoop.bpf.h"

struct bucket_key {
    u64 cgroup_id;
    u32 bucket;  // index into the bounds; the last one is +Inf
    u32 pad;
};

struct bucket_value {
    u64 count;
    u64 sum_ns;
};

// Index of the first of the n bounds >= ns; n (+Inf) past the last.
static __always_inline u32 bucket_of(const u64 *bounds, u32 n, u64 ns)
{
#pragma unroll
    for (u32 i = 0; i < n; i++)
        if (ns <= bounds[i])
            return i;
    return n;
}

// One observation of ns in the cgroup's histogram (atomic: these programs also run in
// softirq, which can interrupt a run on the same CPU); 0 where the map is full.
static __always_inline int observe(void *map, u64 cgroup_id, u32 bucket, u64 ns)
{
    struct bucket_key key = {.cgroup_id = cgroup_id, .bucket = bucket};
    struct bucket_value zero = {};
    struct bucket_value *v = lookup_or_init(map, &key, &zero);
    if (!v)
        return 0;
    __sync_fetch_and_add(&v->count, 1);
    __sync_fetch_and_add(&v->sum_ns, ns);
    return 1;
}

#endif

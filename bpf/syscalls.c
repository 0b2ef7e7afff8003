// podsnoop: per-cgroup syscall counts, errors and latency, counted in the kernel.
//
// raw_syscalls:sys_enter notes when a thread entered a syscall; sys_exit counts the call
// (and an error if it returned < 0) under (cgroup id, syscall nr) and adds the latency to a
// per-cgroup log2 histogram. Only tasks below a kubepods root are counted when FILTER_PODS
// is 1: the task's ancestor cgroup at KUBEPODS_LEVEL must be one of the roots userspace put
// in kubepods_roots. Host processes pay one helper call and one hash lookup per tracepoint.
//
// Compiled by bcc at start, with -I<bpf dir> for podfilter.h. The loader passes FILTER_PODS,
// KUBEPODS_LEVEL, LATENCY (0/1), SYSCALL_MAX_ENTRIES, LATENCY_MAX_ENTRIES.
#include <uapi/linux/bpf.h>

struct syscall_key {
    u64 cgroup_id;
    u32 nr;
    u32 pad;
};

struct syscall_value {
    u64 calls;
    u64 errors;
};

struct latency_key {
    u64 cgroup_id;
    u32 slot;  // log2 of the latency in ns: [2^slot, 2^(slot+1))
    u32 pad;
};

BPF_PERCPU_HASH(syscall_counts, struct syscall_key, struct syscall_value, SYSCALL_MAX_ENTRIES);
BPF_PERCPU_HASH(syscall_latency, struct latency_key, u64, LATENCY_MAX_ENTRIES);
// Entry time of the thread's current syscall, in task-local storage: no hashing on the hot
// path, and freed by the kernel when the thread exits (even inside a syscall: exit_group).
BPF_TASK_STORAGE(syscall_inflight, u64);
// kubepods_roots: the pod filter shared with the other tracepoint programs.
#include "podfilter.h"
// Inserts lost because a map was full: slot 0 syscall_counts, slot 1 syscall_latency.
BPF_PERCPU_ARRAY(syscall_update_failures, u64, 2);

static __always_inline int tracked(void)
{
#if FILTER_PODS
    u64 root = kubepods_root_id();
    return kubepods_roots.lookup(&root) != NULL;
#else
    return 1;
#endif
}

static __always_inline void count_failure(u32 slot)
{
    u64 *n = syscall_update_failures.lookup(&slot);
    if (n)
        *n += 1;
}

#if LATENCY
TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    if (!tracked())
        return 0;
    u64 *start = syscall_inflight.task_storage_get(bpf_get_current_task_btf(), 0,
                                                   BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (start)
        *start = bpf_ktime_get_ns();
    return 0;
}
#endif

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
    if (args->id < 0)  // no syscall (e.g. a restarted or ptrace-cancelled one)
        return 0;
    if (!tracked())
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct syscall_key key = {.cgroup_id = cgroup_id, .nr = (u32)args->id};
    struct syscall_value zero = {};
    struct syscall_value *value = syscall_counts.lookup_or_try_init(&key, &zero);
    if (value) {
        value->calls += 1;
        if (args->ret < 0)
            value->errors += 1;
    } else {
        count_failure(0);
    }
#if LATENCY
    u64 *start = syscall_inflight.task_storage_get(bpf_get_current_task_btf(), 0, 0);
    if (start && *start) {
        u64 delta = bpf_ktime_get_ns() - *start;
        *start = 0;  // a syscall whose entry we did not see (attached mid-call) is skipped
        struct latency_key lkey = {.cgroup_id = cgroup_id, .slot = bpf_log2l(delta)};
        u64 zero_count = 0;
        u64 *count = syscall_latency.lookup_or_try_init(&lkey, &zero_count);
        if (count)
            *count += 1;
        else
            count_failure(1);
    }
#endif
    return 0;
}

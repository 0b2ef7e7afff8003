// podsnoop: per-cgroup syscall counts, errors and latency, counted in the kernel.
//
// With LATENCY 1, the raw sys_enter tracepoint notes, in task-local storage, when a tracked
// thread entered a syscall and which one (the tracepoint's own id argument); sys_exit counts
// the call (and an error if it returned < 0) under (cgroup id, syscall nr) and adds the
// latency to a per-cgroup log2 histogram. With LATENCY 0 (counts only) there is no entry
// program at all: sys_exit filters and reads the syscall number from the saved registers
// (SYSCALL_NR_OFF, SYSCALL_NR_SIZE from the kernel's BTF).
//
// Only tasks below a kubepods root are counted when FILTER_PODS is 1 (bpf/podfilter.h).
// Per syscall a host task pays: LATENCY 1, one helper call on entry (the ancestor cgroup id;
// the roots array lookup is inlined) and one task-storage read on exit; LATENCY 0, the
// ancestor id on exit only.
//
// Raw tracepoints (BPF_PROG_TYPE_RAW_TRACEPOINT), not the perf-event kind: they skip the
// perf record set-up on every syscall, and, more important, a perf-event tracepoint program
// marks the CPU busy (bpf_prog_active) while it runs, so every other tracepoint program
// that a softirq fires on that CPU meanwhile (a TCP retransmit, a drop) is silently skipped.
// Syscall programs run constantly; as raw tracepoints they never cost the others an event.
//
// Compiled by bcc at start, with -I<bpf dir> for podfilter.h. The loader passes FILTER_PODS,
// KUBEPODS_LEVEL, MAX_KUBEPODS_ROOTS, LATENCY (0/1), SYSCALL_MAX_ENTRIES,
// LATENCY_MAX_ENTRIES, INFLIGHT_HASH (0/1) and INFLIGHT_MAX_ENTRIES, and with LATENCY 0
// SYSCALL_NR_OFF, SYSCALL_NR_SIZE.
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

// The thread's syscall in flight: entry time (0: none tracked) and number.
struct inflight {
    u64 start;
    s64 nr;
};

BPF_PERCPU_HASH(syscall_counts, struct syscall_key, struct syscall_value, SYSCALL_MAX_ENTRIES);
BPF_PERCPU_HASH(syscall_latency, struct latency_key, u64, LATENCY_MAX_ENTRIES);
#if LATENCY && !INFLIGHT_HASH
// In task-local storage: no hashing on the hot path, and freed by the kernel when the
// thread exits (even inside a syscall: exit_group).
BPF_TASK_STORAGE(syscall_inflight, struct inflight);

static __always_inline struct inflight *inflight_of_thread(int create)
{
    if (create)
        return syscall_inflight.task_storage_get(bpf_get_current_task_btf(), 0,
                                                 BPF_LOCAL_STORAGE_GET_F_CREATE);
    return syscall_inflight.task_storage_get(bpf_get_current_task_btf(), 0, 0);
}
#elif LATENCY
// Kernels without task storage for tracing programs (before 5.13): a hash by thread id,
// LRU so that the entries of threads that exited inside a syscall are recycled.
BPF_TABLE("lru_hash", u32, struct inflight, syscall_inflight, INFLIGHT_MAX_ENTRIES);

static __always_inline struct inflight *inflight_of_thread(int create)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (!create)
        return syscall_inflight.lookup(&tid);
    struct inflight none = {};
    return syscall_inflight.lookup_or_try_init(&tid, &none);
}
#endif
// kubepods_roots: the pod filter shared with the other tracepoint programs.
#include "podfilter.h"
// Inserts lost because a map was full: slot 0 syscall_counts, slot 1 syscall_latency.
BPF_PERCPU_ARRAY(syscall_update_failures, u64, 2);

static __always_inline int tracked(void)
{
#if FILTER_PODS
    u32 zero = 0;
    return in_kubepods_root(kubepods_roots.lookup(&zero), kubepods_root_id());
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

static __always_inline void count_call(u64 cgroup_id, long nr, long ret)
{
    struct syscall_key key = {.cgroup_id = cgroup_id, .nr = (u32)nr};
    struct syscall_value zero = {};
    struct syscall_value *value = syscall_counts.lookup_or_try_init(&key, &zero);
    if (value) {
        value->calls += 1;
        if (ret < 0)
            value->errors += 1;
    } else {
        count_failure(0);
    }
}

#if LATENCY
RAW_TRACEPOINT_PROBE(sys_enter)
{
    // args: (struct pt_regs *regs, long id)
    if (!tracked())
        return 0;
    struct inflight *f = inflight_of_thread(1);
    if (f) {
        f->nr = (long)ctx->args[1];
        f->start = bpf_ktime_get_ns();
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
    // args: (struct pt_regs *regs, long ret)
    // sys_enter stored an entry only for tracked tasks: finding one is the pod filter here.
    // (A syscall whose entry we did not see, e.g. attached mid-call, or a new thread's
    // return from clone, is not counted: one call, one count.)
    struct inflight *f = inflight_of_thread(0);
    if (!f || !f->start)
        return 0;
    u64 delta = bpf_ktime_get_ns() - f->start;
    long nr = f->nr;
    f->start = 0;
    if (nr < 0)  // no syscall (cancelled by a tracer before it ran)
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    count_call(cgroup_id, nr, (long)ctx->args[1]);
    struct latency_key lkey = {.cgroup_id = cgroup_id, .slot = bpf_log2l(delta)};
    u64 zero_count = 0;
    u64 *count = syscall_latency.lookup_or_try_init(&lkey, &zero_count);
    if (count)
        *count += 1;
    else
        count_failure(1);
    return 0;
}
#else
// The syscall number the thread's saved registers hold (-1: no syscall).
static __always_inline long syscall_nr(const void *regs)
{
#if SYSCALL_NR_SIZE == 4
    s32 nr = -1;
#else
    long nr = -1;
#endif
    bpf_probe_read_kernel(&nr, sizeof(nr), (const char *)regs + SYSCALL_NR_OFF);
    return nr;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
    // args: (struct pt_regs *regs, long ret)
    if (!tracked())
        return 0;
    long nr = syscall_nr((const void *)ctx->args[0]);
    if (nr < 0)  // no syscall (e.g. a restarted or ptrace-cancelled one)
        return 0;
    count_call(bpf_get_current_cgroup_id(), nr, (long)ctx->args[1]);
    return 0;
}
#endif

// podsnoop: per-cgroup syscall counts, errors and latency, counted in the kernel
// (precompiled CO-RE; loaded by exporter/bpfobject.py).
//
// With latency, sys_enter notes that a tracked thread entered a syscall, which one (the
// tracepoint's own id argument) and, for one call in latency_every, when; sys_exit counts
// the call (and an error if it returned < 0) under (cgroup id, syscall nr) and adds a
// timed call's latency to a per-cgroup log2 histogram.
// Counts only: no entry program at all, sys_exit filters and reads the syscall number from
// the saved registers (pt_regs->orig_ax, relocated by CO-RE).
//
// Each program has variants, name__variant; the loader turns on one of each
// (exporter/loader.py) and the collectors see it as plain sys_enter / sys_exit:
//   __task    latency, the entry in task-local storage: no hashing on the hot path, freed
//             by the kernel when the thread exits (tracing programs may use it from 5.13)
//   __hash    latency before 5.13: a per-thread LRU hash, so that entries of threads that
//             exited inside a syscall are recycled
//   __counts  counts and errors only
//
// Raw tracepoints: they skip the perf record set-up on every syscall, and never mark the
// CPU busy for the other tracepoint programs (bpf_prog_active) as perf-event ones do.
//
// Every syscall of the node asks "is this task in a pod?": tracked_cached() keeps each
// CPU's last answer with the cgroup id it was for (see there).
#include "podfilter.bpf.h"

char LICENSE[] SEC("license") = "GPL";

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

// The thread's syscall in flight: whether a tracked entry was seen, its number, and its
// entry time if it is timed. (Caching tracked()'s verdict here per thread, keyed by its
// css_set, was measured: no gain for a host thread, whose two programs then each paid a
// task-storage lookup instead of the entry's cgroup walk; bench/floor.py A/B, 2026-12-03.)
struct inflight {
    u64 start;    // entry time of a timed call (0: this call is not timed)
    s64 nr;
    u32 pending;  // a tracked entry was seen and its exit not yet
    u32 tick;     // the thread's calls since its last timed one
};

// Time one call in latency_every of each thread (--syscall-latency-every; 1: every call).
// Counts stay exact either way; the clock reads are most of a tracked call's cost.
const volatile u32 latency_every = 1;

// Sizes are set before load (bpf_map__set_max_entries) from the flags.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct syscall_key);
    __type(value, struct syscall_value);
} syscall_counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 32768);
    __type(key, struct latency_key);
    __type(value, u64);
} syscall_latency SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct inflight);
} syscall_inflight SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 32768);
    __type(key, u32);
    __type(value, struct inflight);
} syscall_inflight_hash SEC(".maps");

// Inserts lost because a map was full: slot 0 syscall_counts, slot 1 syscall_latency.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, u32);
    __type(value, u64);
} syscall_update_failures SEC(".maps");

#define count_failure(slot) count_in_slot(&syscall_update_failures, (slot))

// Each CPU's last tracked() verdict: for which cgroup (ids are never reused) and which
// generation of the kubepods roots.
struct tracked_verdict {
    u64 cgroup_id;
    u64 gen;
    u64 tracked;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, struct tracked_verdict);
} tracked_verdicts SEC(".maps");

// tracked(), answered from this CPU's last verdict when the task's cgroup and the roots'
// generation are the same: a run of syscalls from one task (the common case between two
// context switches) pays three loads for its cgroup id instead of the ancestor walk, ~12 ns
// less per call on the hosts measured (bench/floor.py). The generation is read before the
// roots, and userspace bumps it only after the new ids are in place, so a verdict computed
// from half-written roots is stored under the old generation and never reused. Only these
// two programs use the cache, and neither interrupts the other on a CPU.
static __always_inline int tracked_cached(void)
{
    if (!filter_pods)
        return 1;
    if (!task_btf)
        return tracked();
    u32 zero = 0;
    struct kubepods_root_ids *roots = kubepods_root_ids();
    struct tracked_verdict *last = bpf_map_lookup_elem(&tracked_verdicts, &zero);
    if (!roots || !last)
        return 0;
    u64 id = current_cgroup_id();
    u64 gen = roots->gen;
    asm volatile("" ::: "memory");  // gen before the ids
    if (last->cgroup_id == id && last->gen == gen)
        return last->tracked;
    int verdict = in_roots(roots, kubepods_root_id());
    last->cgroup_id = id;
    last->gen = gen;
    last->tracked = verdict;
    return verdict;
}


static __always_inline void count_call(u64 cgroup_id, long nr, long ret)
{
    struct syscall_key key = {.cgroup_id = cgroup_id, .nr = (u32)nr};
    struct syscall_value zero = {};
    struct syscall_value *value = lookup_or_init(&syscall_counts, &key, &zero);
    if (value) {
        value->calls += 1;
        if (ret < 0)
            value->errors += 1;
    } else {
        count_failure(0);
    }
}

// log2, rounded down, of a non-zero value
static __always_inline u32 log2l(u64 v)
{
    u32 r = 0;
#pragma unroll
    for (int shift = 32; shift > 0; shift >>= 1) {
        if (v >> shift) {
            v >>= shift;
            r += shift;
        }
    }
    return r;
}

static __always_inline void count_exit(struct inflight *f, long ret)
{
    // Only tracked tasks have an entry: finding one is the pod filter here. (A syscall
    // whose entry we did not see, e.g. attached mid-call, or a new thread's return from
    // clone, is not counted: one call, one count.)
    if (!f || !f->pending)
        return;
    f->pending = 0;
    long nr = f->nr;
    u64 start = f->start;
    f->start = 0;
    if (nr < 0)  // no syscall (cancelled by a tracer before it ran)
        return;
    u64 cgroup_id = current_cgroup_id();
    count_call(cgroup_id, nr, ret);
    if (!start)  // not a timed one
        return;
    u64 delta = bpf_ktime_get_ns() - start;
    struct latency_key lkey = {.cgroup_id = cgroup_id, .slot = log2l(delta)};
    u64 zero_count = 0;
    u64 *count = lookup_or_init(&syscall_latency, &lkey, &zero_count);
    if (count)
        *count += 1;
    else
        count_failure(1);
}

static __always_inline void note_entry(struct inflight *f, long nr)
{
    if (!f)
        return;
    f->nr = nr;
    f->pending = 1;
    if (latency_every > 1 && ++f->tick < latency_every) {
        f->start = 0;
        return;
    }
    f->tick = 0;
    f->start = bpf_ktime_get_ns();
}

// args: (struct pt_regs *regs, long id) and (struct pt_regs *regs, long ret)
SEC("raw_tp/sys_enter")
int sys_enter__task(struct bpf_raw_tracepoint_args *ctx)
{
    if (!tracked_cached())
        return 0;
    struct task_struct *task = bpf_get_current_task_btf();
    note_entry(bpf_task_storage_get(&syscall_inflight, task, 0,
                                    BPF_LOCAL_STORAGE_GET_F_CREATE), (long)ctx->args[1]);
    return 0;
}

SEC("raw_tp/sys_exit")
int sys_exit__task(struct bpf_raw_tracepoint_args *ctx)
{
    struct task_struct *task = bpf_get_current_task_btf();
    // A thread without any task-local storage (every host thread, unless another BPF tool
    // gave it some) has no entry of ours: one load instead of the storage helper call.
    if (!task->bpf_storage)
        return 0;
    count_exit(bpf_task_storage_get(&syscall_inflight, task, 0, 0), (long)ctx->args[1]);
    return 0;
}

SEC("raw_tp/sys_enter")
int sys_enter__hash(struct bpf_raw_tracepoint_args *ctx)
{
    if (!tracked_cached())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inflight none = {};
    note_entry(lookup_or_init(&syscall_inflight_hash, &tid, &none), (long)ctx->args[1]);
    return 0;
}

SEC("raw_tp/sys_exit")
int sys_exit__hash(struct bpf_raw_tracepoint_args *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    count_exit(bpf_map_lookup_elem(&syscall_inflight_hash, &tid), (long)ctx->args[1]);
    return 0;
}

SEC("raw_tp/sys_exit")
int sys_exit__counts(struct bpf_raw_tracepoint_args *ctx)
{
    if (!tracked_cached())
        return 0;
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long nr = BPF_CORE_READ(regs, orig_ax);
    if (nr < 0)  // no syscall (e.g. a restarted or ptrace-cancelled one)
        return 0;
    count_call(current_cgroup_id(), nr, (long)ctx->args[1]);
    return 0;
}

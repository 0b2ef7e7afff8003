// podsnoop: execs per (cgroup, comm), counted in the kernel (precompiled CO-RE; loaded by
// exporter/bpfobject.py).
//
// sched:sched_process_exec fires in the task that just exec'd, after the kernel set its new
// comm (the basename of the executed file, at most 15 bytes), so the current cgroup and
// comm are the new program's. Only tasks in pods are counted (podfilter.bpf.h). A raw
// tracepoint: no perf record is built for it, the arguments are the kernel's own
// (struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm), the same on every
// supported kernel.
//
// With send_events (.rodata, set from --exec-log) every counted exec is also sent to
// userspace through the ring buffer exec_events (bounded: when userspace falls behind the
// event is dropped and counted, the count above is not affected), for the recent-exec log
// served at /execs. Without it the branch is pruned by the verifier, but the ring buffer is
// still created (the program refers to it): the loader then gives it its smallest size.
// Map sizes are set before load (exec_counts from --exec-map-entries, exec_events in
// bytes, a power-of-2 number of pages). EXEC_FILENAME_LEN comes from the build.
#include "podfilter.bpf.h"

char LICENSE[] SEC("license") = "GPL";

// exporter/bpfconsts.py EXEC_FILENAME_LEN, through the build.

const volatile u32 send_events = 0;

struct exec_key {
    u64 cgroup_id;
    char comm[16];
};

struct exec_event {
    u64 time_ns;     // CLOCK_BOOTTIME
    u64 cgroup_id;
    u32 pid;         // tgid
    u32 ppid;        // real parent's tgid
    u32 uid;
    u32 pad;
    char comm[16];
    char filename[EXEC_FILENAME_LEN];
};
// Puts exec_event into the object's BTF, where the loader finds the records' layout (the
// code alone would not: it only uses the struct through an inlined local pointer).
struct exec_event *const exec_event_layout = 0;

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct exec_key);
    __type(value, u64);
} exec_counts SEC(".maps");

// Slot 0: inserts lost because exec_counts was full; slot 1: events dropped (ring full).
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, u32);
    __type(value, u64);
} exec_update_failures SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 64 * 4096);
} exec_events SEC(".maps");

#define count_failure(slot) count_in_slot(&exec_update_failures, (slot))


static __always_inline void send_event(struct task_struct *task, struct linux_binprm *bprm,
                                       const struct exec_key *key)
{
    struct exec_event *e = bpf_ringbuf_reserve(&exec_events, sizeof(*e), 0);
    if (!e) {
        count_failure(1);
        return;
    }
    e->time_ns = bpf_ktime_get_boot_ns();
    e->cgroup_id = key->cgroup_id;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->uid = (u32)bpf_get_current_uid_gid();
    e->pad = 0;
    e->ppid = BPF_CORE_READ(task, real_parent, tgid);  // 0 if unreadable
    __builtin_memcpy(e->comm, key->comm, sizeof(e->comm));
    // the path as exec was given it, which the tracepoint's filename field copies
    if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename),
                                  BPF_CORE_READ(bprm, filename)) < 0)
        e->filename[0] = 0;
    bpf_ringbuf_submit(e, 0);
}

// args: (struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm); p is current
SEC("raw_tp/sched_process_exec")
int sched_process_exec(struct bpf_raw_tracepoint_args *ctx)
{
    if (!tracked())
        return 0;
    struct exec_key key = {.cgroup_id = bpf_get_current_cgroup_id()};
    bpf_get_current_comm(key.comm, sizeof(key.comm));
    u64 zero = 0;
    u64 *n = lookup_or_init(&exec_counts, &key, &zero);
    if (n)
        *n += 1;
    else
        count_failure(0);
    if (send_events)
        send_event((struct task_struct *)ctx->args[0], (struct linux_binprm *)ctx->args[2],
                   &key);
    return 0;
}

// podsnoop: execs per (cgroup, comm), counted in the kernel.
//
// sched:sched_process_exec fires in the task that just exec'd, after the kernel set its new
// comm (the basename of the executed file, at most 15 bytes), so the current cgroup and
// comm are the new program's. Only tasks in pods are counted (podfilter.h).
//
// With EXEC_EVENTS 1 every counted exec is also sent to userspace through a ring buffer
// (bounded: when userspace falls behind the event is dropped and counted, the count above
// is not affected), for the recent-exec log served at /execs.
//
// Compiled by bcc at start with -I<bpf dir>. The loader passes FILTER_PODS, KUBEPODS_LEVEL,
// EXEC_MAX_ENTRIES, EXEC_EVENTS (0/1), and with events EXEC_RINGBUF_PAGES, EXEC_FILENAME_LEN,
// TASK_REAL_PARENT_OFF, TASK_TGID_OFF (from BTF).
#include <uapi/linux/bpf.h>

#include "podfilter.h"

struct exec_key {
    u64 cgroup_id;
    char comm[16];
};

BPF_PERCPU_HASH(exec_counts, struct exec_key, u64, EXEC_MAX_ENTRIES);
// Slot 0: inserts lost because exec_counts was full; slot 1: events dropped (ring full).
BPF_PERCPU_ARRAY(exec_update_failures, u64, 2);

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
    u64 *n = exec_update_failures.lookup(&slot);
    if (n)
        *n += 1;
}

#if EXEC_EVENTS
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
BPF_RINGBUF_OUTPUT(exec_events, EXEC_RINGBUF_PAGES);
#endif

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    if (!tracked())
        return 0;
    struct exec_key key = {.cgroup_id = bpf_get_current_cgroup_id()};
    bpf_get_current_comm(key.comm, sizeof(key.comm));
    u64 zero = 0;
    u64 *n = exec_counts.lookup_or_try_init(&key, &zero);
    if (n)
        *n += 1;
    else
        count_failure(0);
#if EXEC_EVENTS
    struct exec_event *e = exec_events.ringbuf_reserve(sizeof(struct exec_event));
    if (!e) {
        count_failure(1);
        return 0;
    }
    e->time_ns = bpf_ktime_get_boot_ns();
    e->cgroup_id = key.cgroup_id;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->uid = (u32)bpf_get_current_uid_gid();
    e->pad = 0;
    // task->real_parent->tgid, at offsets from the running kernel's BTF (the headers bcc
    // compiles against may be older than the kernel).
    void *task = (void *)bpf_get_current_task();
    void *parent = NULL;
    e->ppid = 0;
    bpf_probe_read_kernel(&parent, sizeof(parent), task + TASK_REAL_PARENT_OFF);
    if (parent)
        bpf_probe_read_kernel(&e->ppid, sizeof(e->ppid), parent + TASK_TGID_OFF);
    __builtin_memcpy(e->comm, key.comm, sizeof(e->comm));
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (void *)args + loc) < 0)
        e->filename[0] = 0;
    exec_events.ringbuf_submit(e, 0);
#endif
    return 0;
}

// podsnoop: resize on exec. Only execs that match an annotated container's commands, and
// the exits of those processes, reach userspace.
//
// resize_rules holds (cgroup id of an annotated container, comm) pairs, filled by userspace
// from the pods' podsnoop.io/resize-on-exec annotations (exporter/resize/programs.py). On
// every exec the new comm (the kernel sets it before the tracepoint: the executed file's
// basename, at most 15 bytes) and the task's cgroup are looked up there: one hash lookup per
// exec on the node, and a match sends one event through the ring buffer and remembers the
// process (tgid -> cgroup id) in resize_live. When a remembered process ends (its thread-group
// leader exits) or execs something that does not match, an exit event is sent and it is
// forgotten, so userspace knows when the last matched process of a container is gone.
//
// Raw tracepoints: both fire in the task itself (the current cgroup, comm and pid are the
// new program's / the exiting process's), and unlike perf-event tracepoint programs they are
// never skipped because another tracepoint program runs on the CPU (bpf_prog_active).
//
// Compiled by bcc at start. The loader passes RESIZE_MAX_RULES, RESIZE_MAX_LIVE,
// RESIZE_RINGBUF_PAGES, RESIZE_EVENT_EXEC, RESIZE_EVENT_EXIT.
#include <uapi/linux/bpf.h>

struct rule_key {
    u64 cgroup_id;
    char comm[16];   // NUL-padded, as bpf_get_current_comm writes it
};

struct resize_event {
    u64 time_ns;     // CLOCK_MONOTONIC (bpf_ktime_get_ns): userspace's time.monotonic()
    u64 cgroup_id;
    u32 pid;         // tgid
    u32 kind;        // RESIZE_EVENT_EXEC or RESIZE_EVENT_EXIT
    char comm[16];
};

BPF_HASH(resize_rules, struct rule_key, u8, RESIZE_MAX_RULES);
// Matched processes still running: tgid -> cgroup id at the match.
BPF_HASH(resize_live, u32, u64, RESIZE_MAX_LIVE);
BPF_RINGBUF_OUTPUT(resize_events, RESIZE_RINGBUF_PAGES);
// Slot 0: matched processes resize_live had no room for; slot 1: events the ring had no
// room for. Userspace also checks its matched pids in /proc, so a lost exit heals.
BPF_PERCPU_ARRAY(resize_failures, u64, 2);

static __always_inline void count_failure(u32 slot)
{
    u64 *n = resize_failures.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline void emit(u32 kind, u64 cgroup_id, u32 tgid, const char *comm)
{
    struct resize_event *e = resize_events.ringbuf_reserve(sizeof(struct resize_event));
    if (!e) {
        count_failure(1);
        return;
    }
    e->time_ns = bpf_ktime_get_ns();
    e->cgroup_id = cgroup_id;
    e->pid = tgid;
    e->kind = kind;
    __builtin_memcpy(e->comm, comm, sizeof(e->comm));
    resize_events.ringbuf_submit(e, 0);
}

RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    struct rule_key key = {};
    key.cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(key.comm, sizeof(key.comm));
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!resize_rules.lookup(&key)) {
        // A matched process that became another program is no longer a matched one.
        u64 *was = resize_live.lookup(&tgid);
        if (was) {
            emit(RESIZE_EVENT_EXIT, *was, tgid, key.comm);
            resize_live.delete(&tgid);
        }
        return 0;
    }
    if (resize_live.update(&tgid, &key.cgroup_id) != 0)
        count_failure(0);
    emit(RESIZE_EVENT_EXEC, key.cgroup_id, tgid, key.comm);
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id != tgid)   // a thread, not the process
        return 0;
    u64 *cgroup_id = resize_live.lookup(&tgid);
    if (!cgroup_id)
        return 0;
    char comm[16] = {};
    bpf_get_current_comm(comm, sizeof(comm));
    emit(RESIZE_EVENT_EXIT, *cgroup_id, tgid, comm);
    resize_live.delete(&tgid);
    return 0;
}

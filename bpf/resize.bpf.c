// podsnoop: resize on exec. Only execs that match an annotated container's commands, and
// the exits of those processes, reach userspace (precompiled CO-RE; loaded by
// exporter/bpfobject.py).
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
// never skipped because another tracepoint program runs on the CPU (bpf_prog_active). No
// argument is read, so the argument lists do not matter.
//
// Set before load: the sizes of resize_rules, resize_live and resize_events (bytes: pages *
// page size, a power of two) from exporter/resize/programs.py's MAX_RULES, MAX_LIVE,
// RINGBUF_PAGES, and (.rodata) resize_event_exec / resize_event_exit, its EVENT_EXEC and
// EVENT_EXIT.
#include "podsnoop.bpf.h"

char LICENSE[] SEC("license") = "GPL";

const volatile u32 resize_event_exec = 1;
const volatile u32 resize_event_exit = 2;

struct rule_key {
    u64 cgroup_id;
    char comm[16];   // NUL-padded, as bpf_get_current_comm writes it
};

struct resize_event {
    u64 time_ns;     // CLOCK_MONOTONIC (bpf_ktime_get_ns): userspace's time.monotonic()
    u64 cgroup_id;
    u32 pid;         // tgid
    u32 kind;        // resize_event_exec or resize_event_exit
    char comm[16];
};
// Only so that the object's BTF has struct resize_event: userspace takes the records'
// layout from there (bpfobject.load's events=).
struct resize_event *const resize_event_layout = 0;

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, struct rule_key);
    __type(value, u8);
} resize_rules SEC(".maps");

// Matched processes still running: tgid -> cgroup id at the match.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, u32);
    __type(value, u64);
} resize_live SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 * 4096);
} resize_events SEC(".maps");

// Slot 0: matched processes resize_live had no room for; slot 1: events the ring had no
// room for. Userspace also checks its matched pids in /proc, so a lost exit heals.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, u32);
    __type(value, u64);
} resize_failures SEC(".maps");

#define count_failure(slot) count_in_slot(&resize_failures, (slot))

static __always_inline void emit(u32 kind, u64 cgroup_id, u32 tgid, const char *comm)
{
    struct resize_event *e = bpf_ringbuf_reserve(&resize_events, sizeof(*e), 0);
    if (!e) {
        count_failure(1);
        return;
    }
    e->time_ns = bpf_ktime_get_ns();
    e->cgroup_id = cgroup_id;
    e->pid = tgid;
    e->kind = kind;
    __builtin_memcpy(e->comm, comm, sizeof(e->comm));
    bpf_ringbuf_submit(e, 0);
}

SEC("raw_tp/sched_process_exec")
int sched_process_exec(struct bpf_raw_tracepoint_args *ctx)
{
    struct rule_key key = {};
    key.cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(key.comm, sizeof(key.comm));
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!bpf_map_lookup_elem(&resize_rules, &key)) {
        // A matched process that became another program is no longer a matched one.
        u64 *was = bpf_map_lookup_elem(&resize_live, &tgid);
        if (was) {
            emit(resize_event_exit, *was, tgid, key.comm);
            bpf_map_delete_elem(&resize_live, &tgid);
        }
        return 0;
    }
    if (bpf_map_update_elem(&resize_live, &tgid, &key.cgroup_id, BPF_ANY) != 0)
        count_failure(0);
    emit(resize_event_exec, key.cgroup_id, tgid, key.comm);
    return 0;
}

SEC("raw_tp/sched_process_exit")
int sched_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id != tgid)   // a thread, not the process
        return 0;
    u64 *cgroup_id = bpf_map_lookup_elem(&resize_live, &tgid);
    if (!cgroup_id)
        return 0;
    char comm[16] = {};
    bpf_get_current_comm(comm, sizeof(comm));
    emit(resize_event_exit, *cgroup_id, tgid, comm);
    bpf_map_delete_elem(&resize_live, &tgid);
    return 0;
}

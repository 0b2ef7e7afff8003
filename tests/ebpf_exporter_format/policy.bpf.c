// podsnoop test program (tests/test_ebpf_exporter_objects.py), in ebpf_exporter's
// conventions: maps named as their metrics, u64 counts, exp2 histogram keys.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define SCHED_GET_PRIORITY_MAX 146
#define MAX_BUCKET 4

struct hist_key {
    u64 cgroup_id;
    u64 bucket;
};

// Filled by podsnoop: the cgroups of the pods the program's selector matches.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, u64);
    __type(value, u8);
} podsnoop_selected_cgroups SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, u64);
    __type(value, u64);
} policy_calls_total SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, struct hist_key);
    __type(value, u64);
} policy_values SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, u64);
} policy_all_calls_total SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, u64);
    __type(value, u64);
} policy_kaddr_calls_total SEC(".maps");

const volatile u64 kaddr_do_exit = 0;  // set by podsnoop from the spec's kaddrs

static __always_inline void add(void *map, void *key, u64 n)
{
    u64 *value = bpf_map_lookup_elem(map, key);
    if (!value) {
        u64 zero = 0;
        bpf_map_update_elem(map, key, &zero, BPF_NOEXIST);
        value = bpf_map_lookup_elem(map, key);
        if (!value)
            return;
    }
    __sync_fetch_and_add(value, n);
}

// The exp2 bucket of v: the smallest k with 2^k >= v.
static __always_inline u64 exp2_bucket(u64 v)
{
    u64 k = 0;
    for (int i = 0; i < 16; i++)
        if ((1ULL << i) < v)
            k = i + 1;
    return k;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(policy_enter, struct pt_regs *regs, long id)
{
    if (id != SCHED_GET_PRIORITY_MAX)
        return 0;
    u32 zero = 0;
    add(&policy_all_calls_total, &zero, 1);
    u64 addr = kaddr_do_exit;
    add(&policy_kaddr_calls_total, &addr, 1);

    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!bpf_map_lookup_elem(&podsnoop_selected_cgroups, &cgroup_id))
        return 0;
    add(&policy_calls_total, &cgroup_id, 1);
    u64 v = BPF_CORE_READ(regs, di);
    struct hist_key key = {.cgroup_id = cgroup_id, .bucket = exp2_bucket(v)};
    if (key.bucket > MAX_BUCKET)
        key.bucket = MAX_BUCKET;
    add(&policy_values, &key, 1);
    key.bucket = MAX_BUCKET + 1;  // the sum
    add(&policy_values, &key, v);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";

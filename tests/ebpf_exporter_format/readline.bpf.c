// podsnoop test program: a uprobe named in its section, attached by libbpf itself.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, u64);
    __type(value, u64);
} readline_calls_total SEC(".maps");

SEC("uretprobe//bin/bash:readline")
int readline_return(void *ctx)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    u64 one = 1, *value = bpf_map_lookup_elem(&readline_calls_total, &cgroup_id);
    if (value)
        __sync_fetch_and_add(value, 1);
    else
        bpf_map_update_elem(&readline_calls_total, &cgroup_id, &one, BPF_NOEXIST);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";

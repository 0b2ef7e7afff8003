// podsnoop tests: maps with podsnoop's value layouts, filled from userspace by
// tests/test_bpfmaps.py to check exporter/collectors/bpfmaps.py's reader against bcc's.
#include <uapi/linux/bpf.h>

struct pair {
    u64 first;
    u64 second;
};

struct wide_key {
    u64 id;
    u32 slot;
    u32 pad;
};

BPF_PERCPU_HASH(percpu_pairs, struct wide_key, struct pair, 4096);
BPF_PERCPU_HASH(percpu_counts, u32, u64, 4096);
BPF_HASH(plain_pairs, u32, struct pair, 4096);

// podsnoop: per-container network bytes and packets, from cgroup_skb programs (precompiled
// CO-RE; loaded by exporter/bpfobject.py).
//
// Attached (BPF links, so they coexist with every other cgroup program and go away with
// the exporter) to each kubepods root cgroup: they run for the sockets of every cgroup
// below it, i.e. of every container, and key by the socket's cgroup v2 id
// (bpf_skb_cgroup_id), which is the container the socket was created in. A cgroup_skb
// program sees L3 packets (IP header onwards, no Ethernet header) of the container's own
// sockets only: egress after the IP header is built, ingress once the receiving socket is
// known. Packets the kernel answers by itself (ARP, ICMP errors, TCP RSTs to closed ports)
// and forwarded packets belong to no socket and are not seen. A GSO super-packet counts as
// one packet with its full length. The programs always allow the packet (return 1).
//
// The loader sets container_net's size before load (--container-net-map-entries); the
// serving process attaches the programs from their fds (exporter/collectors/container_net.py),
// each to its own hook (the section fixes the expected attach type). DIR_RECEIVE and
// DIR_TRANSMIT come from exporter/names.py through the build (exporter/bpfconsts.py).
#include "podsnoop.bpf.h"

char LICENSE[] SEC("license") = "GPL";

struct cnet_key {
    u64 cgroup_id;
    u8 dir;
    u8 pad[7];
};

struct cnet_value {
    u64 packets;
    u64 bytes;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct cnet_key);
    __type(value, struct cnet_value);
} container_net SEC(".maps");

// Inserts lost because container_net was full.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, u64);
} container_net_update_failures SEC(".maps");


// Counters use atomic adds: these programs run both in process context and in softirq,
// and a softirq can interrupt one on the same CPU between the load and the store of a
// plain += on the per-CPU value, losing an update (tests saw retransmits go missing).
// (The results are unused, so clang emits the plain atomic add that 5.10 knows.)
static __always_inline int count(struct __sk_buff *skb, u8 dir)
{
    struct cnet_key key = {};
    key.cgroup_id = bpf_skb_cgroup_id(skb);
    key.dir = dir;
    struct cnet_value zero = {};
    struct cnet_value *v = lookup_or_init(&container_net, &key, &zero);
    if (v) {
        __sync_fetch_and_add(&v->packets, 1);
        __sync_fetch_and_add(&v->bytes, skb->len);
    } else {
        u32 slot = 0;
        u64 *f = bpf_map_lookup_elem(&container_net_update_failures, &slot);
        if (f)
            __sync_fetch_and_add(f, 1);
    }
    return 1;  // allow
}

SEC("cgroup_skb/ingress")
int podsnoop_cgroup_ingress(struct __sk_buff *skb)
{
    return count(skb, DIR_RECEIVE);
}

SEC("cgroup_skb/egress")
int podsnoop_cgroup_egress(struct __sk_buff *skb)
{
    return count(skb, DIR_TRANSMIT);
}

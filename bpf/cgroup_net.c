// podsnoop: per-container network bytes and packets, from cgroup_skb programs.
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
// Compiled by bcc at start. The loader passes DIR_RECEIVE, DIR_TRANSMIT, CNET_MAX_ENTRIES.
#include <uapi/linux/bpf.h>

struct cnet_key {
    u64 cgroup_id;
    u8 dir;
    u8 pad[7];
};

struct cnet_value {
    u64 packets;
    u64 bytes;
};

BPF_PERCPU_HASH(container_net, struct cnet_key, struct cnet_value, CNET_MAX_ENTRIES);
// Inserts lost because container_net was full.
BPF_PERCPU_ARRAY(container_net_update_failures, u64, 1);

// Counters use atomic adds: these programs run both in process context and in softirq,
// and a softirq can interrupt one on the same CPU between the load and the store of a
// plain += on the per-CPU value, losing an update (tests saw retransmits go missing).
static __always_inline int count(struct __sk_buff *skb, u8 dir)
{
    struct cnet_key key = {};
    key.cgroup_id = bpf_skb_cgroup_id(skb);
    key.dir = dir;
    struct cnet_value zero = {};
    struct cnet_value *v = container_net.lookup_or_try_init(&key, &zero);
    if (v) {
        __sync_fetch_and_add(&v->packets, 1);
        __sync_fetch_and_add(&v->bytes, skb->len);
    } else {
        u32 slot = 0;
        u64 *f = container_net_update_failures.lookup(&slot);
        if (f)
            __sync_fetch_and_add(f, 1);
    }
    return 1;  // allow
}

int podsnoop_cgroup_ingress(struct __sk_buff *skb)
{
    return count(skb, DIR_RECEIVE);
}

int podsnoop_cgroup_egress(struct __sk_buff *skb)
{
    return count(skb, DIR_TRANSMIT);
}

// podsnoop: per-interface, per-direction, per-protocol packet and byte counters
// (precompiled CO-RE; loaded by exporter/bpfobject.py).
//
// Attached with TC (tcx links, or clsact filters in direct-action mode). Which direction a
// hook is, the loader says (.rodata ingress_dir, egress_dir), so that both are the pod's
// point of view:
//   node mode, the host side of each pod's veth: ingress = out of the pod (transmit),
//     egress = into the pod (receive);
//   sidecar mode, the pod's own interfaces: ingress = into the pod (receive),
//     egress = out of it (transmit).
// Counters: an interface whose bucket (ifindex & net_bucket_mask) it has to itself counts in
// net_buckets, a plain array with one entry per (bucket, direction, CPU) that the program
// indexes directly (no hashing, no per-CPU pointer to follow: one cache line, the one it
// writes) and that userspace reads and claims through mmap (collectors/netbuckets.py);
// the entry's ifindex says whose it is. Where two interfaces share a bucket (ifindexes
// net_bucket_mask + 1 apart), or with --net-buckets 0, the interface counts in the
// per-CPU hash net_counters, keyed by (ifindex, direction, protocol).
// Every program returns TC_ACT_UNSPEC so the packet continues, unchanged, to the next
// filter on the hook (a CNI's own program may sit behind ours). PROTO_* and DIR_* come from
// exporter/names.py through the build (exporter/bpfconsts.py).
#include "podsnoop.bpf.h"
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define TC_ACT_UNSPEC (-1)
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
// IPv6 next-header values (uapi/linux/in6.h; vmlinux.h has IPv4's IPPROTO_* enum only)
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60

const volatile u8 ingress_dir = DIR_TRANSMIT;
const volatile u8 egress_dir = DIR_RECEIVE;
const volatile u32 net_bucket_mask = 0;   // buckets - 1 (buckets: a power of two)
const volatile u32 use_buckets = 0;       // 0: --net-buckets 0, the hash only
const volatile u32 ncpus = 1;             // possible CPUs: entries per (bucket, direction)

struct net_key {
    u32 ifindex;
    u8 dir;
    u8 proto;
    u16 pad;
};

struct net_value {
    u64 packets;
    u64 bytes;
};

// Per-CPU: each CPU adds to its own slot, no atomics on the packet path; userspace sums.
// Its size is set before load from --net-map-entries.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct net_key);
    __type(value, struct net_value);
} net_counters SEC(".maps");

struct net_slot {
    u32 ifindex;  // the interface counting here (0: none); written by userspace only
    u32 pad;
    struct net_value protos[NET_PROTOCOLS];
    u8 pad2[NET_SLOT_SIZE - 8 - 16 * NET_PROTOCOLS];
};

// Its size (buckets x 2 x ncpus) is set before load from --net-buckets.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, struct net_slot);
} net_buckets SEC(".maps");

// Inserts that failed because net_counters was full.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, u64);
} net_update_failures SEC(".maps");

#define ETH_HLEN_ 14
#define VLAN_HLEN_ 4
#define IPV6_HLEN_ 40
#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT 4

static __always_inline u8 classify_l4(u8 l4, int v6)
{
    if (l4 == IPPROTO_TCP)
        return PROTO_TCP;
    if (l4 == IPPROTO_UDP)
        return PROTO_UDP;
    if (!v6 && l4 == IPPROTO_ICMP)
        return PROTO_ICMP;
    if (v6 && l4 == IPPROTO_ICMPV6)
        return PROTO_ICMPV6;
    return PROTO_OTHER;
}

// bpf_skb_load_bytes copes with non-linear skbs, unlike direct packet access.
static __always_inline u8 classify(struct __sk_buff *skb)
{
    u16 eth_proto;
    u32 off = ETH_HLEN_;

    if (bpf_skb_load_bytes(skb, 12, &eth_proto, sizeof(eth_proto)) < 0)
        return PROTO_OTHER;
    // 802.1Q / 802.1ad tags still in the packet data (an offloaded tag is not in the data).
#pragma unroll
    for (int i = 0; i < MAX_VLAN_TAGS; i++) {
        if (eth_proto != bpf_htons(ETH_P_8021Q) && eth_proto != bpf_htons(ETH_P_8021AD))
            break;
        if (bpf_skb_load_bytes(skb, off + 2, &eth_proto, sizeof(eth_proto)) < 0)
            return PROTO_OTHER;
        off += VLAN_HLEN_;
    }

    if (eth_proto == bpf_htons(ETH_P_IP)) {
        u8 l4;
        if (bpf_skb_load_bytes(skb, off + 9, &l4, 1) < 0)
            return PROTO_OTHER;
        return classify_l4(l4, 0);
    }
    if (eth_proto == bpf_htons(ETH_P_IPV6)) {
        u8 next;
        if (bpf_skb_load_bytes(skb, off + 6, &next, 1) < 0)
            return PROTO_OTHER;
        off += IPV6_HLEN_;
        // Skip the extension headers a TCP/UDP/ICMPv6 packet may carry before its L4 header.
#pragma unroll
        for (int i = 0; i < MAX_IPV6_EXT; i++) {
            u8 hdr[2];
            if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
                next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT)
                break;
            if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
                return PROTO_OTHER;
            off += next == IPPROTO_FRAGMENT ? 8 : ((u32)hdr[1] + 1) * 8;
            next = hdr[0];
        }
        return classify_l4(next, 1);
    }
    return PROTO_OTHER;
}

// The common case without a helper call: an untagged IPv4 packet, or IPv6 whose next
// header is already TCP, UDP or ICMPv6, with those headers in the skb's linear data (direct
// packet access). Returns 255 where it cannot tell, and classify() then does the full walk.
#define PROTO_UNKNOWN 255
static __always_inline u8 classify_linear(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    u8 *p = data;

    if (data + ETH_HLEN_ + IPV6_HLEN_ > end) {
        // Too short for the IPv6 test below; an IPv4 header may still fit.
        if (data + ETH_HLEN_ + 10 > end)
            return PROTO_UNKNOWN;
        if (*(u16 *)(p + 12) == bpf_htons(ETH_P_IP))
            return classify_l4(p[ETH_HLEN_ + 9], 0);
        return PROTO_UNKNOWN;
    }
    u16 eth_proto = *(u16 *)(p + 12);
    if (eth_proto == bpf_htons(ETH_P_IP))
        return classify_l4(p[ETH_HLEN_ + 9], 0);
    if (eth_proto == bpf_htons(ETH_P_IPV6)) {
        u8 next = p[ETH_HLEN_ + 6];
        if (next == IPPROTO_TCP || next == IPPROTO_UDP || next == IPPROTO_ICMPV6)
            return classify_l4(next, 1);
    }
    return PROTO_UNKNOWN;
}

static __always_inline int count(struct __sk_buff *skb, u8 dir)
{
    struct net_key key = {};
    struct net_value zero = {};
    struct net_value *value;

    key.ifindex = skb->ifindex;
    key.dir = dir;
    key.proto = classify_linear(skb);
    if (key.proto == PROTO_UNKNOWN)
        key.proto = classify(skb);
    if (use_buckets) {
        u32 idx = ((key.ifindex & net_bucket_mask) * 2 + (dir & 1)) * ncpus +
                  bpf_get_smp_processor_id();
        struct net_slot *slot = bpf_map_lookup_elem(&net_buckets, &idx);
        if (slot && slot->ifindex == key.ifindex) {
            u32 proto = key.proto < NET_PROTOCOLS ? key.proto : PROTO_OTHER;
            // this CPU's own entry, and TC programs do not nest on a CPU: no atomics
            slot->protos[proto].packets += 1;
            slot->protos[proto].bytes += skb->len;
            return TC_ACT_UNSPEC;
        }
    }
    value = lookup_or_init(&net_counters, &key, &zero);
    if (value) {
        value->packets += 1;
        value->bytes += skb->len;
    } else {
        u32 slot = 0;
        u64 *failures = bpf_map_lookup_elem(&net_update_failures, &slot);
        if (failures)
            *failures += 1;
    }
    return TC_ACT_UNSPEC;
}

SEC("tc")
int podsnoop_tc_ingress(struct __sk_buff *skb)
{
    return count(skb, ingress_dir);
}

SEC("tc")
int podsnoop_tc_egress(struct __sk_buff *skb)
{
    return count(skb, egress_dir);
}

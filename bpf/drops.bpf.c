// podsnoop: packets the kernel dropped, per pod place, direction and drop reason
// (precompiled CO-RE; loaded by exporter/bpfobject.py).
//
// skb:kfree_skb fires for every freed skb that was dropped (consumed packets go to
// skb:consume_skb since 6.x; reasons <= SKB_CONSUMED are skipped all the same). The drop is
// placed, in this order, by:
//   1. the receiving socket the tracepoint names (rx_sk), if it lives in another network
//      namespace than the host's: that namespace, direction receive;
//   2. the skb's device: a device in the host namespace counts only if it is a pod's host
//      veth (pod_ifindexes, kept by userspace from the link manager): direction transmit if
//      the packet entered the host on it (skb_iif == ifindex: it came out of the pod),
//      receive otherwise (on its way into the pod). A device in another namespace counts for
//      that namespace: receive if the packet arrived on it, transmit otherwise;
//   3. with no device, the sending socket (skb->sk) if it lives in another namespace:
//      direction transmit.
// Userspace maps namespaces (by inode number) and host veths to pods. Host-namespace drops
// that involve no pod veth are not counted at all. In sidecar mode host_netns_inum is 0 (the
// host's namespace is not known from inside a pod) and only_netns_inum, the pod's own
// namespace, is the only one counted; 0 in node mode.
//
// A raw tracepoint: TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason
// reason) since 5.17, with a fourth argument struct sock *rx_sk since 6.11. Reading an
// argument the tracepoint does not have makes the attach fail, so rx_sk is read only behind
// has_rx_sk (the verifier prunes the read where it is 0). Kernels before 5.17 have no reason
// argument: the loader does not load this object there.
//
// Which reasons are not drops (SKB_CONSUMED, 6.2+; else SKB_NOT_DROPPED_YET, 6.0 and 6.1;
// else none) and the value of SKB_DROP_REASON_NOT_SPECIFIED come from the running kernel's
// enum skb_drop_reason (CO-RE enum relocations), as do the sk_buff / net_device / sock / net
// layouts. Set before load (.rodata): host_netns_inum, only_netns_inum, count_not_specified
// (0/1), has_rx_sk (0/1: the tracepoint has rx_sk). DIR_RECEIVE and DIR_TRANSMIT come from
// the build (exporter/bpfconsts.py); drop_counts' size is set before load.
#include "podsnoop.bpf.h"

char LICENSE[] SEC("license") = "GPL";

const volatile u32 host_netns_inum = 0;
const volatile u32 only_netns_inum = 0;
const volatile u32 count_not_specified = 1;
const volatile u32 has_rx_sk = 0;

// The enumerators this program needs, as a flavor of the kernel's enum skb_drop_reason
// (matched by name without the ___podsnoop suffix, so the build does not depend on the build
// machine's vmlinux.h having them); the values here are placeholders, the relocations give
// the running kernel's.
enum skb_drop_reason___podsnoop {
    SKB_NOT_DROPPED_YET___podsnoop = 0,
    SKB_CONSUMED___podsnoop = 1,
    SKB_DROP_REASON_NOT_SPECIFIED___podsnoop = 2,
};

struct drop_key {
    u32 netns;    // inode number of the pod's network namespace, 0 for a host veth
    u32 ifindex;  // the host veth's ifindex (netns 0), else 0
    u32 reason;   // enum skb_drop_reason
    u8 dir;
    u8 pad[3];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct drop_key);
    __type(value, u64);
} drop_counts SEC(".maps");

// ifindexes of the pods' host veths, maintained by userspace.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, u32);
    __type(value, u8);
} pod_ifindexes SEC(".maps");

// Inserts lost because drop_counts was full.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, u64);
} drop_update_failures SEC(".maps");

// Inode number of a network device's namespace, or 0.
static __always_inline u32 dev_netns_inum(struct net_device *dev)
{
    return BPF_CORE_READ(dev, nd_net.net, ns.inum);
}

// Inode number of a socket's network namespace, or 0.
static __always_inline u32 sock_netns_inum(struct sock *sk)
{
    if (!sk)
        return 0;
    return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

// The highest reason that is not a drop, or -1 where the kernel has neither (5.17-5.19).
static __always_inline s64 reason_consumed(void)
{
    if (bpf_core_enum_value_exists(enum skb_drop_reason___podsnoop, SKB_CONSUMED___podsnoop))
        return bpf_core_enum_value(enum skb_drop_reason___podsnoop, SKB_CONSUMED___podsnoop);
    if (bpf_core_enum_value_exists(enum skb_drop_reason___podsnoop,
                                   SKB_NOT_DROPPED_YET___podsnoop))
        return bpf_core_enum_value(enum skb_drop_reason___podsnoop,
                                   SKB_NOT_DROPPED_YET___podsnoop);
    return -1;
}

static __always_inline int is_not_specified(u32 reason)
{
    return bpf_core_enum_value_exists(enum skb_drop_reason___podsnoop,
                                      SKB_DROP_REASON_NOT_SPECIFIED___podsnoop) &&
           reason == bpf_core_enum_value(enum skb_drop_reason___podsnoop,
                                         SKB_DROP_REASON_NOT_SPECIFIED___podsnoop);
}

// Counters use atomic adds: this program runs both in process context and in softirq, and
// a softirq can interrupt it on the same CPU between the load and the store of a plain +=
// on the per-CPU value, losing an update.
static __always_inline void count(struct drop_key *key)
{
    u64 zero = 0;
    u64 *n = bpf_map_lookup_elem(&drop_counts, key);
    if (!n) {
        bpf_map_update_elem(&drop_counts, key, &zero, BPF_NOEXIST);
        n = bpf_map_lookup_elem(&drop_counts, key);
    }
    if (n) {
        __sync_fetch_and_add(n, 1);
    } else {
        u32 slot = 0;
        u64 *f = bpf_map_lookup_elem(&drop_update_failures, &slot);
        if (f)
            __sync_fetch_and_add(f, 1);
    }
}

// args: (struct sk_buff *skb, void *location, enum skb_drop_reason reason
//        [, struct sock *rx_sk])
SEC("raw_tp/kfree_skb")
int kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
    u32 reason = (u32)ctx->args[2];
    if ((s64)reason <= reason_consumed())
        return 0;
    if (!count_not_specified && is_not_specified(reason))
        return 0;
    struct drop_key key = {};
    key.reason = reason;
    struct sk_buff *skb = (struct sk_buff *)ctx->args[0];

    // 1. A receiving socket in a pod's namespace (6.11+ name it).
    struct sock *rx_sk = NULL;
    if (has_rx_sk)
        rx_sk = (struct sock *)ctx->args[3];
    if (rx_sk) {
        u32 inum = sock_netns_inum(rx_sk);
        if (inum && inum != host_netns_inum) {
            key.netns = inum;
            key.dir = DIR_RECEIVE;
            goto out;
        }
    }

    // 2. The device.
    struct net_device *dev = BPF_CORE_READ(skb, dev);
    if (dev) {
        u32 inum = dev_netns_inum(dev);
        if (!inum)
            return 0;  // not a device (e.g. UDP keeps other data in skb->dev's place)
        int ifindex = BPF_CORE_READ(dev, ifindex);
        int iif = BPF_CORE_READ(skb, skb_iif);
        if (inum == host_netns_inum) {
            u32 idx = ifindex;
            if (!bpf_map_lookup_elem(&pod_ifindexes, &idx))
                return 0;
            key.ifindex = idx;
            key.dir = iif == ifindex ? DIR_TRANSMIT : DIR_RECEIVE;
        } else {
            key.netns = inum;
            key.dir = iif == ifindex ? DIR_RECEIVE : DIR_TRANSMIT;
        }
        goto out;
    }

    // 3. No device: the sending socket.
    {
        u32 inum = sock_netns_inum(BPF_CORE_READ(skb, sk));
        if (!inum || inum == host_netns_inum)
            return 0;
        key.netns = inum;
        key.dir = DIR_TRANSMIT;
    }

out:
    if (only_netns_inum && key.netns != only_netns_inum)
        return 0;
    count(&key);
    return 0;
}

// podsnoop: packets the kernel dropped, per pod place, direction and drop reason.
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
// that involve no pod veth are not counted at all. In sidecar mode HOST_NETNS_INUM is 0 (the
// host's namespace is not known from inside a pod) and ONLY_NETNS_INUM, the pod's own
// namespace, is the only one counted; 0 in node mode.
//
// Offsets of sk_buff / net_device / sock / net members come from the running kernel's BTF
// (the headers bcc compiles against may be older): SKB_DEV_OFF, SKB_SK_OFF, SKB_IIF_OFF,
// NETDEV_IFINDEX_OFF, NETDEV_NET_OFF, plus sockcgroup.h's. Also passed: HOST_NETNS_INUM,
// REASON_CONSUMED, REASON_NOT_SPECIFIED, COUNT_NOT_SPECIFIED (0/1), HAS_RX_SK (0/1: the
// tracepoint has rx_sk), DROP_MAX_ENTRIES, DIR_RECEIVE, DIR_TRANSMIT.
#include <uapi/linux/bpf.h>
// The tracepoint's `reason` field is an enum skb_drop_reason: bcc's generated args struct
// needs the type (its values come from BTF at run time, not from these headers).
#if __has_include(<net/dropreason-core.h>)
#include <net/dropreason-core.h>
#elif __has_include(<net/dropreason.h>)
#include <net/dropreason.h>
#else
enum skb_drop_reason { SKB_DROP_REASON_PODSNOOP_UNKNOWN };
#endif

#include "sockcgroup.h"

struct drop_key {
    u32 netns;    // inode number of the pod's network namespace, 0 for a host veth
    u32 ifindex;  // the host veth's ifindex (netns 0), else 0
    u32 reason;   // enum skb_drop_reason
    u8 dir;
    u8 pad[3];
};

BPF_PERCPU_HASH(drop_counts, struct drop_key, u64, DROP_MAX_ENTRIES);
// ifindexes of the pods' host veths, maintained by userspace.
BPF_HASH(pod_ifindexes, u32, u8, 16384);
// Inserts lost because drop_counts was full.
BPF_PERCPU_ARRAY(drop_update_failures, u64, 1);

static __always_inline u32 netns_of_dev(const void *dev)
{
    void *net = NULL;
    u32 inum = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)dev + NETDEV_NET_OFF);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + NET_INUM_OFF);
    return inum;
}

// Counters use atomic adds: these programs run both in process context and in softirq,
// and a softirq can interrupt one on the same CPU between the load and the store of a
// plain += on the per-CPU value, losing an update (tests saw retransmits go missing).
TRACEPOINT_PROBE(skb, kfree_skb)
{
    u32 reason = args->reason;
    // SKB_NOT_DROPPED_YET and SKB_CONSUMED (6.2+; before, consume_skb has a tracepoint of
    // its own) are not drops; REASON_CONSUMED is -1 where neither exists (5.17).
    if ((s64)reason <= (s64)REASON_CONSUMED)
        return 0;
#if !COUNT_NOT_SPECIFIED
    if (reason == REASON_NOT_SPECIFIED)
        return 0;
#endif
    struct drop_key key = {};
    key.reason = reason;
    const void *skb = args->skbaddr;

    // 1. A receiving socket in a pod's namespace (newer kernels' tracepoint has rx_sk).
#if HAS_RX_SK
    const void *rx_sk = args->rx_sk;
#else
    const void *rx_sk = NULL;
#endif
    if (rx_sk) {
        u32 inum = sk_netns_inum(rx_sk);
        if (inum && inum != HOST_NETNS_INUM) {
            key.netns = inum;
            key.dir = DIR_RECEIVE;
            goto count;
        }
    }

    // 2. The device.
    void *dev = NULL;
    bpf_probe_read_kernel(&dev, sizeof(dev), (const char *)skb + SKB_DEV_OFF);
    if (dev) {
        int ifindex = 0, iif = 0;
        u32 inum = netns_of_dev(dev);
        if (!inum)
            return 0;  // not a device (e.g. UDP keeps other data in skb->dev's place)
        bpf_probe_read_kernel(&ifindex, sizeof(ifindex), (const char *)dev + NETDEV_IFINDEX_OFF);
        bpf_probe_read_kernel(&iif, sizeof(iif), (const char *)skb + SKB_IIF_OFF);
        if (inum == HOST_NETNS_INUM) {
            u32 idx = ifindex;
            if (!pod_ifindexes.lookup(&idx))
                return 0;
            key.ifindex = idx;
            key.dir = iif == ifindex ? DIR_TRANSMIT : DIR_RECEIVE;
        } else {
            key.netns = inum;
            key.dir = iif == ifindex ? DIR_RECEIVE : DIR_TRANSMIT;
        }
        goto count;
    }

    // 3. No device: the sending socket.
    {
        void *sk = NULL;
        bpf_probe_read_kernel(&sk, sizeof(sk), (const char *)skb + SKB_SK_OFF);
        u32 inum = sk_netns_inum(sk);
        if (!inum || inum == HOST_NETNS_INUM)
            return 0;
        key.netns = inum;
        key.dir = DIR_TRANSMIT;
    }

count:;
#if ONLY_NETNS_INUM
    if (key.netns != ONLY_NETNS_INUM)
        return 0;
#endif
    u64 zero = 0;
    u64 *n = drop_counts.lookup_or_try_init(&key, &zero);
    if (n) {
        __sync_fetch_and_add(n, 1);
    } else {
        u32 slot = 0;
        u64 *f = drop_update_failures.lookup(&slot);
        if (f)
            __sync_fetch_and_add(f, 1);
    }
    return 0;
}

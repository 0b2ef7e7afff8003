// podsnoop: per-container traffic and TCP connects by peer, the other end's identity
// (precompiled CO-RE; loaded by exporter/bpfobject.py).
//
// Who an address is, userspace says (exporter/peers.py, collectors/peers.py): peer_addrs
// maps an address (IPv6, or IPv4 as ::ffff:a.b.c.d) to a peer id, one per identity (a
// workload, a Service, the node, a configured CIDR), and peer_cidrs, a longest-prefix
// trie, the configured CIDRs. An address neither knows is peer 0, "world". Ids are never
// reused while podsnoop runs, so a key's id always means the identity it meant when the
// packet was counted.
//
// Two cgroup_skb programs, linked (BPF links, like bpf/cgroup_net.bpf.c) to each kubepods
// root cgroup, so they run for the sockets of every container below it, key the packets
// of a container's sockets by (socket's cgroup id, peer id, direction): egress by the
// destination, ingress by the source. A cgroup_skb program's data starts at the IP header
// (always in the linear part here). Loopback traffic (127/8, ::1) has no peer and is not
// counted. Bytes are the IP packet's length (a GSO super-packet counts once, with its full
// length), as podsnoop_container_network_* count them.
//
// A raw tracepoint on inet_sock_set_state counts TCP connects by peer: -> SYN_SENT runs in
// the connecting task, a tracked one (podfilter.bpf.h) remembers (its cgroup, the peer of
// the socket's destination address) under the socket's address; SYN_SENT -> ESTABLISHED
// counts a connect, SYN_SENT -> CLOSE a failure. The destination is what connect() was
// given: a ClusterIP is the Service; where the kernel rewrites the address at connect()
// (socket-level load balancing) it is the backend.
//
// Counters use atomic adds: cgroup_skb programs run in process context and in softirq.
// Set before load: cidr_count (.rodata; 0 skips the trie), podfilter.bpf.h's constants, and
// the map sizes (exporter/loader.py _peers_object). The programs always allow the packet.
#include "podfilter.bpf.h"
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10

const volatile u32 cidr_count = 0;

struct peer_addr {
    u8 a[16];
};

struct peer_prefix {
    u32 prefixlen;  // of the 128-bit form: an IPv4 /n is 96 + n
    u8 a[16];
};

struct traffic_key {
    u64 cgroup_id;
    u32 peer;
    u8 dir;
    u8 pad[3];
};

struct traffic_value {
    u64 packets;
    u64 bytes;
};

struct connect_key {
    u64 cgroup_id;
    u32 peer;
    u32 pad;
};

struct connect_value {
    u64 connects;
    u64 failures;
};

struct connecting {
    u64 cgroup_id;
    u32 peer;
    u32 pad;
};

// Written by userspace only.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 65536);
    __type(key, struct peer_addr);
    __type(value, u32);
} peer_addrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 256);
    __type(key, struct peer_prefix);
    __type(value, u32);
} peer_cidrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 32768);
    __type(key, struct traffic_key);
    __type(value, struct traffic_value);
} peer_traffic SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct connect_key);
    __type(value, struct connect_value);
} peer_connects SEC(".maps");

// Connects in progress, by socket address. LRU: a socket freed without a state change
// cannot leak an entry for good.
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, u64);
    __type(value, struct connecting);
} peer_connecting SEC(".maps");

// Inserts lost because a map was full: 0 peer_traffic, 1 peer_connects.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, u32);
    __type(value, u64);
} peer_update_failures SEC(".maps");

#define count_failure(slot) count_in_slot(&peer_update_failures, (slot))

static __always_inline void set_v4(struct peer_addr *addr, const u8 *v4)
{
    __builtin_memset(addr->a, 0, 10);
    addr->a[10] = 0xff;
    addr->a[11] = 0xff;
    __builtin_memcpy(addr->a + 12, v4, 4);
}

static __always_inline int loopback(const struct peer_addr *addr)
{
    const u64 *w = (const u64 *)addr->a;
    if (w[0] == 0 && ((const u32 *)addr->a)[2] == bpf_htonl(0xffff))
        return addr->a[12] == 127;
    return w[0] == 0 && w[1] == bpf_cpu_to_be64(1);
}

static __always_inline u32 peer_of(const struct peer_addr *addr)
{
    u32 *id = bpf_map_lookup_elem(&peer_addrs, addr);
    if (id)
        return *id;
    if (cidr_count) {
        struct peer_prefix p = {.prefixlen = 128};
        __builtin_memcpy(p.a, addr->a, 16);
        id = bpf_map_lookup_elem(&peer_cidrs, &p);
        if (id)
            return *id;
    }
    return 0;
}

static __always_inline int count(struct __sk_buff *skb, u8 dir)
{
    u8 *data = (u8 *)(long)skb->data;
    u8 *end = (u8 *)(long)skb->data_end;
    struct peer_addr addr;
    if (data + 20 > end)
        return 1;
    if ((data[0] >> 4) == 4) {
        set_v4(&addr, data + (dir == DIR_TRANSMIT ? 16 : 12));
    } else if ((data[0] >> 4) == 6) {
        if (data + 40 > end)
            return 1;
        __builtin_memcpy(addr.a, data + (dir == DIR_TRANSMIT ? 24 : 8), 16);
    } else {
        return 1;
    }
    if (loopback(&addr))
        return 1;
    struct traffic_key key = {.cgroup_id = bpf_skb_cgroup_id(skb), .peer = peer_of(&addr),
                              .dir = dir};
    struct traffic_value zero = {};
    struct traffic_value *v = lookup_or_init(&peer_traffic, &key, &zero);
    if (v) {
        __sync_fetch_and_add(&v->packets, 1);
        __sync_fetch_and_add(&v->bytes, skb->len);
    } else {
        count_failure(0);
    }
    return 1;  // allow
}

SEC("cgroup_skb/ingress")
int podsnoop_peers_ingress(struct __sk_buff *skb)
{
    return count(skb, DIR_RECEIVE);
}

SEC("cgroup_skb/egress")
int podsnoop_peers_egress(struct __sk_buff *skb)
{
    return count(skb, DIR_TRANSMIT);
}

// The peer of a socket's destination address (0: world, or not IP).
static __always_inline u32 sk_peer(const struct sock *sk)
{
    struct peer_addr addr;
    u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
    if (family == AF_INET) {
        u32 daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
        set_v4(&addr, (const u8 *)&daddr);
    } else if (family == AF_INET6) {
        BPF_CORE_READ_INTO(&addr.a, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
    } else {
        return 0;
    }
    return peer_of(&addr);
}

// args: (const struct sock *sk, const int oldstate, const int newstate)
SEC("raw_tp/inet_sock_set_state")
int podsnoop_peers_connect(struct bpf_raw_tracepoint_args *ctx)
{
    const struct sock *sk = (const struct sock *)ctx->args[0];
    int oldstate = (int)ctx->args[1];
    int newstate = (int)ctx->args[2];
    if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT)
        return 0;
    if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != IPPROTO_TCP)
        return 0;
    u64 skaddr = (u64)sk;
    if (newstate == TCP_SYN_SENT) {
        if (!tracked())
            return 0;
        struct connecting c = {.cgroup_id = bpf_get_current_cgroup_id(), .peer = sk_peer(sk)};
        bpf_map_update_elem(&peer_connecting, &skaddr, &c, BPF_ANY);
        return 0;
    }
    struct connecting *c = bpf_map_lookup_elem(&peer_connecting, &skaddr);
    if (!c)
        return 0;
    if (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE) {
        struct connect_key key = {.cgroup_id = c->cgroup_id, .peer = c->peer};
        struct connect_value zero = {};
        struct connect_value *v = lookup_or_init(&peer_connects, &key, &zero);
        if (!v)
            count_failure(1);
        else if (newstate == TCP_ESTABLISHED)
            __sync_fetch_and_add(&v->connects, 1);
        else
            __sync_fetch_and_add(&v->failures, 1);
    }
    bpf_map_delete_elem(&peer_connecting, &skaddr);
    return 0;
}

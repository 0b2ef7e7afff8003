// podsnoop: DNS requests per container, by query type and response code, and their
// latency (precompiled CO-RE; loaded by exporter/bpfobject.py).
//
// Two cgroup_skb programs, linked (BPF links, like bpf/cgroup_net.bpf.c) to each kubepods
// root cgroup, so they run for the sockets of every container below it:
//   egress: a DNS query a container's socket sends (UDP or TCP to port 53; over TCP the
//     segment must start a message: the 2-byte length prefix, then the header): remember
//     (start time, the socket's cgroup id, query type) under (socket cookie, DNS id) in
//     dns_inflight. A resent query (same socket, same id: a UDP retry, a TCP retransmit)
//     keeps the first start time, so the latency is what the client waited.
//   ingress: a DNS response (from port 53) on the same socket with that id: one request
//     counted under (cgroup id, query type, rcode) and its latency in the cgroup's
//     histogram; the entry is deleted first, and only the program (or the exporter's
//     sweep) whose delete succeeds counts it, so a request counts once.
// Timeouts: the exporter sweeps dns_inflight at each scrape and counts entries older than
// timeout_ns as rcode DNS_RCODE_TIMEOUT (exporter/collectors/dns.py). A response that
// comes later than timeout_ns but before a sweep counts as a timeout here, the same way,
// so the result does not depend on when the scrape happened. Timeouts have no latency.
//
// Only headers in the linear part of the skb are read directly (the IP and L4 headers
// always are at these hooks); the DNS bytes are copied with bpf_skb_load_bytes (TCP
// payloads sit in page fragments). IPv4 (not later fragments) and IPv6 (UDP or TCP right
// after the fixed header; extension headers are not followed). A cgroup_skb program's data
// starts at the IP header. Everything else costs a few loads and compares, no helper call.
// The programs always allow the packet (return 1).
//
// Query types other than DNS_QTYPES are counted as 0 ("other"), rcodes are the header's 4
// bits (EDNS extended rcodes are not combined), so the keys per cgroup stay few.
// DNS_BOUNDS_NS (the histogram's upper bounds in ns), DNS_QTYPES and DNS_RCODE_TIMEOUT come
// from the build (exporter/bpfconsts.py); timeout_ns (.rodata) and the map sizes are set
// before load (exporter/loader.py _dns_object).
#include "buckets.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#if !defined(DNS_BOUNDS_NS) || !defined(DNS_QTYPES) || !defined(DNS_RCODE_TIMEOUT) || \
    !defined(DNS_DOMAIN_BYTES)
#error "DNS_BOUNDS_NS, DNS_QTYPES, DNS_RCODE_TIMEOUT, DNS_DOMAIN_BYTES come from the build"
#endif

const volatile u64 timeout_ns = 5000000000ULL;
const volatile u32 count_domains = 0;  // --dns-domains N > 0: queries by name too

#define DNS_PORT 53
#define DNS_HEADER 12
#define QNAME_MAX 255
#define QNAME_LABELS 128           // a name of 255 bytes has at most 127 labels
// Bytes copied of a query: the TCP length prefix, the header, the name, qtype.
#define QUERY_BYTES (2 + DNS_HEADER + QNAME_MAX + 2)
#define MIN_QUERY (DNS_HEADER + 5)  // a header, the root name, qtype, qclass
#define QBUF_SIZE 512              // a power of two above QUERY_BYTES: indexes are masked
_Static_assert(QUERY_BYTES - MIN_QUERY <= 255, "the length bound below masks with 255");

struct inflight_key {
    u64 cookie;
    u32 id;
    u32 pad;
};

struct inflight_value {
    u64 start_ns;
    u64 cgroup_id;
    u64 qtype;
};

struct request_key {
    u64 cgroup_id;
    u32 qtype;
    u32 rcode;
};

struct qbuf {
    u8 b[QBUF_SIZE];
};

// A query's name as it is on the wire (length-prefixed labels), its first DNS_DOMAIN_BYTES
// bytes, zero-padded.
struct domain_key {
    u64 cgroup_id;
    u8 name[DNS_DOMAIN_BYTES];
};

// Queries waiting for their response. LRU: a socket closed before its answer cannot leak
// an entry for good (the exporter's sweep normally removes it as a timeout first).
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct inflight_key);
    __type(value, struct inflight_value);
} dns_inflight SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct request_key);
    __type(value, u64);
} dns_requests SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct bucket_key);
    __type(value, struct bucket_value);
} dns_latency SEC(".maps");

// Queries by name (count_domains): drained by the exporter at each scrape (one entry for
// each name a container asked for since; 1 entry when off).
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct domain_key);
    __type(value, u64);
} dns_domains SEC(".maps");

// Inserts lost because a map was full: 0 dns_requests, 1 dns_latency, 2 dns_domains.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 3);
    __type(key, u32);
    __type(value, u64);
} dns_update_failures SEC(".maps");

// Scratch space for a query's bytes (too big for the stack).
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, struct qbuf);
} dns_scratch SEC(".maps");

static const u64 dns_bounds_ns[] = {DNS_BOUNDS_NS};
#define DNS_BOUNDS (sizeof(dns_bounds_ns) / sizeof(dns_bounds_ns[0]))
static const u16 dns_qtypes[] = {DNS_QTYPES};
#define DNS_NQTYPES (sizeof(dns_qtypes) / sizeof(dns_qtypes[0]))

static __always_inline u32 known_qtype(u32 qtype)
{
#pragma unroll
    for (u32 i = 0; i < DNS_NQTYPES; i++)
        if (qtype == dns_qtypes[i])
            return qtype;
    return 0;
}

static __always_inline u16 be16(const u8 *p)
{
    return ((u16)p[0] << 8) | p[1];
}

// Offset of the DNS message in the packet (for TCP: of its 2-byte length prefix), 0 if
// the packet is not DNS from (egress) or to (ingress) a container's socket. *tcp: 1 for TCP.
static __always_inline u32 dns_offset(struct __sk_buff *skb, int egress, u32 *tcp)
{
    u8 *data = (u8 *)(long)skb->data;
    u8 *end = (u8 *)(long)skb->data_end;
    u32 l4;
    u8 proto;
    if (data + 20 > end)
        return 0;
    if ((data[0] >> 4) == 4) {
        if ((be16(data + 6) & 0x1fff) != 0)  // a later fragment: no L4 header
            return 0;
        proto = data[9];
        l4 = (data[0] & 0x0f) * 4;
        if (l4 < 20)
            return 0;
    } else if ((data[0] >> 4) == 6) {
        if (data + 40 > end)
            return 0;
        proto = data[6];
        l4 = 40;
    } else {
        return 0;
    }
    u8 *h = data + l4;
    if (proto == IPPROTO_UDP) {
        if (h + 8 > end)
            return 0;
        if (be16(egress ? h + 2 : h) != DNS_PORT)
            return 0;
        *tcp = 0;
        return l4 + 8;
    }
    if (proto == IPPROTO_TCP) {
        if (h + 20 > end)
            return 0;
        if (be16(egress ? h + 2 : h) != DNS_PORT)
            return 0;
        u32 doff = (h[12] >> 4) * 4;
        if (doff < 20)
            return 0;
        *tcp = 1;
        return l4 + doff;
    }
    return 0;
}

static __always_inline void count_request(u64 cgroup_id, u32 qtype, u32 rcode)
{
    struct request_key key = {.cgroup_id = cgroup_id, .qtype = qtype, .rcode = rcode};
    u64 zero = 0;
    u64 *n = lookup_or_init(&dns_requests, &key, &zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        count_in_slot(&dns_update_failures, 0);
}

// The question of a standard query (QR 0, opcode QUERY, one question) whose header is at
// q->b[base]: its (folded) query type, or -1 if these bytes are not one.
static __always_inline int parse_query(struct qbuf *q, u32 n, u32 base, u32 *name_end)
{
    u8 *hdr = q->b + (base & 2);
    if ((hdr[2] & 0xf8) != 0 || be16(hdr + 4) != 1)
        return -1;
    u32 pos = base + DNS_HEADER;
    int ended = 0;
    for (int i = 0; i < QNAME_LABELS; i++) {
        if (pos >= n)
            return -1;
        u8 len = q->b[pos & (QBUF_SIZE - 1)];
        if (len == 0) {
            ended = 1;
            break;
        }
        if (len & 0xc0)  // a compression pointer has no place in a query's question
            return -1;
        pos += len + 1;
    }
    if (!ended || pos + 2 >= n)
        return -1;
    *name_end = pos;
    return known_qtype(((u32)q->b[(pos + 1) & (QBUF_SIZE - 1)] << 8) |
                       q->b[(pos + 2) & (QBUF_SIZE - 1)]);
}

SEC("cgroup_skb/egress")
int podsnoop_dns_egress(struct __sk_buff *skb)
{
    u32 tcp = 0;
    u32 off = dns_offset(skb, 1, &tcp);
    if (!off)
        return 1;
    u32 slot = 0;
    struct qbuf *q = bpf_map_lookup_elem(&dns_scratch, &slot);
    if (!q)
        return 1;
    u32 n = skb->len;
    if (n <= off)
        return 1;
    n -= off;
    if (n > QUERY_BYTES)
        n = QUERY_BYTES;
    if (n < MIN_QUERY)
        return 1;
    // The verifier does not relate skb->len to off: bound the length in the register the
    // helper gets, from below and above (a no-op: MIN_QUERY <= n <= QUERY_BYTES).
    u32 extra = n - MIN_QUERY;
    asm volatile("%[x] &= 255" : [x] "+r"(extra));
    n = extra + MIN_QUERY;
    if (bpf_skb_load_bytes(skb, off, q->b, n) < 0)
        return 1;
    // Over TCP the segment starts with the 2-byte length, or, where the client wrote the
    // length on its own, with the header.
    u32 base = 0, name_end = 0;
    int qtype = -1;
    if (tcp && be16(q->b) >= MIN_QUERY) {
        base = 2;
        qtype = parse_query(q, n, 2, &name_end);
    }
    if (qtype < 0) {
        base = 0;
        qtype = parse_query(q, n, 0, &name_end);
    }
    if (qtype < 0)
        return 1;
    u64 cookie = bpf_get_socket_cookie(skb);
    if (!cookie)
        return 1;
    struct inflight_key key = {.cookie = cookie, .id = be16(q->b + base)};
    struct inflight_value v = {.start_ns = bpf_ktime_get_ns(),
                               .cgroup_id = bpf_skb_cgroup_id(skb),
                               .qtype = qtype};
    // a resend keeps its start (and is not counted by name again)
    if (bpf_map_update_elem(&dns_inflight, &key, &v, BPF_NOEXIST) != 0 || !count_domains)
        return 1;
    struct domain_key dkey = {.cgroup_id = v.cgroup_id};
    u32 start = base + DNS_HEADER;
    for (u32 i = 0; i < DNS_DOMAIN_BYTES; i++) {
        if (start + i > name_end)  // the name's closing zero is its last byte
            break;
        dkey.name[i] = q->b[(start + i) & (QBUF_SIZE - 1)];
    }
    u64 zero = 0;
    u64 *count = lookup_or_init(&dns_domains, &dkey, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    else
        count_in_slot(&dns_update_failures, 2);
    return 1;
}

SEC("cgroup_skb/ingress")
int podsnoop_dns_ingress(struct __sk_buff *skb)
{
    u32 tcp = 0;
    u32 off = dns_offset(skb, 0, &tcp);
    if (!off)
        return 1;
    u8 h[6];
    if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
        return 1;
    struct inflight_key key = {.cookie = bpf_get_socket_cookie(skb)};
    struct inflight_value *start = NULL;
    u8 *hdr = h;
    if (tcp) {  // after the 2-byte length, or without it (the server wrote it on its own)
        hdr = h + 2;
        key.id = be16(hdr);
        if (hdr[2] & 0x80)
            start = bpf_map_lookup_elem(&dns_inflight, &key);
        if (!start)
            hdr = h;
    }
    if (!start) {
        key.id = be16(hdr);
        if (!(hdr[2] & 0x80))  // not a response
            return 1;
        start = bpf_map_lookup_elem(&dns_inflight, &key);
        if (!start)
            return 1;
    }
    u64 ns = bpf_ktime_get_ns() - start->start_ns;
    u64 cgroup_id = start->cgroup_id;
    u32 qtype = start->qtype;
    u8 rcode = hdr[3] & 0x0f;
    if (bpf_map_delete_elem(&dns_inflight, &key) != 0)  // the sweep or a duplicate took it
        return 1;
    if (ns > timeout_ns) {
        count_request(cgroup_id, qtype, DNS_RCODE_TIMEOUT);
        return 1;
    }
    count_request(cgroup_id, qtype, rcode);
    if (!observe(&dns_latency, cgroup_id, bucket_of(dns_bounds_ns, DNS_BOUNDS, ns), ns))
        count_in_slot(&dns_update_failures, 1);
    return 1;
}

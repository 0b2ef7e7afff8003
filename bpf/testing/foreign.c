// Stand-ins for other programs on the same TC hooks (a CNI's filter), for tests and benchmarks.
// Not loaded by the exporter.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

BPF_ARRAY(seen, u64, 1);

// Counts every packet it sees and passes it on, like a CNI's filter would.
int foreign_count(struct __sk_buff *skb)
{
    u32 slot = 0;
    u64 *n = seen.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
    return TC_ACT_UNSPEC;
}

// The cheapest possible filter: the floor for the packet-path benchmark.
int passthrough(struct __sk_buff *skb)
{
    return TC_ACT_UNSPEC;
}

// A final verdict, as a CNI returns for traffic it handles itself (tcx: TCX_PASS == 0).
int pass_final(struct __sk_buff *skb)
{
    return TC_ACT_OK;
}

// A redirect, as a CNI's tcx program does for traffic it delivers itself: the packet goes
// back out of the device it came in on (a hairpin), and the stack never sees it.
int redirect_back(struct __sk_buff *skb)
{
    return bpf_redirect(skb->ifindex, 0);
}

// Drops every packet (a network policy's verdict).
int drop_all(struct __sk_buff *skb)
{
    return TC_ACT_SHOT;
}

// The floor: empty programs on the hooks podsnoop uses, for bench/floor.py. What any tool
// must pay for the hook itself; podsnoop's cost is reported over it. Not loaded by the
// exporter.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

RAW_TRACEPOINT_PROBE(sys_enter)
{
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
    return 0;
}

int floor_tc(struct __sk_buff *skb)
{
    return TC_ACT_UNSPEC;
}

// The socket path's floor (bench/socket_path.py): a cgroup_skb program that lets every
// packet through, linked to the kubepods root as podsnoop's DNS and peer programs are.
int floor_skb(struct __sk_buff *skb)
{
    return 1;
}

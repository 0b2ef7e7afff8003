// A network impairment for tests (this kernel has no netem): a TC filter that drops chosen
// packets, put in front of podsnoop's on a pod's host veth. Not loaded by the exporter.
//
// impair_cfg[0]:
//   proto      IPPROTO_TCP or IPPROTO_UDP (0: nothing is dropped)
//   port       destination port to impair (0: any)
//   syn_drops  TCP: drop this many SYNs (no ACK) first, so the connect waits for the SYN
//              retransmission (the kernel's initial RTO, 1 s)
//   loss_pct   drop this percentage of the matching packets that carry a payload
//   drop_all   drop every matching packet
//   delay_sport TCP: hand every SYN-ACK from this source port to userspace (delayed_frames)
//              instead of sending it; the test sends the frame itself after a delay, with
//              an AF_PACKET socket that bypasses the qdisc and TC (a netem-like delay line)
// impair_dropped[0] counts the packets dropped (delayed ones not included).
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

struct impair {
    u32 proto;
    u32 port;
    u32 syn_drops;
    u32 loss_pct;
    u32 drop_all;
    u32 delay_sport;
};

BPF_ARRAY(impair_cfg, struct impair, 1);
BPF_ARRAY(impair_dropped, u64, 1);
BPF_PERF_OUTPUT(delayed_frames);

static __always_inline int shot(void)
{
    u32 slot = 0;
    u64 *n = impair_dropped.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
    return TC_ACT_SHOT;
}

int impair(struct __sk_buff *skb)
{
    u32 slot = 0;
    struct impair *cfg = impair_cfg.lookup(&slot);
    if (!cfg || (!cfg->proto && !cfg->delay_sport))
        return TC_ACT_UNSPEC;
    u16 eth_proto;
    if (bpf_skb_load_bytes(skb, 12, &eth_proto, 2) < 0 || eth_proto != bpf_htons(ETH_P_IP))
        return TC_ACT_UNSPEC;
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
        return TC_ACT_UNSPEC;
    u32 l4 = ETH_HLEN + ip.ihl * 4;
    u16 ports[2];
    if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
        return TC_ACT_UNSPEC;
    if (cfg->delay_sport && ip.protocol == IPPROTO_TCP && bpf_ntohs(ports[0]) == cfg->delay_sport) {
        struct tcphdr tcp;
        if (bpf_skb_load_bytes(skb, l4, &tcp, sizeof(tcp)) == 0 && tcp.syn && tcp.ack) {
            u32 len = skb->len;
            delayed_frames.perf_submit_skb(skb, len, &len, sizeof(len));
            return TC_ACT_SHOT;
        }
    }
    if (ip.protocol != cfg->proto)
        return TC_ACT_UNSPEC;
    if (cfg->port && bpf_ntohs(ports[1]) != cfg->port)
        return TC_ACT_UNSPEC;
    if (cfg->drop_all)
        return shot();
    u32 payload = bpf_ntohs(ip.tot_len) - ip.ihl * 4;
    if (ip.protocol == IPPROTO_TCP) {
        struct tcphdr tcp;
        if (bpf_skb_load_bytes(skb, l4, &tcp, sizeof(tcp)) < 0)
            return TC_ACT_UNSPEC;
        if (tcp.syn && !tcp.ack && cfg->syn_drops) {
            __sync_fetch_and_add(&cfg->syn_drops, -1);
            return shot();
        }
        payload -= tcp.doff * 4;
    } else {
        payload -= 8;
    }
    if (payload && cfg->loss_pct && bpf_get_prandom_u32() % 100 < cfg->loss_pct)
        return shot();
    return TC_ACT_UNSPEC;
}

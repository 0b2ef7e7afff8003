"""The compile-time constants of the precompiled BPF objects, as clang -D flags, from the
one place each is defined (names.py, kuberoots.py). bpf/Makefile runs
`python3 -m exporter.bpfconsts`; nothing here imports more than those two modules.
What differs per node or per start (directions of a mode, the kubepods level, features)
is a .rodata constant set at load instead (exporter/bpfobject.py)."""
from __future__ import annotations

from . import names
from .kuberoots import MAX_ROOTS

# Layouts the BPF C and the collectors share, defined here (the collectors import them).
EXEC_FILENAME_LEN = 256      # bytes of an exec event's filename (exec_event.filename)
EXEC_RINGBUF_PAGES = 64      # 256 KiB with 4 KiB pages: ~800 exec events in flight
# Upper bounds (seconds) of the TCP connect latency buckets (collectors/tcp.py; the BPF
# side counts into them: CONNECT_BOUNDS_NS): from a same-node connect (~50 us) to SYN
# retransmits (1 s, 3 s, 7 s after the first SYN).
CONNECT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# DNS (bpf/dns.bpf.c, collectors/dns.py): upper bounds (seconds) of the request latency
# buckets, counted in the kernel (DNS_BOUNDS_NS): from a node-local cache (~0.1-0.5 ms)
# through a cluster resolver (ms) and an upstream forward (tens of ms) to a resolver's
# retries (1-5 s, the usual client timeout).
DNS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
               5.0)
# Query types counted by name (the qtype label); the kernel counts every other one as 0,
# exported as "other", so the keys per container stay few.
DNS_QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
              "AAAA": 28, "SRV": 33, "NAPTR": 35, "DS": 43, "DNSKEY": 48, "SVCB": 64,
              "HTTPS": 65, "ANY": 255, "CAA": 257}
# Response codes by name (the header's 4 bits; 11-15 are exported as their number), and the
# code, outside those 4 bits, of a query answered late or never (rcode="timeout").
DNS_RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
              "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE")
DNS_RCODE_TIMEOUT = 16
# --dns-domains: bytes of a query's name (wire form) the kernel keeps; longer names are
# counted under their first DNS_DOMAIN_BYTES bytes.
DNS_DOMAIN_BYTES = 64


# bpf/net.bpf.c's direct-mapped counters (collectors/netbuckets.py reads them): one entry
# per (bucket, direction, CPU) of NET_SLOT_SIZE bytes, two cache lines, so that no two
# CPUs write to one line: the ifindex it counts, then (packets, bytes) per protocol.
NET_SLOT_SIZE = 128


def build_defines() -> list[str]:
    flags = [f"-DPROTO_{p.upper()}={i}" for i, p in enumerate(names.PROTOCOLS)]
    flags += [f"-DNET_PROTOCOLS={len(names.PROTOCOLS)}", f"-DNET_SLOT_SIZE={NET_SLOT_SIZE}"]
    flags += [f"-DDIR_RECEIVE={names.DIR_RECEIVE}", f"-DDIR_TRANSMIT={names.DIR_TRANSMIT}",
              f"-DMAX_KUBEPODS_ROOTS={MAX_ROOTS}", f"-DEXEC_FILENAME_LEN={EXEC_FILENAME_LEN}"]
    bounds_ns = ",".join(str(round(b * 1e9)) for b in CONNECT_BUCKETS)
    flags.append(f"-DCONNECT_BOUNDS_NS={bounds_ns}")
    flags.append("-DDNS_BOUNDS_NS=" + ",".join(str(round(b * 1e9)) for b in DNS_BUCKETS))
    flags.append("-DDNS_QTYPES=" + ",".join(str(n) for n in DNS_QTYPES.values()))
    flags.append(f"-DDNS_RCODE_TIMEOUT={DNS_RCODE_TIMEOUT}")
    flags.append(f"-DDNS_DOMAIN_BYTES={DNS_DOMAIN_BYTES}")
    return flags


if __name__ == "__main__":
    print(" ".join(build_defines()))

"""DNS per container (bpf/dns.bpf.c: cgroup_skb programs linked to the kubepods root),
with the real exporter process, a real DNS server in one test pod and real queries from
another test pod's containers, over UDP and TCP, IPv4 and IPv6.

The server is dnslib's DNSServer (Debian's python3-dnslib, scripts/setup.sh), answering by
the query's first label: ok NOERROR, nx NXDOMAIN, fail SERVFAIL, refused REFUSED, slow
NOERROR after 300 ms, late NOERROR after 4 s (past the exporter's --dns-timeout 2), hold
NOERROR once the test lets it (a file appears), drop never; anything else NOERROR. The
test pods reach each other through the host: forwarding is turned on for their two host
veths only. Figures are exact deltas of a container's counters; the only timing assertion
is the bucket of the injected 300 ms, (0.25 s, 0.5 s], which a delay cannot undercut and
which scheduling noise would need 200 ms to leave.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from exporter import names
from exporter.bpfconsts import DNS_BUCKETS
from conftest import run_exporter
from test_container_net import (BPF_CGROUP_INET_EGRESS, BPF_CGROUP_INET_INGRESS,
                                BPF_PROG_TYPE_CGROUP_SKB, attached_programs)
from test_degrade import REPO, refusing_objects, warnings_about
from test_degrade import exporter as degraded_exporter
from test_exec import prog_types
from test_network import wait_for

REQUESTS = names.DNS_REQUESTS + "_total"
DOMAINS = names.DNS_DOMAIN_QUERIES + "_total"
COUNT = names.DNS_REQUEST_DURATION + "_count"
SUM = names.DNS_REQUEST_DURATION + "_sum"
BUCKET = names.DNS_REQUEST_DURATION + "_bucket"
PYTHON = "/usr/bin/python3"  # Debian's, which has python3-dnslib (the venv does not)
TIMEOUT = 2  # the exporter's --dns-timeout
DELAY, LATE = 0.3, 4.0

SERVER = f"""
import os, socket, struct, sys, time
from dnslib import A, QTYPE, RCODE, RR
from dnslib.server import DNSError, DNSHandler, DNSLogger, DNSServer

class Resolver:
    def resolve(self, request, handler):
        label = str(request.q.qname).split(".")[0]
        reply = request.reply()
        if label == "drop":
            raise DNSError("dropped on purpose")  # DNSHandler sends nothing
        if label == "slow":
            time.sleep({DELAY})
        if label == "late":
            time.sleep({LATE})
        while label == "hold" and not os.path.exists(sys.argv[1]):
            time.sleep(0.02)
        code = {{"nx": RCODE.NXDOMAIN, "fail": RCODE.SERVFAIL,
                 "refused": RCODE.REFUSED}}.get(label, RCODE.NOERROR)
        reply.header.rcode = code
        if code == RCODE.NOERROR and request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        return reply

# dnslib's handler, but over TCP a name with "split" in it gets the 2-byte length and the
# message in two segments, and a query whose length came alone is read whole.
class Handler(DNSHandler):

    def handle(self):
        if self.server.socket_type != socket.SOCK_STREAM:
            return super().handle()
        self.protocol = "tcp"
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        while len(data) < 2 or len(data) - 2 < struct.unpack("!H", data[:2])[0]:
            more = self.request.recv(8192)
            if not more:
                return
            data += more
        try:
            reply = self.get_reply(data[2:])
        except DNSError:
            return  # dropped on purpose
        length = struct.pack("!H", len(reply))
        if b"split" in data:
            self.request.sendall(length)
            time.sleep(0.05)
            self.request.sendall(reply)
        else:
            self.request.sendall(length + reply)

quiet = DNSLogger("-recv,-send,-request,-reply,-truncated,-error,-data")
for address in sys.argv[2:]:
    for tcp in (False, True):
        DNSServer(Resolver(), address=address, port=53, tcp=tcp, logger=quiet,
                  handler=Handler).start_thread()
print("ready", flush=True)
time.sleep(3600)
"""

# argv: the server's IPv4 and IPv6 addresses, then JSON [[name, qtype number, tcp, ipv6,
# timeout], ...] (tcp "split": the 2-byte length and the query in two segments); prints one
# JSON list of the rcode names the client saw ("timeout" when none came).
CLIENT = """
import json, socket, struct, sys, time
from dnslib import DNSQuestion, DNSRecord, RCODE

def split(q, address, ipv6, timeout):
    with socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET) as s:
        s.settimeout(timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((address, 53))
        data = q.pack()
        s.sendall(struct.pack("!H", len(data)))
        time.sleep(0.05)
        s.sendall(data)
        reply = b""
        while len(reply) < 2 or len(reply) - 2 < struct.unpack("!H", reply[:2])[0]:
            more = s.recv(8192)
            if not more:
                raise OSError("closed")
            reply += more
        return reply[2:]

out = []
for name, qtype, tcp, ipv6, timeout in json.loads(sys.argv[3]):
    q = DNSRecord(q=DNSQuestion(name, qtype))
    try:
        if tcp == "split":
            out.append(RCODE[DNSRecord.parse(split(q, sys.argv[2 if ipv6 else 1], ipv6,
                                                   timeout)).header.rcode])
            continue
        out.append(RCODE[DNSRecord.parse(q.send(sys.argv[2 if ipv6 else 1], 53, tcp=tcp,
                                                timeout=timeout, ipv6=ipv6)).header.rcode])
    except (OSError, struct.error):  # no answer in time; over TCP maybe a close instead
        out.append("timeout")
print(json.dumps(out))
"""

A, AAAA, MX, TXT, SRV, PTR, NAPTR, CAA, DNSKEY, NULL = 1, 28, 15, 16, 33, 12, 35, 257, 48, 10


@pytest.fixture(scope="module")
def exporter(factory):
    proc = run_exporter(factory, "--dns-timeout", str(TIMEOUT), "--dns-domains", "2")
    yield proc
    assert proc.stop() == 0, proc.output()


def route_between(a, b) -> None:
    """Pod a <-> pod b through the host: forwarding on their two host veths only (the
    machine's own forwarding setting stays as it is), an IPv6 default route in each pod."""
    for p in (a, b):
        subprocess.run(["sysctl", "-qw", f"net.ipv4.conf.{p.host_if}.forwarding=1",
                        f"net.ipv6.conf.{p.host_if}.force_forwarding=1"], check=True)
        subprocess.run(["ip", "-n", p.netns, "-6", "route", "replace", "default", "via",
                        p.host_ip6], check=True)


@pytest.fixture(scope="module")
def server(factory, exporter, tmp_path_factory):
    pod = factory.create(containers=("dns",), ipv6=True, name="dns-0")
    pod.release = tmp_path_factory.mktemp("dns") / "release"  # lets "hold" answer
    proc = pod.run([PYTHON, "-u", "-c", SERVER, str(pod.release), pod.pod_ip, pod.pod_ip6],
                   container="dns", stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return pod


@pytest.fixture(scope="module")
def client(factory, server):
    pod = factory.create(containers=("app", "sidecar"), ipv6=True, name="client-0")
    route_between(server, pod)
    # neighbours resolved, both families, before anything is measured
    assert query(pod, server, [("ok.test", A, False, False, 5),
                               ("ok.test", A, False, True, 5)]) == ["NOERROR"] * 2
    return pod


def query(pod, server, queries, container="app") -> list[str]:
    """Run the queries from the container, one after the other; the rcodes it saw."""
    out = pod.exec([PYTHON, "-c", CLIENT, server.pod_ip, server.pod_ip6, json.dumps(queries)],
                   container=container)
    return json.loads(out.stdout)


def counts(exporter, container) -> dict[tuple[str, str], float]:
    """(qtype, rcode) -> requests of the container."""
    m = exporter.metrics()
    return {(lab["qtype"], lab["rcode"]): v for lab, v in m.samples.get(REQUESTS, [])
            if lab["container_id"] == container.id}


def delta(before: dict, after: dict) -> dict:
    out = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    return {k: v for k, v in out.items() if v}


def histogram(exporter, container) -> dict[str, float]:
    m = exporter.metrics()
    h = {lab["le"]: v for lab, v in m.samples.get(BUCKET, [])
         if lab["container_id"] == container.id}
    h["count"] = m.value(COUNT, container_id=container.id)
    h["sum"] = m.value(SUM, container_id=container.id)
    return h


def test_each_rcode_and_qtype_is_counted_exactly(exporter, server, client):
    app, sidecar = client.containers["app"], client.containers["sidecar"]
    before, before_side = counts(exporter, app), counts(exporter, sidecar)
    h0 = histogram(exporter, app)
    plan = ([("ok.test", A)] * 3 + [("ok.test", AAAA)] * 2 + [("nx.test", A)] * 4 +
            [("nx.test", AAAA)] + [("fail.test", MX)] * 2 + [("refused.test", TXT)] * 3 +
            [("ok.test", SRV)] + [("nx.test", PTR)] + [("ok.test", NULL)] * 2)
    seen = query(client, server, [(n, t, False, False, 5) for n, t in plan])
    assert seen == ["NOERROR"] * 5 + ["NXDOMAIN"] * 5 + ["SERVFAIL"] * 2 + ["REFUSED"] * 3 + \
        ["NOERROR", "NXDOMAIN", "NOERROR", "NOERROR"]
    assert query(client, server, [("nx.test", A, False, False, 5)] * 2,
                 container="sidecar") == ["NXDOMAIN"] * 2
    assert delta(before, counts(exporter, app)) == {
        ("A", "NOERROR"): 3, ("AAAA", "NOERROR"): 2, ("A", "NXDOMAIN"): 4,
        ("AAAA", "NXDOMAIN"): 1, ("MX", "SERVFAIL"): 2, ("TXT", "REFUSED"): 3,
        ("SRV", "NOERROR"): 1, ("PTR", "NXDOMAIN"): 1, ("other", "NOERROR"): 2}
    assert delta(before_side, counts(exporter, sidecar)) == {("A", "NXDOMAIN"): 2}
    assert histogram(exporter, app)["count"] - h0["count"] == len(plan)
    # the server's sockets receive queries and send answers: none of that is a request
    assert counts(exporter, server.containers["dns"]) == {}
    m = exporter.metrics()
    assert m.series(REQUESTS, container_id=app.id, qtype="A", rcode="NOERROR") == [
        {"namespace": "", "pod": "", "pod_uid": client.uid, "container": "",
         "container_id": app.id, "qtype": "A", "rcode": "NOERROR"}]


def test_tcp_queries_are_counted(exporter, server, client):
    app = client.containers["app"]
    before = counts(exporter, app)
    seen = query(client, server, [("ok.test", CAA, True, False, 5)] * 3 +
                 [("nx.test", CAA, True, False, 5)] * 2 + [("fail.test", CAA, True, False, 5)])
    assert seen == ["NOERROR"] * 3 + ["NXDOMAIN"] * 2 + ["SERVFAIL"]
    assert delta(before, counts(exporter, app)) == {
        ("CAA", "NOERROR"): 3, ("CAA", "NXDOMAIN"): 2, ("CAA", "SERVFAIL"): 1}


def test_tcp_lengths_written_on_their_own_are_understood(exporter, server, client):
    """A client or server may write a TCP message's 2-byte length in a segment of its own:
    the query, or the response, then starts a segment without it."""
    app = client.containers["app"]
    before = counts(exporter, app)
    seen = query(client, server, [("ok.test", DNSKEY, "split", False, 5),        # query split
                                  ("split.test", DNSKEY, True, False, 5),        # answer split
                                  ("split-nx.test", DNSKEY, "split", True, 5)])  # both, IPv6
    assert seen == ["NOERROR", "NOERROR", "NOERROR"]
    assert delta(before, counts(exporter, app)) == {("DNSKEY", "NOERROR"): 3}
    assert exporter.metrics().value(names.BPF_MAP_ENTRIES, map="dns_inflight") == 0


def test_ipv6_queries_are_counted_over_udp_and_tcp(exporter, server, client):
    app = client.containers["app"]
    before = counts(exporter, app)
    seen = query(client, server, [("ok.test", NAPTR, False, True, 5)] * 2 +
                 [("refused.test", NAPTR, False, True, 5)] +
                 [("nx.test", NAPTR, True, True, 5)] * 3)
    assert seen == ["NOERROR"] * 2 + ["REFUSED"] + ["NXDOMAIN"] * 3
    assert delta(before, counts(exporter, app)) == {
        ("NAPTR", "NOERROR"): 2, ("NAPTR", "REFUSED"): 1, ("NAPTR", "NXDOMAIN"): 3}


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_an_injected_delay_lands_in_its_bucket(exporter, server, client, tcp):
    app = client.containers["app"]
    h0 = histogram(exporter, app)
    assert query(client, server, [("slow.test", A, tcp, False, 5)]) == ["NOERROR"]
    h1 = histogram(exporter, app)
    grew = [le for le in h1 if le not in ("count", "sum") and h1[le] != h0.get(le, 0)]
    # cumulative buckets: every bound from the delay's own bucket up grew by one
    at = next(i for i, b in enumerate(DNS_BUCKETS) if DELAY <= b)
    assert DNS_BUCKETS[at - 1] < DELAY <= DNS_BUCKETS[at] == 0.5
    assert sorted(grew, key=float) == [repr(b) for b in DNS_BUCKETS[at:]] + ["+Inf"]
    assert all(h1[le] - h0.get(le, 0) == 1 for le in grew)
    assert h1["count"] - h0["count"] == 1
    assert h1["sum"] - h0["sum"] >= DELAY


def test_an_unanswered_query_is_one_timeout(exporter, server, client):
    app = client.containers["app"]
    before = counts(exporter, app)
    h0 = histogram(exporter, app)
    assert query(client, server, [("drop.test", MX, False, False, 0.5),
                                  ("drop.test", MX, True, False, 0.5),
                                  ("drop.test", TXT, False, True, 0.5)]) == ["timeout"] * 3
    want = {("MX", "timeout"): 2, ("TXT", "timeout"): 1}
    wait_for(lambda: delta(before, counts(exporter, app)) == want, timeout=TIMEOUT + 20,
             interval=0.5, what="three timeouts")
    time.sleep(1)
    assert delta(before, counts(exporter, app)) == want  # counted once, not at each sweep
    assert histogram(exporter, app)["count"] == h0["count"]  # timeouts are not observed


def test_an_answer_after_the_timeout_is_not_counted_twice(exporter, server, client):
    """Both ways a query can outlive the exporter's TIMEOUT and still be answered: swept as
    a timeout by a scrape and answered after that (the answer is not counted), or answered
    late with no scrape in between (the kernel counts the late answer as the timeout).
    Either way: one timeout, no NOERROR, no latency observation."""
    app = client.containers["app"]
    before = counts(exporter, app)
    h0 = histogram(exporter, app)
    waiting = client.run([PYTHON, "-c", CLIENT, server.pod_ip, server.pod_ip6,
                          json.dumps([("hold.test", SRV, False, False, 60)])],
                         container="app", stdout=subprocess.PIPE, text=True)
    # the server holds the answer until a scrape has swept the query
    wait_for(lambda: delta(before, counts(exporter, app)) == {("SRV", "timeout"): 1},
             timeout=TIMEOUT + 20, interval=0.2, what="the sweep to count the query")
    server.release.touch()
    out, _ = waiting.communicate(timeout=30)
    assert json.loads(out) == ["NOERROR"]  # the client did get the answer
    # LATE seconds, longer than TIMEOUT, with no scrape in between
    assert query(client, server, [("late.test", PTR, True, False, LATE + 5)]) == ["NOERROR"]
    assert delta(before, counts(exporter, app)) == {("SRV", "timeout"): 1,
                                                    ("PTR", "timeout"): 1}
    assert histogram(exporter, app)["count"] == h0["count"]
    assert exporter.metrics().value(names.BPF_MAP_ENTRIES, map="dns_inflight") == 0


def test_top_domains_per_container(factory, exporter, server):
    """--dns-domains 2: the two names a container asked for most, the rest "other"; a name
    longer than the kernel keeps (DNS_DOMAIN_BYTES) is cut and marked."""
    pod = factory.create(ipv6=True, name="names-0")
    route_between(server, pod)
    long = "x" * 60 + ".test"  # 67 bytes on the wire: cut after "te"
    plan = [long] * 4 + ["One.test"] * 3 + ["two.test"] * 2 + ["three.test"]
    assert query(pod, server, [(n, A, False, False, 5) for n in plan]) == ["NOERROR"] * 10
    m = exporter.metrics()
    got = {lab["domain"]: v for lab, v in m.samples.get(DOMAINS, [])
           if lab["container_id"] == pod.first_container.id}
    assert got == {"x" * 60 + ".te...": 4, "one.test": 3, "other": 3}
    # the kernel's map was drained by that scrape: nothing is held for these names
    assert m.value(names.BPF_MAP_ENTRIES, map="dns_domains") > 0
    assert exporter.metrics().value(names.BPF_MAP_ENTRIES, map="dns_domains") == 0
    assert query(pod, server, [("two.test", A, True, False, 5)] * 2) == ["NOERROR"] * 2
    got = {lab["domain"]: v for lab, v in exporter.metrics().samples.get(DOMAINS, [])
           if lab["container_id"] == pod.first_container.id}
    assert got == {"x" * 60 + ".te...": 4, "one.test": 3, "other": 5}  # two.test: 4 < 2 x 3
    assert m.value(names.SERIES_CAP_DROPPED + "_total", collector="dns") == 0


def test_dns_self_metrics_and_collector(exporter, server, client):
    m = exporter.metrics()
    assert m.value(names.COLLECTOR_UP, collector="dns") == 1
    assert m.value(names.SCRAPE_COLLECTOR_SUCCESS, collector="dns") == 1
    for table in ("dns_requests", "dns_latency", "dns_inflight"):
        assert m.value(names.BPF_MAP_MAX_ENTRIES, map=table) == 16384, table
        assert m.value(names.BPF_MAP_UPDATE_FAILURES + "_total", map=table) == 0, table
    assert m.value(names.BPF_MAP_ENTRIES, map="dns_inflight") == 0  # nothing left waiting
    assert m.value(names.BPF_MAP_ENTRIES, map="dns_requests") >= 10


def test_dns_off_loads_no_program(pods):
    root = str(pods.kubepods)
    base = attached_programs(root, BPF_CGROUP_INET_EGRESS)
    proc = run_exporter(pods, "--dns", "off", "--peers", "off")  # peers' are cgroup_skb too
    try:
        assert BPF_PROG_TYPE_CGROUP_SKB not in prog_types(proc.proc.pid)
        assert attached_programs(root, BPF_CGROUP_INET_EGRESS) == base
        m = proc.metrics()
        assert not m.series(REQUESTS)
        assert not m.series(names.SCRAPE_COLLECTOR_SUCCESS, collector="dns")
    finally:
        assert proc.stop() == 0


def attached(root: str) -> tuple[int, int]:
    return (attached_programs(root, BPF_CGROUP_INET_INGRESS),
            attached_programs(root, BPF_CGROUP_INET_EGRESS))


def test_links_go_away_with_the_exporter_even_on_sigkill(pods):
    root = str(pods.kubepods)
    base = attached(root)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = run_exporter(pods, "--peers", "off")  # DNS on by default, container network off
        try:
            assert prog_types(proc.proc.pid).count(BPF_PROG_TYPE_CGROUP_SKB) == 2
            assert attached(root) == (base[0] + 1, base[1] + 1)
            m = proc.metrics()  # names are off by default
            assert m.value(names.COLLECTOR_UP, collector="dns") == 1
            assert not m.series(DOMAINS)
            assert not m.series(names.BPF_MAP_ENTRIES, map="dns_domains")
        finally:
            proc.stop(sig)
        wait_for(lambda: attached(root) == base, what=f"the links to be gone after {sig.name}")


def test_refused_dns_program_turns_off_dns_alone(pods, tmp_path):
    objects = refusing_objects(tmp_path, "dns.bpf.c")
    proc = degraded_exporter(pods, objects).start(wait_ready=180)
    try:
        status, body = proc.get("/readyz")
        assert status == 200, body
        assert "degraded: collectors: off: dns (verifier refused)" in body, body
        m = proc.metrics()
        assert m.series(names.COLLECTOR_DISABLED) == [
            {"collector": "dns", "reason": "verifier refused"}]
        for other in ("network", "syscalls", "exec", "tcp", "peers", "drops"):
            assert m.value(names.COLLECTOR_UP, collector=other) == 1, other
        # the two cgroup_skb programs left are the peers'
        assert prog_types(proc.proc.pid).count(BPF_PROG_TYPE_CGROUP_SKB) == 2
        lines = warnings_about(proc.output(), "dns")
        assert len(lines) == 1 and "(--dns off silences this)" in lines[0], proc.output()
    finally:
        assert proc.stop() == 0, proc.output()
    # set explicitly, the same refusal is a hard one-line error
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "--kube", "off", "--listen", "127.0.0.1:0",
         "--interfaces", rf"{pods.tag}h\d+", "--kubepods-root", str(pods.kubepods),
         "--dns", "on"], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PODSNOOP_BPF_OBJECT_DIR": str(objects)})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("podsnoop: ")]
    assert errors[0].startswith("podsnoop: error: the kernel's verifier refused "
                                "refused_read of dns.bpf.o: "), r.stderr
    assert "or run with --dns off" in errors[1], r.stderr

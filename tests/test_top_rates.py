"""`podsnoop top`'s arithmetic on synthetic /metrics texts: counter increases (resets, new
series), per-pod sums, histogram_quantile's interpolation, error ratios, the top drop
reason, sorting and filtering, and the narrow layout's width. No kernel needed."""
from __future__ import annotations

import math

import pytest
from rich.console import Console

from exporter.top.rates import (
    filter_namespaces, parse, pod_rates, quantile, sort_rows,
)
from exporter.top.view import duration, percent, si, table

POD_A = 'namespace="shop",pod="web-0",pod_uid="u-a"'
POD_B = 'namespace="batch",pod="report-0",pod_uid="u-b"'
NO_NAMES = 'namespace="",pod="",pod_uid="1234-uid"'
NO_POD = 'namespace="",pod="",pod_uid=""'


def text(**v) -> str:
    """A /metrics text with the given sample values (defaults 0)."""
    g = lambda k: v.get(k, 0)  # noqa: E731
    lines = [
        "# TYPE podsnoop_network_transmit_packets_total counter",
        f'podsnoop_network_transmit_packets_total{{{POD_A},interface="v1",protocol="tcp"}} {g("a_tcp")}',
        f'podsnoop_network_transmit_packets_total{{{POD_A},interface="v1",protocol="udp"}} {g("a_udp")}',
        f'podsnoop_network_transmit_packets_total{{{POD_B},interface="v2",protocol="tcp"}} {g("b_tcp")}',
        f'podsnoop_network_transmit_packets_total{{{NO_POD},interface="v9",protocol="tcp"}} 1e9',
        "# TYPE podsnoop_network_receive_bytes_total counter",
        f'podsnoop_network_receive_bytes_total{{{POD_A},interface="v1",protocol="tcp"}} {g("a_rxb")}',
        "# TYPE podsnoop_syscalls_total counter",
        f'podsnoop_syscalls_total{{{POD_A},container="c1",container_id="x",syscall="read"}} {g("a_calls1")}',
        f'podsnoop_syscalls_total{{{POD_A},container="c2",container_id="y",syscall="read"}} {g("a_calls2")}',
        "# TYPE podsnoop_syscall_errors_total counter",
        f'podsnoop_syscall_errors_total{{{POD_A},container="c1",container_id="x",syscall="read"}} {g("a_errs")}',
        "# TYPE podsnoop_network_drops_total counter",
        f'podsnoop_network_drops_total{{{POD_B},direction="receive",reason="NO_SOCKET"}} {g("b_nosock")}',
        f'podsnoop_network_drops_total{{{POD_B},direction="transmit",reason="TC_INGRESS"}} {g("b_tc")}',
    ]
    return "\n".join(lines) + "\n"


def rows_of(a: str, b: str, seconds: float = 2.0) -> dict:
    rows, secs = pod_rates(parse(a, 100.0), parse(b, 100.0 + seconds))
    assert secs == seconds
    return {r.name: r for r in rows}


def test_rates_are_increases_over_the_measured_seconds_summed_per_pod():
    r = rows_of(text(a_tcp=10, a_udp=5, b_tcp=0, a_rxb=1000),
                text(a_tcp=30, a_udp=9, b_tcp=7, a_rxb=5000), seconds=4.0)
    assert set(r) == {"shop/web-0", "batch/report-0"}   # the pod-less series is left out
    assert r["shop/web-0"].tx_packets == (20 + 4) / 4.0
    assert r["shop/web-0"].rx_bytes == 4000 / 4.0
    assert r["batch/report-0"].tx_packets == 7 / 4.0


def test_a_reset_counter_counts_its_new_value_and_a_new_series_all_of_it():
    a = text(a_tcp=1000, b_tcp=3)
    b = text(a_tcp=40, b_tcp=3)                        # the exporter restarted: reset
    b += (f'podsnoop_network_transmit_packets_total{{{POD_B},interface="v2",'
          'protocol="icmp"} 6\n')                     # a series new in the 2nd scrape
    r = rows_of(a, b)
    assert r["shop/web-0"].tx_packets == 40 / 2
    assert r["batch/report-0"].tx_packets == 6 / 2


def test_error_ratio_over_all_containers_and_none_without_calls():
    r = rows_of(text(a_calls1=100, a_calls2=50, a_errs=10),
                text(a_calls1=300, a_calls2=250, a_errs=110))
    assert r["shop/web-0"].syscalls == 400 / 2
    assert r["shop/web-0"].errors == 100 / 400
    assert r["batch/report-0"].errors is None


def test_top_drop_reason_is_the_interval_s_not_the_total_s():
    r = rows_of(text(b_nosock=1000, b_tc=0), text(b_nosock=1001, b_tc=5))
    assert r["batch/report-0"].drops == 6 / 2
    assert r["batch/report-0"].drop_reason == "TC_INGRESS"
    assert r["shop/web-0"].drop_reason == ""


def test_pods_without_names_show_by_uid():
    line = f'podsnoop_exec_total{{{NO_NAMES},container="",container_id="",comm="true"}}'
    r = rows_of(f"# TYPE podsnoop_exec_total counter\n{line} 1\n",
                f"# TYPE podsnoop_exec_total counter\n{line} 11\n")
    assert r["1234-uid"].execs == 5.0 and r["1234-uid"].namespace == ""


def hist(name: str, labels: str, buckets: dict) -> str:
    out = [f"# TYPE {name} histogram"]
    for le, v in buckets.items():
        le_s = "+Inf" if le == math.inf else repr(le)
        out.append(f'{name}_bucket{{{labels},le="{le_s}"}} {v}')
    inf = buckets[math.inf]
    out += [f"{name}_count{{{labels}}} {inf}", f"{name}_sum{{{labels}}} 0"]
    return "\n".join(out) + "\n"


def test_quantile_interpolates_like_histogram_quantile():
    inf = math.inf
    # 100 observations: 50 in (0, 1], 40 in (1, 2], 10 in (2, 4]
    b = {1.0: 50, 2.0: 90, 4.0: 100, inf: 100}
    assert quantile(0.5, b) == 1.0
    assert quantile(0.99, b) == pytest.approx(2 + 2 * (99 - 90) / 10)
    assert quantile(0.25, b) == pytest.approx(0.5)   # first bucket: from 0
    assert quantile(0.99, {1.0: 0, 2.0: 0, inf: 5}) == 2.0   # rank in +Inf: highest bound
    assert quantile(0.99, {1.0: 0, inf: 0}) is None          # nothing observed
    assert quantile(0.99, {}) is None


def test_p99_from_bucket_increases_of_all_the_pod_s_containers():
    name = "podsnoop_syscall_duration_seconds"
    inf = math.inf
    c1 = f'{POD_A},container="c1",container_id="x"'
    c2 = f'{POD_A},container="c2",container_id="y"'
    # Before: a million slow calls long ago; they must not weigh on this interval's p99.
    a = hist(name, c1, {1e-6: 0, 1e-3: 0, 1.0: 1_000_000, inf: 1_000_000}) + \
        hist(name, c2, {1e-6: 0, 1e-3: 0, 1.0: 0, inf: 0}).split("\n", 1)[1]
    # In the interval: c1 adds 60 calls <= 1us, c2 40 calls in (1us, 1ms].
    b = hist(name, c1, {1e-6: 60, 1e-3: 60, 1.0: 1_000_060, inf: 1_000_060}) + \
        hist(name, c2, {1e-6: 0, 1e-3: 40, 1.0: 40, inf: 40}).split("\n", 1)[1]
    r = rows_of(a, b)["shop/web-0"]
    # rank 99 of 100: in (1us, 1ms], 39 of its 40
    assert r.syscall_p99 == pytest.approx(1e-6 + (1e-3 - 1e-6) * 39 / 40)
    assert r.connect_p99 is None


def test_connects_per_second_and_connect_p99():
    name = "podsnoop_tcp_connect_duration_seconds"
    inf = math.inf
    a = hist(name, POD_B, {0.001: 0, 0.01: 0, 1.0: 0, 2.5: 0, inf: 0})
    b = hist(name, POD_B, {0.001: 8, 0.01: 9, 1.0: 9, 2.5: 10, inf: 10})
    r = rows_of(a, b)["batch/report-0"]
    assert r.connects == 10 / 2
    assert r.connect_p99 == pytest.approx(1.0 + 1.5 * (9.9 - 9) / 1)


def test_sorting_figures_descend_names_ascend_none_last_and_reverse():
    r = rows_of(text(a_tcp=0, b_tcp=0, a_calls1=0), text(a_tcp=1, b_tcp=9, a_calls1=10))
    rows = list(r.values())
    assert [x.name for x in sort_rows(rows, "tx_packets")] == ["batch/report-0", "shop/web-0"]
    assert [x.name for x in sort_rows(rows, "tx_packets", reverse=True)] == [
        "shop/web-0", "batch/report-0"]
    assert [x.name for x in sort_rows(rows, "pod")] == ["batch/report-0", "shop/web-0"]
    # errors: batch has no syscalls (None) and stays last both ways
    assert sort_rows(rows, "errors")[-1].name == "batch/report-0"
    assert sort_rows(rows, "errors", reverse=True)[-1].name == "batch/report-0"
    assert [x.name for x in filter_namespaces(rows, ["shop"])] == ["shop/web-0"]


def test_not_metrics_is_an_error():
    with pytest.raises(ValueError):
        parse("<html><body>hello</body></html>\n", 0.0)


@pytest.mark.parametrize("v,want", [(0, "0"), (0.25, "0.25"), (3.4, "3.40"), (55, "55.0"),
                                    (812, "812"), (1234, "1.23k"), (999.96, "1.00k"),
                                    (45.6e6, "45.6M")])
def test_si(v, want):
    assert si(v) == want


def test_duration_and_percent():
    assert duration(0.000250) == "250us" and duration(0.0012) == "1.20ms"
    assert duration(1.5) == "1.50s" and duration(None) == "-"
    assert percent(0.25) == "25%" and percent(0.005) == "0.5%" and percent(None) == "-"


def test_narrow_layout_fits_80_columns():
    r = rows_of(text(a_tcp=0, b_nosock=0), text(a_tcp=123456789, b_nosock=99999, b_tc=1))
    rows = list(r.values())
    rows[0].pod = "a-rather-long-pod-name-that-goes-on-and-on-7c9f8d6b5-x2x9z"
    console = Console(width=80, record=True, force_terminal=False)
    console.print(table(rows, "tx_packets", False, narrow=True))
    out = console.export_text()
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "NO_SOCKET" in out or "TC_INGRESS" in out


def test_dns_requests_failure_share_and_p99():
    """DNS/s counts every request (answered or timed out), DNSF% the SERVFAIL, REFUSED and
    timed-out ones (names.DNS_FAILURE_RCODES, as the alert), DNS p99 from the histogram."""
    inf = math.inf

    def dns(noerror, servfail, timeout, nxdomain):
        lab = f'{POD_B},container="c",container_id="x",qtype="A"'
        return ("# TYPE podsnoop_dns_requests_total counter\n"
                f'podsnoop_dns_requests_total{{{lab},rcode="NOERROR"}} {noerror}\n'
                f'podsnoop_dns_requests_total{{{lab},rcode="SERVFAIL"}} {servfail}\n'
                f'podsnoop_dns_requests_total{{{lab},rcode="timeout"}} {timeout}\n'
                f'podsnoop_dns_requests_total{{{lab},rcode="NXDOMAIN"}} {nxdomain}\n')
    name = "podsnoop_dns_request_duration_seconds"
    a = dns(0, 0, 0, 0) + hist(name, POD_B, {0.001: 0, 0.01: 0, inf: 0})
    b = dns(14, 2, 2, 2) + hist(name, POD_B, {0.001: 10, 0.01: 18, inf: 18})
    r = rows_of(a, b)["batch/report-0"]
    assert r.dns == 20 / 2
    assert r.dns_failures == 4 / 20
    assert r.dns_p99 == pytest.approx(0.001 + 0.009 * (18 * 0.99 - 10) / 8)
    assert rows_of(text(), text())["shop/web-0"].dns_failures is None


def test_top_peer_is_the_interval_s_biggest_both_ways():
    """TOP PEER: bytes of both directions summed per peer, over the interval (not the total:
    the peer with the biggest counter sent nothing in between)."""
    lab = 'namespace="shop",pod="web-0",pod_uid="u1"'

    def peers(world, back_rx, back_tx, svc):
        return ("# TYPE podsnoop_peer_bytes_total counter\n"
                f'podsnoop_peer_bytes_total{{{lab},direction="receive",peer_namespace="",'
                f'peer_workload="",peer_service="",peer_network="world"}} {world}\n'
                f'podsnoop_peer_bytes_total{{{lab},direction="receive",peer_namespace="shop",'
                f'peer_workload="back",peer_service="",peer_network=""}} {back_rx}\n'
                f'podsnoop_peer_bytes_total{{{lab},direction="transmit",peer_namespace="shop",'
                f'peer_workload="back",peer_service="",peer_network=""}} {back_tx}\n'
                f'podsnoop_peer_bytes_total{{{lab},direction="transmit",peer_namespace="shop",'
                f'peer_workload="",peer_service="db",peer_network=""}} {svc}\n')
    a = peers(10_000, 0, 0, 0)
    assert rows_of(a, peers(10_000, 300, 300, 500))["shop/web-0"].top_peer == "shop/back"
    assert rows_of(a, peers(10_000, 100, 100, 500))["shop/web-0"].top_peer == "svc shop/db"
    assert rows_of(a, peers(10_400, 100, 100, 300))["shop/web-0"].top_peer == "world"
    assert rows_of(a, a)["shop/web-0"].top_peer == ""

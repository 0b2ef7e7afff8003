"""Generate podsnoop's Prometheus alerting rules, the PrometheusRule that wraps them, and
promtool unit tests for them, from one Python source.

    python -m alerts.generate           # rewrite the files below
    python -m alerts.generate --check   # exit 1 if a committed file is stale

Outputs (committed; tests/test_alerts.py fails when they differ from what this generates):
    deploy/prometheus-rules.yaml   plain Prometheus rule file (rule_files: in prometheus.yml)
    deploy/prometheusrule.yaml     the same groups as a monitoring.coreos.com/v1 PrometheusRule
    alerts/tests/rules.test.yaml   `promtool test rules` cases: each alert firing and not firing

Thresholds and `for:` durations are first guesses; the dashboards draw the same thresholds.
"""

from __future__ import annotations

import os
import sys

import yaml

if __package__ in (None, ""):  # python alerts/generate.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "alerts"

from dashboards import promql as q  # noqa: E402
from exporter.generated import write_or_check  # noqa: E402
from dashboards.generate import (  # noqa: E402
    BPF_CPU_SHARE_THRESHOLD, BPF_MAP_FILL_THRESHOLD, CONTAINER_KEYS, DROP_RATIO_THRESHOLD, POD_KEYS,
    SYSCALL_ERROR_RATIO_THRESHOLD, SYSCALL_P99_THRESHOLD_SECONDS,
    TCP_CONNECT_FAILURE_RATIO_THRESHOLD, TCP_CONNECT_P99_THRESHOLD_SECONDS, bpf_cpu_share, bpf_map_fill_ratio,
    drop_ratio, syscall_error_ratio, syscall_p99, tcp_connect_failure_ratio, tcp_connect_p99,
    DNS_FAILURE_RATIO_THRESHOLD, DNS_P99_THRESHOLD_SECONDS, dns_failure_ratio, dns_p99,
)
from dashboards.promql import (  # noqa: E402
    COLLECTOR, CONTAINER, CONTAINER_ID, DIRECTION, INSTANCE, INTERFACE, JOB, JOB_NAME, MAP,
    NAMESPACE, POD, POD_UID, PROTOCOL, REASON, SYSCALL, WORKLOAD, WORKLOAD_KIND, eq, rate,
    sel, sum_by,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES_PATH = os.path.join(ROOT, "deploy", "prometheus-rules.yaml")
CR_PATH = os.path.join(ROOT, "deploy", "prometheusrule.yaml")
UNIT_TEST_PATH = os.path.join(ROOT, "alerts", "tests", "rules.test.yaml")

WINDOW = "5m"
# Below these rates a ratio is noise (a stray UDP packet to a closed port is a drop).
MIN_DROPS_PER_SECOND = 1
MIN_SYSCALLS_PER_SECOND = 1
MIN_CONNECT_FAILURES_PER_SECOND = 0.1
MIN_DNS_REQUESTS_PER_SECOND = 0.1
WATCH_RESTARTS_WINDOW = "15m"
WATCH_RESTARTS_MAX = 3

DASHBOARD_HINT = "See the podsnoop / {} dashboard."
POD_REF = "{{ $labels.namespace }}/{{ $labels.pod }}"
CONTAINER_REF = "{{ $labels.namespace }}/{{ $labels.pod }}/{{ $labels.container }}"
# Exporter alerts name the exporter's own pod: the ServiceMonitor's target labels put it in
# namespace/pod of the exporter's self metrics and of `up`.
EXPORTER_REF = "{{ $labels.instance }} (pod {{ $labels.namespace }}/{{ $labels.pod }})"
PER_SECOND = '{{ printf "%.2f" $value }}'  # humanize would print 0.5 as "500m"


def alert(name: str, expr: str, for_: str, severity: str, summary: str,
          description: str) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def with_workload(expr: str) -> str:
    """`expr`'s alerts labelled with the pod's workload_kind and workload (from
    podsnoop_pod_info, joined on namespace and pod), to route them by workload; a pod
    without pod_info (--kube off, or not yet listed) still alerts, without them."""
    keys = f"{NAMESPACE}, {POD}"
    info = f"max by ({keys}, {WORKLOAD_KIND}, {WORKLOAD}) ({q.POD_INFO})"
    return (f"(\n{expr}\n)\n* on ({keys}) group_left ({WORKLOAD_KIND}, {WORKLOAD})\n{info}\n"
            f"or on ({keys})\n(\n{expr}\n)")


def _pct(x: float) -> str:
    return f"{x:.0%}"


def pod_rules() -> list[dict]:
    rules = []
    for direction, name, into in ((q.RECEIVE, "Receive", "into"),
                                  (q.TRANSMIT, "Transmit", "out of")):
        drops = sum_by(POD_KEYS, rate(sel(q.NET_DROPS, eq(DIRECTION, direction)), WINDOW))
        rules.append(alert(
            f"PodsnoopPod{name}DropsHigh",
            with_workload(
                f"(\n{drop_ratio(direction, (), WINDOW)}\n) > {DROP_RATIO_THRESHOLD}\n"
                f"and on ({', '.join(POD_KEYS)})\n{drops} > {MIN_DROPS_PER_SECOND}"),
            "10m", "warning",
            f"Pod {POD_REF} drops {{{{ $value | humanizePercentage }}}} of the packets "
            f"{into} it",
            f"For 10 minutes more than {_pct(DROP_RATIO_THRESHOLD)} of the packets {into} pod "
            f"{POD_REF} were dropped ({q.NET_DROPS}{{{DIRECTION}=\"{direction}\"}}, at least "
            f"{MIN_DROPS_PER_SECOND} per second). The {REASON} label tells why. "
            + DASHBOARD_HINT.format("Pod network")))

    calls = sum_by(CONTAINER_KEYS, rate(sel(q.SYSCALLS), WINDOW))
    rules.append(alert(
        "PodsnoopSyscallErrorRatioHigh",
        with_workload(f"(\n{syscall_error_ratio(CONTAINER_KEYS, (), WINDOW)}\n) > "
                      f"{SYSCALL_ERROR_RATIO_THRESHOLD}\nand on ({', '.join(CONTAINER_KEYS)})\n"
                      f"{calls} > {MIN_SYSCALLS_PER_SECOND}"),
        "15m", "warning",
        f"{{{{ $value | humanizePercentage }}}} of the syscalls of container "
        f"{CONTAINER_REF} fail",
        f"For 15 minutes more than {_pct(SYSCALL_ERROR_RATIO_THRESHOLD)} of the system calls "
        f"of container {{{{ $labels.container }}}} in pod {POD_REF} returned an error. "
        f"Some failures are normal (EAGAIN, ENOENT); see which syscalls fail on the "
        f"podsnoop / Syscalls dashboard."))

    rules.append(alert(
        "PodsnoopSyscallLatencyHigh",
        with_workload(f"{syscall_p99((), WINDOW)}\n> {SYSCALL_P99_THRESHOLD_SECONDS:g}"),
        "15m", "info",
        f"p99 syscall latency of container {CONTAINER_REF} is "
        f"{{{{ $value | humanizeDuration }}}}",
        f"For 15 minutes the 99th percentile of system call duration of container "
        f"{{{{ $labels.container }}}} in pod {POD_REF} was above "
        f"{SYSCALL_P99_THRESHOLD_SECONDS:g}s. Blocking calls (epoll_wait, futex, nanosleep) "
        f"count too, so an idle server can trip this: raise the threshold for such "
        f"workloads. " + DASHBOARD_HINT.format("Syscalls")))

    failures = sum_by(POD_KEYS, rate(sel(q.TCP_CONNECT_FAILURES), WINDOW))
    rules.append(alert(
        "PodsnoopTcpConnectFailuresHigh",
        with_workload(f"(\n{tcp_connect_failure_ratio((), WINDOW)}\n) > "
                      f"{TCP_CONNECT_FAILURE_RATIO_THRESHOLD}\nand on ({', '.join(POD_KEYS)})\n"
                      f"{failures} > {MIN_CONNECT_FAILURES_PER_SECOND}"),
        "10m", "warning",
        f"{{{{ $value | humanizePercentage }}}} of the TCP connects of pod {POD_REF} fail",
        f"For 10 minutes more than {_pct(TCP_CONNECT_FAILURE_RATIO_THRESHOLD)} of the TCP "
        f"connects made by pod {POD_REF} ended before being established (refused, timed "
        f"out, reset, or abandoned; at least {MIN_CONNECT_FAILURES_PER_SECOND:g} per second): "
        f"a dependency of the pod is down or unreachable. "
        + DASHBOARD_HINT.format("Pod network")))

    rules.append(alert(
        "PodsnoopTcpConnectLatencyHigh",
        with_workload(f"{tcp_connect_p99((), WINDOW)}\n> {TCP_CONNECT_P99_THRESHOLD_SECONDS:g}"),
        "15m", "info",
        f"p99 TCP connect latency of pod {POD_REF} is {{{{ $value | humanizeDuration }}}}",
        f"For 15 minutes the 99th percentile of the time from SYN to established "
        f"connection of pod {POD_REF} was above {TCP_CONNECT_P99_THRESHOLD_SECONDS:g}s. "
        f"Values of 1 s and more mean SYNs or SYN-ACKs are lost and retransmitted (the "
        f"kernel's initial SYN timeout is 1 s). " + DASHBOARD_HINT.format("Pod network")))

    requests = sum_by(POD_KEYS, rate(sel(q.DNS_REQUESTS), WINDOW))
    failed = "|".join(q.DNS_FAILURE_RCODES)
    rules.append(alert(
        "PodsnoopDnsFailuresHigh",
        with_workload(f"(\n{dns_failure_ratio((), WINDOW)}\n) > {DNS_FAILURE_RATIO_THRESHOLD}\n"
                      f"and on ({', '.join(POD_KEYS)})\n{requests} > "
                      f"{MIN_DNS_REQUESTS_PER_SECOND}"),
        "10m", "warning",
        f"{{{{ $value | humanizePercentage }}}} of the DNS requests of pod {POD_REF} fail",
        f"For 10 minutes more than {_pct(DNS_FAILURE_RATIO_THRESHOLD)} of the DNS requests "
        f"of pod {POD_REF} got SERVFAIL or REFUSED or no answer in time "
        f"({q.DNS_REQUESTS}{{{q.RCODE}=~\"{failed}\"}}, at least "
        f"{MIN_DNS_REQUESTS_PER_SECOND:g} requests per second): its resolver (CoreDNS, a "
        f"node-local cache, an upstream) is failing it. NXDOMAIN is an answer, not counted "
        f"here. " + DASHBOARD_HINT.format("Pod network")))

    rules.append(alert(
        "PodsnoopDnsLatencyHigh",
        with_workload(f"{dns_p99((), WINDOW)}\n> {DNS_P99_THRESHOLD_SECONDS:g}"),
        "15m", "info",
        f"p99 DNS latency of pod {POD_REF} is {{{{ $value | humanizeDuration }}}}",
        f"For 15 minutes the 99th percentile of the time from a DNS query of pod {POD_REF} "
        f"to its answer was above {DNS_P99_THRESHOLD_SECONDS:g}s. Values around 1 s and "
        f"more usually mean lost queries that the client resent, or a slow upstream. "
        + DASHBOARD_HINT.format("Pod network")))
    return rules


def exporter_rules() -> list[dict]:
    up = sel(q.UP, eq(JOB, JOB_NAME))
    return [
        alert("PodsnoopExporterDown", f"{up} == 0", "5m", "critical",
              f"podsnoop exporter {EXPORTER_REF} is down",
              f"Prometheus has failed to scrape podsnoop at {EXPORTER_REF} for 5 minutes: "
              f"pod network and syscall metrics of that node are missing."),
        alert("PodsnoopTargetMissing", f"absent({up})", "15m", "warning",
              f"Prometheus scrapes no podsnoop target (job {JOB_NAME})",
              f"There has been no `{q.UP}{{{JOB}=\"{JOB_NAME}\"}}` series for 15 minutes: the "
              f"DaemonSet, its Service or the ServiceMonitor is missing or selects nothing."),
        alert("PodsnoopCollectorFailing", f"{q.SCRAPE_COLLECTOR_SUCCESS} == 0", "10m",
              "warning",
              f"podsnoop collector {{{{ $labels.{COLLECTOR} }}}} fails on {EXPORTER_REF}",
              f"The {{{{ $labels.{COLLECTOR} }}}} collector of podsnoop at {EXPORTER_REF} has "
              f"failed every scrape for 10 minutes; its metrics are missing. The exporter's "
              f"log says why."),
        alert("PodsnoopCollectorOff", f"{q.COLLECTOR_DISABLED} == 1", "15m", "info",
              f"podsnoop collector {{{{ $labels.{COLLECTOR} }}}} is off on {EXPORTER_REF}: "
              f"{{{{ $labels.reason }}}}",
              f"This node's kernel cannot run podsnoop's {{{{ $labels.{COLLECTOR} }}}} "
              f"collector ({{{{ $labels.reason }}}}), so {EXPORTER_REF} serves without its "
              f"metrics. Upgrade the node's kernel, or turn the collector off with its flag "
              f"(README, Kernels) to silence this."),
        alert("PodsnoopBPFMapNearCapacity",
              f"{bpf_map_fill_ratio(aggregate=False)}\n> {BPF_MAP_FILL_THRESHOLD}", "10m",
              "warning",
              f"BPF map {{{{ $labels.{MAP} }}}} on {EXPORTER_REF} is "
              f"{{{{ $value | humanizePercentage }}}} full",
              f"BPF map {{{{ $labels.{MAP} }}}} of podsnoop at {EXPORTER_REF} has been more "
              f"than {_pct(BPF_MAP_FILL_THRESHOLD)} full for 10 minutes. When it is full, new "
              f"keys are lost ({q.BPF_MAP_UPDATE_FAILURES}): raise its size or lower "
              f"cardinality."),
        alert("PodsnoopBPFMapUpdateFailures",
              f"{rate(q.BPF_MAP_UPDATE_FAILURES, WINDOW)} > 0", "10m", "warning",
              f"BPF map {{{{ $labels.{MAP} }}}} on {EXPORTER_REF} rejects updates",
              f"Updates of BPF map {{{{ $labels.{MAP} }}}} of podsnoop at {EXPORTER_REF} have "
              f"been failing for 10 minutes ({PER_SECOND} per second): the "
              f"map is full and counts are lost."),
        alert("PodsnoopSeriesCapHit", f"{rate(q.SERIES_CAP_DROPPED, WINDOW)} > 0", "10m",
              "warning",
              f"podsnoop on {EXPORTER_REF} drops series of collector "
              f"{{{{ $labels.{COLLECTOR} }}}} at its series cap",
              f"For 10 minutes the {{{{ $labels.{COLLECTOR} }}}} collector of podsnoop at "
              f"{EXPORTER_REF} has left series out ({PER_SECOND} per second) "
              f"because the hard series cap was reached: its totals are incomplete. Narrow "
              f"the syscall allowlist or raise the cap."),
        alert("PodsnoopKernelCPUHigh",
              f"{bpf_cpu_share(window=WINDOW, keys=(INSTANCE, NAMESPACE, POD))}\n"
              f"> {BPF_CPU_SHARE_THRESHOLD}", "15m", "warning",
              f"podsnoop's BPF programs take {{{{ $value | humanizePercentage }}}} of "
              f"{EXPORTER_REF}'s CPUs",
              f"For 15 minutes podsnoop's BPF programs on {EXPORTER_REF} have run for more "
              f"than {_pct(BPF_CPU_SHARE_THRESHOLD)} of the node's CPU time (the kernel's "
              f"run-time statistics, podsnoop_bpf_program_run_seconds_total): that is "
              f"taken from the node's workloads. The exporter-health dashboard shows which "
              f"program; turn off the collectors you do not need (--syscalls, --exec, "
              f"--tcp, --drops)."),
        alert("PodsnoopKubeWatchRestarting",
              f"increase({q.KUBE_WATCH_RESTARTS}[{WATCH_RESTARTS_WINDOW}]) > "
              f"{WATCH_RESTARTS_MAX}", "15m", "warning",
              f"podsnoop on {EXPORTER_REF} keeps restarting its Kubernetes pod watch",
              f"The pod watch of podsnoop at {EXPORTER_REF} restarted "
              f"{{{{ $value | humanize }}}} times in {WATCH_RESTARTS_WINDOW}. While it is "
              f"down, new pods' series get empty namespace and pod labels. Check the API "
              f"server and the exporter's RBAC."),
    ]


def rule_groups() -> list[dict]:
    return [
        {"name": "podsnoop-pods", "rules": pod_rules()},
        {"name": "podsnoop-exporter", "rules": exporter_rules()},
    ]


def rules_file() -> dict:
    return {"groups": rule_groups()}


def prometheus_rule() -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "podsnoop",
            "namespace": "podsnoop",
            "labels": {"app.kubernetes.io/name": "podsnoop",
                       "app.kubernetes.io/component": "alerting-rules"},
        },
        "spec": {"groups": rule_groups()},
    }


def alert_names() -> list[str]:
    return [r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r]


# --------------------------------------------------------------------------- promtool tests
# Each case feeds series in which one subject must trip the alert and others must not, then
# checks the alert is absent while `for:` runs, and present, with its exact labels and
# annotations, afterwards, for the tripping subject only. Values are per minute (interval 1m):
# '0+600x40' is a counter rising 600 a minute, i.e. 10 per second.

def _series(metric: str, labels: dict[str, str], values: str) -> dict:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _expect(labels: dict[str, str], summary: str, description: str) -> dict:
    return {"exp_labels": labels,
            "exp_annotations": {"summary": summary, "description": description}}


def _rule(name: str) -> dict:
    return next(r for g in rule_groups() for r in g["rules"] if r.get("alert") == name)


def _render(template: str, labels: dict[str, str], value: str) -> str:
    """Fill the few template forms these annotations use. `value` is the rendering the test
    expects of `$value` through its function, written out by hand in each case."""
    out = template
    for k, v in labels.items():
        out = out.replace(f"{{{{ $labels.{k} }}}}", v)
    for fn in ("humanizePercentage", "humanizeDuration", "humanize"):
        out = out.replace(f"{{{{ $value | {fn} }}}}", value)
    out = out.replace(PER_SECOND, value)
    if "{{" in out:
        raise ValueError(f"unrendered template in {out!r}")
    return out


def _fires(name: str, labels: dict[str, str], value: str) -> dict:
    rule = _rule(name)
    all_labels = {**labels, **rule["labels"]}
    ann = rule["annotations"]
    return _expect(all_labels, _render(ann["summary"], labels, value),
                   _render(ann["description"], labels, value))


def _case(name: str, series: list[dict], fire_at: str, fires: list[dict],
          quiet_at: str = "5m") -> dict:
    return {
        "name": name,
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": quiet_at, "alertname": name, "exp_alerts": []},
            {"eval_time": fire_at, "alertname": name, "exp_alerts": fires},
        ],
    }


def _pod(ns: str, pod: str, **extra: str) -> dict[str, str]:
    return {NAMESPACE: ns, POD: pod, POD_UID: f"uid-{pod}", **extra}


def _exporter(node: str) -> dict[str, str]:
    return {JOB: JOB_NAME, INSTANCE: f"{node}:9435", NAMESPACE: "podsnoop",
            POD: f"podsnoop-{node}"}



def unit_tests() -> dict:
    net = {INTERFACE: "eth0", PROTOCOL: "tcp"}
    rx, tx = q.RECEIVE, q.TRANSMIT
    cases = []

    # Receive drops: web-1 drops 10/s of 100/s (10%); idle-1 drops 2/s and receives nothing
    # (100%); web-2 drops 2/s of 1000/s (0.2%, under the ratio); quiet-1 drops 0.05/s of
    # 0.1/s (50%, but under the minimum rate); web-3 drops only on transmit.
    cases.append(_case("PodsnoopPodReceiveDropsHigh", [
        _series(q.NET_DROPS, _pod("shop", "web-1", **{DIRECTION: rx, REASON: "TCP_RCVBUF"}),
                "0+600x40"),
        _series(q.NET_RX_PACKETS, _pod("shop", "web-1", **net), "0+5400x40"),
        _series(q.NET_DROPS, _pod("shop", "idle-1", **{DIRECTION: rx, REASON: "NO_SOCKET"}),
                "0+120x40"),
        _series(q.NET_DROPS, _pod("shop", "web-2", **{DIRECTION: rx, REASON: "TCP_RCVBUF"}),
                "0+120x40"),
        _series(q.NET_RX_PACKETS, _pod("shop", "web-2", **net), "0+59880x40"),
        _series(q.NET_DROPS, _pod("shop", "quiet-1", **{DIRECTION: rx, REASON: "NO_SOCKET"}),
                "0+3x40"),
        _series(q.NET_RX_PACKETS, _pod("shop", "quiet-1", **net), "0+3x40"),
        _series(q.NET_DROPS, _pod("shop", "web-3", **{DIRECTION: tx, REASON: "QDISC_DROP"}),
                "0+600x40"),
        _series(q.NET_RX_PACKETS, _pod("shop", "web-3", **net), "0+5400x40"),
    ], "20m", [
        _fires("PodsnoopPodReceiveDropsHigh", {NAMESPACE: "shop", POD: "idle-1"}, "100%"),
        _fires("PodsnoopPodReceiveDropsHigh", {NAMESPACE: "shop", POD: "web-1"}, "10%"),
    ]))

    # The same with pod_info: web-1's alert carries its workload; idle-1 has no pod_info
    # (not listed yet) and still alerts, without; a second pod_info series of web-1 (its
    # previous incarnation in the grace period) changes nothing.
    cases.append(_case("PodsnoopPodReceiveDropsHigh", [
        _series(q.NET_DROPS, _pod("shop", "web-1", **{DIRECTION: rx, REASON: "TCP_RCVBUF"}),
                "0+600x40"),
        _series(q.NET_RX_PACKETS, _pod("shop", "web-1", **net), "0+5400x40"),
        _series(q.NET_DROPS, _pod("shop", "idle-1", **{DIRECTION: rx, REASON: "NO_SOCKET"}),
                "0+120x40"),
        _series(q.POD_INFO, _pod("shop", "web-1", node="node-a", **{
            WORKLOAD_KIND: "Deployment", WORKLOAD: "web"}), "1x40"),
        _series(q.POD_INFO, {**_pod("shop", "web-1", node="node-a", **{
            WORKLOAD_KIND: "Deployment", WORKLOAD: "web"}), POD_UID: "uid-web-1-old"}, "1x40"),
        _series(q.POD_INFO, _pod("shop", "web-2", node="node-a", **{
            WORKLOAD_KIND: "Deployment", WORKLOAD: "web"}), "1x40"),
    ], "20m", [
        _fires("PodsnoopPodReceiveDropsHigh", {NAMESPACE: "shop", POD: "idle-1"}, "100%"),
        _fires("PodsnoopPodReceiveDropsHigh", {NAMESPACE: "shop", POD: "web-1",
                                               WORKLOAD_KIND: "Deployment", WORKLOAD: "web"},
               "10%"),
    ]))

    # Transmit drops: web-3 drops 5/s of 50/s out (10%); web-1 drops only on receive.
    cases.append(_case("PodsnoopPodTransmitDropsHigh", [
        _series(q.NET_DROPS, _pod("shop", "web-3", **{DIRECTION: tx, REASON: "QDISC_DROP"}),
                "0+300x40"),
        _series(q.NET_TX_PACKETS, _pod("shop", "web-3", **net), "0+2700x40"),
        _series(q.NET_DROPS, _pod("shop", "web-1", **{DIRECTION: rx, REASON: "TCP_RCVBUF"}),
                "0+600x40"),
        _series(q.NET_TX_PACKETS, _pod("shop", "web-1", **net), "0+5400x40"),
    ], "20m", [
        _fires("PodsnoopPodTransmitDropsHigh", {NAMESPACE: "shop", POD: "web-3"}, "10%"),
    ]))

    # Syscall errors: api fails 60/s of 100/s (60%); worker 10/s of 100/s (10%); sleepy
    # 0.4/s of 0.5/s (80%, but under the minimum rate).
    def calls(pod: str, container: str, syscall: str, metric: str, per_min: int) -> dict:
        labels = _pod("shop", pod, **{CONTAINER: container, CONTAINER_ID: f"cid-{container}",
                                      SYSCALL: syscall})
        return _series(metric, labels, f"0+{per_min}x40")

    cases.append(_case("PodsnoopSyscallErrorRatioHigh", [
        calls("api-1", "api", "read", q.SYSCALLS, 2400),
        calls("api-1", "api", "openat", q.SYSCALLS, 3600),
        calls("api-1", "api", "openat", q.SYSCALL_ERRORS, 3600),
        calls("api-1", "worker", "read", q.SYSCALLS, 6000),
        calls("api-1", "worker", "read", q.SYSCALL_ERRORS, 600),
        calls("api-1", "sleepy", "openat", q.SYSCALLS, 30),
        calls("api-1", "sleepy", "openat", q.SYSCALL_ERRORS, 24),
    ], "25m", [
        _fires("PodsnoopSyscallErrorRatioHigh",
               {NAMESPACE: "shop", POD: "api-1", CONTAINER: "api"}, "60%"),
    ]))

    # Syscall latency. Buckets are powers of two of nanoseconds, in seconds. postgres: 95 of
    # 100 calls a second under 2^30 ns, 5 in (2^30, 2^31] ns, so p99 = 2^30 ns * 1.8
    # = 1.933 s; nginx: all under 2^20 ns.
    def buckets(pod: str, container: str, per_second: dict[str, int]) -> list[dict]:
        return [_series(q.SYSCALL_DURATION_BUCKET,
                        _pod("db", pod, **{CONTAINER: container,
                                           CONTAINER_ID: f"cid-{container}", "le": le}),
                        f"0+{n * 60}x40")
                for le, n in per_second.items()]

    slow = {"0.001048576": 90, "1.073741824": 95, "2.147483648": 100, "+Inf": 100}
    fast = {"0.001048576": 100, "1.073741824": 100, "2.147483648": 100, "+Inf": 100}
    cases.append(_case("PodsnoopSyscallLatencyHigh",
                       buckets("pg-0", "postgres", slow) + buckets("web-0", "nginx", fast),
                       "25m", [
        _fires("PodsnoopSyscallLatencyHigh",
               {NAMESPACE: "db", POD: "pg-0", CONTAINER: "postgres"}, "1.933s"),
    ]))

    # TCP connect failures: api-1 fails 1/s of 2/s connects (50%); web-1 fails 0.2/s of
    # 10/s (~2%, under the ratio); cron-1 fails 0.05/s and connects nothing else (100%, but
    # under the minimum rate); dead-1 fails 0.5/s and never connects (100%).
    def connects(pod: str, failed_per_min: int, ok_per_min: int) -> list[dict]:
        out = [_series(q.TCP_CONNECT_FAILURES, _pod("shop", pod), f"0+{failed_per_min}x40")]
        if ok_per_min:
            out.append(_series(q.TCP_CONNECT_DURATION_COUNT, _pod("shop", pod),
                               f"0+{ok_per_min}x40"))
        return out

    cases.append(_case("PodsnoopTcpConnectFailuresHigh",
                       connects("api-1", 60, 60) + connects("web-1", 12, 600)
                       + connects("cron-1", 3, 0) + connects("dead-1", 30, 0), "20m", [
        _fires("PodsnoopTcpConnectFailuresHigh", {NAMESPACE: "shop", POD: "api-1"}, "50%"),
        _fires("PodsnoopTcpConnectFailuresHigh", {NAMESPACE: "shop", POD: "dead-1"}, "100%"),
    ]))

    # TCP connect latency: api-1 has 2 of 100 connects a second in (1, 2.5] s (SYN
    # retransmits), so p99 = 1 + 1.5 * (99 - 98) / 2 = 1.75 s; web-1 all under 10 ms.
    def connect_buckets(pod: str, per_second: dict[str, int]) -> list[dict]:
        return [_series(q.TCP_CONNECT_DURATION_BUCKET, _pod("shop", pod, le=le),
                        f"0+{n * 60}x40") for le, n in per_second.items()]

    cases.append(_case("PodsnoopTcpConnectLatencyHigh",
                       connect_buckets("api-1", {"0.01": 98, "1.0": 98, "2.5": 100,
                                                 "+Inf": 100})
                       + connect_buckets("web-1", {"0.01": 100, "1.0": 100, "2.5": 100,
                                                   "+Inf": 100}),
                       "25m", [
        _fires("PodsnoopTcpConnectLatencyHigh", {NAMESPACE: "shop", POD: "api-1"}, "1.75s"),
    ]))

    # DNS failures: api-1 has 1/s SERVFAIL and 0.5/s timeouts of 3/s requests (50%); web-1
    # 0.2/s REFUSED of 10/s (2%, under the ratio; its 5/s NXDOMAIN are answers); cron-1
    # 0.05/s SERVFAIL and nothing else (100%, but under the minimum rate); dead-1 only
    # timeouts, 0.5/s (100%).
    def dns(pod: str, per_min: dict[str, int]) -> list[dict]:
        return [_series(q.DNS_REQUESTS, _pod("shop", pod, **{
            CONTAINER: "app", CONTAINER_ID: f"cid-{pod}", q.QTYPE: "A", q.RCODE: rcode}),
            f"0+{n}x40") for rcode, n in per_min.items()]

    cases.append(_case("PodsnoopDnsFailuresHigh",
                       dns("api-1", {"NOERROR": 90, "SERVFAIL": 60, "timeout": 30})
                       + dns("web-1", {"NOERROR": 288, "NXDOMAIN": 300, "REFUSED": 12})
                       + dns("cron-1", {"SERVFAIL": 3}) + dns("dead-1", {"timeout": 30}),
                       "20m", [
        _fires("PodsnoopDnsFailuresHigh", {NAMESPACE: "shop", POD: "api-1"}, "50%"),
        _fires("PodsnoopDnsFailuresHigh", {NAMESPACE: "shop", POD: "dead-1"}, "100%"),
    ]))

    # DNS latency: api-1 has 2 of 100 answers a second in (1, 2.5] s (resent queries), so
    # p99 = 1 + 1.5 * (99 - 98) / 2 = 1.75 s; web-1 all under 10 ms.
    def dns_buckets(pod: str, per_second: dict[str, int]) -> list[dict]:
        return [_series(q.DNS_DURATION_BUCKET, _pod("shop", pod, **{
            CONTAINER: "app", CONTAINER_ID: f"cid-{pod}", "le": le}), f"0+{n * 60}x40")
            for le, n in per_second.items()]

    cases.append(_case("PodsnoopDnsLatencyHigh",
                       dns_buckets("api-1", {"0.01": 98, "1.0": 98, "2.5": 100, "+Inf": 100})
                       + dns_buckets("web-1", {"0.01": 100, "1.0": 100, "2.5": 100,
                                               "+Inf": 100}),
                       "25m", [
        _fires("PodsnoopDnsLatencyHigh", {NAMESPACE: "shop", POD: "api-1"}, "1.75s"),
    ]))

    # Exporter down: node-a fails from minute 3; node-b stays up; another job's target is
    # down and is not podsnoop's business.
    cases.append(_case("PodsnoopExporterDown", [
        _series(q.UP, _exporter("node-a"), "1 1 1 0x30"),
        _series(q.UP, _exporter("node-b"), "1x33"),
        _series(q.UP, {JOB: "other", INSTANCE: "node-a:9100"}, "0x33"),
    ], "15m", [_fires("PodsnoopExporterDown", _exporter("node-a"), "")]))

    # Target missing: no podsnoop `up` at all (only another job's) fires; the second case,
    # with a podsnoop target, does not.
    cases.append(_case("PodsnoopTargetMissing", [
        _series(q.UP, {JOB: "other", INSTANCE: "node-a:9100"}, "1x40"),
    ], "20m", [_fires("PodsnoopTargetMissing", {JOB: JOB_NAME}, "")]))
    present = _case("PodsnoopTargetMissing", [
        _series(q.UP, _exporter("node-a"), "1x40"),
    ], "20m", [])
    present["name"] = "PodsnoopTargetMissing (a target exists)"
    cases.append(present)

    # Collector failing: node-a's syscalls collector fails from minute 2; its network
    # collector and node-b's syscalls collector succeed.
    cases.append(_case("PodsnoopCollectorFailing", [
        _series(q.SCRAPE_COLLECTOR_SUCCESS, {**_exporter("node-a"), COLLECTOR: "syscalls"},
                "1 1 0x30"),
        _series(q.SCRAPE_COLLECTOR_SUCCESS, {**_exporter("node-a"), COLLECTOR: "network"},
                "1x32"),
        _series(q.SCRAPE_COLLECTOR_SUCCESS, {**_exporter("node-b"), COLLECTOR: "syscalls"},
                "1x32"),
    ], "15m", [_fires("PodsnoopCollectorFailing", {**_exporter("node-a"),
                                                   COLLECTOR: "syscalls"}, "")]))

    # Collector off: node-a's drops collector is off (an old kernel) from the start: it
    # fires once the 15 minutes are over, not before.
    cases.append(_case("PodsnoopCollectorOff", [
        _series(q.COLLECTOR_DISABLED, {**_exporter("node-a"), COLLECTOR: "drops",
                                       "reason": "kernel<5.17: drop reasons"}, "1x30"),
    ], "20m", [_fires("PodsnoopCollectorOff", {**_exporter("node-a"), COLLECTOR: "drops",
                                               "reason": "kernel<5.17: drop reasons"}, "")]))

    # Map near capacity: net_stats 950/1000 (95%); syscall_stats 500/1000; a map that reports
    # max 0 is left out rather than divided by zero.
    def map_series(name: str, entries: int, max_entries: int) -> list[dict]:
        labels = {**_exporter("node-a"), MAP: name}
        return [_series(q.BPF_MAP_ENTRIES, labels, f"{entries}x30"),
                _series(q.BPF_MAP_MAX_ENTRIES, labels, f"{max_entries}x30")]

    cases.append(_case("PodsnoopBPFMapNearCapacity",
                       map_series("net_stats", 950, 1000)
                       + map_series("syscall_stats", 500, 1000)
                       + map_series("unsized", 10, 0),
                       "15m", [_fires("PodsnoopBPFMapNearCapacity",
                                      {**_exporter("node-a"), MAP: "net_stats"}, "95%")]))

    # Map update failures: net_stats fails 0.5/s; syscall_stats never.
    cases.append(_case("PodsnoopBPFMapUpdateFailures", [
        _series(q.BPF_MAP_UPDATE_FAILURES, {**_exporter("node-a"), MAP: "net_stats"},
                "0+30x30"),
        _series(q.BPF_MAP_UPDATE_FAILURES, {**_exporter("node-a"), MAP: "syscall_stats"},
                "0x30"),
    ], "15m", [_fires("PodsnoopBPFMapUpdateFailures",
                      {**_exporter("node-a"), MAP: "net_stats"}, "0.50")]))

    # Series cap: the syscalls collector leaves 100 series out a minute; network none.
    cases.append(_case("PodsnoopSeriesCapHit", [
        _series(q.SERIES_CAP_DROPPED, {**_exporter("node-a"), COLLECTOR: "syscalls"},
                "0+100x30"),
        _series(q.SERIES_CAP_DROPPED, {**_exporter("node-a"), COLLECTOR: "network"}, "0x30"),
    ], "15m", [_fires("PodsnoopSeriesCapHit", {**_exporter("node-a"), COLLECTOR: "syscalls"},
                      "1.67")]))

    # In-kernel CPU: node-a's programs run 3 s per second on 100 CPUs (3%), statistics
    # always on; node-b's 1 s per second (1%, under the threshold), and node-c's 3 s per
    # second (3%), both sampled a quarter of the time (the kernel counts only then).
    cases.append(_case("PodsnoopKernelCPUHigh", [
        _series(q.BPF_PROGRAM_RUN_SECONDS, {**_exporter("node-a"), q.PROGRAM: "syscalls/a"},
                "0+120x30"),
        _series(q.BPF_PROGRAM_RUN_SECONDS, {**_exporter("node-a"), q.PROGRAM: "net/b"},
                "0+60x30"),
        _series(q.NODE_CPUS, _exporter("node-a"), "100x30"),
        _series(q.BPF_STATS_ON_SECONDS, _exporter("node-a"), "0+60x30"),
        _series(q.BPF_PROGRAM_RUN_SECONDS, {**_exporter("node-b"), q.PROGRAM: "syscalls/a"},
                "0+15x30"),
        _series(q.BPF_STATS_ON_SECONDS, _exporter("node-b"), "0+15x30"),
        _series(q.NODE_CPUS, _exporter("node-b"), "100x30"),
        _series(q.BPF_PROGRAM_RUN_SECONDS, {**_exporter("node-c"), q.PROGRAM: "syscalls/a"},
                "0+45x30"),
        _series(q.BPF_STATS_ON_SECONDS, _exporter("node-c"), "0+15x30"),
        _series(q.NODE_CPUS, _exporter("node-c"), "100x30"),
    ], "25m", [_fires("PodsnoopKernelCPUHigh",
                      {INSTANCE: _exporter(node)[INSTANCE], NAMESPACE: "podsnoop",
                       POD: f"podsnoop-{node}"}, "3%") for node in ("node-a", "node-c")]))

    # Watch restarts: node-a restarts once a minute (15 in 15m); node-b once every 10 minutes
    # (1 or 2 in 15m, under the limit).
    cases.append(_case("PodsnoopKubeWatchRestarting", [
        _series(q.KUBE_WATCH_RESTARTS, _exporter("node-a"), "0+1x40"),
        _series(q.KUBE_WATCH_RESTARTS, _exporter("node-b"), "0x9 1x9 2x9 3x9 4x2"),
    ], "35m", [_fires("PodsnoopKubeWatchRestarting", _exporter("node-a"), "15")]))

    return {
        "rule_files": [os.path.relpath(RULES_PATH, os.path.dirname(UNIT_TEST_PATH))],
        "evaluation_interval": "1m",
        "tests": cases,
    }


# --------------------------------------------------------------------------- files

class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def to_yaml(obj, header: str) -> str:
    body = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True,
                     default_flow_style=False)
    return header + body


HEADER = ("# Generated by `python -m alerts.generate` from alerts/generate.py: edit that, not "
          "this file.\n")


def outputs() -> dict[str, str]:
    return {
        RULES_PATH: to_yaml(rules_file(), HEADER),
        CR_PATH: to_yaml(prometheus_rule(), HEADER + "# The groups of prometheus-rules.yaml, "
                         "for the Prometheus Operator.\n"),
        UNIT_TEST_PATH: to_yaml(unit_tests(), HEADER + "# Run: promtool test rules "
                                "alerts/tests/rules.test.yaml\n"),
    }


def main(argv: list[str] | None = None) -> int:
    return write_or_check(outputs, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())

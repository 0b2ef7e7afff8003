"""Generate podsnoop's Grafana dashboards (dashboards/*.json) from plain Python dicts.

    python -m dashboards.generate           # rewrite dashboards/*.json
    python -m dashboards.generate --check   # exit 1 if a committed file is stale

The JSON is committed; tests/test_dashboards.py fails when it differs from what this module
generates, so edit this file and regenerate rather than editing the JSON (or Grafana's UI).

For tests that run the panels' queries through a real Prometheus:
    panel_exprs()        every PromQL expression of every panel, with where it comes from
    substitute(expr)     the expression with Grafana's variables replaced ($namespace -> .*,
                         $__rate_interval -> 1m, $__range -> 1h, ...)
    variable_queries()   the label_values(...) queries of the template variables
    label_values_promql(q)  such a query as plain PromQL: group by (label) (selector)
"""

from __future__ import annotations

import json
import os
import re as _re
import sys
from collections.abc import Mapping
from typing import NamedTuple

if __package__ in (None, ""):  # python dashboards/generate.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "dashboards"

from dashboards import promql as q  # noqa: E402
from exporter.generated import write_or_check  # noqa: E402
from dashboards.promql import (  # noqa: E402
    COLLECTOR, COMM, CONTAINER, DIRECTION, INSTANCE, JOB, MAP, NAMESPACE, POD, PROTOCOL,
    REASON, SYSCALL, VERSION, by, by_workload, rate, sel, sum_by, var,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
RANGE = "$__range"
TAGS = ["podsnoop", "ebpf"]


# --------------------------------------------------------------------------- panels

def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False,
           fmt: str = "time_series") -> dict:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "refId": ref,
    }


def _targets(targets: list[dict]) -> list[dict]:
    """The panel's targets, with refIds A, B, ... in order."""
    out = []
    for i, t in enumerate(targets):
        t = dict(t)
        t["refId"] = chr(ord("A") + i)
        out.append(t)
    return out


def timeseries(title: str, description: str, targets: list[dict], unit: str, *,
               stack: bool = False, bars: bool = False, min_=0, max_=None,
               thresholds: list[tuple[float | None, str]] | None = None, w: int = 12,
               h: int = 8) -> dict:
    defaults = {
        "color": {"mode": "palette-classic"},
        "custom": {
            "axisBorderShow": False,
            "axisPlacement": "auto",
            "drawStyle": "bars" if bars else "line",
            "fillOpacity": 60 if bars else (30 if stack else 10),
            "gradientMode": "none",
            "lineInterpolation": "linear",
            "lineWidth": 1,
            "pointSize": 4,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if stack else "none"},
            "thresholdsStyle": {"mode": "line" if thresholds else "off"},
        },
        "unit": unit,
    }
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    defaults["thresholds"] = _thresholds(thresholds)
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"calcs": ["mean", "max", "lastNotNull"], "displayMode": "table",
                       "placement": "bottom", "showLegend": True, "sortBy": "Mean",
                       "sortDesc": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": _targets(targets),
        "_size": (w, h),
    }


def _thresholds(steps: list[tuple[float | None, str]] | None) -> dict:
    steps = steps or [(None, "green")]
    return {"mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in steps]}


def stat(title: str, description: str, targets: list[dict], unit: str = "short", *,
         thresholds: list[tuple[float | None, str]] | None = None, w: int = 6,
         h: int = 4) -> dict:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"color": {"mode": "thresholds"}, "unit": unit,
                                     "thresholds": _thresholds(thresholds)},
                        "overrides": []},
        "options": {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
        "targets": _targets(targets),
        "_size": (w, h),
    }


def bargauge(title: str, description: str, targets: list[dict], unit: str, *, w: int = 12,
             h: int = 8) -> dict:
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"color": {"mode": "continuous-BlYlRd"}, "min": 0,
                                     "unit": unit, "thresholds": _thresholds(None)},
                        "overrides": []},
        "options": {
            "displayMode": "gradient",
            "minVizHeight": 16,
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
            "valueMode": "color",
        },
        "targets": _targets(targets),
        "_size": (w, h),
    }


def piechart(title: str, description: str, targets: list[dict], unit: str, *, w: int = 8,
             h: int = 8) -> dict:
    return {
        "type": "piechart",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"color": {"mode": "palette-classic"}, "unit": unit},
                        "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                       "values": ["value", "percent"]},
            "pieType": "donut",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        "targets": _targets(targets),
        "_size": (w, h),
    }


def heatmap(title: str, description: str, targets: list[dict], unit: str, *, w: int = 12,
            h: int = 8) -> dict:
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False,
                                                            "viz": False},
                                                "scaleDistribution": {"type": "linear"}}},
                        "overrides": []},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {"exponent": 0.5, "fill": "dark-orange", "mode": "scheme",
                      "reverse": False, "scale": "exponential", "scheme": "Oranges",
                      "steps": 64},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": True},
            "yAxis": {"axisPlacement": "left", "reverse": False, "unit": unit},
        },
        "targets": _targets(targets),
        "_size": (w, h),
    }


def table(title: str, description: str, targets: list[dict], *, w: int = 12,
          h: int = 6, columns: Mapping[str, str] | None = None) -> dict:
    """A table of instant queries; with several, their rows merged on the labels, each
    query's value a column (`columns`: "Value #A" -> its header)."""
    merge = [{"id": "merge", "options": {}}] if len(targets) > 1 else []
    organize = {"excludeByName": {"Time": True}, "renameByName": dict(columns or {})}
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"},
                                                "inspect": False}},
                        "overrides": []},
        "options": {"cellHeight": "sm", "showHeader": True,
                    "footer": {"countRows": False, "fields": "", "reducer": ["sum"],
                               "show": False}},
        "targets": _targets(targets),
        "transformations": merge + [{"id": "organize", "options": organize}],
        "_size": (w, h),
    }


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def layout(panels: list[dict]) -> list[dict]:
    """Give panels ids and grid positions: left to right, wrapping at 24 columns; a row
    starts a new line."""
    x = y = line_h = 0
    out = []
    for pid, p in enumerate(panels, start=1):
        p = dict(p)
        w, h = p.pop("_size")
        if p["type"] == "row" or x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        p["id"] = pid
        x += w
        line_h = max(line_h, h)
        if p["type"] == "row":
            x, y, line_h = 0, y + h, 0
        out.append(p)
    return out


# --------------------------------------------------------------------------- variables

def datasource_variable() -> dict:
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def label_values(selector: str, label: str) -> str:
    return f"label_values({selector}, {label})"


def query_variable(name: str, label: str, query: str, *, all_value: str | None = ".*") -> dict:
    """A multi-value variable with "All". all_value ".*" also matches the empty label of
    unresolved traffic; None makes Grafana send the alternation of the values it found (for
    job/instance, where ".*" would match every target Prometheus scrapes)."""
    return {
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def dashboard(uid: str, title: str, description: str, variables: list[dict],
              panels: list[dict]) -> dict:
    return {
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": True, "icon": "external link", "includeVars": False,
                   "keepTime": True, "tags": ["podsnoop"], "targetBlank": False,
                   "title": "podsnoop", "tooltip": "", "type": "dashboards", "url": ""}],
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": [datasource_variable()] + variables},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# --------------------------------------------------------------------------- dashboards

POD_LEGEND = "{{namespace}}/{{pod}}"
CONTAINER_LEGEND = "{{namespace}}/{{pod}}/{{container}}"
POD_KEYS = (NAMESPACE, POD)
CONTAINER_KEYS = (NAMESPACE, POD, CONTAINER)
WORKLOAD_LEGEND = "{{namespace}}/{{workload_kind}}/{{workload}}"
PEER_LEGEND = ("{{peer_namespace}}/{{peer_workload}}{{peer_service}}{{peer_network}}")
PEER_NOTE = ("A peer is named by one label of four: peer_namespace + peer_workload (a pod), "
             "peer_namespace + peer_service (a ClusterIP), or peer_network (node, a "
             "--peer-cidrs name, world, other).")
WORKLOAD_NOTE = ("Pods are grouped by their controller (podsnoop_pod_info's workload_kind "
                 "and workload: a Deployment, StatefulSet, DaemonSet, CronJob, Job; empty "
                 "for bare pods); pods without podsnoop_pod_info (--kube off) are left out.")


def network_dashboard() -> dict:
    f = (var(NAMESPACE), var(POD))

    def per_pod(metric: str, window: str = RATE) -> str:
        return sum_by(POD_KEYS, rate(sel(metric, *f), window))

    def both(keys: tuple[str, ...], rx: str, tx: str, fn: str = "rate",
             window: str = RANGE) -> str:
        """Receive + transmit. Not one selector with a __name__ regex: rate() drops the
        names, and Prometheus 2 rejects the two series that then share a label set. A pod
        with traffic in one direction only keeps it through the `or`s."""
        a = sum_by(keys, f"{fn}({sel(rx, *f)}[{window}])")
        b = sum_by(keys, f"{fn}({sel(tx, *f)}[{window}])")
        return f"({a} + {b}) or {a} or {b}"

    def peer_rate(metric: str, direction: str | None = None, window: str = RANGE) -> str:
        """Per pod and peer (and one direction), for by_workload."""
        matchers = f + ((q.eq(DIRECTION, direction),) if direction else ())
        return sum_by((NAMESPACE, q.POD_UID) + q.PEER_KEYS, rate(sel(metric, *matchers),
                                                                window))

    pod_var = label_values(sel(q.NET_RX_BYTES, var(NAMESPACE)), POD)
    ns_var = label_values(q.NET_RX_BYTES, NAMESPACE)
    direction_note = ("Receive is traffic into the pod (egress of its host-side veth), "
                      "transmit is traffic out of the pod.")
    unknown_note = ("Traffic podsnoop could not tie to a pod is shown with empty namespace "
                    "and pod, so totals add up.")
    panels = [
        row("Traffic by pod"),
        timeseries("Receive bandwidth by pod", f"Bytes per second into each pod. "
                   f"{direction_note} {unknown_note}",
                   [target(per_pod(q.NET_RX_BYTES), POD_LEGEND)], "Bps"),
        timeseries("Transmit bandwidth by pod", f"Bytes per second out of each pod. "
                   f"{direction_note}",
                   [target(per_pod(q.NET_TX_BYTES), POD_LEGEND)], "Bps"),
        timeseries("Receive packets by pod", "Packets per second into each pod.",
                   [target(per_pod(q.NET_RX_PACKETS), POD_LEGEND)], "pps"),
        timeseries("Transmit packets by pod", "Packets per second out of each pod.",
                   [target(per_pod(q.NET_TX_PACKETS), POD_LEGEND)], "pps"),
        row("Traffic by workload"),
        timeseries("Receive bandwidth by workload", "Bytes per second into the pods of each "
                   f"workload. {WORKLOAD_NOTE}",
                   [target(by_workload(sum_by((NAMESPACE, q.POD_UID),
                                              rate(sel(q.NET_RX_BYTES, *f), RATE))),
                           WORKLOAD_LEGEND)], "Bps"),
        timeseries("Transmit bandwidth by workload", "Bytes per second out of the pods of "
                   f"each workload. {WORKLOAD_NOTE}",
                   [target(by_workload(sum_by((NAMESPACE, q.POD_UID),
                                              rate(sel(q.NET_TX_BYTES, *f), RATE))),
                           WORKLOAD_LEGEND)], "Bps"),
        row("Top talkers"),
        bargauge("Top 10 pods by bandwidth (receive + transmit)",
                 "Average bytes per second over the dashboard's time range, both directions.",
                 [target(f"topk(10, {both(POD_KEYS, q.NET_RX_BYTES, q.NET_TX_BYTES)})",
                         POD_LEGEND, instant=True)], "Bps"),
        bargauge("Top 10 pods by packet rate (receive + transmit)",
                 "Average packets per second over the dashboard's time range, both "
                 "directions.",
                 [target(f"topk(10, {both(POD_KEYS, q.NET_RX_PACKETS, q.NET_TX_PACKETS)})",
                         POD_LEGEND, instant=True)], "pps"),
        row("Protocols"),
        timeseries("Receive bandwidth by protocol",
                   "Bytes per second into the selected pods, by protocol (tcp, udp, icmp, "
                   "icmpv6, other).",
                   [target(sum_by((PROTOCOL,), rate(sel(q.NET_RX_BYTES, *f), RATE)),
                           "{{protocol}}")], "Bps", stack=True, w=8),
        timeseries("Transmit bandwidth by protocol",
                   "Bytes per second out of the selected pods, by protocol.",
                   [target(sum_by((PROTOCOL,), rate(sel(q.NET_TX_BYTES, *f), RATE)),
                           "{{protocol}}")], "Bps", stack=True, w=8),
        piechart("Protocol share of bytes", "Bytes in both directions over the dashboard's "
                 "time range, by protocol.",
                 [target(both((PROTOCOL,), q.NET_RX_BYTES, q.NET_TX_BYTES, "increase"),
                         "{{protocol}}", instant=True)], "bytes"),
        row("Drops"),
        timeseries("Drops by pod and direction", "Packets dropped per second, by pod and "
                   f"direction. {direction_note}",
                   [target(sum_by(POD_KEYS + (DIRECTION,), rate(sel(q.NET_DROPS, *f), RATE)),
                           POD_LEGEND + " {{direction}}")], "pps"),
        timeseries("Drops by reason", "Packets dropped per second, by direction and the "
                   "kernel's drop reason.",
                   [target(sum_by((DIRECTION, REASON), rate(sel(q.NET_DROPS, *f), RATE)),
                           "{{direction}} {{reason}}")], "pps", stack=True),
        timeseries("Receive drop ratio by pod",
                   "Dropped / (delivered + dropped) packets into each pod. The alert "
                   "PodsnoopPodReceiveDropsHigh uses the same expression over 5m.",
                   [target(drop_ratio(q.RECEIVE, f, RATE), POD_LEGEND)], "percentunit",
                   thresholds=[(None, "green"), (DROP_RATIO_THRESHOLD, "red")]),
        timeseries("Transmit drop ratio by pod",
                   "Dropped / (sent + dropped) packets out of each pod.",
                   [target(drop_ratio(q.TRANSMIT, f, RATE), POD_LEGEND)], "percentunit",
                   thresholds=[(None, "green"), (DROP_RATIO_THRESHOLD, "red")]),
        row("TCP"),
        timeseries("TCP connect latency p99 by pod",
                   "99th percentile of the time from a pod's SYN to the established "
                   "connection. A lost SYN or SYN-ACK shows as >= 1 s (the kernel's SYN "
                   "retransmission). The alert PodsnoopTcpConnectLatencyHigh uses the same "
                   "expression over 5m.",
                   [target(tcp_connect_p99(f, RATE), POD_LEGEND)], "s",
                   thresholds=[(None, "green"), (TCP_CONNECT_P99_THRESHOLD_SECONDS, "red")]),
        heatmap("TCP connect latency", "Distribution of connect latencies of the selected "
                "pods (buckets counted in the kernel).",
                [target(sum_by(("le",), rate(sel(q.TCP_CONNECT_DURATION_BUCKET, *f), RATE)),
                        "{{le}}", fmt="heatmap")], "s"),
        timeseries("TCP connect failure ratio by pod",
                   "Failed / (failed + established) connects of each pod: refused, timed "
                   "out, reset or abandoned before the handshake. The alert "
                   "PodsnoopTcpConnectFailuresHigh uses the same expression over 5m.",
                   [target(tcp_connect_failure_ratio(f, RATE), POD_LEGEND)], "percentunit",
                   max_=1, thresholds=[(None, "green"),
                                       (TCP_CONNECT_FAILURE_RATIO_THRESHOLD, "red")]),
        timeseries("TCP retransmits by pod", "Segments the kernel retransmitted per second "
                   "for each pod's sockets (connected and accepted).",
                   [target(per_pod(q.TCP_RETRANSMITS), POD_LEGEND)], "ops"),
        row("DNS"),
        timeseries("DNS requests by rcode",
                   "DNS requests per second of the selected pods' containers (UDP and TCP to "
                   "port 53, counted in the kernel), by response code; timeout: no answer "
                   "within --dns-timeout.",
                   [target(sum_by((q.RCODE,), rate(sel(q.DNS_REQUESTS, *f), RATE)),
                           "{{rcode}}")], "reqps", stack=True),
        timeseries("DNS latency p99 by pod",
                   "99th percentile of the time from a pod's DNS query to its response "
                   "(answered queries). The alert PodsnoopDnsLatencyHigh uses the same "
                   "expression over 5m.",
                   [target(dns_p99(f, RATE), POD_LEGEND)], "s",
                   thresholds=[(None, "green"), (DNS_P99_THRESHOLD_SECONDS, "red")]),
        timeseries("DNS failure ratio by pod",
                   "SERVFAIL, REFUSED and timed-out requests / all DNS requests of each pod. "
                   "The alert PodsnoopDnsFailuresHigh uses the same expression over 5m.",
                   [target(dns_failure_ratio(f, RATE), POD_LEGEND)], "percentunit",
                   max_=1, thresholds=[(None, "green"), (DNS_FAILURE_RATIO_THRESHOLD, "red")]),
        timeseries("DNS NXDOMAIN ratio by pod",
                   "NXDOMAIN answers / all DNS requests of each pod. A high share is normal "
                   "for external names under Kubernetes' search list (ndots:5: each "
                   "cluster suffix is tried first); a change is what to look at.",
                   [target(dns_rcode_ratio(("NXDOMAIN",), f, RATE), POD_LEGEND)],
                   "percentunit", max_=1),
        row("Peers"),
        table("Service map: who talks to whom",
              "Each workload's peers over the dashboard's time range (bytes per second, "
              "connects per second): another pod's workload, a Service (connects to its "
              "ClusterIP), the node, a --peer-cidrs network, world, or other (beyond the "
              f"pod's --peer-top). {PEER_NOTE} Pods without podsnoop_pod_info (--kube off) "
              "are not listed; the panels below show them by pod.",
              [target(f"sort_desc({by_workload(peer_rate(q.PEER_BYTES, q.RECEIVE), q.PEER_KEYS)})",
                      instant=True, fmt="table"),
               target(by_workload(peer_rate(q.PEER_BYTES, q.TRANSMIT), q.PEER_KEYS),
                      instant=True, fmt="table"),
               target(by_workload(peer_rate(q.PEER_TCP_CONNECTS), q.PEER_KEYS),
                      instant=True, fmt="table"),
               target(by_workload(peer_rate(q.PEER_TCP_CONNECT_FAILURES), q.PEER_KEYS),
                      instant=True, fmt="table")],
              w=24, h=10, columns={"Value #A": "receive B/s", "Value #B": "transmit B/s",
                                   "Value #C": "connects/s", "Value #D": "failed connects/s"}),
        timeseries("Bandwidth by pod and peer",
                   "Bytes per second between each pod and each of its peers, by direction "
                   f"(the pod's). {PEER_NOTE}",
                   [target(sum_by(POD_KEYS + (DIRECTION,) + q.PEER_KEYS,
                                  rate(sel(q.PEER_BYTES, *f), RATE)),
                           f"{POD_LEGEND} {{{{direction}}}} {PEER_LEGEND}")], "Bps"),
        timeseries("TCP connect failure ratio by pod and peer",
                   "Failed / (failed + established) connects of each pod to each peer: "
                   "which Service or workload a pod fails to reach (PodsnoopTcpConnectFailuresHigh "
                   "fires per pod).",
                   [target(peer_connect_failure_ratio(f, RATE), f"{POD_LEGEND} {PEER_LEGEND}")],
                   "percentunit", max_=1,
                   thresholds=[(None, "green"), (TCP_CONNECT_FAILURE_RATIO_THRESHOLD, "red")]),
        row("Traffic by container"),
        timeseries("Receive bandwidth by container",
                   "IP bytes per second received by each container's sockets (with "
                   "--container-network on). No Ethernet header, and no traffic of no socket "
                   "(ARP, ICMP errors the kernel sends): a little less than the veth's.",
                   [target(sum_by(CONTAINER_KEYS, rate(sel(q.CNET_RX_BYTES, *f), RATE)),
                           CONTAINER_LEGEND)], "Bps"),
        timeseries("Transmit bandwidth by container",
                   "IP bytes per second sent by each container's sockets.",
                   [target(sum_by(CONTAINER_KEYS, rate(sel(q.CNET_TX_BYTES, *f), RATE)),
                           CONTAINER_LEGEND)], "Bps"),
    ]
    return dashboard(
        "podsnoop-network", "podsnoop / Pod network",
        "Per-pod network traffic measured by eBPF (TC) on each pod's host-side veth.",
        [query_variable("namespace", "Namespace", ns_var),
         query_variable("pod", "Pod", pod_var)],
        panels)


def syscalls_dashboard() -> dict:
    f = (var(NAMESPACE), var(POD), var(CONTAINER))
    fs = f + (var(SYSCALL),)
    ns_var = label_values(q.SYSCALLS, NAMESPACE)
    pod_var = label_values(sel(q.SYSCALLS, var(NAMESPACE)), POD)
    container_var = label_values(sel(q.SYSCALLS, var(NAMESPACE), var(POD)), CONTAINER)
    syscall_var = label_values(sel(q.SYSCALLS, *f), SYSCALL)
    bucket_rate = rate(sel(q.SYSCALL_DURATION_BUCKET, *f), RATE)
    no_syscall_note = ("The latency histogram is per container, not per syscall: the "
                       "syscall filter does not apply here.")
    panels = [
        row("Syscall rate"),
        timeseries("Syscalls by container", "System calls per second, by container.",
                   [target(sum_by(CONTAINER_KEYS, rate(sel(q.SYSCALLS, *fs), RATE)),
                           CONTAINER_LEGEND)], "ops"),
        timeseries("Top 15 syscalls", "The 15 busiest system calls of the selected "
                   "containers, per second.",
                   [target(f"topk(15, {sum_by((SYSCALL,), rate(sel(q.SYSCALLS, *fs), RATE))})",
                           "{{syscall}}")], "ops"),
        bargauge("Top 10 containers by syscall rate", "Average system calls per second over "
                 "the dashboard's time range.",
                 [target(f"topk(10, {sum_by(CONTAINER_KEYS, rate(sel(q.SYSCALLS, *fs), RANGE))})",
                         CONTAINER_LEGEND, instant=True)], "ops"),
        timeseries("Syscalls by workload", "System calls per second of the pods of each "
                   f"workload. {WORKLOAD_NOTE}",
                   [target(by_workload(sum_by((NAMESPACE, q.POD_UID),
                                              rate(sel(q.SYSCALLS, *fs), RATE))),
                           WORKLOAD_LEGEND)], "ops"),
        row("Errors"),
        timeseries("Error ratio by container", "Share of system calls that returned an "
                   "error. The alert PodsnoopSyscallErrorRatioHigh uses the same expression "
                   "over 5m.",
                   [target(syscall_error_ratio(CONTAINER_KEYS, fs, RATE), CONTAINER_LEGEND)],
                   "percentunit", max_=1,
                   thresholds=[(None, "green"), (SYSCALL_ERROR_RATIO_THRESHOLD, "red")]),
        timeseries("Top 15 failing syscalls", "Failed system calls per second, by syscall.",
                   [target(f"topk(15, "
                           f"{sum_by((SYSCALL,), rate(sel(q.SYSCALL_ERRORS, *fs), RATE))})",
                           "{{syscall}}")], "ops"),
        timeseries("Error ratio by syscall", "Share of each system call's invocations that "
                   "failed (syscalls that never failed are not shown).",
                   [target(f"{sum_by((SYSCALL,), rate(sel(q.SYSCALL_ERRORS, *fs), RATE))} / "
                           f"{sum_by((SYSCALL,), rate(sel(q.SYSCALLS, *fs), RATE))}",
                           "{{syscall}}")], "percentunit", max_=1, w=24),
        row("Latency"),
        heatmap("Syscall latency", "Distribution of system call durations (all syscalls of "
                f"the selected containers). {no_syscall_note}",
                [target(sum_by(("le",), bucket_rate), "{{le}}", fmt="heatmap")], "s"),
        timeseries("Latency quantiles (selected containers)", "p50, p90 and p99 of system "
                   "call duration. Blocking calls (epoll_wait, futex, nanosleep) count too. "
                   + no_syscall_note,
                   [target(f"histogram_quantile({p}, {sum_by(('le',), bucket_rate)})",
                           f"p{int(p * 100)}") for p in (0.5, 0.9, 0.99)], "s"),
        timeseries("p99 latency by container", "99th percentile of system call duration, by "
                   "container. The alert PodsnoopSyscallLatencyHigh uses the same expression "
                   "over 5m.",
                   [target(syscall_p99(f, RATE), CONTAINER_LEGEND)], "s",
                   thresholds=[(None, "green"), (SYSCALL_P99_THRESHOLD_SECONDS, "red")]),
        timeseries("Mean latency by container", "Mean system call duration, by container.",
                   [target(f"{sum_by(CONTAINER_KEYS, rate(sel(q.SYSCALL_DURATION_SUM, *f), RATE))}"
                           " / "
                           f"{sum_by(CONTAINER_KEYS, rate(sel(q.SYSCALL_DURATION_COUNT, *f), RATE))}",
                           CONTAINER_LEGEND)], "s"),
        row("Execs"),
        timeseries("Execs by container", "Programs executed (execve) per second, by "
                   "container; `kubectl exec` shows here too.",
                   [target(sum_by(CONTAINER_KEYS, rate(sel(q.EXECS, *f), RATE)),
                           CONTAINER_LEGEND)], "ops"),
        timeseries("Top 15 programs executed", "Execs per second of the selected containers, "
                   "by the program's name (comm; the container's rarer ones are \"other\").",
                   [target(f"topk(15, {sum_by((COMM,), rate(sel(q.EXECS, *f), RATE))})",
                           "{{comm}}")], "ops"),
    ]
    return dashboard(
        "podsnoop-syscalls", "podsnoop / Syscalls",
        "Per-container system call rates, errors and latency, counted in the kernel by eBPF "
        "tracepoints keyed by cgroup.",
        [query_variable("namespace", "Namespace", ns_var),
         query_variable("pod", "Pod", pod_var),
         query_variable("container", "Container", container_var),
         query_variable("syscall", "Syscall", syscall_var)],
        panels)


def exporter_dashboard() -> dict:
    h = (var(JOB), var(INSTANCE))
    job_var = label_values(q.BUILD_INFO, JOB)
    instance_var = label_values(sel(q.BUILD_INFO, var(JOB)), INSTANCE)
    panels = [
        row("Exporters"),
        stat("Exporters up", "Targets of the selected job that Prometheus scraped "
             "successfully.", [target(f"sum({sel(q.UP, *h)})", "up")],
             thresholds=[(None, "green")]),
        stat("Exporters down", "Targets of the selected job whose last scrape failed "
             "(alert PodsnoopExporterDown).",
             [target(f"count({sel(q.UP, *h)} == 0) or vector(0)", "down")],
             thresholds=[(None, "green"), (1, "red")]),
        stat("Attached interfaces", "Network interfaces with podsnoop's TC programs "
             "attached, all selected nodes.",
             [target(f"sum({sel(q.ATTACHED_INTERFACES, *h)})", "interfaces")]),
        stat("Unresolved cgroups", "cgroups seen by the BPF programs that podsnoop could not "
             "map to a pod, all selected nodes.",
             [target(f"sum({sel(q.UNRESOLVED_CGROUPS, *h)})", "cgroups")],
             thresholds=[(None, "green"), (1, "yellow")]),
        table("Versions", "Exporters by podsnoop version.",
              [target(f"count {by(VERSION)} ({sel(q.BUILD_INFO, *h)})", "{{version}}",
                      instant=True, fmt="table")], w=8),
        timeseries("Target up", "1 when Prometheus' last scrape of the target succeeded.",
                   [target(sel(q.UP, *h), "{{instance}}")], "short", max_=1, w=16, h=6),
        row("eBPF"),
        timeseries("Attached interfaces by node", "Network interfaces with podsnoop's TC "
                   "programs attached.",
                   [target(f"sum {by(INSTANCE)} ({sel(q.ATTACHED_INTERFACES, *h)})",
                           "{{instance}}")], "short"),
        timeseries("In-kernel CPU of podsnoop's programs", "Time podsnoop's BPF programs "
                   "ran in the kernel, as a share of the node's CPUs (the kernel's run-time "
                   "statistics; empty where podsnoop_bpf_stats_enabled is 0). Alert "
                   f"PodsnoopKernelCPUHigh fires above {BPF_CPU_SHARE_THRESHOLD:.0%}.",
                   [target(bpf_cpu_share(h), "{{instance}}")], "percentunit",
                   thresholds=[(None, "green"), (BPF_CPU_SHARE_THRESHOLD, "red")]),
        timeseries("In-kernel time by program", "CPU-seconds per second each of podsnoop's "
                   "BPF programs ran while the kernel's statistics were on (sampled "
                   "windows; syscall programs run for every task of the node).",
                   [target(f"{sum_by((INSTANCE, q.PROGRAM), rate(sel(q.BPF_PROGRAM_RUN_SECONDS, *h), '5m'))}"
                           f"\n/ on({INSTANCE}) group_left "
                           f"{sum_by((INSTANCE,), rate(sel(q.BPF_STATS_ON_SECONDS, *h), '5m'))}",
                           "{{instance}} {{program}}")], "s"),
        timeseries("BPF map fill ratio", "Entries / max entries of each BPF map. The alert "
                   f"PodsnoopBPFMapNearCapacity fires above {BPF_MAP_FILL_THRESHOLD:.0%}.",
                   [target(bpf_map_fill_ratio(h), "{{instance}} {{map}}")], "percentunit",
                   max_=1, thresholds=[(None, "green"), (BPF_MAP_FILL_THRESHOLD, "red")]),
        timeseries("BPF map update failures", "Failed BPF map updates per second (a full "
                   "map loses data).",
                   [target(sum_by((INSTANCE, MAP), rate(sel(q.BPF_MAP_UPDATE_FAILURES, *h),
                                                         RATE)), "{{instance}} {{map}}")],
                   "ops"),
        timeseries("Unresolved cgroups by node", "cgroups podsnoop could not map to a pod "
                   "(collapsed into bounded series, never one series per cgroup).",
                   [target(f"sum {by(INSTANCE)} ({sel(q.UNRESOLVED_CGROUPS, *h)})",
                           "{{instance}}")], "short"),
        row("Scrapes and Kubernetes"),
        timeseries("Collector scrape duration", "Time each collector took during the last "
                   "scrape.",
                   [target(f"max {by(INSTANCE, COLLECTOR)} "
                           f"({sel(q.SCRAPE_COLLECTOR_DURATION, *h)})",
                           "{{instance}} {{collector}}")], "s"),
        timeseries("Collector success", "1 when the collector succeeded during the last "
                   "scrape (alert PodsnoopCollectorFailing).",
                   [target(f"min {by(INSTANCE, COLLECTOR)} "
                           f"({sel(q.SCRAPE_COLLECTOR_SUCCESS, *h)})",
                           "{{instance}} {{collector}}")], "short", max_=1),
        timeseries("Kubernetes watch restarts", "Restarts of the pod watch (alert "
                   "PodsnoopKubeWatchRestarting).",
                   [target(sum_by((INSTANCE,), f"increase({sel(q.KUBE_WATCH_RESTARTS, *h)}"
                                               f"[{RATE}])"), "{{instance}}")],
                   "short", bars=True),
        timeseries("Series dropped by the series cap", "Series per second the exporter left "
                   "out because the hard series cap was reached (alert PodsnoopSeriesCapHit).",
                   [target(sum_by((INSTANCE, COLLECTOR),
                                  rate(sel(q.SERIES_CAP_DROPPED, *h), RATE)),
                           "{{instance}} {{collector}}")], "ops"),
    ]
    return dashboard(
        "podsnoop-exporter", "podsnoop / Exporter health",
        "Health of the podsnoop exporters themselves: targets, eBPF attachments and maps, "
        "collectors, Kubernetes watch and series cap.",
        [query_variable("job", "Job", job_var, all_value=None),
         query_variable("instance", "Instance", instance_var, all_value=None)],
        panels)


# --------------------------------------------------------------------------- shared with alerts

# Thresholds shared by the dashboards and alerts/generate.py.
DROP_RATIO_THRESHOLD = 0.01
SYSCALL_ERROR_RATIO_THRESHOLD = 0.5
SYSCALL_P99_THRESHOLD_SECONDS = 1.0
BPF_MAP_FILL_THRESHOLD = 0.9
BPF_CPU_SHARE_THRESHOLD = 0.02  # of the node's CPUs, spent in podsnoop's BPF programs
TCP_CONNECT_FAILURE_RATIO_THRESHOLD = 0.2
TCP_CONNECT_P99_THRESHOLD_SECONDS = 0.5
DNS_FAILURE_RATIO_THRESHOLD = 0.1   # SERVFAIL, REFUSED and timeouts of all requests
DNS_P99_THRESHOLD_SECONDS = 0.5


def drop_ratio(direction: str, matchers: tuple[str, ...], window: str,
               keys: tuple[str, ...] = POD_KEYS) -> str:
    """Dropped / (passed + dropped) packets per pod in one direction. A pod that dropped
    packets but never passed one has ratio 1 (the `or ... * 0` keeps it)."""
    packets = q.NET_RX_PACKETS if direction == q.RECEIVE else q.NET_TX_PACKETS
    drops = sum_by(keys, rate(sel(q.NET_DROPS, q.eq(DIRECTION, direction), *matchers), window))
    passed = sum_by(keys, rate(sel(packets, *matchers), window))
    return f"{drops}\n/\n({drops}\n + ({passed} or {drops} * 0))"


def syscall_error_ratio(keys: tuple[str, ...], matchers: tuple[str, ...], window: str) -> str:
    """Failed / all syscalls; 0 (not absent) for series with calls but no error series."""
    calls = sum_by(keys, rate(sel(q.SYSCALLS, *matchers), window))
    errors = sum_by(keys, rate(sel(q.SYSCALL_ERRORS, *matchers), window))
    return f"({errors} or {calls} * 0)\n/\n{calls}"


def syscall_p99(matchers: tuple[str, ...], window: str,
                keys: tuple[str, ...] = CONTAINER_KEYS) -> str:
    return (f"histogram_quantile(0.99, "
            f"{sum_by(keys + ('le',), rate(sel(q.SYSCALL_DURATION_BUCKET, *matchers), window))})")


def tcp_connect_failure_ratio(matchers: tuple[str, ...], window: str,
                              keys: tuple[str, ...] = POD_KEYS) -> str:
    """Failed / (failed + established) connects per pod; 1 for a pod whose connects all
    failed (no histogram increase: the `or ... * 0` keeps it)."""
    failed = sum_by(keys, rate(sel(q.TCP_CONNECT_FAILURES, *matchers), window))
    done = sum_by(keys, rate(sel(q.TCP_CONNECT_DURATION_COUNT, *matchers), window))
    return f"{failed}\n/\n({failed}\n + ({done} or {failed} * 0))"


def peer_connect_failure_ratio(matchers: tuple[str, ...], window: str,
                               keys: tuple[str, ...] = POD_KEYS + q.PEER_KEYS) -> str:
    """Failed / (failed + established) connects per pod and peer; 1 for a peer every
    connect to which failed."""
    failed = sum_by(keys, rate(sel(q.PEER_TCP_CONNECT_FAILURES, *matchers), window))
    done = sum_by(keys, rate(sel(q.PEER_TCP_CONNECTS, *matchers), window))
    return f"{failed}\n/\n({failed}\n + ({done} or {failed} * 0))"


def tcp_connect_p99(matchers: tuple[str, ...], window: str,
                    keys: tuple[str, ...] = POD_KEYS) -> str:
    return (f"histogram_quantile(0.99, "
            f"{sum_by(keys + ('le',), rate(sel(q.TCP_CONNECT_DURATION_BUCKET, *matchers), window))})")


def dns_rcode_ratio(rcodes: tuple[str, ...], matchers: tuple[str, ...], window: str,
                    keys: tuple[str, ...] = POD_KEYS) -> str:
    """Requests answered with (or ending in) one of `rcodes` / all DNS requests, per pod;
    0 (not absent) for a pod with requests but none of those."""
    some = sum_by(keys, rate(sel(q.DNS_REQUESTS, q.re(q.RCODE, "|".join(rcodes)), *matchers),
                             window))
    every = sum_by(keys, rate(sel(q.DNS_REQUESTS, *matchers), window))
    return f"({some} or {every} * 0)\n/\n{every}"


def dns_failure_ratio(matchers: tuple[str, ...], window: str,
                      keys: tuple[str, ...] = POD_KEYS) -> str:
    """SERVFAIL, REFUSED and timeouts / all DNS requests: the resolver failed the pod.
    NXDOMAIN is an answer (and, with Kubernetes' ndots:5 search list, most of a pod's
    lookups of external names), so it is not a failure here."""
    return dns_rcode_ratio(q.DNS_FAILURE_RCODES, matchers, window, keys)


def dns_p99(matchers: tuple[str, ...], window: str, keys: tuple[str, ...] = POD_KEYS) -> str:
    return (f"histogram_quantile(0.99, "
            f"{sum_by(keys + ('le',), rate(sel(q.DNS_DURATION_BUCKET, *matchers), window))})")


def bpf_cpu_share(matchers: tuple[str, ...] = (), window: str = "5m",
                  keys: tuple[str, ...] = (INSTANCE,)) -> str:
    """Share of the node's CPUs podsnoop's BPF programs take, per exporter (keys: the
    labels that name one exporter): run seconds per second the kernel's statistics were
    on (sampled windows, --bpf-stats), over the node's CPUs. The window must hold a few
    sampled windows (120 s apart by default), so not $__rate_interval."""
    on = ", ".join(keys)
    return (f"sum {by(*keys)} ({rate(sel(q.BPF_PROGRAM_RUN_SECONDS, *matchers), window)})"
            f"\n/ on({on}) sum {by(*keys)} ({rate(sel(q.BPF_STATS_ON_SECONDS, *matchers), window)})"
            f"\n/ on({on}) max {by(*keys)} ({sel(q.NODE_CPUS, *matchers)})")


def bpf_map_fill_ratio(matchers: tuple[str, ...] = (), *, aggregate: bool = True) -> str:
    """Entries / max entries per map; maps reporting max 0 are left out (no division by 0).
    aggregate: max by (instance, map), for graphs; else every label kept, for alerts."""
    ratio = (f"{sel(q.BPF_MAP_ENTRIES, *matchers)}\n/\n"
             f"({sel(q.BPF_MAP_MAX_ENTRIES, *matchers)} > 0)")
    return f"max {by(INSTANCE, MAP)} ({ratio})" if aggregate else ratio


# --------------------------------------------------------------------------- listing

DASHBOARDS = {
    "podsnoop-network.json": network_dashboard,
    "podsnoop-syscalls.json": syscalls_dashboard,
    "podsnoop-exporter.json": exporter_dashboard,
}


def dashboards() -> dict[str, dict]:
    """File name -> dashboard dict, for every dashboard."""
    return {name: build() for name, build in DASHBOARDS.items()}


class PanelExpr(NamedTuple):
    dashboard: str   # dashboard uid
    panel: str       # panel title
    ref_id: str      # target refId
    expr: str        # PromQL, with Grafana variables still in it
    instant: bool    # an instant query (else a range query)


def _panels(dash: Mapping) -> list[dict]:
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return out


def panel_exprs(dash_by_name: Mapping[str, Mapping] | None = None) -> list[PanelExpr]:
    """Every PromQL expression of every panel of every dashboard (or of the given ones)."""
    dash_by_name = dashboards() if dash_by_name is None else dash_by_name
    return [PanelExpr(d["uid"], p["title"], t["refId"], t["expr"], bool(t.get("instant")))
            for d in dash_by_name.values() for p in _panels(d) for t in p.get("targets", [])
            if "expr" in t]


class VariableQuery(NamedTuple):
    dashboard: str
    name: str
    query: str       # label_values(selector, label)


def variable_queries(dash_by_name: Mapping[str, Mapping] | None = None) -> list[VariableQuery]:
    dash_by_name = dashboards() if dash_by_name is None else dash_by_name
    return [VariableQuery(d["uid"], v["name"], v["definition"])
            for d in dash_by_name.values() for v in d["templating"]["list"]
            if v["type"] == "query"]


_LABEL_VALUES = _re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$",
                            _re.S)


def label_values_promql(query: str) -> str:
    """label_values(sel, label) -> `group by (label) (sel)`, which Prometheus can run."""
    m = _LABEL_VALUES.match(query.strip())
    if not m or not m.group("selector"):
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return f"group by ({m.group('label')}) ({m.group('selector')})"


# Grafana's built-in variables, and what a test against a plain Prometheus may use instead.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
}
_VAR = _re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\[\[(\w+)(?::[\w-]+)?\]\]|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str] | None = None, default: str = ".*") -> str:
    """Replace Grafana variables in `expr`: `values` first, then BUILTINS
    ($__rate_interval -> 1m, $__range -> 1h, ...), then `default` for template variables
    ($namespace, ${pod}, [[container]] -> .*, which matches everything, the empty pod of
    unresolved traffic too)."""
    values = dict(values or {})

    def one(m: _re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in values:
            return values[name]
        if name in BUILTINS:
            return BUILTINS[name]
        if name.startswith("__"):
            raise ValueError(f"unknown Grafana built-in variable ${name} in {expr!r}")
        return default

    return _VAR.sub(one, expr)


def prometheus_queries(values: Mapping[str, str] | None = None) -> list[tuple[PanelExpr, str]]:
    """(panel expression, the same with variables substituted) for every panel."""
    return [(pe, substitute(pe.expr, values)) for pe in panel_exprs()]


# --------------------------------------------------------------------------- files

def render(dash: Mapping) -> str:
    return json.dumps(dash, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def outputs() -> dict[str, str]:
    """Absolute path -> file content for every generated dashboard."""
    return {os.path.join(HERE, name): render(d) for name, d in dashboards().items()}


def main(argv: list[str] | None = None) -> int:
    return write_or_check(outputs, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())

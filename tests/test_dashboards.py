"""The Grafana dashboards: committed JSON equals the generator's output, the JSON has the
shape Grafana's current schema expects, and every panel's PromQL runs on a real Prometheus
(Debian's /usr/bin/prometheus) over synthetic podsnoop series and returns data."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboards import generate as gen  # noqa: E402
from dashboards import promql as q  # noqa: E402
from exporter import names  # noqa: E402

DASHBOARDS = gen.dashboards()
DS_REF = {"type": "prometheus", "uid": "${datasource}"}


def _all_panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


# --------------------------------------------------------------------------- generated files

def test_committed_json_is_what_the_generator_makes():
    outputs = gen.outputs()
    assert len(outputs) == 3
    for path, text in outputs.items():
        assert Path(path).read_text(encoding="utf-8") == text, (
            f"{path} is stale: run `python -m dashboards.generate`")
    on_disk = {str(p) for p in (ROOT / "dashboards").glob("*.json")}
    assert on_disk == set(outputs), "dashboards/ holds JSON the generator does not make"


@pytest.mark.parametrize("argv", [["-m", "dashboards.generate", "--check"],
                                  ["dashboards/generate.py", "--check"]])
def test_generator_check_mode_passes_on_the_committed_files(argv):
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_generator_check_mode_fails_on_a_stale_file(tmp_path, monkeypatch):
    stale = tmp_path / "podsnoop-network.json"
    stale.write_text("{}\n")
    monkeypatch.setattr(gen, "HERE", str(tmp_path))
    assert gen.main(["--check"]) == 1
    assert stale.read_text() == "{}\n"  # --check writes nothing
    assert gen.main([]) == 0
    assert json.loads(stale.read_text())["uid"] == "podsnoop-network"


# --------------------------------------------------------------------------- schema

@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_shape(name):
    d = json.loads((ROOT / "dashboards" / name).read_text())
    assert d["schemaVersion"] >= 39
    assert d["uid"] and len(d["uid"]) <= 40 and re.fullmatch(r"[\w-]+", d["uid"])
    assert d["title"].startswith("podsnoop / ")
    assert d["id"] is None  # importable anywhere
    assert "podsnoop" in d["tags"]
    first = d["templating"]["list"][0]
    assert first["type"] == "datasource" and first["query"] == "prometheus"
    assert first["name"] == "datasource"
    ids = [p["id"] for p in _all_panels(d)]
    assert len(ids) == len(set(ids))
    for p in _all_panels(d):
        assert p["title"]
        if p["type"] == "row":
            continue
        assert p["description"], p["title"]
        assert p["datasource"] == DS_REF, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == DS_REF
            assert t["expr"].strip()


def test_uids_and_titles_are_unique():
    assert len({d["uid"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)
    assert len({d["title"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)


def test_no_hard_coded_datasource_anywhere():
    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "datasource" and isinstance(v, dict):
                    # the built-in annotation is Grafana's own, everything else is ours
                    assert v == DS_REF or v == {"type": "grafana", "uid": "-- Grafana --"}, path
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
    for name, d in DASHBOARDS.items():
        walk(d, name)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_tile_the_grid_without_overlap(name):
    taken: set[tuple[int, int]] = set()
    for p in _all_panels(DASHBOARDS[name]):
        g = p["gridPos"]
        assert g["w"] >= 1 and g["h"] >= 1 and 0 <= g["x"] and g["x"] + g["w"] <= 24
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                 for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


# --------------------------------------------------------------------------- variables

def _variables(d):
    return {v["name"]: v for v in d["templating"]["list"]}


@pytest.mark.parametrize("uid,wanted", [
    ("podsnoop-network", ["namespace", "pod"]),
    ("podsnoop-syscalls", ["namespace", "pod", "container", "syscall"]),
    ("podsnoop-exporter", ["job", "instance"]),
])
def test_template_variables(uid, wanted):
    d = next(d for d in DASHBOARDS.values() if d["uid"] == uid)
    variables = _variables(d)
    assert list(variables) == ["datasource", *wanted]
    for name in wanted:
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == DS_REF
        assert v["query"]["query"] == v["definition"]
        m = re.fullmatch(r"label_values\((\w+)(\{.*\})?, (\w+)\)", v["definition"])
        assert m, v["definition"]
        assert m.group(1) in q.EXPORTED
        assert m.group(3) == name
        assert v["includeAll"] and v["multi"]
    # every $variable an expression uses is defined here (or is a Grafana built-in)
    used = {m.group(1) or m.group(2) or m.group(3)
            for pe in gen.panel_exprs({uid: d}) for m in gen._VAR.finditer(pe.expr)}
    used |= {m.group(1) or m.group(2) or m.group(3)
             for v in variables.values() if v["type"] == "query"
             for m in gen._VAR.finditer(v["definition"])}
    assert used - set(gen.BUILTINS) <= set(variables) - {"datasource"}, used


def test_namespace_and_pod_all_value_matches_unresolved_traffic():
    # "All" must keep the empty namespace/pod of traffic not tied to a pod (totals add up);
    # job/instance "All" must not widen to every target Prometheus scrapes.
    for d in DASHBOARDS.values():
        for v in d["templating"]["list"]:
            if v["name"] in ("namespace", "pod", "container", "syscall"):
                assert v["allValue"] == ".*"
            if v["name"] in ("job", "instance"):
                assert v["allValue"] is None


# --------------------------------------------------------------------------- expressions

def test_panel_exprs_lists_every_target():
    listed = gen.panel_exprs()
    targets = [t for d in DASHBOARDS.values() for p in _all_panels(d) for t in p.get("targets", [])]
    assert len(listed) == len(targets) > 30
    assert {pe.dashboard for pe in listed} == {d["uid"] for d in DASHBOARDS.values()}
    assert all(isinstance(pe.instant, bool) for pe in listed)


def test_expressions_reference_only_exported_metrics():
    for pe in gen.panel_exprs():
        metrics = set(re.findall(r"\bpodsnoop_\w+", pe.expr))
        assert metrics or re.search(r"\bup\{", pe.expr), pe
        assert metrics <= q.EXPORTED, (pe.panel, metrics - q.EXPORTED)


_RANGE_FN = re.compile(r"\b(?:rate|increase)\((?:\w+)?(?:\{[^}]*\})?\[[^\]]+\]\)")
_COUNTERS = {m for m in q.EXPORTED if m.endswith(("_total", "_bucket", "_sum", "_count"))}


def test_counters_are_only_used_through_rate_or_increase():
    for pe in gen.panel_exprs():
        rest = _RANGE_FN.sub("", pe.expr)
        assert not set(re.findall(r"\bpodsnoop_\w+", rest)) & _COUNTERS, (pe.panel, pe.expr)


def test_each_dashboard_covers_what_it_is_for():
    by_uid: dict[str, set[str]] = {}
    text: dict[str, str] = {}
    for pe in gen.panel_exprs():
        by_uid.setdefault(pe.dashboard, set()).update(re.findall(r"\bpodsnoop_\w+|\bup\b",
                                                                 pe.expr))
        text[pe.dashboard] = text.get(pe.dashboard, "") + "\n" + pe.expr
    assert {q.NET_RX_BYTES, q.NET_TX_BYTES, q.NET_RX_PACKETS, q.NET_TX_PACKETS,
            q.NET_DROPS} <= by_uid["podsnoop-network"]
    assert "sum by (protocol)" in text["podsnoop-network"]
    assert "topk(10" in text["podsnoop-network"]
    assert {q.SYSCALLS, q.SYSCALL_ERRORS, q.SYSCALL_DURATION_BUCKET} <= by_uid["podsnoop-syscalls"]
    assert "histogram_quantile(0.99" in text["podsnoop-syscalls"]
    assert {q.UP, q.ATTACHED_INTERFACES, q.BPF_MAP_ENTRIES, q.BPF_MAP_MAX_ENTRIES,
            q.UNRESOLVED_CGROUPS, q.SCRAPE_COLLECTOR_DURATION, q.SCRAPE_COLLECTOR_SUCCESS,
            q.KUBE_WATCH_RESTARTS, q.SERIES_CAP_DROPPED} <= by_uid["podsnoop-exporter"]
    heatmaps = [p for d in DASHBOARDS.values() for p in _all_panels(d) if p["type"] == "heatmap"]
    assert heatmaps and all(t["format"] == "heatmap" for p in heatmaps for t in p["targets"])
    assert all(p["options"]["calculate"] is False for p in heatmaps)  # buckets come ready-made


def test_exported_names_follow_names_py():
    assert q.NET_RX_BYTES == names.NET_RECEIVE_BYTES + "_total"
    assert q.SYSCALL_DURATION_BUCKET == names.SYSCALL_DURATION + "_bucket"
    for label in (q.NAMESPACE, q.POD):
        assert label in names.POD_LABELS
    assert q.CONTAINER in names.CONTAINER_LABELS and q.SYSCALL in names.SYSCALL_LABELS
    assert q.PROTOCOL in names.NET_LABELS


def test_substitute():
    s = gen.substitute
    assert s('x{namespace=~"$namespace", pod=~"${pod}", c=~"[[container]]"}') == \
        'x{namespace=~".*", pod=~".*", c=~".*"}'
    assert s("rate(x[$__rate_interval])") == "rate(x[1m])"
    assert s("rate(x[$__range])") == "rate(x[1h])"
    assert s("rate(x[$__interval])", {"__interval": "30s"}) == "rate(x[30s])"
    assert s('x{pod=~"$pod"}', {"pod": "web-1"}) == 'x{pod=~"web-1"}'
    assert s('x{pod=~"${pod:regex}"}') == 'x{pod=~".*"}'
    assert s('x{pod=~"$pod"}', default="none") == 'x{pod=~"none"}'
    with pytest.raises(ValueError):
        s("rate(x[$__no_such_builtin])")
    for _, expr in gen.prometheus_queries():
        assert "$" not in expr and "[[" not in expr, expr


def test_label_values_promql():
    assert gen.label_values_promql('label_values(m{a=~"$a"}, pod)') == \
        'group by (pod) (m{a=~"$a"})'
    with pytest.raises(ValueError):
        gen.label_values_promql("label_values(pod)")
    with pytest.raises(ValueError):
        gen.label_values_promql("query_result(up)")


# --------------------------------------------------------------------------- real Prometheus

STEP = 15          # seconds between synthetic samples
SPAN = 75 * 60     # seconds of history (covers the 1h of $__range)
_BUCKETS_NS_LOG2 = (10, 20, 25, 30, 31)  # le = 2^k ns, in seconds


def _labels(d: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in d.items()) + "}"


def _openmetrics(end: int) -> str:
    """Synthetic series for every metric podsnoop exports, as OpenMetrics with timestamps."""
    times = list(range(end - SPAN, end + 1, STEP))
    target = {q.JOB: q.JOB_NAME, q.INSTANCE: "node-a:9435"}
    pods = [("shop", "web-1"), ("shop", "db-0"), ("", "")]  # "" = traffic of no known pod
    lines: list[str] = []

    def family(name: str, kind: str, series: list[tuple[str, dict, object]]):
        lines.append(f"# TYPE {name} {kind}")
        for sample_name, labels, value in series:
            for i, t in enumerate(times):
                v = value(i) if callable(value) else value
                lines.append(f"{sample_name}{_labels({**target, **labels})} {v} {t}")

    def counter(base: str, series: list[tuple[dict, float]]):
        family(base, "counter", [(base + "_total", lb, (lambda i, r=r: r * STEP * i))
                                 for lb, r in series])

    def pod(ns, p, **extra):
        return {q.NAMESPACE: ns, q.POD: p, q.POD_UID: f"uid-{p or 'none'}", **extra}

    for base, scale in ((names.NET_RECEIVE_BYTES, 1000), (names.NET_TRANSMIT_BYTES, 700),
                        (names.NET_RECEIVE_PACKETS, 10), (names.NET_TRANSMIT_PACKETS, 7)):
        counter(base, [(pod(ns, p, **{q.INTERFACE: "eth0", q.PROTOCOL: proto}), scale * k)
                       for k, (ns, p) in enumerate(pods, 1) for proto in ("tcp", "udp")]
                + ([(pod("shop", "rx-only", **{q.INTERFACE: "eth0", q.PROTOCOL: "udp"}), scale)]
                   if "receive" in base else []))
    counter(names.NET_DROPS, [(pod(ns, p, **{q.DIRECTION: d, q.REASON: "NO_SOCKET"}), 0.5)
                              for ns, p in pods for d in (q.RECEIVE, q.TRANSMIT)])
    containers = [("shop", "web-1", "nginx"), ("shop", "db-0", "postgres")]

    def ctr(ns, p, c, **extra):
        return pod(ns, p, **{q.CONTAINER: c, q.CONTAINER_ID: f"cid-{c}", **extra})

    counter(names.SYSCALLS, [(ctr(*c, **{q.SYSCALL: s}), 50) for c in containers
                             for s in ("read", "openat")])
    counter(names.SYSCALL_ERRORS, [(ctr(*c, **{q.SYSCALL: "openat"}), 5) for c in containers])
    hist = []
    for c in containers:
        cumulative = 0
        for k in _BUCKETS_NS_LOG2:
            cumulative += 20
            le = repr(2 ** k / 1e9)
            hist.append((names.SYSCALL_DURATION + "_bucket", ctr(*c, le=le),
                         (lambda i, n=cumulative: n * STEP * i)))
        hist.append((names.SYSCALL_DURATION + "_bucket", ctr(*c, le="+Inf"),
                     (lambda i, n=cumulative: n * STEP * i)))
        hist.append((names.SYSCALL_DURATION + "_count", ctr(*c),
                     (lambda i, n=cumulative: n * STEP * i)))
        hist.append((names.SYSCALL_DURATION + "_sum", ctr(*c), (lambda i: 0.3 * STEP * i)))
    family(names.SYSCALL_DURATION, "histogram", hist)

    # Execs, TCP, per-container network.
    counter(names.EXECS, [(ctr(*c, **{q.COMM: comm}), 2) for c in containers
                          for comm in ("sh", "curl")])
    tcp_hist = []
    for ns, p in pods[:2]:
        cumulative = 0
        for le in ("0.001", "0.01", "0.1", "1.0"):
            cumulative += 5
            tcp_hist.append((names.TCP_CONNECT_DURATION + "_bucket", pod(ns, p, le=le),
                             (lambda i, n=cumulative: n * STEP * i)))
        for suffix in ("_bucket", "_count"):
            extra = {"le": "+Inf"} if suffix == "_bucket" else {}
            tcp_hist.append((names.TCP_CONNECT_DURATION + suffix, pod(ns, p, **extra),
                             (lambda i, n=cumulative: n * STEP * i)))
        tcp_hist.append((names.TCP_CONNECT_DURATION + "_sum", pod(ns, p),
                         (lambda i: 0.5 * STEP * i)))
    family(names.TCP_CONNECT_DURATION, "histogram", tcp_hist)
    counter(names.TCP_CONNECT_FAILURES, [(pod(ns, p), 1) for ns, p in pods[:2]])
    counter(names.TCP_RETRANSMITS, [(pod(ns, p), 3) for ns, p in pods[:2]])
    for base, scale in ((names.CONTAINER_NET_RECEIVE_BYTES, 900),
                        (names.CONTAINER_NET_TRANSMIT_BYTES, 600),
                        (names.CONTAINER_NET_RECEIVE_PACKETS, 9),
                        (names.CONTAINER_NET_TRANSMIT_PACKETS, 6)):
        counter(base, [(ctr(*c), scale) for c in containers])
    counter(names.DNS_REQUESTS, [(ctr(*c, **{q.QTYPE: "A", q.RCODE: rcode}), r)
                                 for c in containers for rcode, r in (
                                     ("NOERROR", 5), ("NXDOMAIN", 2), ("SERVFAIL", 0.5),
                                     ("timeout", 0.1))])
    dns_hist = []
    for c in containers:
        cumulative = 0
        for le in ("0.001", "0.01", "0.1", "1.0"):
            cumulative += 2
            dns_hist.append((names.DNS_REQUEST_DURATION + "_bucket", ctr(*c, le=le),
                             (lambda i, n=cumulative: n * STEP * i)))
        for suffix in ("_bucket", "_count"):
            extra = {"le": "+Inf"} if suffix == "_bucket" else {}
            dns_hist.append((names.DNS_REQUEST_DURATION + suffix, ctr(*c, **extra),
                             (lambda i, n=cumulative: n * STEP * i)))
        dns_hist.append((names.DNS_REQUEST_DURATION + "_sum", ctr(*c),
                         (lambda i: 0.05 * STEP * i)))
    family(names.DNS_REQUEST_DURATION, "histogram", dns_hist)

    # web-1 talks to db-0's workload, to a Service and to the world; db-0 answers web
    def peer(ns="", workload="", service="", network=""):
        return dict(zip(q.PEER_KEYS, (ns, workload, service, network)))
    talks = [(("shop", "web-1"), peer("shop", "db"), 800), (("shop", "web-1"),
              peer("shop", service="db"), 300), (("shop", "web-1"), peer(network="world"), 50),
             (("shop", "db-0"), peer("shop", "web"), 700)]
    for base, scale in ((names.PEER_BYTES, 1), (names.PEER_PACKETS, 0.01)):
        counter(base, [(pod(*who, **{q.DIRECTION: d}, **whom), r * scale)
                       for who, whom, r in talks for d in (q.RECEIVE, q.TRANSMIT)])
    counter(names.PEER_TCP_CONNECTS, [(pod(*who, **whom), 2) for who, whom, _ in talks[:2]])
    counter(names.PEER_TCP_CONNECT_FAILURES, [(pod(*talks[1][0], **talks[1][1]), 0.5)])
    family(q.POD_INFO, "gauge", [(q.POD_INFO, pod(ns, p, node="node-a", **{
        q.WORKLOAD_KIND: "Deployment", q.WORKLOAD: p.rsplit("-", 1)[0]}), 1)
                                 for ns, p in pods[:2]])
    family(q.ATTACHED_INTERFACES, "gauge", [(q.ATTACHED_INTERFACES, {}, 2)])
    maps = ("net_stats", "syscall_stats")
    family(q.BPF_MAP_ENTRIES, "gauge", [(q.BPF_MAP_ENTRIES, {q.MAP: m}, 100) for m in maps])
    family(q.BPF_MAP_MAX_ENTRIES, "gauge", [(q.BPF_MAP_MAX_ENTRIES, {q.MAP: m}, 16384)
                                            for m in maps])
    counter(names.BPF_MAP_UPDATE_FAILURES, [({q.MAP: m}, 0.1) for m in maps])
    counter(names.KUBE_WATCH_RESTARTS, [({}, 0.001)])
    family(q.UNRESOLVED_CGROUPS, "gauge", [(q.UNRESOLVED_CGROUPS, {}, 3)])
    collectors = ("network", "syscalls")
    counter(names.SERIES_CAP_DROPPED, [({q.COLLECTOR: c}, 0.2) for c in collectors])
    family(q.SCRAPE_COLLECTOR_DURATION, "gauge",
           [(q.SCRAPE_COLLECTOR_DURATION, {q.COLLECTOR: c}, 0.004) for c in collectors])
    family(q.SCRAPE_COLLECTOR_SUCCESS, "gauge",
           [(q.SCRAPE_COLLECTOR_SUCCESS, {q.COLLECTOR: c}, 1) for c in collectors])
    family(q.BUILD_INFO, "gauge", [(q.BUILD_INFO, {q.VERSION: "0.1.0"}, 1)])
    counter(names.BPF_PROGRAM_RUN_SECONDS, [({q.PROGRAM: p}, 0.01)
                                            for p in ("net/ingress", "syscalls/enter")])
    counter(names.BPF_PROGRAM_RUNS, [({q.PROGRAM: p}, 1e5)
                                     for p in ("net/ingress", "syscalls/enter")])
    family(q.BPF_STATS_ENABLED, "gauge", [(q.BPF_STATS_ENABLED, {}, 1)])
    counter(names.BPF_STATS_ON_SECONDS, [({}, 0.2 / 120)])  # the default sampled windows
    family(q.NODE_CPUS, "gauge", [(q.NODE_CPUS, {}, 8)])
    family(q.UP, "gauge", [(q.UP, {}, 1)])
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} is not installed: apt-get install prometheus (./dev setup does)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prom:
    def __init__(self, url: str, end: int):
        self.url, self.end = url, end

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400 on a bad query: return Prometheus' error
            return json.loads(e.read())

    def instant(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr, time=self.end)

    def range(self, expr: str) -> dict:
        return self.get("/api/v1/query_range", query=expr, start=self.end - 1800,
                        end=self.end, step=60)


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    prometheus, promtool = _need("prometheus"), _need("promtool")
    work = tmp_path_factory.mktemp("prom")
    end = int(time.time()) // 60 * 60 - 60
    (work / "data.om").write_text(_openmetrics(end))
    data = work / "tsdb"
    r = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics",
                        str(work / "data.om"), str(data)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (work / "prometheus.yml").write_text("global:\n  evaluation_interval: 1m\n")
    port = _free_port()
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen([prometheus, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={data}",
                             "--storage.tsdb.retention.time=7d",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("prometheus did not start:\n"
                            + (work / "prometheus.log").read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        yield Prom(url, end)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_prometheus_holds_the_synthetic_series(prom):
    r = prom.instant("count({__name__=~\"podsnoop_.*\"})")
    assert r["status"] == "success" and r["data"]["result"], r
    # the check below is only worth something if a missing metric gives no data
    r = prom.instant("rate(podsnoop_no_such_metric_total[1m])")
    assert r["status"] == "success" and r["data"]["result"] == []
    r = prom.instant("rate(podsnoop_network_receive_bytes_total[1m]")  # unbalanced
    assert r["status"] == "error"


@pytest.mark.parametrize("pe", gen.panel_exprs(),
                         ids=lambda pe: f"{pe.dashboard}:{pe.panel}:{pe.ref_id}")
def test_every_panel_query_runs_on_prometheus_and_returns_data(prom, pe):
    expr = gen.substitute(pe.expr)
    r = prom.instant(expr) if pe.instant else prom.range(expr)
    assert r["status"] == "success", (expr, r)
    result = r["data"]["result"]
    assert result, f"no data for {expr}"
    values = [float(v) for s in result for v in
              ([s["value"][1]] if "value" in s else [x[1] for x in s["values"]])]
    assert any(v == v for v in values), f"only NaN for {expr}"  # v == v: not NaN


@pytest.mark.parametrize("vq", gen.variable_queries(), ids=lambda v: f"{v.dashboard}:{v.name}")
def test_every_variable_query_finds_values(prom, vq):
    expr = gen.substitute(gen.label_values_promql(vq.query))
    r = prom.instant(expr)
    assert r["status"] == "success", (expr, r)
    found = {s["metric"].get(vq.name, "") for s in r["data"]["result"]}
    assert found - {""}, f"no values of {vq.name} from {expr}"


def test_quantiles_come_out_of_the_power_of_two_buckets(prom):
    # 20 calls/s in each of 5 buckets: p50 falls in the third, (2^20, 2^25] ns
    expr = gen.substitute(next(pe.expr for pe in gen.panel_exprs()
                               if pe.panel == "Latency quantiles (selected containers)"
                               and pe.ref_id == "A"))
    r = prom.instant(expr)
    (sample,) = r["data"]["result"]
    p50 = float(sample["value"][1])
    assert 2 ** 20 / 1e9 < p50 <= 2 ** 25 / 1e9, p50


def test_drop_ratio_counts_drops_against_passed_plus_dropped(prom):
    # web-1: 0.5 drops/s receive, 10 packets/s per protocol x 2 protocols -> 0.5 / 20.5
    expr = gen.substitute(gen.drop_ratio(q.RECEIVE, (q.eq(q.POD, "web-1"),), "$__rate_interval"))
    (sample,) = prom.instant(expr)["data"]["result"]
    assert float(sample["value"][1]) == pytest.approx(0.5 / 20.5, rel=1e-6)


def test_top_talkers_add_both_directions_and_keep_one_way_pods(prom):
    expr = gen.substitute(next(pe.expr for pe in gen.panel_exprs()
                               if pe.panel == "Top 10 pods by bandwidth (receive + transmit)"))
    got = {s["metric"].get(q.POD, ""): float(s["value"][1])
           for s in prom.instant(expr)["data"]["result"]}
    # web-1: receive 2 x 1000 B/s + transmit 2 x 700 B/s; rx-only: 1000 B/s received only
    assert got["web-1"] == pytest.approx(3400, rel=1e-6)
    assert got["rx-only"] == pytest.approx(1000, rel=1e-6)
    assert got[""] == pytest.approx(3 * 3400, rel=1e-6)  # traffic of no known pod is kept


def test_workload_panels_sum_pods_joined_through_pod_info(prom):
    """Workload panels: a pod's rate lands on its pod_info's workload; pods without
    pod_info (rx-only, the no-pod traffic) are not in any workload."""
    def instant(panel: str, keys: tuple[str, ...]) -> dict:
        expr = gen.substitute(next(pe.expr for pe in gen.panel_exprs() if pe.panel == panel))
        return {tuple(s["metric"].get(k, "") for k in keys): float(s["value"][1])
                for s in prom.instant(expr)["data"]["result"]}

    per_pod = instant("Receive bandwidth by pod", (q.POD,))
    per_workload = instant("Receive bandwidth by workload", q.WORKLOAD_KEYS)
    assert per_workload == pytest.approx({("shop", "Deployment", "web"): per_pod[("web-1",)],
                                          ("shop", "Deployment", "db"): per_pod[("db-0",)]})
    calls = instant("Syscalls by workload", q.WORKLOAD_KEYS)
    assert set(calls) == {("shop", "Deployment", "web"), ("shop", "Deployment", "db")}


def test_service_map_names_each_workloads_peers_with_rates(prom):
    """The service map's four queries, row by row: (workload, peer) -> receive, transmit,
    connects and failed connects per second, as the synthetic series have them."""
    pes = [pe for pe in gen.panel_exprs() if pe.panel == "Service map: who talks to whom"]
    assert [pe.ref_id for pe in pes] == ["A", "B", "C", "D"] and all(pe.instant for pe in pes)
    keys = (q.WORKLOAD,) + q.PEER_KEYS
    got = [{tuple(s["metric"].get(k, "") for k in keys): float(s["value"][1])
            for s in prom.instant(gen.substitute(pe.expr))["data"]["result"]} for pe in pes]
    db, db_service = ("web", "shop", "db", "", ""), ("web", "shop", "", "db", "")
    world, web = ("web", "", "", "", "world"), ("db", "shop", "web", "", "")
    rates = {db: 800, db_service: 300, world: 50, web: 700}
    assert got[0] == pytest.approx(rates) and got[1] == pytest.approx(rates)
    assert got[2] == pytest.approx({db: 2, db_service: 2})
    assert got[3] == pytest.approx({db_service: 0.5})
    ratio = next(pe for pe in gen.panel_exprs()
                 if pe.panel == "TCP connect failure ratio by pod and peer")
    (sample,) = [s for s in prom.instant(gen.substitute(ratio.expr))["data"]["result"]
                 if s["metric"].get(q.PEER_SERVICE) == "db"]
    assert float(sample["value"][1]) == pytest.approx(0.5 / 2.5)

"""The alert rules: committed files equal the generator's output, `promtool check rules` and
`promtool test rules` pass, and the unit tests are sharp: breaking any alert (never firing,
firing at once, or a loosened threshold or filter) makes them fail."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerts import generate as gen  # noqa: E402
from dashboards import promql as q  # noqa: E402

RULES = ROOT / "deploy" / "prometheus-rules.yaml"
CR = ROOT / "deploy" / "prometheusrule.yaml"
UNIT = ROOT / "alerts" / "tests" / "rules.test.yaml"
ALERTS = gen.alert_names()


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is not installed: apt-get install prometheus (./dev setup does)")
    return path


def run_promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


# --------------------------------------------------------------------------- generated files

def test_committed_files_are_what_the_generator_makes():
    outputs = gen.outputs()
    assert set(outputs) == {str(RULES), str(CR), str(UNIT)}
    for path, text in outputs.items():
        assert Path(path).read_text(encoding="utf-8") == text, (
            f"{path} is stale: run `python -m alerts.generate`")


def test_generator_check_mode():
    r = subprocess.run([sys.executable, "-m", "alerts.generate", "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_prometheusrule_wraps_the_same_groups():
    plain = yaml.safe_load(RULES.read_text())
    cr = yaml.safe_load(CR.read_text())
    assert cr["apiVersion"] == "monitoring.coreos.com/v1" and cr["kind"] == "PrometheusRule"
    assert cr["spec"]["groups"] == plain["groups"]


# --------------------------------------------------------------------------- the rules

def _rules():
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_every_required_alert_exists():
    names = {r["alert"] for r in _rules()}
    assert {"PodsnoopPodReceiveDropsHigh", "PodsnoopPodTransmitDropsHigh",
            "PodsnoopSyscallErrorRatioHigh", "PodsnoopSyscallLatencyHigh",
            "PodsnoopExporterDown", "PodsnoopCollectorFailing", "PodsnoopBPFMapNearCapacity",
            "PodsnoopSeriesCapHit", "PodsnoopKubeWatchRestarting"} <= names


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_rule_has_for_severity_and_annotations(rule):
    assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
    assert rule["for"] and rule["for"] != "0m"
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    ann = rule["annotations"]
    assert set(ann) == {"summary", "description"}
    if rule["alert"] == "PodsnoopTargetMissing":  # absent(): no target, so no labels to name
        return
    for text in ann.values():
        # pod alerts name the pod, exporter alerts the exporter's pod (ServiceMonitor labels)
        assert "{{ $labels.namespace }}/{{ $labels.pod }}" in text, text
    if rule["alert"] in ("PodsnoopSyscallErrorRatioHigh", "PodsnoopSyscallLatencyHigh"):
        assert "{{ $labels.container }}" in ann["summary"]


def test_exporter_down_watches_the_podsnoop_job_only():
    (rule,) = [r for r in _rules() if r["alert"] == "PodsnoopExporterDown"]
    assert rule["expr"] == f'{q.UP}{{{q.JOB}="{q.JOB_NAME}"}} == 0'
    # the job label comes from the Service's name (ServiceMonitor default jobLabel)
    service = yaml.safe_load((ROOT / "deploy" / "service.yaml").read_text())
    assert service["metadata"]["name"] == q.JOB_NAME


def test_promtool_check_rules():
    r = run_promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in r.stdout


def test_promtool_unit_tests_pass():
    r = run_promtool("test", "rules", str(UNIT))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_unit_tests_show_each_alert_firing_and_not_firing():
    tests = yaml.safe_load(UNIT.read_text())["tests"]
    fires, quiet = set(), set()
    for t in tests:
        for check in t["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == set(ALERTS), f"never shown firing: {set(ALERTS) - fires}"
    assert quiet == set(ALERTS), f"never shown quiet: {set(ALERTS) - quiet}"


# --------------------------------------------------------------------------- mutants

def _run_with(tmp_path: Path, mutate, alert: str) -> subprocess.CompletedProcess:
    """Run the committed unit tests of `alert` against a mutated copy of the rule file."""
    doc = yaml.safe_load(RULES.read_text())
    for g in doc["groups"]:
        for rule in g["rules"]:
            mutate(rule)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    unit = yaml.safe_load(UNIT.read_text())
    unit["rule_files"] = ["rules.yaml"]
    unit["tests"] = [t for t in unit["tests"]
                     if any(c["alertname"] == alert for c in t["alert_rule_test"])]
    assert unit["tests"]
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(unit, sort_keys=False))
    r = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert r.returncode == 0, "the mutant itself must be a valid rule file: " + r.stdout + r.stderr
    return run_promtool("test", "rules", "test.yaml", cwd=tmp_path)


def _only(name: str, change):
    def mutate(rule):
        if rule["alert"] == name:
            change(rule)
    return mutate


@pytest.mark.parametrize("name", ALERTS)
def test_mutation_harness_passes_the_unchanged_rules(tmp_path, name):
    # control: the failures below come from the mutations, not from the harness
    r = _run_with(tmp_path, lambda rule: None, name)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", ALERTS)
def test_unit_tests_catch_an_alert_that_never_fires(tmp_path, name):
    r = _run_with(tmp_path, _only(name, lambda rule: rule.update(expr="vector(1) > 2")), name)
    assert r.returncode != 0 and name in r.stdout + r.stderr, r.stdout


@pytest.mark.parametrize("name", ALERTS)
def test_unit_tests_catch_an_alert_that_skips_its_for_duration(tmp_path, name):
    r = _run_with(tmp_path, _only(name, lambda rule: rule.update({"for": "0m"})), name)
    assert r.returncode != 0 and name in r.stdout + r.stderr, r.stdout


# Loosened thresholds and dropped filters: each makes a subject that the unit tests keep quiet
# fire, so each quiet subject is shown to matter. (alert, text in expr, replacement)
LOOSENED = [
    ("PodsnoopPodReceiveDropsHigh", f") > {gen.DROP_RATIO_THRESHOLD}\n", ") > 0.0001\n"),
    ("PodsnoopPodReceiveDropsHigh", f"> {gen.MIN_DROPS_PER_SECOND}", "> 0.01"),
    ("PodsnoopPodReceiveDropsHigh", f'{q.DIRECTION}="{q.RECEIVE}"',
     f'{q.DIRECTION}=~"{q.RECEIVE}|{q.TRANSMIT}"'),
    ("PodsnoopPodTransmitDropsHigh", f'{{{q.DIRECTION}="{q.TRANSMIT}"}}', ""),
    ("PodsnoopSyscallErrorRatioHigh", f") > {gen.SYSCALL_ERROR_RATIO_THRESHOLD}\n", ") > 0.05\n"),
    ("PodsnoopSyscallErrorRatioHigh", f"> {gen.MIN_SYSCALLS_PER_SECOND}", "> 0.1"),
    ("PodsnoopSyscallLatencyHigh", "\n> 1", "\n> 0.0001"),
    ("PodsnoopDnsFailuresHigh", f") > {gen.DNS_FAILURE_RATIO_THRESHOLD}\n", ") > 0.01\n"),
    ("PodsnoopDnsFailuresHigh", f"> {gen.MIN_DNS_REQUESTS_PER_SECOND}", "> 0.01"),
    ("PodsnoopDnsFailuresHigh", "|".join(q.DNS_FAILURE_RCODES),
     "|".join(q.DNS_FAILURE_RCODES + ("NXDOMAIN",))),
    ("PodsnoopDnsLatencyHigh", "\n> 0.5", "\n> 0.001"),
    ("PodsnoopExporterDown", f'{{{q.JOB}="{q.JOB_NAME}"}}', ""),
    ("PodsnoopTargetMissing", f'"{q.JOB_NAME}"', '"not-podsnoop"'),
    ("PodsnoopCollectorFailing", "== 0", "<= 1"),
    ("PodsnoopBPFMapNearCapacity", f"> {gen.BPF_MAP_FILL_THRESHOLD}", "> 0.4"),
    ("PodsnoopBPFMapNearCapacity", f"({q.BPF_MAP_MAX_ENTRIES} > 0)", q.BPF_MAP_MAX_ENTRIES),
    ("PodsnoopBPFMapUpdateFailures", "> 0", ">= 0"),
    ("PodsnoopSeriesCapHit", "> 0", ">= 0"),
    ("PodsnoopKubeWatchRestarting", f"> {gen.WATCH_RESTARTS_MAX}", "> 0.5"),
]


@pytest.mark.parametrize("name,old,new", LOOSENED, ids=[f"{a}:{o.strip()}" for a, o, _ in LOOSENED])
def test_unit_tests_catch_a_loosened_alert(tmp_path, name, old, new):
    def change(rule):
        assert old in rule["expr"], (old, rule["expr"])
        rule["expr"] = rule["expr"].replace(old, new)
    r = _run_with(tmp_path, _only(name, change), name)
    assert r.returncode != 0 and name in r.stdout + r.stderr, r.stdout


def test_alerts_named_by_the_dashboards_exist():
    from dashboards import generate as dash
    text = json.dumps(dash.dashboards())
    mentioned = set(re.findall(r"\bPodsnoop[A-Z]\w+", text))
    assert mentioned, "the dashboards point at no alert"
    assert mentioned <= set(ALERTS), mentioned - set(ALERTS)

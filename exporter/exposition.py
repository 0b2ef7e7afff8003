"""Prometheus text format (0.0.4), rendered for speed.

prometheus-client's generate_latest validates and escapes every label name and value of
every sample on every scrape; at a few thousand samples that was half of a scrape's time.
Here a sample's label set is rendered to text once and cached: pods and containers change
rarely, so almost every scrape hits the cache. The cache holds the label sets of the last
render only, so those of deleted pods' series leave it: pod churn cannot grow it.
"""
from __future__ import annotations

import math

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_label_text: dict[tuple, str] = {}   # label set -> text, as of the last render
_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram",
          "summary": "summary", "info": "gauge", "stateset": "gauge", "unknown": "untyped",
          "gaugehistogram": "histogram"}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict, previous: dict, current: dict) -> str:
    key = tuple(labels.items())
    text = previous.get(key)
    if text is None:
        text = ("{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in key) + "}"
                if key else "")
    current[key] = text
    return text


def _value(v) -> str:
    if type(v) is int:
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


def render(registry) -> bytes:
    """One render at a time (server.MetricsHandler shares the one in flight)."""
    global _label_text
    previous, current = _label_text, {}
    out: list[str] = []
    append = out.append
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        append(f"# HELP {name} {doc}\n# TYPE {name} {_TYPES.get(family.type, 'untyped')}\n")
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            append(f"{s.name}{_labels(s.labels, previous, current)} {_value(s.value)}\n")
    _label_text = current
    return "".join(out).encode()

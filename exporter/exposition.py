"""Prometheus text format (0.0.4) and OpenMetrics 1.0 text, rendered for speed.

prometheus-client's generate_latest validates and escapes every label name and value of
every sample on every scrape; at a few thousand samples that was half of a scrape's time.
Here a sample's label set is rendered to text once and cached: pods and containers change
rarely, so almost every scrape hits the cache. The cache holds the label sets of the last
render only, so those of deleted pods' series leave it: pod churn cannot grow it.

Collectors with thousands of series (per-pod network counters) build a RowFamily instead
of a prometheus-client family: rows of (label values, value), no per-sample dict; its
series are cached by (sample name, label values), the whole `name{labels} ` prefix.
"""
from __future__ import annotations

import math

from prometheus_client.samples import Sample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

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


class RowFamily:
    """A counter or gauge family whose series all have the same label names."""

    def __init__(self, name: str, documentation: str, labels, kind: str = "counter"):
        self.name, self.documentation, self.type = name, documentation, kind
        self.labelnames = tuple(labels)
        self.sample_name = name + "_total" if kind == "counter" else name
        self.rows: list[tuple[tuple, float]] = []

    def add(self, values: tuple, value) -> None:
        self.rows.append((values, value))

    @property
    def samples(self) -> list[Sample]:
        """The rows as prometheus-client samples (for its encoders and tests)."""
        return [Sample(self.sample_name, dict(zip(self.labelnames, values)), value)
                for values, value in self.rows]


def _row_prefix(family: RowFamily, values: tuple, previous: dict, current: dict) -> str:
    key = (family.sample_name, values)
    text = previous.get(key)
    if text is None:
        text = family.sample_name + ("{" + ",".join(
            f'{k}="{_escape(str(v))}"' for k, v in zip(family.labelnames, values)) + "} "
            if values else " ")
    current[key] = text
    return text


_OM_TYPES = {"counter", "gauge", "histogram", "gaugehistogram", "summary", "info",
             "stateset", "unknown"}
# OpenMetrics: a family with a unit has it as its name's suffix. Families that declare
# none but are named in a base unit get it here, so Prometheus stores the unit too.
_UNIT_SUFFIXES = ("seconds", "bytes")


def _om_header(family) -> str:
    """# HELP / # TYPE / # UNIT of an OpenMetrics family: the family name (a counter's
    without `_total`, an info's without `_info`), as prometheus-client's encoder writes."""
    name = family.name
    kind = family.type if family.type in _OM_TYPES else "unknown"
    doc = (family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
           .replace('"', '\\"'))
    unit = getattr(family, "unit", "")
    if not unit:
        unit = next((u for u in _UNIT_SUFFIXES if name.endswith("_" + u)), "")
    head = f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"
    return head + f"# UNIT {name} {unit}\n" if unit else head


def render(registry, openmetrics: bool = False) -> bytes:
    """The 0.0.4 text format, or OpenMetrics 1.0 text (same sample lines; other family
    headers and `# EOF`). One render per format at a time (server.MetricsHandler shares the
    one in flight); two formats rendering at once only share the label cache."""
    global _label_text
    previous, current = _label_text, {}
    out: list[str] = []
    append = out.append
    for family in registry.collect():
        if openmetrics:
            append(_om_header(family))
        else:
            name = family.name + "_total" if family.type == "counter" else family.name
            doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
            append(f"# HELP {name} {doc}\n# TYPE {name} {_TYPES.get(family.type, 'untyped')}\n")
        if type(family) is RowFamily:
            for values, v in family.rows:
                append(_row_prefix(family, values, previous, current) + _value(v) + "\n")
            continue
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            append(f"{s.name}{_labels(s.labels, previous, current)} {_value(s.value)}\n")
    if openmetrics:
        append("# EOF\n")
    _label_text = current
    return "".join(out).encode()

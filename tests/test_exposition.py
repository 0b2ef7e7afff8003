"""The fast text renderer says exactly what prometheus-client's generate_latest says."""
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from exporter import exposition


class Families:
    def collect(self):
        c = CounterMetricFamily("podsnoop_x", 'help with "quotes" and \\ and\nnewline',
                                labels=["namespace", "pod"])
        c.add_metric(['we"ird\n\\ns', "p"], 5)
        c.add_metric(["", ""], 1.5)
        yield c
        h = HistogramMetricFamily("podsnoop_h", "h", labels=["pod"])
        h.add_metric(["a"], [("1e-06", 1), ("0.5", 2), ("+Inf", 3)], sum_value=2.25)
        yield h
        g = GaugeMetricFamily("podsnoop_g", "g")
        g.add_metric([], float("inf"))
        yield g
        n = GaugeMetricFamily("podsnoop_nan", "n")
        n.add_metric([], float("nan"))
        yield n


def parsed(text: str):
    return sorted((f.name, f.type, f.documentation, s.name, tuple(sorted(s.labels.items())),
                   repr(float(s.value))) for f in text_string_to_metric_families(text)
                  for s in f.samples)


def test_same_families_samples_and_escapes_as_prometheus_client():
    registry = CollectorRegistry()
    registry.register(Families())
    ours = exposition.render(registry).decode()
    assert parsed(ours) == parsed(generate_latest(registry).decode())
    assert exposition.render(registry).decode() == ours  # cached label text: same output


def test_label_cache_keeps_only_the_last_renders_label_sets():
    """Pod churn must not grow the cache: label sets of gone series leave it."""
    class OnePod:
        def __init__(self):
            self.pod = "0"

        def collect(self):
            g = GaugeMetricFamily("podsnoop_g", "g", labels=["pod"])
            g.add_metric([self.pod], 1)
            yield g

    source = OnePod()
    registry = CollectorRegistry()
    registry.register(source)
    for i in range(50):
        source.pod = str(i)
        assert f'pod="{i}"' in exposition.render(registry).decode()
    assert list(exposition._label_text) == [(("pod", "49"),)]


# --------------------------------------------------------------------------- OpenMetrics

class MoreFamilies(Families):
    """Families every OpenMetrics rule touches: counters (`_total`), units, an info, a
    RowFamily (the network collector's fast path), a summary, and escapes."""

    def collect(self):
        yield from super().collect()
        from prometheus_client.core import InfoMetricFamily, SummaryMetricFamily
        h = HistogramMetricFamily("podsnoop_d_seconds", "d", labels=["pod"], unit="seconds")
        h.add_metric(["a"], [("0.001", 1), ("+Inf", 4)], sum_value=0.5)
        yield h
        c = CounterMetricFamily("podsnoop_rx_bytes", "rx", labels=["pod"], unit="bytes")
        c.add_metric(["a"], 7)
        yield c
        i = InfoMetricFamily("podsnoop_v", "v", labels=["x"])
        i.add_metric(["1"], {"version": "1"})
        yield i
        s = SummaryMetricFamily("podsnoop_s", "s")
        s.add_metric([], count_value=2, sum_value=3.5)
        yield s
        r = exposition.RowFamily("podsnoop_rows", "rows", ["pod", "proto"])
        r.add(("a", "tcp"), 3)
        r.add(('q"uote', "udp"), 4)
        yield r


def om_parsed(text: str):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
    return sorted((f.name, f.type, f.unit, f.documentation, s.name,
                   tuple(sorted(s.labels.items())), repr(float(s.value)))
                  for f in om(text) for s in f.samples)


def test_openmetrics_is_what_prometheus_clients_openmetrics_encoder_says():
    """Parsed by prometheus-client's strict OpenMetrics parser (it rejects a missing
    `# EOF`, a counter sample without `_total`, a unit that is not the name's suffix),
    our OpenMetrics text has the families and samples of its own encoder's, and the same
    samples as our 0.0.4 text."""
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest

    class WithoutRows(MoreFamilies):
        def collect(self):
            for f in super().collect():
                if type(f) is exposition.RowFamily:   # the client's encoder needs .unit
                    c = CounterMetricFamily(f.name, f.documentation, labels=f.labelnames)
                    for values, v in f.rows:
                        c.add_metric(list(values), v)
                    f = c
                yield f

    registry, reference = CollectorRegistry(), CollectorRegistry()
    registry.register(MoreFamilies())
    reference.register(WithoutRows())
    ours = exposition.render(registry, openmetrics=True).decode()
    assert ours.endswith("\n# EOF\n")
    assert "podsnoop_rows_total{" in ours and "# TYPE podsnoop_rows counter" in ours
    assert "# UNIT podsnoop_d_seconds seconds" in ours
    assert om_parsed(ours) == om_parsed(om_latest(reference).decode())
    text = exposition.render(registry).decode()
    assert not text.rstrip().endswith("# EOF")
    assert ({(s.name, tuple(sorted(s.labels.items())), repr(float(s.value)))
             for f in text_string_to_metric_families(text) for s in f.samples}
            == {(n, labels, v) for (_, _, _, _, n, labels, v) in om_parsed(ours)})


def test_openmetrics_units_are_inferred_only_from_a_unit_suffix():
    class Plain:
        def collect(self):
            for name in ("podsnoop_wait_seconds", "podsnoop_tx_bytes", "podsnoop_entries"):
                g = GaugeMetricFamily(name, "g")
                g.add_metric([], 1)
                yield g

    registry = CollectorRegistry()
    registry.register(Plain())
    units = {f.name: f.unit for f in __import__(
        "prometheus_client.openmetrics.parser", fromlist=["x"]).text_string_to_metric_families(
        exposition.render(registry, openmetrics=True).decode())}
    assert units == {"podsnoop_wait_seconds": "seconds", "podsnoop_tx_bytes": "bytes",
                     "podsnoop_entries": ""}

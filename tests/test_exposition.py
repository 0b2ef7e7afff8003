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

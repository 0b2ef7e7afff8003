"""Per-collector scrape duration and success, node_exporter style.

One failing collector (a map read error, a bug) does not fail the scrape: its families are
left out, podsnoop_scrape_collector_success{collector} says 0, and the error is logged once
per distinct message.
"""
from __future__ import annotations

import logging
import threading
import time

from prometheus_client.core import GaugeMetricFamily

from .. import names

log = logging.getLogger(__name__)


class ScrapeCollector:
    def __init__(self, collectors: dict[str, object]):
        self.collectors = collectors
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def describe(self):
        for collector in self.collectors.values():
            yield from collector.describe()
        yield from self._families()

    def _families(self):
        return (GaugeMetricFamily(names.SCRAPE_COLLECTOR_DURATION,
                                  "Time a collector took to read its maps and build samples.",
                                  labels=["collector"]),
                GaugeMetricFamily(names.SCRAPE_COLLECTOR_SUCCESS,
                                  "1 if the collector's last scrape succeeded.",
                                  labels=["collector"]))

    def collect(self):
        """Every family once: collectors sharing a family (per-map self metrics) are merged.

        One collection at a time: collectors keep state between scrapes (the syscall and
        exec deltas), and two collections interleaving would count an increase twice.
        """
        with self._lock:
            merged: dict[str, object] = {}
            for family in self._collect_all():
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()

    def _collect_all(self):
        duration, success = self._families()
        for name, collector in self.collectors.items():
            start = time.perf_counter()
            try:
                families = list(collector.collect())
                ok = 1
            except Exception as e:
                families, ok = [], 0
                if str(e) not in self._logged and len(self._logged) < 100:
                    self._logged.add(str(e))
                    log.exception("collector %s failed", name)
            yield from families
            duration.add_metric([name], time.perf_counter() - start)
            success.add_metric([name], ok)
        yield duration
        yield success

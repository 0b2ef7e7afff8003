"""Resize-on-exec metrics: what was done, how fast, and which annotations were rejected.

`ResizeStats` is written by the actuator and the annotation sync (any thread) and read at
scrape time; series of a pod disappear once the pod index has forgotten it (the grace
period after deletion), like every other per-pod series.
"""
from __future__ import annotations

import threading
from collections import defaultdict

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from .. import names
from ..collectors.bpfmaps import sum_counter_array
from ..collectors.cgroupdeltas import map_families

# kernel exec -> PATCH sent: a resize that misses 100 ms has missed the start-up burst.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ResizeStats:
    def __init__(self):
        self._lock = threading.Lock()
        # (uid, namespace, pod, container, direction, result) -> count
        self.actions: dict[tuple, int] = defaultdict(int)
        self.errors: dict[tuple, int] = defaultdict(int)   # (uid, namespace, pod, reason)
        self.status: dict[tuple, str] = {}                 # (uid, namespace, pod, container)
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_count = 0
        self.latency_sum = 0.0

    def action(self, uid, namespace, pod, container, direction, result) -> None:
        with self._lock:
            self.actions[(uid, namespace, pod, container, direction, result)] += 1

    def annotation_error(self, uid, namespace, pod, reason) -> None:
        with self._lock:
            self.errors[(uid, namespace, pod, reason)] += 1

    def set_status(self, uid, namespace, pod, container, status) -> None:
        with self._lock:
            self.status[(uid, namespace, pod, container)] = status

    def latency(self, seconds: float) -> None:
        with self._lock:
            self.latency_count += 1
            self.latency_sum += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1

    def forget(self, keep) -> None:
        """Drop the series of pods for which keep(uid) is false."""
        with self._lock:
            for d in (self.actions, self.errors, self.status):
                for key in [k for k in d if not keep(k[0])]:
                    del d[key]


class ResizeCollector:
    def __init__(self, stats: ResizeStats, actuator, sync, bpf, index):
        self.stats = stats
        self.actuator = actuator
        self.sync = sync
        self.rules = bpf["resize_rules"]
        self.live = bpf["resize_live"]
        self.failures = bpf["resize_failures"]
        self.index = index

    def _families(self):
        return dict(
            actions=CounterMetricFamily(
                names.RESIZE_ACTIONS, "In-place resizes of annotated containers, by direction "
                "and result (applied: the API accepted the PATCH).",
                labels=list(names.RESIZE_ACTION_LABELS)),
            latency=HistogramMetricFamily(
                names.RESIZE_TRIGGER_LATENCY, "From the exec of a matched command (kernel "
                "time) to the resize PATCH being sent."),
            errors=CounterMetricFamily(
                names.RESIZE_ANNOTATION_ERRORS, "Rejected podsnoop.io/resize-on-exec "
                "annotations (each distinct annotation counted once).",
                labels=list(names.RESIZE_ANNOTATION_ERROR_LABELS)),
            armed=GaugeMetricFamily(
                names.RESIZE_ARMED, "1 for each container whose commands are matched in the "
                "kernel.", labels=list(names.RESIZE_TARGET_LABELS)),
            matched=GaugeMetricFamily(
                names.RESIZE_MATCHED_PROCESSES, "Matched processes running in the container.",
                labels=list(names.RESIZE_TARGET_LABELS)),
            status=GaugeMetricFamily(
                names.RESIZE_STATUS, "The last resize's state as read back from the pod "
                "(done, proposed, in_progress, deferred, infeasible).",
                labels=list(names.RESIZE_TARGET_LABELS) + ["status"]),
            dropped=CounterMetricFamily(
                names.RESIZE_EVENTS_DROPPED, "Resize exec/exit events the ring buffer had no "
                "room for."),
        )

    def describe(self):
        yield from self._families().values()

    def collect(self):
        f = self._families()
        st = self.stats
        st.forget(lambda uid: self.index.get(uid) is not None)
        with st._lock:
            for (_, *labels), n in st.actions.items():
                f["actions"].add_metric(labels, n)
            for (_, *labels), n in st.errors.items():
                f["errors"].add_metric(labels, n)
            for (_, *labels), status in st.status.items():
                f["status"].add_metric(labels + [status], 1)
            buckets = [(repr(bound), n) for bound, n in zip(LATENCY_BUCKETS, st.buckets)]
            buckets.append(("+Inf", st.latency_count))
            f["latency"].add_metric([], buckets, st.latency_sum)
        for labels, processes in self.actuator.armed():
            f["armed"].add_metric(labels, 1)
            f["matched"].add_metric(labels, processes)
        f["dropped"].add_metric([], sum_counter_array(self.failures, 1))
        yield from f.values()
        yield from map_families([
            ("resize_rules", self.rules, len(self.sync.present), 0),
            ("resize_live", self.live, self.actuator.live_count(),
             sum_counter_array(self.failures, 0))])

"""podsnoop_pod_info (one series per pod to join on) and the watcher's own health.

Pod labels go on this one series (kube-state-metrics' kube_pod_labels pattern), not onto
every sample: `... * on(pod_uid) group_left(label_app) podsnoop_pod_info` in PromQL.
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import names
from ..kube import sanitize_label_name

# workload_kind, workload: the pod's Deployment, StatefulSet, DaemonSet, CronJob, Job...
# (kube.workload_of), for `sum by (workload) (... * on(pod_uid) group_left(workload) ...)`.
INFO_LABELS = names.POD_INFO_LABELS


class PodCollector:
    def __init__(self, index, watcher, label_keys: tuple[str, ...]):
        self.index = index
        self.watcher = watcher
        self.label_names = sorted({sanitize_label_name(k) for k in label_keys})

    def _families(self):
        info = GaugeMetricFamily(names.POD_INFO, "Pods on this node, from the Kubernetes API.",
                                 labels=[*INFO_LABELS, *self.label_names])
        restarts = CounterMetricFamily(names.KUBE_WATCH_RESTARTS,
                                       "Pod list/watch cycles that ended in an error.")
        return info, restarts

    def describe(self):
        info, restarts = self._families()
        return (info, restarts) if self.watcher is not None else (info,)

    def collect(self):
        info, restarts = self._families()
        for meta in self.index.all():
            info.add_metric([meta.namespace, meta.name, meta.uid, meta.node,
                             meta.workload_kind, meta.workload,
                             *(meta.labels.get(n, "") for n in self.label_names)], 1)
        yield info
        if self.watcher is not None:  # a sidecar knows its pod from the downward API
            restarts.add_metric([], self.watcher.restarts)
            yield restarts

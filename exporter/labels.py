"""pod UID -> the names a human knows (namespace, pod, container).

Backed by the Kubernetes pod index when the watcher runs; with --kube off, or before the
first list, every name is "" and samples carry only pod_uid / container_id.
"""
from __future__ import annotations


class PodLabeler:
    def __init__(self, index=None):
        self.index = index  # exporter.kube.PodIndex or None

    def pod(self, uid: str) -> tuple[str, str]:
        meta = self.index.get(uid) if (self.index is not None and uid) else None
        return (meta.namespace, meta.name) if meta else ("", "")

    def container(self, uid: str, container_id: str) -> str:
        if self.index is None or not uid or not container_id:
            return ""
        return self.index.container_name(uid, container_id)

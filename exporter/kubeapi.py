"""The pod and Service list and watch requests of the watchers (kube.py, peerwatch.py), as
CoreV1Api would send them (the same path, query parameters and Accept header), over either
client of kubeclient.py.

Why not CoreV1Api: it is a ~37,000-line module whose methods are validated by pydantic, and
podsnoop reads the raw JSON anyway (kubeclient.py says what its import costs).
"""
from __future__ import annotations

from urllib.parse import quote

# The list/watch parameters podsnoop sets, by their Python names (as CoreV1Api names them).
QUERY = {"field_selector": "fieldSelector", "resource_version": "resourceVersion",
         "watch": "watch", "allow_watch_bookmarks": "allowWatchBookmarks",
         "timeout_seconds": "timeoutSeconds", "limit": "limit", "_continue": "continue"}


class RawPods:
    """list_pod_for_all_namespaces / list_namespaced_pod / list_service_for_all_namespaces
    as CoreV1Api has them with _preload_content=False: the urllib3 response, its body
    unread. Pagination as CoreV1Api names it: `limit`, `_continue`."""

    def __init__(self, api):
        self.api = api    # a kubeclient.KubeApi or LibraryApi

    def list_pod_for_all_namespaces(self, **kw):
        return self._get("/api/v1/pods", **kw)

    def list_namespaced_pod(self, namespace: str, **kw):
        return self._get(f"/api/v1/namespaces/{quote(namespace, safe='')}/pods", **kw)

    def list_service_for_all_namespaces(self, **kw):
        return self._get("/api/v1/services", **kw)

    def _get(self, path: str, *, _preload_content: bool = False,
             _request_timeout: tuple[float, float] = (5.0, 30.0), **params):
        assert not _preload_content, "the watcher reads raw JSON"
        query = [(QUERY[k], v) for k, v in params.items() if v is not None]
        return self.api.get(path, query, _request_timeout)

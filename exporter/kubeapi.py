"""The pod and Service list and watch requests of the watchers (kube.py, peerwatch.py),
made through the kubernetes client's ApiClient (its configuration: in-cluster or kubeconfig
auth, TLS, proxy, timeouts) but without its generated API class.

Why: kubernetes.client.CoreV1Api is a ~37,000-line module whose methods are validated by
pydantic; importing it and building its Pod models costs the serving process ~21 MB
(measured: 97.7 MB steady RSS with --kube auto at 110 pods, against 56 MB with --kube off),
while podsnoop reads the raw JSON anyway (_preload_content=False). The requests are those
CoreV1Api would send: the same path, query parameters, Accept header, BearerToken auth, and
a non-2xx answer raised as the same ApiException.
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

    def __init__(self, api_client):
        self.api_client = api_client

    def list_pod_for_all_namespaces(self, **kw):
        return self._get("/api/v1/pods", **kw)

    def list_namespaced_pod(self, namespace: str, **kw):
        return self._get(f"/api/v1/namespaces/{quote(namespace, safe='')}/pods", **kw)

    def list_service_for_all_namespaces(self, **kw):
        return self._get("/api/v1/services", **kw)

    def _get(self, path: str, *, _preload_content: bool = False, _request_timeout=None,
             **params):
        from kubernetes.client.exceptions import ApiException
        assert not _preload_content, "the watcher reads raw JSON"
        query = [(QUERY[k], v) for k, v in params.items() if v is not None]
        request = self.api_client.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        response = self.api_client.call_api(*request, _request_timeout=_request_timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

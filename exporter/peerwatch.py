"""Feed peers.PeerDirectory from the Kubernetes API: every pod of the cluster and every
Service (issue 21's per-pod traffic matrix names both ends of a flow, not only this node's).

Both watchers are kube.ListWatcher's list/watch loop (resume, bookmarks, re-list on 410,
backoff, 403, prompt stop) over a cluster-wide resource. A cluster-wide pod list can be tens
of MB of JSON, so lists are paginated (`limit`, `continue`) and each object is cut down to
the few fields a PeerPod / PeerService holds as soon as its page is parsed; the strings many
objects share (namespace, workload, host IP, phase) are interned.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Mapping

from . import kube
from .peers import PeerDirectory, PeerPod, PeerService

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 500   # client-go's pager default
_intern = sys.intern


def peer_pod(obj: Mapping[str, Any]) -> PeerPod:
    """A pod as the API serves it (JSON dict) -> the PeerPod naming its addresses."""
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ips = tuple(ip for entry in status.get("podIPs") or ()
                if isinstance(entry, Mapping) and (ip := entry.get("ip")))
    if not ips and status.get("podIP"):
        ips = (status["podIP"],)
    return PeerPod(
        uid=md.get("uid") or "",
        namespace=_intern(md.get("namespace") or ""),
        workload=_intern(kube.workload_of(md)[1] or md.get("name") or ""),
        ips=ips,
        host_ip=_intern(status.get("hostIP") or ""),
        host_network=bool(spec.get("hostNetwork")),
        phase=_intern(status.get("phase") or ""),
    )


def peer_service(obj: Mapping[str, Any]) -> PeerService:
    """A Service (JSON dict) -> its PeerService; headless ("None") and empty IPs left out."""
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return PeerService(
        uid=md.get("uid") or "",
        namespace=_intern(md.get("namespace") or ""),
        name=md.get("name") or "",
        cluster_ips=tuple(ip for ip in ips if ip and ip != "None"),
    )


class _PeerWatcher(kube.ListWatcher):
    """The peer watchers' shared constructor: a directory, a client factory, a page size."""

    def __init__(self, directory: PeerDirectory, api_client_factory: Callable[[], Any], *,
                 limit: int = DEFAULT_PAGE_SIZE, backoff_base: float = 0.5,
                 backoff_cap: float = 30.0, watch_timeout: int = 300,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0) -> None:
        self.directory = directory
        self.page_size = limit
        super().__init__(api_client_factory, backoff_base, backoff_cap,
                         watch_timeout=watch_timeout, connect_timeout=connect_timeout,
                         read_timeout=read_timeout,
                         thread_name=f"podsnoop-peer-{self.resource}")

    meanwhile = ""   # what a 403 costs, for its log line

    def _list_scope(self) -> str:
        pages = self.last_list_pages
        return f"in the cluster ({pages} page{'s' if pages != 1 else ''})"

    def _log_forbidden(self, reason: str) -> None:
        log.error("Kubernetes API refused to list %s (%s): grant the exporter's "
                  "ServiceAccount get, list, watch on %s (apiGroups [\"\"]) at cluster "
                  "scope in its ClusterRole (deploy/clusterrole.yaml); retrying quietly, "
                  "%s", self.resource, reason, self.resource, self.meanwhile)


class PeerPodWatcher(_PeerWatcher):
    """Every pod of the cluster (no fieldSelector) -> directory's pods."""

    kind, resource = "peer pod", "pods"
    meanwhile = "pod addresses count as world meanwhile."

    def _request(self, api, **kw):
        return api.list_pod_for_all_namespaces(**kw)

    def _parse(self, obj: Mapping[str, Any]) -> PeerPod:
        return peer_pod(obj)

    def _replace(self, parsed: list) -> None:
        self.directory.replace_pods(parsed)

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        self.directory.upsert_pod(peer_pod(obj))

    def _delete(self, obj: Mapping[str, Any]) -> None:
        self.directory.delete_pod((obj.get("metadata") or {}).get("uid") or "")


class ServiceWatcher(_PeerWatcher):
    """Every Service of the cluster -> directory's services."""

    kind, resource = "service", "services"
    meanwhile = "Service ClusterIPs count as world meanwhile."

    def _request(self, api, **kw):
        return api.list_service_for_all_namespaces(**kw)

    def _parse(self, obj: Mapping[str, Any]) -> PeerService:
        return peer_service(obj)

    def _replace(self, parsed: list) -> None:
        self.directory.replace_services(parsed)

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        self.directory.upsert_service(peer_service(obj))

    def _delete(self, obj: Mapping[str, Any]) -> None:
        self.directory.delete_service((obj.get("metadata") or {}).get("uid") or "")


def start_peer_watchers(directory: PeerDirectory, api_client_factory: Callable[[], Any],
                        **kw: Any) -> list[_PeerWatcher]:
    """Start a PeerPodWatcher and a ServiceWatcher (each with its own client from the
    factory) feeding `directory`; `kw` goes to both constructors."""
    return [PeerPodWatcher(directory, api_client_factory, **kw).start(),
            ServiceWatcher(directory, api_client_factory, **kw).start()]

"""The read-only Kubernetes API client of the pod and peer watchers: GET requests over
urllib3, with the in-cluster service account or a kubeconfig's plain credentials (a token,
a token file, a client certificate; a CA file or data).

Why not the kubernetes package here: importing its configuration and ApiClient costs the
serving process ~16 MB of resident memory (pydantic, requests-oauthlib, its generated client
package; measured in bench/serving_memory.py) and ~0.5 s of start, for a few GETs whose JSON
podsnoop parses itself. urllib3 alone is ~1 MB. A kubeconfig that needs more than this
module knows (an exec or auth-provider plugin, basic auth, a proxy, several merged files)
is handed to the kubernetes package whole (`LibraryApi`), so nothing a user's kubeconfig
did before stops working; the writers (resize's PATCH, the program CRD watcher) use the
package as they always did.
"""
from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# client-go re-reads a bound service-account token file every minute (the kubelet rotates it).
TOKEN_REREAD_SECONDS = 60.0

# The kubeconfig keys this module understands; any other cluster/user key goes to the
# kubernetes package. (extensions only carry metadata; tls-server-name is urllib3's
# server_hostname.)
CLUSTER_KEYS = frozenset({"server", "certificate-authority", "certificate-authority-data",
                          "insecure-skip-tls-verify", "tls-server-name", "extensions"})
USER_KEYS = frozenset({"token", "tokenFile", "client-certificate", "client-certificate-data",
                       "client-key", "client-key-data", "extensions"})


class ApiError(Exception):
    """A non-2xx answer (status, reason, body), or a failed request (status 0)."""

    def __init__(self, status: int = 0, reason: str = "", body: bytes | str | None = None):
        self.status = status
        self.reason = reason
        self.body = body
        super().__init__(f"({status}) Reason: {reason}")


class NeedsLibrary(Exception):
    """The kubeconfig uses something only the kubernetes package implements."""


@dataclass
class Endpoint:
    """Where the API server is and how to prove who we are."""
    host: str                            # "https://10.96.0.1:443"
    token: str | None = None
    token_file: str | None = None        # re-read every TOKEN_REREAD_SECONDS
    ca_file: str | None = None
    ca_data: str | None = None           # PEM
    cert_pem: bytes | None = None        # client certificate and key, PEM
    key_pem: bytes | None = None
    verify: bool = True
    server_name: str | None = None       # tls-server-name


class KubeApi:
    """GETs to one API server, for the watchers: `get` returns the urllib3 response with
    its body unread (a watch streams), or raises ApiError."""

    def __init__(self, endpoint: Endpoint, user_agent: str):
        import urllib3
        self.endpoint = endpoint
        self.host = endpoint.host.rstrip("/")
        self.user_agent = user_agent
        self._token = endpoint.token
        self._token_read = 0.0
        self._lock = threading.Lock()
        kw: dict[str, Any] = {"num_pools": 2, "maxsize": 4, "retries": False}
        if self.host.startswith("https://"):
            kw["ssl_context"] = _ssl_context(endpoint)
            if endpoint.server_name:
                kw["server_hostname"] = endpoint.server_name
                kw["assert_hostname"] = endpoint.server_name
        self._pool = urllib3.PoolManager(**kw)
        if endpoint.token_file:
            self._bearer()        # an unreadable token file fails here, at load time

    def _bearer(self) -> str | None:
        if not self.endpoint.token_file:
            return self._token
        with self._lock:
            now = time.monotonic()
            if self._token is None or now - self._token_read >= TOKEN_REREAD_SECONDS:
                self._token = Path(self.endpoint.token_file).read_text().strip()
                self._token_read = now
            return self._token

    def get(self, path: str, query: list[tuple[str, Any]], timeout: tuple[float, float]):
        import urllib3
        from urllib.parse import urlencode
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = self.host + path + (("?" + urlencode([(k, _query_value(v)) for k, v in query]))
                                  if query else "")
        resp = self._pool.request("GET", url, headers=headers, preload_content=False,
                                  redirect=False,
                                  timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]))
        if not 200 <= resp.status <= 299:
            body = resp.read()
            resp.release_conn()
            raise ApiError(resp.status, resp.reason or "", body)
        return resp

    def close(self) -> None:
        self._pool.clear()


class LibraryApi:
    """The same `get` through the kubernetes package's ApiClient (for a kubeconfig this
    module cannot read itself)."""

    def __init__(self, api_client):
        self.api_client = api_client
        self.host = api_client.configuration.host

    def get(self, path: str, query: list[tuple[str, Any]], timeout: tuple[float, float]):
        from kubernetes.client.exceptions import ApiException
        request = self.api_client.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        try:
            response = self.api_client.call_api(*request, _request_timeout=timeout)
        except ApiException as exc:
            raise ApiError(exc.status or 0, exc.reason or "", exc.body) from exc
        if not 200 <= response.status <= 299:
            body = response.read()
            raise ApiError(response.status, response.reason or "", body)
        return response.response

    def close(self) -> None:
        self.api_client.close()


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _ssl_context(endpoint: Endpoint) -> ssl.SSLContext:
    if not endpoint.verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=endpoint.ca_file, cadata=endpoint.ca_data)
    if endpoint.cert_pem is not None:
        # load_cert_chain reads files only: write both to a private directory for the
        # call and remove it at once.
        with tempfile.TemporaryDirectory(prefix="podsnoop-kube-") as d:
            cert, key = Path(d, "cert"), Path(d, "key")
            cert.write_bytes(endpoint.cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(endpoint.key_pem or b"")
            ctx.load_cert_chain(str(cert), str(key))
    return ctx


# --- where the endpoint comes from -----------------------------------------------------


def in_cluster(sa_dir: Path | None = None) -> Endpoint:
    """The pod's service account, as client-go's rest.InClusterConfig reads it."""
    sa_dir = sa_dir or SERVICE_ACCOUNT_DIR
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ValueError("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set")
    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    for f in (token, ca):
        if not f.is_file():
            raise ValueError(f"no service account mounted ({f} is missing)")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return Endpoint(f"https://{host}:{port}", token_file=str(token), ca_file=str(ca))


def from_kubeconfig(path: str) -> Endpoint:
    """The current context of one kubeconfig file; NeedsLibrary if it uses more than
    CLUSTER_KEYS and USER_KEYS."""
    text = Path(path).read_text()
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml
        doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise ValueError("not a kubeconfig (no mapping at the top)")
    current = doc.get("current-context")
    if not current:
        raise ValueError("no current-context")
    context = _named(doc, "contexts", current, "context")
    cluster = _named(doc, "clusters", context.get("cluster"), "cluster")
    user = _named(doc, "users", context.get("user"), "user") if context.get("user") else {}
    extra = sorted((set(cluster) - CLUSTER_KEYS) | (set(user) - USER_KEYS))
    if extra:
        raise NeedsLibrary(", ".join(extra))
    server = cluster.get("server")
    if not server:
        raise ValueError(f"cluster {context.get('cluster')!r} has no server")
    base = Path(path).resolve().parent    # relative file names are the kubeconfig's, as kubectl

    def file(key: str) -> str | None:
        value = cluster.get(key) if key in CLUSTER_KEYS else user.get(key)
        return str(base / value) if value else None

    def data(key: str) -> bytes | None:
        value = cluster.get(key) if key in CLUSTER_KEYS else user.get(key)
        return base64.b64decode(value) if value else None

    cert = data("client-certificate-data")
    if cert is None and file("client-certificate"):
        cert = Path(file("client-certificate")).read_bytes()
    key = data("client-key-data")
    if key is None and file("client-key"):
        key = Path(file("client-key")).read_bytes()
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key (and a key its certificate)")
    ca_data = data("certificate-authority-data")
    return Endpoint(
        host=server, token=user.get("token") or None,
        token_file=None if user.get("token") else file("tokenFile"),
        ca_file=None if ca_data else file("certificate-authority"),
        ca_data=ca_data.decode() if ca_data else None,
        cert_pem=cert, key_pem=key,
        verify=not cluster.get("insecure-skip-tls-verify", False),
        server_name=cluster.get("tls-server-name") or None)


def _named(doc: dict, section: str, name: Any, key: str) -> dict:
    for entry in doc.get(section) or ():
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key)
            return value if isinstance(value, dict) else {}
    raise ValueError(f"{section[:-1]} {name!r} is not in {section}")

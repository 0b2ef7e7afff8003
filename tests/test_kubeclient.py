"""kubeclient.py, the watchers' own client, against the project's test API server over real
HTTPS: a kubeconfig's CA file (relative to the kubeconfig) and token, CA data and a client
certificate instead of a token, a CA that does not sign the server, the in-cluster service
account with its token rotated, an exec plugin handed to the kubernetes package, and the
serving process never importing that package."""
from __future__ import annotations

import base64
import json
import logging
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import urllib3

from exporter import kubeclient
from exporter.kube import PodIndex, PodWatcher, load_api_client
from exporter.kubeapi import RawPods
from exporter.testapiserver import KubeApiServer
from kube_helpers import wait_for
from pki_helpers import make_pki

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = (5.0, 10.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki: Path, client_ca: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    if client_ca:
        ctx.load_verify_locations(str(pki / "ca.crt"))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


@pytest.fixture
def https(pki):
    with KubeApiServer(bookmark_interval=0.2, ssl_context=server_context(pki)) as server:
        yield server


@pytest.fixture
def mtls(pki):
    with KubeApiServer(bookmark_interval=0.2,
                       ssl_context=server_context(pki, client_ca=True)) as server:
        yield server


def kubeconfig(path: Path, server: str, cluster: dict, user: dict) -> str:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server} | cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return str(path)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def synced_pods(factory, server: KubeApiServer) -> set[str]:
    """The pod names a real PodWatcher on node-a lists through `factory`'s client."""
    server.add_pod("web-1", node="node-a")
    watcher = PodWatcher(PodIndex(grace_seconds=0.5), "node-a", factory,
                         backoff_base=0.05, backoff_cap=0.4).start()
    try:
        assert watcher.wait_synced(10), watcher.state
        return {meta.name for meta in watcher.index.all()}
    finally:
        assert watcher.stop()


def podsnoop_temp_files() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("podsnoop-kube-*")}


def test_ca_file_relative_to_the_kubeconfig_and_a_token(https, pki, tmp_path):
    shutil.copy(pki / "ca.crt", tmp_path / "cluster-ca.crt")
    path = kubeconfig(tmp_path / "config", https.url,
                      {"certificate-authority": "cluster-ca.crt"}, {"token": https.token})
    api = load_api_client("auto", path)
    assert isinstance(api, kubeclient.KubeApi) and api.host == https.url.rstrip("/")
    assert synced_pods(lambda: load_api_client("auto", path), https) == {"web-1"}
    assert https.request_log[0].path == "/api/v1/pods"


def test_ca_data_and_a_client_certificate_instead_of_a_token(mtls, pki, tmp_path):
    before = podsnoop_temp_files()
    path = kubeconfig(tmp_path / "config", mtls.url,
                      {"certificate-authority-data": b64(pki / "ca.crt")},
                      {"client-certificate-data": b64(pki / "client.crt"),
                       "client-key-data": b64(pki / "client.key")})
    assert synced_pods(lambda: load_api_client("auto", path), mtls) == {"web-1"}
    assert podsnoop_temp_files() == before        # the key was written only for the load

    # The other CA's client certificate: the handshake fails (TLS 1.3 shows it as the
    # server closing the connection), and nothing is served.
    rogue = kubeconfig(tmp_path / "rogue", mtls.url,
                       {"certificate-authority-data": b64(pki / "ca.crt")},
                       {"client-certificate": str(pki / "rogue.crt"),
                        "client-key": str(pki / "rogue.key")})
    mtls.clear_log()
    with pytest.raises(urllib3.exceptions.HTTPError):
        RawPods(load_api_client("auto", rogue)).list_pod_for_all_namespaces(
            _request_timeout=TIMEOUT)
    assert mtls.request_log == []


def test_a_ca_that_did_not_sign_the_server_degrades_the_watcher(https, pki, tmp_path):
    path = kubeconfig(tmp_path / "config", https.url,
                      {"certificate-authority": str(pki / "rogue-ca.crt")},
                      {"token": https.token})
    watcher = PodWatcher(PodIndex(grace_seconds=0.5), "node-a",
                         lambda: load_api_client("auto", path),
                         backoff_base=0.05, backoff_cap=0.4).start()
    try:
        assert wait_for(lambda: watcher.state.startswith("degraded"), 10), watcher.state
        assert "CERTIFICATE_VERIFY_FAILED" in watcher.last_error, watcher.last_error
        assert "\n" not in watcher.last_error and not watcher.wait_synced(0)
        assert https.request_log == []                 # nothing was sent to that server
    finally:
        assert watcher.stop()


def test_in_cluster_service_account_and_its_rotated_token(https, pki, tmp_path, monkeypatch,
                                                          caplog):
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    shutil.copy(pki / "ca.crt", sa / "ca.crt")
    (sa / "token").write_text(https.token + "\n")
    monkeypatch.setattr(kubeclient, "SERVICE_ACCOUNT_DIR", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(https.port))
    caplog.set_level(logging.INFO, logger="exporter.kube")
    api = load_api_client("auto")
    assert isinstance(api, kubeclient.KubeApi) and "in-cluster service account" in caplog.text
    assert synced_pods(lambda: load_api_client("auto"), https) == {"web-1"}

    # The kubelet rotates the token file; the API server stops accepting the old token.
    monkeypatch.setattr(kubeclient, "TOKEN_REREAD_SECONDS", 0.0)
    https.token = "rotated-token"
    (sa / "token").write_text("rotated-token\n")
    resp = RawPods(api).list_pod_for_all_namespaces(_request_timeout=TIMEOUT)
    assert [p["metadata"]["name"] for p in resp.json()["items"]] == ["web-1"]
    last = https.request_log[-1]          # the server accepts only the new token now
    assert (last.path, last.status) == ("/api/v1/pods", 200)

    # IPv6 service addresses are bracketed, as client-go does.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert kubeclient.in_cluster().host == "https://[fd00::1]:%d" % https.port
    (sa / "token").unlink()
    with pytest.raises(ValueError, match="no service account mounted"):
        kubeclient.in_cluster()


def test_an_exec_plugin_is_left_to_the_kubernetes_package(https, pki, tmp_path, caplog):
    plugin = tmp_path / "credential-plugin"
    plugin.write_text("#!/bin/sh\necho '%s'\n" % json.dumps({
        "apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
        "status": {"token": https.token}}))
    plugin.chmod(0o755)
    path = kubeconfig(tmp_path / "config", https.url,
                      {"certificate-authority": str(pki / "ca.crt")},
                      {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                "command": str(plugin)}})
    caplog.set_level(logging.INFO, logger="exporter.kube")
    api = load_api_client("auto", path)
    assert isinstance(api, kubeclient.LibraryApi)
    assert "uses exec: reading it with the kubernetes package" in caplog.text
    assert synced_pods(lambda: load_api_client("auto", path), https) == {"web-1"}


@pytest.mark.parametrize("doc, message", [
    ({"apiVersion": "v1"}, "no current-context"),
    ({"current-context": "c", "contexts": []}, "context 'c' is not in contexts"),
    ({"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k"}}],
      "clusters": [{"name": "k", "cluster": {}}]}, "cluster 'k' has no server"),
    ({"current-context": "c",
      "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
      "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
      "users": [{"name": "u", "user": {"client-certificate-data": "eA=="}}]},
     "a client certificate needs its key"),
])
def test_a_broken_kubeconfig_is_one_line(tmp_path, doc, message):
    path = tmp_path / "config"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as exc:
        load_api_client("auto", str(path))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_the_watchers_never_import_the_kubernetes_package(https, pki, tmp_path):
    """What --kube auto costs the serving process: urllib3, not the kubernetes package."""
    path = kubeconfig(tmp_path / "config", https.url,
                      {"certificate-authority": str(pki / "ca.crt")}, {"token": https.token})
    https.add_pod("web-1", node="node-a")
    probe = (
        "import sys\n"
        "from exporter import kube, peerwatch, peers\n"
        "w = kube.PodWatcher(kube.PodIndex(), 'node-a',\n"
        f"                   lambda: kube.load_api_client('auto', {path!r})).start()\n"
        "assert w.wait_synced(10), w.state\n"
        "d = peers.PeerDirectory()\n"
        f"ws = peerwatch.start_peer_watchers(d, lambda: kube.load_api_client('auto', {path!r}))\n"
        "assert all(x.wait_synced(10) for x in ws)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'kubernetes', 'pydantic', 'requests_oauthlib', 'dateutil'}))\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""The exporter's web conventions (issue 15), against the real process and a real Prometheus:

- OpenMetrics 1.0 text when `Accept` prefers it, else the 0.0.4 text format; gzip when
  `Accept-Encoding` allows it (each checked with prometheus-client's own parsers);
- --web-config-file in the exporter-toolkit format: TLS with basic auth and mutual TLS,
  scraped by Debian's Prometheus, and the rejections (no or a foreign client certificate:
  the handshake fails; a wrong password: 401), nothing ever served to them; /healthz
  needs no credentials; bad files end in `podsnoop: error:` + `podsnoop: fix:`, exit 1;
- --max-requests: with N scrapes held in flight by a collector that waits for the test,
  the next one gets 503 at once.

Certificates are made here with the `cryptography` package (a CA, a server certificate for
127.0.0.1, a client certificate, and a client certificate of another CA).
"""
from __future__ import annotations

import asyncio
import base64
import gzip
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from exporter import webconfig
from exporter.errors import PodsnoopError
from exporter.exporterproc import ExporterProcess
from exporter.server import (METRICS, Health, make_app, wants_gzip, wants_openmetrics)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prometheus_server import PrometheusServer  # noqa: E402
from pki_helpers import make_pki  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# What Prometheus 2.42 sends (scrape.go acceptHeader) and what it falls back to.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
# Only the exporter's HTTP side matters here: no pod interfaces, no feature programs.
QUIET = ("--kube", "off", "--interfaces", "podsnoop-test-none", "--syscalls", "off",
         "--exec", "off", "--tcp", "off", "--drops", "off")
PASSWORD = "s3cret pass:word"


# --------------------------------------------------------------------------- helpers

def fetch(url: str, *, headers: dict | None = None, context: ssl.SSLContext | None = None,
          auth: tuple[str, str] | None = None, timeout: float = 10):
    """(status, headers, body bytes); HTTP errors are answers too."""
    headers = dict(headers or {})
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def start_exporter(*args: str, env: dict | None = None, scheme: str = "http",
                   context: ssl.SSLContext | None = None, timeout: float = 60) -> ExporterProcess:
    """Started and answering /healthz (which needs no credentials)."""
    proc = ExporterProcess(*QUIET, *args, env=env).start(wait_ready=0)
    url = f"{scheme}://127.0.0.1:{proc.port}/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"exporter exited {proc.proc.returncode}:\n{proc.output()}")
        try:
            if fetch(url, context=context, timeout=2)[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise TimeoutError(f"exporter did not answer {url}:\n{proc.output()}")


def samples(families) -> set[tuple]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value)
            for f in families for s in f.samples if not s.name.endswith("_created")}


# --------------------------------------------------------------------------- certificates

@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """pki_helpers.make_pki's certificates, and password files."""
    d = make_pki(tmp_path_factory.mktemp("pki"))
    (d / "password").write_text(PASSWORD)
    (d / "wrong-password").write_text(PASSWORD + "x")
    return d


def client_context(pki: Path, cert: str | None = None, *,
                   max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def write_config(directory: Path, doc: dict, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(doc))
    return path


def bcrypt_hash(password: str, rounds: int = 10) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def target_states(prom: PrometheusServer) -> dict[str, dict]:
    return {t["labels"]["job"]: t for t in prom.get("/api/v1/targets")["data"]["activeTargets"]}


def wait_scraped(prom: PrometheusServer, jobs_down: dict[str, str]) -> dict[str, dict]:
    """Until the podsnoop job is up and every job in jobs_down failed with its error."""
    def settled():
        t = target_states(prom)
        return (t.get("podsnoop", {}).get("health") == "up" and all(
            t.get(j, {}).get("health") == "down" and needle in t[j]["lastError"]
            for j, needle in jobs_down.items()))
    try:
        prom.wait_for(settled, timeout=30, what="the scrapes")
    except TimeoutError:
        raise AssertionError(f"{target_states(prom)}\n{prom.output()[-2000:]}") from None
    return target_states(prom)


# --------------------------------------------------------------------------- format, gzip

def test_accept_negotiation():
    assert wants_openmetrics(PROMETHEUS_ACCEPT)
    assert wants_openmetrics("application/openmetrics-text")
    assert not wants_openmetrics("")
    assert not wants_openmetrics("text/plain;version=0.0.4")
    assert not wants_openmetrics("*/*")
    assert not wants_openmetrics("text/plain;q=1, application/openmetrics-text;q=0.5")
    assert not wants_openmetrics("application/openmetrics-text;q=0, text/plain")
    assert not wants_openmetrics("application/openmetrics-text;q=0.5, */*;q=0.5")  # a tie
    assert wants_gzip("gzip") and wants_gzip("deflate, gzip;q=0.5") and wants_gzip("*")
    assert not wants_gzip("") and not wants_gzip("identity") and not wants_gzip("gzip;q=0")


def test_openmetrics_and_gzip_by_request_headers(kernel):
    proc = start_exporter()
    try:
        url = proc.url + "/metrics"
        status, h, body = fetch(url)
        assert status == 200 and h["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "Content-Encoding" not in h
        text = body.decode()
        assert "# EOF" not in text
        plain = samples(text_parse(text))

        status, h, body = fetch(url, headers={"Accept": PROMETHEUS_ACCEPT,
                                              "Accept-Encoding": "gzip"})
        assert status == 200 and h["Content-Encoding"] == "gzip"
        assert h["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
        om = gzip.decompress(body).decode()
        assert om.endswith("\n# EOF\n")
        families = list(om_parse(om))   # strict: EOF, _total on counters, unit suffixes
        kinds = {f.name: (f.type, f.unit) for f in families}
        assert kinds["podsnoop_network_receive_bytes"] == ("counter", "bytes")
        assert kinds["podsnoop_scrape_collector_duration_seconds"] == ("gauge", "seconds")
        assert "podsnoop_bpf_map_update_failures_total" in om
        # the same samples as the text format (values of gauges may move between scrapes)
        assert {s[:2] for s in samples(families)} == {s[:2] for s in plain}

        status, h, body = fetch(url, headers={"Accept": "text/plain;version=0.0.4",
                                              "Accept-Encoding": "gzip, deflate"})
        assert h["Content-Encoding"] == "gzip"
        assert h["Content-Type"].startswith("text/plain; version=0.0.4")
        assert {s[:2] for s in samples(text_parse(gzip.decompress(body).decode()))} == {
            s[:2] for s in plain}
        status, h, body = fetch(url, headers={"Accept": "application/openmetrics-text"})
        assert "Content-Encoding" not in h and body.decode().endswith("# EOF\n")
    finally:
        assert proc.stop() == 0, proc.output()


class _Recorder:
    """A TCP relay between Prometheus and the exporter that keeps the request and response
    heads, to see what a real scrape asked for and got."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.exchanges: list[tuple[bytes, bytes]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client):
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as up:
            client.settimeout(10)
            up.settimeout(10)
            try:
                while True:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = client.recv(65536)
                        if not chunk:
                            return
                        request += chunk
                    up.sendall(request)   # GET: no body
                    response = b""
                    while b"\r\n\r\n" not in response:
                        chunk = up.recv(65536)
                        if not chunk:
                            return
                        response += chunk
                    head, _, rest = response.partition(b"\r\n\r\n")
                    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length:")))
                    while len(rest) < length:
                        rest += up.recv(65536)
                    client.sendall(response[:len(head) + 4] + rest)
                    self.exchanges.append((request, head))
            except (OSError, StopIteration):
                return

    def close(self):
        self.sock.close()


def test_real_prometheus_scrapes_openmetrics_gzip(kernel):
    """Prometheus asks for OpenMetrics and gzip by default: it gets both, parses them (the
    scrape is up), and stores the units only OpenMetrics carries."""
    proc = start_exporter()
    relay = _Recorder(proc.port)
    try:
        with PrometheusServer([f"127.0.0.1:{relay.port}"], rule_files=()) as prom:
            wait_scraped(prom, {})
            prom.wait_for(lambda: prom.value("podsnoop_build_info") == 1, timeout=20,
                          what="podsnoop_build_info")
            meta = prom.get("/api/v1/metadata")["data"]
            # `# UNIT` exists only in OpenMetrics
            assert [m.get("unit") for m in meta["podsnoop_scrape_collector_duration_seconds"]
                    ] == ["seconds"], meta
            request, head = relay.exchanges[-1]
            assert b"GET /metrics" in request
            assert b"accept: application/openmetrics-text" in request.lower()
            assert b"accept-encoding: gzip" in request.lower()
            assert b"content-type: application/openmetrics-text; version=1.0.0" in head.lower()
            assert b"content-encoding: gzip" in head.lower()
    finally:
        relay.close()
        assert proc.stop() == 0, proc.output()


# --------------------------------------------------------------------------- --max-requests

class Held:
    """A collector that waits, in the scrape's worker thread, until the test releases it."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def collect(self):
        self.calls += 1
        assert self.release.wait(30), "never released"
        c = CounterMetricFamily("podsnoop_held", "held")
        c.add_metric([], 1)
        yield c


async def _serve(app):
    from aiohttp import web
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _until(cond, timeout: float = 10):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("limit", [1, 3])
def test_scrapes_beyond_max_requests_get_503_at_once(limit):
    import aiohttp

    async def main():
        held = Held()
        registry = CollectorRegistry()
        registry.register(held)
        app = make_app(registry, Health(), max_requests=limit)
        runner, port = await _serve(app)
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            async with aiohttp.ClientSession() as s:
                async def get(headers=None):
                    async with s.get(url, headers=headers or {}) as r:
                        return r.status, await r.text()
                # N scrapes in flight, of both formats (they share or start renders)
                waiting = [asyncio.create_task(get({"Accept": PROMETHEUS_ACCEPT} if i % 2
                                                   else None)) for i in range(limit)]
                await _until(lambda: app[METRICS].in_flight == limit)
                status, body = await asyncio.wait_for(get(), 5)   # at once: nothing waits
                assert status == 503 and "--max-requests" in body
                assert not any(t.done() for t in waiting)
                held.release.set()
                results = await asyncio.gather(*waiting)
                assert [st for st, _ in results] == [200] * limit
                assert all("podsnoop_held_total 1" in b for _, b in results)
                assert app[METRICS].in_flight == 0
                assert (await get())[0] == 200   # the slots are free again
        finally:
            held.release.set()
            await runner.cleanup()

    asyncio.run(main())


def test_max_requests_zero_is_no_limit():
    import aiohttp

    async def main():
        held = Held()
        registry = CollectorRegistry()
        registry.register(held)
        app = make_app(registry, Health(), max_requests=0)
        runner, port = await _serve(app)
        try:
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0)) as s:
                async def get():
                    async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                        return r.status
                waiting = [asyncio.create_task(get()) for _ in range(100)]
                await _until(lambda: app[METRICS].in_flight == 100)
                held.release.set()
                assert await asyncio.gather(*waiting) == [200] * 100
                assert held.calls == 1   # one shared render for all of them
        finally:
            held.release.set()
            await runner.cleanup()

    asyncio.run(main())


# --------------------------------------------------------------------------- TLS, auth

def test_tls_with_basic_auth_scraped_by_prometheus(kernel, pki, tmp_path):
    config = write_config(pki, {
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
        "basic_auth_users": {"prometheus": bcrypt_hash(PASSWORD)},
        "http_server_config": {"headers": {"X-Frame-Options": "deny",
                                           "Strict-Transport-Security": "max-age=3600"}},
    }, "web-basic.yml")
    ctx = client_context(pki)
    proc = start_exporter(env={"PODSNOOP_WEB_CONFIG_FILE": str(config)}, scheme="https",
                          context=ctx)
    base = f"https://127.0.0.1:{proc.port}"
    try:
        status, h, body = fetch(base + "/metrics", context=ctx, auth=("prometheus", PASSWORD))
        assert status == 200 and b"podsnoop_build_info" in body
        assert h["X-Frame-Options"] == "deny" and h["Strict-Transport-Security"] == "max-age=3600"
        for auth in (None, ("prometheus", "wrong"), ("nobody", PASSWORD)):
            for path in ("/metrics", "/readyz", "/"):
                status, h, body = fetch(base + path, context=ctx, auth=auth)
                assert status == 401 and h["WWW-Authenticate"] == "Basic", (path, auth)
                assert b"podsnoop_" not in body and b"ready" not in body
                assert h["X-Frame-Options"] == "deny"
        status, h, body = fetch(base + "/healthz", context=ctx)   # no credentials needed
        assert status == 200 and body == b"ok\n" and h["X-Frame-Options"] == "deny"
        status, _, body = fetch(base + "/readyz", context=ctx, auth=("prometheus", PASSWORD))
        assert status == 200 and body.startswith(b"ready")
        # plain HTTP on the TLS port is not served
        with pytest.raises(OSError):
            fetch(f"http://127.0.0.1:{proc.port}/healthz", timeout=5)
        tls = {"ca_file": str(pki / "ca.crt")}
        with PrometheusServer([f"127.0.0.1:{proc.port}"], rule_files=(), job_config={
                "scheme": "https", "tls_config": tls,
                "basic_auth": {"username": "prometheus",
                               "password_file": str(pki / "password")}},
                extra_jobs=[{"job_name": "wrong-password", "scheme": "https",
                             "tls_config": tls,
                             "basic_auth": {"username": "prometheus",
                                            "password_file": str(pki / "wrong-password")},
                             "static_configs": [{"targets": [f"127.0.0.1:{proc.port}"]}]},
                            {"job_name": "no-password", "scheme": "https", "tls_config": tls,
                             "static_configs": [{"targets": [f"127.0.0.1:{proc.port}"]}]}],
                ) as prom:
            wait_scraped(prom, {"wrong-password": "401 Unauthorized",
                                "no-password": "401 Unauthorized"})
            prom.wait_for(lambda: prom.value('podsnoop_build_info{job="podsnoop"}') == 1,
                          timeout=20, what="podsnoop_build_info")
            assert prom.result('podsnoop_build_info{job!="podsnoop"}') == []
    finally:
        assert proc.stop() == 0, proc.output()


class HandshakeFailed(Exception):
    pass


def _handshake(port: int, ctx: ssl.SSLContext) -> bytes:
    """TLS handshake, a GET, and whatever comes back: HandshakeFailed when the handshake
    itself fails, an SSLError when the server refuses after it (TLS 1.3)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        except (ssl.SSLError, ConnectionResetError) as e:
            raise HandshakeFailed(str(e)) from None
        with s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data


def test_mutual_tls_scraped_by_prometheus(kernel, pki):
    config = write_config(pki, {"tls_server_config": {
        "cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key"),
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "ca.crt",
        "min_version": "TLS12"}}, "web-mtls.yml")
    good = client_context(pki, "client")
    proc = start_exporter("--web-config-file", str(config), scheme="https", context=good)
    try:
        assert _handshake(proc.port, good).startswith(b"HTTP/1.1 200")
        status, _, body = fetch(f"https://127.0.0.1:{proc.port}/metrics", context=good)
        assert status == 200 and b"podsnoop_build_info" in body
        # refused: with TLS 1.2 the handshake itself fails; with TLS 1.3 the client
        # finishes its side first and then reads the server's refusal (an alert, or the
        # connection closed). Never an HTTP answer.
        for cert in (None, "rogue"):
            with pytest.raises(HandshakeFailed):
                _handshake(proc.port, client_context(pki, cert,
                                                     max_version=ssl.TLSVersion.TLSv1_2))
            try:
                answer = _handshake(proc.port, client_context(pki, cert))
            except (HandshakeFailed, ssl.SSLError, ConnectionResetError):
                answer = b""
            assert answer == b"", answer[:200]
        tls = {"ca_file": str(pki / "ca.crt")}
        target = {"static_configs": [{"targets": [f"127.0.0.1:{proc.port}"]}], "scheme": "https"}
        with PrometheusServer([f"127.0.0.1:{proc.port}"], rule_files=(), job_config={
                "scheme": "https", "tls_config": {**tls, "cert_file": str(pki / "client.crt"),
                                                  "key_file": str(pki / "client.key")}},
                extra_jobs=[{"job_name": "no-client-cert", "tls_config": tls, **target},
                            {"job_name": "foreign-client-cert", **target, "tls_config": {
                                **tls, "cert_file": str(pki / "rogue.crt"),
                                "key_file": str(pki / "rogue.key")}}]) as prom:
            # asyncio closes a refused handshake without a TLS alert, so Go reports "EOF"
            # or "server closed idle connection": any error, but never an HTTP answer
            states = wait_scraped(prom, {"no-client-cert": "", "foreign-client-cert": ""})
            for job in ("no-client-cert", "foreign-client-cert"):
                assert states[job]["lastError"], states[job]
                assert "HTTP status" not in states[job]["lastError"], states[job]
            prom.wait_for(lambda: prom.value('podsnoop_build_info{job="podsnoop"}') == 1,
                          timeout=20, what="podsnoop_build_info")
            assert prom.result('podsnoop_build_info{job!="podsnoop"}') == []
    finally:
        assert proc.stop() == 0, proc.output()


# --------------------------------------------------------------------------- bad files

def _bad(pki: Path, tmp: Path, name: str):
    """(config text or None for a missing file, needle of the error)."""
    crt, key = str(pki / "server.crt"), str(pki / "server.key")
    tls = {"cert_file": crt, "key_file": key}
    return {
        "missing": (None, "cannot read it"),
        "yaml": ("tls_server_config: [unclosed\n", "not valid YAML"),
        "not-a-mapping": ("- a\n- b\n", "must be a mapping"),
        "unknown-key": ("tls_server_config:\n  certfile: x\n", "unknown key tls_server_config.certfile"),
        "plain-password": ({"basic_auth_users": {"u": "hunter2"}}, "not a bcrypt hash"),
        "no-key": ({"tls_server_config": {"cert_file": crt}}, "needs key_file"),
        "missing-cert": ({"tls_server_config": {"cert_file": "nope.crt", "key_file": key}},
                         "does not exist"),
        "key-mismatch": ({"tls_server_config": {"cert_file": crt,
                                                "key_file": str(pki / "client.key")}},
                         "cannot load cert_file"),
        "not-pem": ({"tls_server_config": {"cert_file": str(pki / "password"),
                                           "key_file": key}}, "cannot load cert_file"),
        "ca-without-auth": ({"tls_server_config": {**tls, "client_ca_file": "ca.crt"}},
                            "client_auth_type is NoClientCert"),
        "auth-without-ca": ({"tls_server_config": {
            **tls, "client_auth_type": "RequireAndVerifyClientCert"}}, "needs client_ca_file"),
        "unverified-client-cert": ({"tls_server_config": {
            **tls, "client_auth_type": "RequireAnyClientCert"}}, "not supported"),
        "bad-auth-type": ({"tls_server_config": {**tls, "client_auth_type": "Maybe"}},
                          "is not one of"),
        "bad-version": ({"tls_server_config": {**tls, "min_version": "TLS14"}}, "is not one of"),
        "versions-crossed": ({"tls_server_config": {**tls, "min_version": "TLS13",
                                                    "max_version": "TLS12"}}, "below"),
        "cipher-suites": ({"tls_server_config": {**tls, "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
                          "not supported"),
        "bad-header": ({"http_server_config": {"headers": {"Server": "x"}}},
                       "cannot be configured"),
    }[name]


BAD = ["missing", "yaml", "not-a-mapping", "unknown-key", "plain-password", "no-key",
       "missing-cert", "key-mismatch", "not-pem", "ca-without-auth", "auth-without-ca",
       "unverified-client-cert", "bad-auth-type", "bad-version", "versions-crossed",
       "cipher-suites", "bad-header"]


def _bad_file(pki: Path, tmp: Path, name: str) -> tuple[Path, str]:
    doc, needle = _bad(pki, tmp, name)
    path = tmp / f"{name}.yml"
    if doc is not None:
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path, needle


@pytest.mark.parametrize("name", BAD)
def test_bad_web_config_is_one_error_with_its_fix(pki, tmp_path, name):
    path, needle = _bad_file(pki, tmp_path, name)
    with pytest.raises(PodsnoopError) as e:
        webconfig.load(str(path))
    assert needle in e.value.message and str(path) in e.value.message, e.value.message
    assert e.value.fix and "\n" not in e.value.message + e.value.fix


@pytest.mark.parametrize("name", ["missing", "plain-password", "key-mismatch"])
def test_bad_web_config_ends_the_exporter_cleanly(kernel, pki, tmp_path, name):
    path, needle = _bad_file(pki, tmp_path, name)
    port = ExporterProcess().port
    r = subprocess.run([sys.executable, "-m", "exporter", *QUIET, "--listen",
                        f"127.0.0.1:{port}", "--web-config-file", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert len(lines) == 2, lines
    assert lines[0].startswith("podsnoop: error: --web-config-file") and needle in lines[0]
    assert lines[1].startswith("podsnoop: fix: ")
    with socket.socket() as s:   # and nothing was left listening
        s.bind(("127.0.0.1", port))


def test_empty_web_config_is_plain_http_and_good_files_load(pki, tmp_path):
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    cfg = webconfig.load(str(empty))
    assert cfg.ssl_context is None and not cfg.users and cfg.scheme == "http"
    cfg = webconfig.load(str(write_config(tmp_path, {
        "tls_server_config": {"cert_file": str(pki / "server.crt"),
                              "key_file": str(pki / "server.key"),
                              "client_auth_type": "VerifyClientCertIfGiven",
                              "client_ca_file": str(pki / "ca.crt"), "max_version": "TLS13"},
        "http_server_config": {"http2": False, "headers": {"x-frame-options": "deny"}},
        "basic_auth_users": {"a": bcrypt_hash("x", 4)}})))
    assert cfg.ssl_context.verify_mode == ssl.CERT_OPTIONAL
    assert cfg.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert cfg.headers == {"X-Frame-Options": "deny"} and list(cfg.users) == ["a"]


def test_basic_auth_checks_and_caches():
    auth = webconfig.BasicAuth({"a": bcrypt.hashpw(b"pw", bcrypt.gensalt(4))})

    def header(user, password):
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def main():
        assert await auth.allowed(header("a", "pw"))
        assert await auth.allowed(header("a", "pw"))
        assert not await auth.allowed(header("a", "pw2"))
        assert not await auth.allowed(header("b", "pw"))   # the dummy hash is a's
        assert not await auth.allowed(None)
        assert not await auth.allowed("Bearer x")
        assert not await auth.allowed("Basic !!!")
        assert not await auth.allowed("Basic " + base64.b64encode(b"nocolon").decode())
    asyncio.run(main())
    assert len(auth._cache) == 3


def test_web_flags_in_help_and_bad_max_requests():
    r = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True,
                       text=True, cwd=REPO)
    text = " ".join(r.stdout.split())
    assert "--web-config-file" in text and "PODSNOOP_WEB_CONFIG_FILE" in text
    assert "--max-requests" in text and "PODSNOOP_MAX_REQUESTS" in text
    r = subprocess.run([sys.executable, "-m", "exporter", "--max-requests", "-1"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "outside 0..100000" in r.stderr and "Traceback" not in r.stderr
    env = {**os.environ, "PODSNOOP_MAX_REQUESTS": "many"}
    r = subprocess.run([sys.executable, "-m", "exporter"], capture_output=True, text=True,
                       cwd=REPO, env=env)
    assert r.returncode == 2 and "PODSNOOP_MAX_REQUESTS='many'" in r.stderr

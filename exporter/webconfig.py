"""--web-config-file: TLS, client certificates, basic auth and response headers, in the
Prometheus exporter-toolkit's format (the file node_exporter and Prometheus itself read):

    tls_server_config:
      cert_file: server.crt            # relative paths: from the config file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default),
                                                     # VerifyClientCertIfGiven
      client_ca_file: ca.crt
      min_version: TLS12               # TLS10..TLS13; default TLS12
      max_version: TLS13
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      prometheus: $2b$12$...           # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

The file is read once, at start: restart podsnoop to apply a change (in Kubernetes, roll
the DaemonSet after changing the Secret). Anything podsnoop cannot honour exactly is an
error at start, never silently ignored: unknown keys, and the toolkit options Python's ssl
module cannot express (RequestClientCert and RequireAnyClientCert, i.e. asking for a client
certificate without verifying it; cipher_suites and curve_preferences, which are Go names).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
import ssl
from dataclasses import dataclass, field

from .errors import PodsnoopError

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# The exporter-toolkit allows exactly these response headers to be configured.
HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
           "X-XSS-Protection", "Strict-Transport-Security")
_KEYS = {
    "": {"tls_server_config", "http_server_config", "basic_auth_users"},
    "tls_server_config": {"cert_file", "key_file", "client_auth_type", "client_ca_file",
                          "min_version", "max_version", "prefer_server_cipher_suites"},
    "http_server_config": {"headers", "http2"},
}
_UNSUPPORTED = {  # valid for the toolkit, not expressible here
    "tls_server_config.cipher_suites": "the toolkit's Go cipher suite names have no exact "
                                       "OpenSSL equivalent; podsnoop uses OpenSSL's defaults",
    "tls_server_config.curve_preferences": "podsnoop uses OpenSSL's default curves",
    "tls_server_config.client_allowed_sans": "not implemented",
    "tls_server_config.cert": "give the certificate as cert_file",
    "tls_server_config.key": "give the key as key_file",
}
_BCRYPT = re.compile(r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}")
FIX = "correct the file (exporter-toolkit web configuration format, see the README)"


@dataclass
class WebConfig:
    path: str | None = None
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)   # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"


def _error(path: str, what: str, fix: str = FIX) -> PodsnoopError:
    return PodsnoopError(f"--web-config-file {path}: {what}", fix)


def _check_keys(path: str, section: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _error(path, f"{section or 'the file'} must be a mapping, not "
                           f"{type(value).__name__}")
    for key in value:
        dotted = f"{section}.{key}" if section else str(key)
        if dotted in _UNSUPPORTED:
            raise _error(path, f"{dotted} is not supported: {_UNSUPPORTED[dotted]}",
                         f"remove {dotted} from the file")
        if key not in _KEYS[section]:
            raise _error(path, f"unknown key {dotted}",
                         f"remove or correct it (known: {', '.join(sorted(_KEYS[section]))})")
    return value


def load(path: str | None) -> WebConfig:
    """Parse and check the file; every problem is one PodsnoopError (what, and the fix)."""
    if not path:
        return WebConfig()
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise _error(path, f"cannot read it: {e.strerror or e}",
                     "give the path of a readable web configuration file") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise _error(path, f"not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    doc = _check_keys(path, "", doc)
    base = os.path.dirname(os.path.abspath(path))
    cfg = WebConfig(path=path)
    tls = _check_keys(path, "tls_server_config", doc.get("tls_server_config"))
    if tls:
        cfg.ssl_context = _ssl_context(path, base, tls)
    http = _check_keys(path, "http_server_config", doc.get("http_server_config"))
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise _error(path, "http_server_config.headers must be a mapping")
    for name, value in headers.items():
        canonical = {h.lower(): h for h in HEADERS}.get(str(name).lower())
        if canonical is None:
            raise _error(path, f"header {name!r} cannot be configured",
                         f"use only {', '.join(HEADERS)}")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise _error(path, f"header {name}: the value must be one line of text")
        cfg.headers[canonical] = value
    if not isinstance(http.get("http2", True), bool):
        raise _error(path, "http_server_config.http2 must be true or false")
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise _error(path, "basic_auth_users must be a mapping of user name to bcrypt hash")
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise _error(path, f"basic_auth_users: {user!r} is not a user name")
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
            raise _error(path, f"basic_auth_users.{user}: not a bcrypt hash",
                         "give the bcrypt hash of the password, e.g. from "
                         "`htpasswd -nBC 12 \"\" | tr -d ':\\n'`, never the password itself")
        cfg.users[user] = hashed.encode()
    return cfg


def _ssl_context(path: str, base: str, tls: dict) -> ssl.SSLContext:
    def file(key: str) -> str | None:
        value = tls.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise _error(path, f"tls_server_config.{key} must be a file name")
        return os.path.join(base, value)

    cert, key, ca = file("cert_file"), file("key_file"), file("client_ca_file")
    if not cert or not key:
        missing = "cert_file" if not cert else "key_file"
        raise _error(path, f"tls_server_config needs {missing}",
                     "give both cert_file and key_file (or remove tls_server_config "
                     "to serve plain HTTP)")
    auth = tls.get("client_auth_type") or "NoClientCert"
    if auth in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert"):
        raise _error(path, f"client_auth_type {auth} (a client certificate without "
                           "verification) is not supported",
                     "use RequireAndVerifyClientCert or VerifyClientCertIfGiven with "
                     "client_ca_file")
    if auth not in CLIENT_AUTH:
        raise _error(path, f"client_auth_type {auth!r} is not one of "
                           f"{', '.join(CLIENT_AUTH)}")
    if ca and auth == "NoClientCert":
        raise _error(path, "client_ca_file is set but client_auth_type is NoClientCert",
                     "set client_auth_type: RequireAndVerifyClientCert (or remove "
                     "client_ca_file)")
    if auth != "NoClientCert" and not ca:
        raise _error(path, f"client_auth_type {auth} needs client_ca_file",
                     "give the CA that signs the scrapers' client certificates")
    versions = {}
    for k, default in (("min_version", "TLS12"), ("max_version", None)):
        v = tls.get(k) or default
        if v is not None and v not in TLS_VERSIONS:
            raise _error(path, f"tls_server_config.{k} {v!r} is not one of "
                               f"{', '.join(TLS_VERSIONS)}")
        versions[k] = v
    if versions["max_version"] and (list(TLS_VERSIONS).index(versions["max_version"])
                                    < list(TLS_VERSIONS).index(versions["min_version"])):
        raise _error(path, "max_version is below min_version")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = TLS_VERSIONS[versions["min_version"]]
        if versions["max_version"]:
            ctx.maximum_version = TLS_VERSIONS[versions["max_version"]]
    except ValueError as e:
        raise _error(path, f"this OpenSSL cannot set that TLS version: {e}") from None
    if tls.get("prefer_server_cipher_suites", True):
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    for what, f in (("cert_file", cert), ("key_file", key), ("client_ca_file", ca)):
        if f and not os.path.isfile(f):
            raise _error(path, f"tls_server_config.{what} {f} does not exist",
                         "mount the file there or correct the path (relative paths are "
                         "from the config file's directory)")
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise _error(path, f"cannot load cert_file {cert} with key_file {key}: "
                           f"{getattr(e, 'reason', None) or e}",
                     "give a PEM certificate and its matching PEM private key "
                     "(unencrypted)") from None
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as e:
            raise _error(path, f"cannot load client_ca_file {ca}: "
                               f"{getattr(e, 'reason', None) or e}",
                         "give the PEM certificate(s) of the client CA") from None
    ctx.verify_mode = CLIENT_AUTH[auth]
    return ctx


class BasicAuth:
    """Checks `Authorization: Basic` against the bcrypt hashes. bcrypt is slow by design
    (~0.1-0.3 s at cost 10-12), so checks run in a worker thread and a verdict is cached
    (keyed by a SHA-256 of user, password and hash, as the exporter-toolkit caches) so a
    scrape every few seconds costs one hash once. An unknown user is checked against a
    dummy hash, so the answer takes as long as for a known one."""

    MAX_CACHE = 1024

    def __init__(self, users: dict[str, bytes]):
        import bcrypt
        self._bcrypt = bcrypt
        self.users = users
        self._cache: dict[bytes, bool] = {}
        self._dummy = next(iter(users.values()), None)

    def _check(self, user: str, password: str) -> bool:
        hashed = self.users.get(user)
        candidate = hashed or self._dummy
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(),
                                          candidate))).digest()
        verdict = self._cache.get(key)
        if verdict is None:
            verdict = self._bcrypt.checkpw(password.encode(), candidate)
            if len(self._cache) >= self.MAX_CACHE:
                self._cache.clear()
            self._cache[key] = verdict
        return verdict and hashed is not None

    async def allowed(self, header: str | None) -> bool:
        if not header or not header[:6].lower() == "basic ":
            return False
        import base64
        import binascii
        try:
            user, sep, password = base64.b64decode(header[6:].strip(),
                                                   validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        return await asyncio.to_thread(self._check, user, password)

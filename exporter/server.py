"""HTTP endpoints: /metrics, /healthz, /readyz (aiohttp).

Collection reads BPF maps and builds text, so it runs in a worker thread and never blocks
the event loop (link events keep flowing during a scrape). Concurrent scrapes share one
collection in flight instead of each starting its own, whatever format they ask for (each
format is rendered once from it): 200 simultaneous requests cost one map read, memory stays
bounded, and collectors' delta state never sees two collections at once. More than
`max_requests` scrapes in flight: the rest get 503 at once (node_exporter's
--web.max-requests).

The format follows `Accept`: OpenMetrics 1.0 text when the scraper prefers
application/openmetrics-text (Prometheus does by default), else the 0.0.4 text format;
gzip when `Accept-Encoding` allows it.

With a web config (webconfig.py): basic auth on every endpoint but /healthz (a liveness
probe carries no credentials), and the configured headers on every response; TLS is the
listening socket's (app.start_server).
"""
from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

from .exposition import CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE, render
from .webconfig import BasicAuth, WebConfig

DEFAULT_MAX_REQUESTS = 40
# Level 1: ~3x faster than the default 6 on metric text, which still shrinks ~10x.
GZIP_LEVEL = 1


@dataclass
class Health:
    """What /readyz reports: ready once the programs are attached; degraded parts listed.

    A degraded part (e.g. the Kubernetes API unreachable) does not make podsnoop unready:
    it still counts and serves pod_uid-labelled samples.
    """
    attached: bool = False
    checks: dict[str, Callable[[], str | None]] = field(default_factory=dict)
    mode: str = ""  # node or sidecar

    def body(self) -> str:
        lines = ["ready" if self.attached else "not ready: programs not attached yet"]
        if self.mode:
            lines.append(f"mode: {self.mode}")
        for part, check in sorted(self.checks.items()):
            problem = check()
            lines.append(f"degraded: {part}: {problem}" if problem else f"ok: {part}")
        return "\n".join(lines) + "\n"


def _media_ranges(header: str) -> list[tuple[str, dict[str, str], float]]:
    """`Accept`/`Accept-Encoding` -> [(value, parameters, q)] in the header's order."""
    out = []
    for part in header.split(","):
        value, *params = (p.strip() for p in part.split(";"))
        if not value:
            continue
        args: dict[str, str] = {}
        for p in params:
            k, _, v = p.partition("=")
            args[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(args.pop("q", "1"))
        except ValueError:
            q = 0.0
        out.append((value.lower(), args, q))
    return out


def wants_openmetrics(accept: str) -> bool:
    """True when application/openmetrics-text has a higher q than text/plain (a tie goes
    to the 0.0.4 text format, as does no mention of OpenMetrics at all)."""
    om = text = 0.0
    for value, _, q in _media_ranges(accept):
        if value == "application/openmetrics-text":
            om = max(om, q)
        elif value in ("text/plain", "text/*", "*/*"):
            text = max(text, q)
    return om > 0 and om > text


def wants_gzip(accept_encoding: str) -> bool:
    return any(v in ("gzip", "*") and q > 0 for v, _, q in _media_ranges(accept_encoding))


def encode(registry, openmetrics: bool, compress: bool) -> bytes:
    body = render(registry, openmetrics)
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0) if compress else body


class _Collected:
    """Families already collected, offered to the renderer as a registry."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return iter(self.families)


class _Scrape:
    """One collection (registry.collect(), in a worker thread), rendered at most once per
    (format, gzip) for every request that shares it. Collectors keep delta state between
    collections (syscalls, execs...), so two collections must never run at once: requests
    for different formats share the collection too, not just the rendering."""

    def __init__(self, registry):
        loop = asyncio.get_running_loop()
        self.families = loop.run_in_executor(None, lambda: _Collected(list(registry.collect())))
        self.bodies: dict[tuple[bool, bool], asyncio.Future] = {}

    async def body(self, key: tuple[bool, bool]) -> bytes:
        collected = await asyncio.shield(self.families)
        future = self.bodies.get(key)
        if future is None:
            future = self.bodies[key] = asyncio.get_running_loop().run_in_executor(
                None, encode, collected, *key)
        return await asyncio.shield(future)


class MetricsHandler:
    def __init__(self, registry, max_requests: int = DEFAULT_MAX_REQUESTS):
        self.registry = registry
        self.max_requests = max_requests   # 0: no limit
        self.in_flight = 0                 # scrapes being answered now
        self._scrape: _Scrape | None = None  # the collection in flight, shared

    async def __call__(self, request: web.Request) -> web.Response:
        if self.max_requests and self.in_flight >= self.max_requests:
            return web.Response(status=503, text=f"too many scrapes in flight (more than "
                                                 f"--max-requests {self.max_requests})\n")
        self.in_flight += 1
        try:
            key = (wants_openmetrics(request.headers.get("Accept", "")),
                   wants_gzip(request.headers.get("Accept-Encoding", "")))
            scrape = self._scrape
            if scrape is None:
                scrape = self._scrape = _Scrape(self.registry)
                scrape.families.add_done_callback(lambda _f: self._collected(scrape))
            body = await scrape.body(key)
        finally:
            self.in_flight -= 1
        headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if key[0] else CONTENT_TYPE,
                   "Vary": "Accept, Accept-Encoding"}
        if key[1]:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    def _collected(self, scrape: _Scrape) -> None:
        if self._scrape is scrape:   # the next request starts the next collection
            self._scrape = None


METRICS = web.AppKey("metrics", MetricsHandler)
UNAUTHENTICATED = frozenset({"/healthz"})


def security_middleware(web_config: WebConfig):
    """Basic auth (all but UNAUTHENTICATED paths) and the configured response headers."""
    auth = BasicAuth(web_config.users) if web_config.users else None

    @web.middleware
    async def middleware(request: web.Request, handler):
        if auth is not None and request.path not in UNAUTHENTICATED:
            if not await auth.allowed(request.headers.get("Authorization")):
                response = web.Response(status=401, text="401 Unauthorized\n",
                                        headers={"WWW-Authenticate": "Basic"})
                response.headers.update(web_config.headers)
                return response
        try:
            response = await handler(request)
        except web.HTTPException as e:   # 404, 405...: still with the headers
            e.headers.update(web_config.headers)
            raise
        response.headers.update(web_config.headers)
        return response
    return middleware


def make_app(registry, health: Health, web_config: WebConfig | None = None,
             max_requests: int = DEFAULT_MAX_REQUESTS) -> web.Application:
    async def healthz(_):
        return web.Response(text="ok\n")

    async def readyz(_):
        return web.Response(text=health.body(), status=200 if health.attached else 503)

    async def index(_):
        return web.Response(text="podsnoop: see /metrics, /healthz, /readyz\n")

    middlewares = []
    if web_config is not None and (web_config.users or web_config.headers):
        middlewares.append(security_middleware(web_config))
    app = web.Application(middlewares=middlewares)
    app[METRICS] = MetricsHandler(registry, max_requests)
    app.router.add_get("/metrics", app[METRICS])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", index)
    return app

"""HTTP endpoints: /metrics, /healthz, /readyz (aiohttp).

Collection reads BPF maps and builds text, so it runs in a worker thread and never blocks
the event loop (link events keep flowing during a scrape). Concurrent scrapes share one
collection in flight instead of each starting its own: 200 simultaneous requests cost one
map read, and memory stays bounded.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

from .exposition import CONTENT_TYPE, render


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


class MetricsHandler:
    def __init__(self, registry):
        self.registry = registry
        self._inflight: asyncio.Future | None = None  # the collection in flight, shared

    async def __call__(self, request: web.Request) -> web.Response:
        # Always the 0.0.4 text format: every Prometheus accepts it, and it is the one we
        # render fast (exporter/exposition.py).
        future = self._inflight
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._inflight = loop.run_in_executor(None, render, self.registry)
            future.add_done_callback(self._done)
        body = await asyncio.shield(future)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    def _done(self, _future) -> None:
        self._inflight = None


def make_app(registry, health: Health) -> web.Application:
    async def healthz(_):
        return web.Response(text="ok\n")

    async def readyz(_):
        return web.Response(text=health.body(), status=200 if health.attached else 503)

    async def index(_):
        return web.Response(text="podsnoop: see /metrics, /healthz, /readyz\n")

    app = web.Application()
    app.router.add_get("/metrics", MetricsHandler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", index)
    return app

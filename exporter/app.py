"""Wire the parts together and run until SIGTERM/SIGINT, then detach everything."""
from __future__ import annotations

import asyncio
import errno
import logging
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from pyroute2 import AsyncIPRoute

from . import __version__, bpfload, names
from .cgroups import CgroupResolver
from .collectors.network import NetworkCollector
from .collectors.scrape import ScrapeCollector
from .config import Config
from .errors import PodsnoopError
from .labels import PodLabeler
from .links import LinkManager
from .podnetns import PodNetnsIndex
from .server import Health, make_app
from .tc import TC_H_EGRESS, TC_H_INGRESS, TcAttacher, owned_name

log = logging.getLogger("podsnoop")


class BuildInfo:
    def describe(self):
        return self.collect()

    def collect(self):
        g = GaugeMetricFamily(names.BUILD_INFO, "podsnoop's version.", labels=["version"])
        g.add_metric([__version__], 1)
        yield g


async def start_server(cfg: Config, registry, health: Health) -> web.AppRunner:
    runner = web.AppRunner(make_app(registry, health), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.host, cfg.port).start()
    except OSError as e:
        await runner.cleanup()
        why = "the port is in use" if e.errno == errno.EADDRINUSE else e.strerror
        raise PodsnoopError(f"cannot listen on {cfg.host}:{cfg.port}: {why}",
                            "stop the other process or choose another --listen HOST:PORT"
                            ) from None
    return runner


def load_network_programs(cfg: Config):
    net = bpfload.compile_program("net", bpfload.defines(NET_MAX_ENTRIES=cfg.net_map_entries))
    programs = {}
    for hook, fn in ((TC_H_INGRESS, "podsnoop_tc_ingress"), (TC_H_EGRESS, "podsnoop_tc_egress")):
        programs[hook] = (owned_name(fn), net.load_func(fn, net.SCHED_CLS).fd)
    return net, programs


async def run(cfg: Config) -> int:
    bpfload.preflight(need_tracefs=False)
    health = Health()
    registry = CollectorRegistry(auto_describe=True)
    runner = await start_server(cfg, registry, health)  # fail fast if the port is taken
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    links = None
    try:
        net, programs = load_network_programs(cfg)
        resolver = CgroupResolver()
        labeler = PodLabeler()
        async with AsyncIPRoute() as ipr:
            attacher = TcAttacher(ipr, programs, cfg.tc_priority)
            collector: list[NetworkCollector] = []
            links = LinkManager(attacher, PodNetnsIndex(ipr, resolver), cfg.interfaces,
                                on_removed=lambda link: collector[0].retire(link))
            collector.append(NetworkCollector(net, links, labeler, cfg.grace_seconds))
            registry.register(ScrapeCollector({"network": collector[0]}))
            registry.register(BuildInfo())
            await links.start()
            health.attached = True
            log.info("ready: %d pod interfaces, serving on %s:%d",
                     sum(link.attached for link in links.links.values()), cfg.host, cfg.port)
            await stop.wait()
            log.info("stopping: detaching from %d interfaces", len(links.links))
            health.attached = False
            await links.stop()
            links = None
    finally:
        if links is not None:  # an error after attaching: still leave nothing behind
            await links.stop()
        await runner.cleanup()
    return 0

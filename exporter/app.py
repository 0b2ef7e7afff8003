"""Wire the parts together and run until SIGTERM/SIGINT, then detach everything."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from pyroute2 import AsyncIPRoute

from . import __version__, bpfload, names
from .cgroups import CgroupError, CgroupResolver, find_cgroup2_mount
from .collectors.network import NetworkCollector
from .collectors.pods import PodCollector
from .collectors.scrape import ScrapeCollector
from .collectors.syscalls import SyscallCollector
from .kuberoots import RootSync, choose_level
from .config import Config
from .errors import PodsnoopError
from .labels import PodLabeler
from .links import LinkManager
from .memory import release_compiler_memory
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


LATENCY_MAX_ENTRIES = 32768
HOUSEKEEPING_SECONDS = 10.0


def load_syscall_programs(cfg: Config, resolver):
    """Compile and attach (bcc attaches TRACEPOINT_PROBEs on load) the syscall programs."""
    level = choose_level(resolver)
    bpf = bpfload.compile_program("syscalls", bpfload.defines(
        FILTER_PODS=int(cfg.syscall_scope == "pods"), KUBEPODS_LEVEL=level, LATENCY=1,
        SYSCALL_MAX_ENTRIES=cfg.syscall_map_entries, LATENCY_MAX_ENTRIES=LATENCY_MAX_ENTRIES))
    return bpf, RootSync(bpf["kubepods_roots"], resolver, level)


async def housekeeping(resolver, root_sync: RootSync | None, pod_index, links) -> None:
    """Notice gone pods and new kubepods roots (the scrape path never walks cgroupfs),
    forget deleted pods once their grace period is over, and look for tcx programs that
    would hide packets from our filters."""
    while True:
        links.check_tcx()
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
        try:
            await asyncio.to_thread(resolver.rescan)
            if root_sync is not None:
                root_sync.sync()
            if pod_index is not None:
                pod_index.expire()
        except Exception:
            log.exception("housekeeping failed")


def start_pod_watcher(cfg: Config):
    """The Kubernetes pod index and its watcher thread, or (None, None) without an API."""
    from . import kube
    try:
        client = kube.load_api_client(cfg.kube, cfg.kubeconfig)
    except Exception as e:  # an explicit kubeconfig that cannot be loaded
        raise PodsnoopError(f"cannot load the kubeconfig {cfg.kubeconfig}: {e}",
                            "fix the file, point --kubeconfig / KUBECONFIG elsewhere, or "
                            "run with --kube off") from None
    if client is None:
        return None, None
    index = kube.PodIndex(grace_seconds=cfg.grace_seconds)
    clients = iter([client])
    watcher = kube.PodWatcher(
        index, kube.node_name(cfg.node_name),
        lambda: next(clients, None) or kube.load_api_client(cfg.kube, cfg.kubeconfig),
        label_allowlist=cfg.pod_labels)
    return index, watcher.start()


def make_resolver(cfg: Config) -> CgroupResolver:
    try:
        if cfg.kubepods_root is None:
            return CgroupResolver()
        root = os.path.realpath(cfg.kubepods_root)
        mount = find_cgroup2_mount()
        if not os.path.isdir(root) or os.path.commonpath([root, mount]) != mount:
            raise PodsnoopError(f"--kubepods-root {cfg.kubepods_root} is not a directory of "
                                f"the cgroup v2 hierarchy at {mount}",
                                "point it at the kubelet's pod cgroup directory, or leave it "
                                "out to find it automatically")
        return CgroupResolver(root=mount, kubepods_roots=[root])
    except CgroupError as e:
        raise PodsnoopError(str(e), "run on a host with cgroup v2 (unified or hybrid) and "
                                    "mount the host's /sys/fs/cgroup into the container") from None


async def run(cfg: Config) -> int:
    bpfload.preflight(need_tracefs=cfg.syscalls)
    health = Health()
    registry = CollectorRegistry(auto_describe=True)
    runner = await start_server(cfg, registry, health)  # fail fast if the port is taken
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    links = None
    syscalls_bpf = None
    watcher = None
    tasks: list[asyncio.Task] = []
    try:
        resolver = make_resolver(cfg)
        net, programs = load_network_programs(cfg)
        pod_index, watcher = start_pod_watcher(cfg)
        labeler = PodLabeler(pod_index)
        collectors = {}
        if watcher is not None:
            collectors["kube"] = PodCollector(pod_index, watcher, cfg.pod_labels)
            health.checks["kube"] = lambda: None if watcher.state == "synced" else watcher.state
        root_sync = None
        if cfg.syscalls:
            syscalls_bpf, root_sync = load_syscall_programs(cfg, resolver)
            root_sync.sync()
            collectors["syscalls"] = SyscallCollector(
                syscalls_bpf, resolver, labeler, cfg.grace_seconds, top=cfg.syscall_top,
                allowlist=cfg.syscall_allowlist, series_cap=cfg.syscall_series_cap)
        async with AsyncIPRoute() as ipr:
            attacher = TcAttacher(ipr, programs, cfg.tc_priority)
            links = LinkManager(attacher, PodNetnsIndex(ipr, resolver), cfg.interfaces)
            network = NetworkCollector(net, links, labeler, cfg.grace_seconds)
            links.on_removed = network.retire
            registry.register(ScrapeCollector({"network": network, **collectors}))
            registry.register(BuildInfo())
            release_compiler_memory()  # every program is compiled by now
            await links.start()
            tasks.append(asyncio.create_task(housekeeping(resolver, root_sync, pod_index, links)))
            health.attached = True
            log.info("ready: %d pod interfaces, serving on %s:%d",
                     sum(link.attached for link in links.links.values()), cfg.host, cfg.port)
            await stop.wait()
            log.info("stopping: detaching from %d interfaces", len(links.links))
            health.attached = False
            await links.stop()
            links = None
    finally:
        for task in tasks:
            task.cancel()
        if watcher is not None:
            await asyncio.to_thread(watcher.stop)
        if links is not None:  # an error after attaching: still leave nothing behind
            await links.stop()
        if syscalls_bpf is not None:
            syscalls_bpf.cleanup()  # detaches the tracepoints
        await runner.cleanup()
    return 0

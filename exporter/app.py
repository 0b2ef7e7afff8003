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

from . import __version__, names
from . import programs as bpf_programs
from .cgroups import CgroupError, CgroupResolver, find_cgroup2_mount
from .collectors.container_net import ContainerNetworkCollector
from .collectors.container_net import load_programs as load_container_net_programs
from .collectors.drops import DropCollector, PodInterfaces
from .collectors.drops import load_programs as load_drop_programs
from .collectors.exec import ExecCollector, ExecLog, ExecLogEndpoint
from .collectors.exec import load_programs as load_exec_programs
from .collectors.network import NetworkCollector
from .collectors.pods import PodCollector
from .collectors.scrape import ScrapeCollector
from .collectors.syscalls import SyscallCollector
from .collectors.tcp import TcpCollector
from .collectors.tcp import load_programs as load_tcp_programs
from .kuberoots import RootSync, choose_level
from .config import Config
from .errors import PodsnoopError
from .labels import PodLabeler
from .links import LinkManager
from .memory import freeze_startup_objects, release_compiler_memory
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


async def start_server(cfg: Config, registry, health: Health,
                       routes: dict | None = None) -> web.AppRunner:
    app = make_app(registry, health)
    for path, handler in (routes or {}).items():  # e.g. /execs
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.host, cfg.port).start()
    except (OSError, UnicodeError) as e:   # getaddrinfo: UnicodeError for a bad name
        await runner.cleanup()
        if getattr(e, "errno", None) == errno.EADDRINUSE:
            why, fix = "the port is in use", ("stop the other process or choose another "
                                              "--listen HOST:PORT")
        else:
            why = getattr(e, "strerror", None) or str(e)
            fix = "choose a --listen HOST:PORT with an address of this node (or 0.0.0.0)"
        raise PodsnoopError(f"cannot listen on {cfg.host}:{cfg.port}: {why}", fix) from None
    return runner


def load_network_programs(cfg: Config):
    net = bpf_programs.load("net", cfg)  # compiled and loaded in the loader process
    programs = {}
    for hook, fn in ((TC_H_INGRESS, "podsnoop_tc_ingress"), (TC_H_EGRESS, "podsnoop_tc_egress")):
        programs[hook] = (owned_name(fn), net.load_func(fn, net.SCHED_CLS).fd)
    return net, programs


LATENCY_MAX_ENTRIES = bpf_programs.LATENCY_MAX_ENTRIES
HOUSEKEEPING_SECONDS = 10.0


def load_syscall_programs(cfg: Config, resolver):
    """The syscall programs, compiled, loaded and attached (RAW_TRACEPOINT_PROBEs) by the
    loader process (flags: programs._syscalls)."""
    bpf = bpf_programs.load("syscalls", cfg, resolver)
    return bpf, RootSync(bpf["kubepods_roots"], resolver, choose_level(resolver))


FEATURE_SYNC_SECONDS = 1.0


async def sync_feature_maps(syncs: list) -> None:
    """Keep the feature programs' filter maps (kubepods roots, pod interfaces) current:
    cheap (no cgroup walk), so once a second."""
    while True:
        for sync in syncs:
            try:
                sync.sync()
            except Exception:
                log.exception("syncing a feature map failed")
        await asyncio.sleep(FEATURE_SYNC_SECONDS)


async def housekeeping(resolver, root_sync: RootSync | None, pod_index, links) -> None:
    """Notice gone pods and new kubepods roots (the scrape path never walks cgroupfs),
    forget deleted pods once their grace period is over, and look for tcx programs that
    would hide packets from our filters."""
    while True:
        links.check_tcx()
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
        try:
            await asyncio.to_thread(resolver.rescan, full=False)
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
    # bcc compiles in loader processes, never here (programs.py)
    bpf_programs.start(cfg, need_tracefs=cfg.syscalls or cfg.exec or cfg.tcp or cfg.drops)
    health = Health()
    registry = CollectorRegistry(auto_describe=True)
    execs = ExecLogEndpoint()
    # fail fast if the port is taken
    runner = await start_server(cfg, registry, health, {"/execs": execs})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    links = None
    syscalls_bpf = None
    watcher = None
    tasks: list[asyncio.Task] = []
    cleanups: list = []  # the feature programs' cleanups, run last-first
    syncs: list = []     # their filter maps, kept current by sync_feature_maps
    try:
        resolver = make_resolver(cfg)
        bpf_programs.request(resolver)  # every enabled program starts compiling now
        net, programs = load_network_programs(cfg)
        pod_index, watcher = start_pod_watcher(cfg)
        labeler = PodLabeler(pod_index)
        collectors = {}
        if watcher is not None:
            collectors["kube"] = PodCollector(pod_index, watcher, cfg.pod_labels)
            health.checks["kube"] = lambda: (None if watcher.state == "synced" else
                                             watcher.state.removeprefix("degraded: "))
        root_sync = None
        if cfg.syscalls:
            syscalls_bpf, root_sync = load_syscall_programs(cfg, resolver)
            root_sync.sync()
            collectors["syscalls"] = SyscallCollector(
                syscalls_bpf, resolver, labeler, cfg.grace_seconds, top=cfg.syscall_top,
                allowlist=cfg.syscall_allowlist, series_cap=cfg.syscall_series_cap)
        if cfg.exec:
            exec_bpf, exec_sync = load_exec_programs(cfg, resolver)
            cleanups.append(exec_bpf.cleanup)
            exec_sync.sync()
            syncs.append(exec_sync)
            collectors["exec"] = ExecCollector(exec_bpf, resolver, labeler, cfg.grace_seconds,
                                               top=cfg.exec_top, series_cap=cfg.exec_series_cap)
            if cfg.exec_log:
                execs.log = collectors["exec"].log = ExecLog(
                    exec_bpf, resolver, labeler, cfg.exec_log, cfg.grace_seconds).start()
                cleanups.append(execs.log.stop)
        # --- resize on exec (issue 8) -------------------------------------------------
        if cfg.resize != "off":
            from .resize.programs import ResizeOnExec
            resize = ResizeOnExec(cfg, resolver, pod_index)
            cleanups.append(resize.stop)
            collectors["resize"] = resize.collector
        # --- end resize on exec ----------------------------------------------------------
        if cfg.tcp:
            tcp_bpf, tcp_sync = load_tcp_programs(cfg, resolver)
            cleanups.append(tcp_bpf.cleanup)
            tcp_sync.sync()
            syncs.append(tcp_sync)
            collectors["tcp"] = TcpCollector(tcp_bpf, resolver, labeler, cfg.grace_seconds)
        if cfg.container_network:
            cnet_bpf, cnet_links = load_container_net_programs(cfg, resolver)
            cleanups.append(cnet_bpf.cleanup)
            cleanups.append(cnet_links.close)  # links closed before the programs go
            syncs.append(cnet_links)
            collectors["container_network"] = ContainerNetworkCollector(
                cnet_bpf, resolver, labeler, cfg.grace_seconds)
        drops_bpf = None
        if cfg.drops:
            drops_bpf = load_drop_programs(cfg)
            cleanups.append(drops_bpf.cleanup)
        async with AsyncIPRoute() as ipr:
            attacher = TcAttacher(ipr, programs, cfg.tc_priority)
            links = LinkManager(attacher, PodNetnsIndex(ipr, resolver), cfg.interfaces)
            network = NetworkCollector(net, links, labeler, cfg.grace_seconds)
            links.on_removed = network.retire
            if drops_bpf is not None:
                syncs.append(PodInterfaces(drops_bpf["pod_ifindexes"], links))
                collectors["drops"] = DropCollector(drops_bpf, links, resolver, labeler,
                                                    cfg.grace_seconds)
            registry.register(ScrapeCollector({"network": network, **collectors}))
            registry.register(BuildInfo())
            release_compiler_memory()  # every program is compiled by now
            await links.start()
            freeze_startup_objects()
            tasks.append(asyncio.create_task(housekeeping(resolver, root_sync, pod_index, links)))
            tasks.append(asyncio.create_task(sync_feature_maps(syncs)))
            health.attached = True
            log.info("ready: %d pod interfaces, serving on %s:%d",
                     sum(link.attached for link in links.links.values()), cfg.host, cfg.port)
            await stop.wait()
            log.info("stopping: detaching from %d interfaces", len(links.links))
            health.attached = False
            await links.stop()
            links = None
    finally:
        bpf_programs.stop()  # loader children still running after an error
        for task in tasks:
            task.cancel()
        if watcher is not None:
            await asyncio.to_thread(watcher.stop)
        if links is not None:  # an error after attaching: still leave nothing behind
            await links.stop()
        if syscalls_bpf is not None:
            syscalls_bpf.cleanup()  # detaches the tracepoints
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception:
                log.exception("cleaning up failed")
        await runner.cleanup()
    return 0

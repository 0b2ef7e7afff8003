"""Wire the parts together and run until SIGTERM/SIGINT, then detach everything."""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from pyroute2 import AsyncIPRoute

from . import __version__, bpfload, names, webconfig
from . import loader as bpf_programs
from .cgroups import CgroupError, CgroupResolver, find_cgroup2_mount
from .bpffd import possible_cpus
from .collectors.container_net import ContainerNetworkCollector
from .collectors.container_net import load_programs as load_container_net_programs
from .collectors.dns import DnsCollector
from .collectors.dns import load_programs as load_dns_programs
from .collectors.drops import DropCollector, OwnNetns, PodInterfaces
from .collectors.drops import load_programs as load_drop_programs
from .collectors.exec import ExecCollector, ExecLog, ExecLogEndpoint
from .collectors.exec import load_programs as load_exec_programs
from .collectors.network import NetworkCollector
from .collectors.peers import PeersCollector, PeerTable, node_addresses
from .collectors.peers import load_programs as load_peer_programs
from .collectors.pods import PodCollector
from .collectors.programs import ProgramCostCollector
from .bpfstats import RunTimeStats, StatsSampler
from .collectors.scrape import ScrapeCollector
from .collectors.syscalls import SyscallCollector
from .collectors.tcp import TcpCollector
from .collectors.tcp import load_programs as load_tcp_programs
from .kuberoots import OwnPod, RootSync, choose_level
from .config import Config
from .collectors.status import CollectorStatus
from .errors import CollectorUnavailable, PodsnoopError
from .labels import PodLabeler
from .links import LinkManager, OwnPodNetns, is_own_interface, is_pod_veth
from .mode import PodIdentity, detect_mode, pod_identity
from .peers import PeerDirectory
from .memory import freeze_startup_objects, release_compiler_memory
from .podnetns import PodNetnsIndex
from .server import Health, make_app
from . import tcx
from .tc import HOOK_NAMES, TC_H_EGRESS, TC_H_INGRESS, TcAttacher, owned_name

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
    web_config = webconfig.load(cfg.web_config_file)  # PodsnoopError when bad
    app = make_app(registry, health, web_config, cfg.max_requests)
    for path, handler in (routes or {}).items():  # e.g. /execs
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.host, cfg.port,
                          ssl_context=web_config.ssl_context).start()
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
    net = bpf_programs.load("net", cfg)  # precompiled, loaded by libbpf
    programs = {}
    for hook, fn in ((TC_H_INGRESS, "podsnoop_tc_ingress"), (TC_H_EGRESS, "podsnoop_tc_egress")):
        programs[hook] = (owned_name(fn), net.load_func(fn, net.SCHED_CLS).fd)
    return net, programs


LATENCY_MAX_ENTRIES = bpf_programs.LATENCY_MAX_ENTRIES
HOUSEKEEPING_SECONDS = 10.0


def load_syscall_programs(cfg: Config, resolver):
    """The syscall programs, loaded and attached (raw tracepoints) by libbpf (what they are
    given: loader._syscalls_object)."""
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


def start_pod_watcher(cfg: Config, identity: PodIdentity | None = None):
    """The Kubernetes pod index and its watcher thread, or (None, None) without an API.
    A sidecar's index holds its own pod from the downward API at once; with API access
    (optional: a Role to read its own pod) a watcher of that one pod adds container names."""
    from . import kube
    try:
        client = kube.load_api_client(cfg.kube, cfg.kubeconfig)
    except Exception as e:  # an explicit kubeconfig that cannot be loaded
        raise PodsnoopError(f"cannot load the kubeconfig {cfg.kubeconfig}: {e}",
                            "fix the file, point --kubeconfig / KUBECONFIG elsewhere, or "
                            "run with --kube off") from None
    index = kube.PodIndex(grace_seconds=cfg.grace_seconds)
    if identity is not None:  # known before (and without) any API access
        labels = kube.LabelAllowlist(cfg.pod_labels).select(identity.labels)
        index.upsert(kube.PodMeta(identity.uid, identity.namespace, identity.name,
                                  identity.node, labels=labels))
    if client is None:
        return (index if identity is not None else None), None
    clients = iter([client])
    watcher = kube.PodWatcher(
        index, kube.node_name(cfg.node_name),
        lambda: next(clients, None) or kube.load_api_client(cfg.kube, cfg.kubeconfig),
        label_allowlist=cfg.pod_labels,
        own_pod=(identity.namespace, identity.name) if identity is not None else None)
    return index, watcher.start()


def start_peer_watchers(cfg: Config, directory) -> list:
    """Every pod and Service of the cluster into the peer directory (exporter/peerwatch.py),
    or nothing without an API (then peers are the node, --peer-cidrs names and world)."""
    from . import kube
    if cfg.kube == "off":
        return []
    try:
        client = kube.load_api_client(cfg.kube, cfg.kubeconfig)
    except Exception:  # noqa: BLE001 - start_pod_watcher already said why, and stopped
        return []
    if client is None:
        return []
    from .peerwatch import start_peer_watchers as start
    clients = iter([client])
    return start(directory, lambda: next(clients, None) or kube.load_api_client(
        cfg.kube, cfg.kubeconfig))


def resize_on_exec(cfg: Config, resolver, pod_index):
    from .resize.programs import ResizeOnExec
    return ResizeOnExec(cfg, resolver, pod_index)


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


# Collector -> the Config field of the flag that turns it off (None: no flag).
COLLECTOR_FLAGS = {"network": None, "syscalls": "syscalls", "exec": "exec", "tcp": "tcp",
                   "container_network": "container_network", "dns": "dns", "peers": "peers",
                   "drops": "drops", "resize": "resize"}


def load_collector(cfg: Config, status: CollectorStatus, collector: str, load):
    """load() for one collector, or None where this kernel cannot run it and its flag was
    left at the default: then it is off alone (status: metric, /readyz, one warning). A
    flag the user set explicitly that cannot be honoured stays a hard error."""
    field = COLLECTOR_FLAGS[collector]
    flag = "--" + field.replace("_", "-") if field else None
    try:
        loaded = load()
    except CollectorUnavailable as e:
        if field is not None and cfg.is_explicit(field):
            raise PodsnoopError(e.message, "; ".join(filter(None, (
                e.fix, f"or run with {flag} off")))) from None
        status.disable(collector, flag, e)
        return None
    status.running(collector)
    return loaded


def choose_attacher(cfg: Config, clsact: TcAttacher):
    """tcx links at the head of each chain where the kernel has tcx (so a CNI's tcx program
    cannot hide packets), else classic clsact filters."""
    if not clsact.programs:  # the network collector is off: nothing to attach
        return clsact
    if cfg.tc_attach == "clsact" or (cfg.tc_attach == "auto" and not tcx.supported()):
        log.info("packet programs attach as clsact filters (priority %d)", cfg.tc_priority)
        return clsact
    if not tcx.supported():
        raise PodsnoopError("--tc-attach tcx: this kernel has no tcx (it came in 6.6)",
                            "use --tc-attach clsact (or auto)")
    log.info("packet programs attach as tcx links at the head of each chain")
    return tcx.TcxAttacher(clsact, {HOOK_NAMES[hook]: fd
                                    for hook, (_, fd) in clsact.programs.items()})


def own_pod_scope(resolver, identity: PodIdentity) -> OwnPod:
    scope = OwnPod(resolver, identity.uid)
    if not scope.kubepods_roots:
        raise PodsnoopError(f"sidecar mode: the cgroup of pod {identity.uid} was not found "
                            f"below {resolver.root}",
                            "mount the node's /sys/fs/cgroup into the sidecar (hostPath, "
                            "read-only) and check that POD_UID is the pod's metadata.uid")
    return scope


async def run(cfg: Config) -> int:
    mode, why = (cfg.mode, "set by --mode") if cfg.mode != "auto" else detect_mode()
    identity = pod_identity(cfg.pod_info_dir) if mode == "sidecar" else None
    cfg = dataclasses.replace(cfg, mode=mode)  # resolved: the loaders compile for it
    bpf_programs.start(cfg, need_tracefs=bool(cfg.tcp or cfg.drops or cfg.programs
                                              or cfg.program_crds))
    health = Health(mode=mode)
    status = CollectorStatus()
    health.checks["collectors"] = status.problem
    registry = CollectorRegistry(auto_describe=True)
    execs = ExecLogEndpoint()
    # fail fast if the port is taken
    runner = await start_server(cfg, registry, health, {"/execs": execs})
    log.info("mode: %s (%s)%s", mode, why,
             f"; pod {identity.namespace}/{identity.name} uid {identity.uid}" if identity else "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    links = None
    syscalls_bpf = None
    watcher = None
    tasks: list[asyncio.Task] = []
    cleanups: list = []  # the feature programs' cleanups, run last-first
    programs: dict[str, int] = {}  # every loaded program's fd, for its run-time statistics
    stats: StatsSampler | None = None
    syncs: list = []     # their filter maps, kept current by sync_feature_maps
    try:
        resolver = make_resolver(cfg)
        # What the programs count as "in a pod": every pod below the kubepods roots, or in
        # sidecar mode only this pod's cgroup (filtered in the kernel).
        scope = own_pod_scope(resolver, identity) if identity else resolver
        net, tc_programs = load_collector(cfg, status, "network",
                                          lambda: load_network_programs(cfg)) or (None, {})
        if net is not None:
            programs.update(bpfload.program_fds(net, "net"))
        pod_index, watcher = start_pod_watcher(cfg, identity)
        labeler = PodLabeler(pod_index)
        collectors = {}
        if pod_index is not None:
            collectors["kube"] = PodCollector(pod_index, watcher, cfg.pod_labels)
        if watcher is not None:
            health.checks["kube"] = lambda: (None if watcher.state == "synced" else
                                             watcher.state.removeprefix("degraded: "))
        root_sync = None
        loaded = cfg.syscalls and load_collector(cfg, status, "syscalls",
                                                 lambda: load_syscall_programs(cfg, scope))
        if loaded:
            syscalls_bpf, root_sync = loaded
            programs.update(bpfload.program_fds(syscalls_bpf, "syscalls"))
            root_sync.sync()
            collectors["syscalls"] = SyscallCollector(
                syscalls_bpf, resolver, labeler, cfg.grace_seconds, top=cfg.syscall_top,
                allowlist=cfg.syscall_allowlist, series_cap=cfg.syscall_series_cap)
        loaded = cfg.exec and load_collector(cfg, status, "exec",
                                             lambda: load_exec_programs(cfg, scope))
        if loaded:
            exec_bpf, exec_sync = loaded
            programs.update(bpfload.program_fds(exec_bpf, "exec"))
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
        resize = cfg.resize != "off" and load_collector(
            cfg, status, "resize", lambda: resize_on_exec(cfg, resolver, pod_index))
        if resize:
            cleanups.append(resize.stop)
            collectors["resize"] = resize.collector
            programs.update(bpfload.program_fds(resize.bpf, "resize"))
        # --- end resize on exec ----------------------------------------------------------
        loaded = cfg.tcp and load_collector(cfg, status, "tcp",
                                            lambda: load_tcp_programs(cfg, scope))
        if loaded:
            tcp_bpf, tcp_sync = loaded
            programs.update(bpfload.program_fds(tcp_bpf, "tcp"))
            cleanups.append(tcp_bpf.cleanup)
            tcp_sync.sync()
            syncs.append(tcp_sync)
            collectors["tcp"] = TcpCollector(tcp_bpf, resolver, labeler, cfg.grace_seconds)
        loaded = cfg.container_network and load_collector(
            cfg, status, "container_network", lambda: load_container_net_programs(cfg, scope))
        if loaded:
            cnet_bpf, cnet_links = loaded
            programs.update(bpfload.program_fds(cnet_bpf, "container_net"))
            cleanups.append(cnet_bpf.cleanup)
            cleanups.append(cnet_links.close)  # links closed before the programs go
            syncs.append(cnet_links)
            collectors["container_network"] = ContainerNetworkCollector(
                cnet_bpf, resolver, labeler, cfg.grace_seconds)
        loaded = cfg.dns and load_collector(cfg, status, "dns",
                                            lambda: load_dns_programs(cfg, scope))
        if loaded:
            dns_bpf, dns_links = loaded
            programs.update(bpfload.program_fds(dns_bpf, "dns"))
            cleanups.append(dns_bpf.cleanup)
            cleanups.append(dns_links.close)  # links closed before the programs go
            syncs.append(dns_links)
            collectors["dns"] = DnsCollector(dns_bpf, resolver, labeler, cfg.grace_seconds,
                                             cfg.dns_timeout, domains=cfg.dns_domains)
        loaded = cfg.peers and load_collector(cfg, status, "peers",
                                              lambda: load_peer_programs(cfg, scope))
        if loaded:
            peers_bpf, peers_roots, peers_links = loaded
            programs.update(bpfload.program_fds(peers_bpf, "peers"))
            cleanups.append(peers_bpf.cleanup)
            cleanups.append(peers_links.close)  # links closed before the programs go
            peers_roots.sync()
            directory = PeerDirectory()
            peer_table = PeerTable(peers_bpf, directory, cfg.peer_cidrs,
                                   node_addresses=None if identity else node_addresses)
            peer_table.sync()
            syncs += [peers_roots, peers_links, peer_table]
            # A sidecar may read only its own pod: its peers are CIDR names and world.
            peer_watchers = [] if identity else start_peer_watchers(cfg, directory)
            cleanups += [w.stop for w in peer_watchers]
            if peer_watchers:   # /readyz: "degraded: peers: services: HTTP 403 ..."
                health.checks["peers"] = lambda ws=peer_watchers: "; ".join(
                    f"{w.resource}: {w.state.removeprefix('degraded: ')}"
                    for w in ws if w.state != "synced") or None
            collectors["peers"] = PeersCollector(
                peers_bpf, resolver, labeler, cfg.grace_seconds, peer_table,
                top=cfg.peer_top, series_cap=cfg.peer_series_cap)
        # a sidecar's drops: its own namespace only
        drops_bpf = cfg.drops and load_collector(cfg, status, "drops",
                                                 lambda: load_drop_programs(cfg)) or None
        if drops_bpf is not None:
            programs.update(bpfload.program_fds(drops_bpf, "drops"))
            cleanups.append(drops_bpf.cleanup)
        status.require_one()
        # --- user programs (issue 14) ------------------------------------------------
        if cfg.programs or cfg.program_crds:
            from .programs.manager import ProgramManager, reserved_names, start_crd_watcher
            user_programs = ProgramManager(scope, resolver, labeler, pod_index,
                                           cfg.grace_seconds, lambda: links,
                                           reserved_names(collectors))
            cleanups.append(user_programs.close)
            if cfg.programs:
                user_programs.load_dir(cfg.programs)
            if cfg.program_crds:
                cleanups.append(start_crd_watcher(cfg, user_programs).stop)
            syncs.append(user_programs)
            collectors["user_programs"] = user_programs
        # --- end user programs ---------------------------------------------------------
        async with AsyncIPRoute() as ipr:
            attacher = choose_attacher(cfg, TcAttacher(ipr, tc_programs, cfg.tc_priority))
            if identity is None:
                links = LinkManager(attacher, PodNetnsIndex(ipr, resolver), cfg.interfaces,
                                    selects=is_pod_veth)
            else:
                links = LinkManager(attacher, OwnPodNetns(identity.uid), cfg.interfaces,
                                    selects=is_own_interface)
            if net is not None:
                network = NetworkCollector(net, links, labeler, cfg.grace_seconds,
                                           cfg.net_buckets, possible_cpus())
                links.on_removed = network.retire
                links.on_adding = network.claim
                cleanups.append(network.buckets.close)
                collectors = {"network": network, **collectors}
            if drops_bpf is not None:
                syncs.append(PodInterfaces(drops_bpf["pod_ifindexes"], links))
                collectors["drops"] = DropCollector(
                    drops_bpf, links, resolver, labeler, cfg.grace_seconds,
                    netns=OwnNetns(identity.uid) if identity else None)
            if cfg.bpf_stats != "off":
                sampled = cfg.bpf_stats == "sampled"
                stats = StatsSampler(RunTimeStats(), cfg.bpf_stats_window if sampled else None,
                                     cfg.bpf_stats_interval)
                stats.start()
                tasks.append(asyncio.create_task(stats.run()))
                collectors["programs"] = ProgramCostCollector(programs, stats)
            registry.register(ScrapeCollector(collectors))
            registry.register(BuildInfo())
            registry.register(status)
            # The start-up's freed heap, and the compiler's pages where --programs compiled
            # user programs in this process (podsnoop's own programs are precompiled).
            release_compiler_memory()
            await links.start()
            freeze_startup_objects()
            tasks.append(asyncio.create_task(housekeeping(resolver, root_sync, pod_index, links)))
            tasks.append(asyncio.create_task(sync_feature_maps(syncs)))
            health.attached = True
            log.info("ready (%s mode): %d pod interfaces, serving on %s:%d", mode,
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
        if stats is not None:
            stats.close()
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception:
                log.exception("cleaning up failed")
        await runner.cleanup()
    return 0

"""Helpers for the soak and fault tests: a pod factory several threads can use, a
background scraper, RSS, a read-only view of the exporter's BPF maps (keys only, by the
bpf(2) syscall), and a delaying TCP proxy.

Nothing here changes the exporter: the map view opens the running exporter's maps by id
(read from /proc/<pid>/fdinfo) and only walks their keys.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import platform
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from exporter.exporterproc import Metrics
from exporter.testpods import PodFactory


# --- pods made by several threads ----------------------------------------------------------

class ThreadSafePodFactory(PodFactory):
    """A PodFactory whose create() may run in several threads at once.

    create() numbers pods with `self._count += 1; n = self._count`; here the assignment
    reserves the next number for the calling thread and reading gives that thread its own
    number, so two threads never make the same netns or veth name. A /30 handed to one
    thread is not handed to another before its address shows in `ip addr`. The rest of
    create() (iproute2 commands, cgroup directories) is independent per pod.
    """

    _guard = threading.Lock()
    _subnet_guard = threading.Lock()

    def _free_subnet(self):
        with self._subnet_guard:
            given = self.__dict__.setdefault("_given", set())
            for _ in range(100):
                block = super()._free_subnet()
                if block not in given:
                    given.add(block)
                    return block
        raise RuntimeError("no free /30 found")

    @property
    def _count(self) -> int:
        local = self.__dict__.get("_local")
        return getattr(local, "n", 0) if local is not None else 0

    @_count.setter
    def _count(self, _value: int) -> None:
        with self._guard:
            if "_local" not in self.__dict__:
                self.__dict__["_local"] = threading.local()
                self.__dict__["_next"] = 0
            self.__dict__["_next"] += 1
            self.__dict__["_local"].n = self.__dict__["_next"]


# --- process figures -----------------------------------------------------------------------

def rss_kb(pid: int) -> int:
    """VmRSS of a process, in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def established_to(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is `port` (server side)."""
    want = f":{port:04X}"
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "01":
                        n += 1
        except FileNotFoundError:
            pass
    return n


def fresh_metrics(proc) -> Metrics:
    """/metrics from a collection that started after this call.

    Concurrent scrapes share the collection in flight, so a request that arrives while one
    runs (e.g. a background scraper's) gets values read before it arrived. A second
    request, sent once the first is answered, cannot share that collection any more.
    """
    proc.get("/metrics")
    return proc.metrics()


# --- continuous scraping ---------------------------------------------------------------------

@dataclass
class ScrapeLog:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    checks_failed: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies) + len(self.failures)

    def percentile(self, p: float) -> float:
        data = sorted(self.latencies)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(round(p / 100 * (len(data) - 1))))]

    def summary(self) -> str:
        if not self.latencies:
            return f"no successful scrape ({len(self.failures)} failed)"
        return (f"{self.count} scrapes, {len(self.failures)} failed; latency ms "
                f"p50 {self.percentile(50) * 1e3:.1f} p95 {self.percentile(95) * 1e3:.1f} "
                f"p99 {self.percentile(99) * 1e3:.1f} max {max(self.latencies) * 1e3:.1f}")


class Scraper:
    """GET /metrics in a thread, `interval` seconds after the previous answer (a busy
    exporter is not scraped back to back); every answer must be 200 and parse.
    `check(metrics)` may return a problem string, recorded in `log.checks_failed`."""

    def __init__(self, url: str, interval: float = 0.075, timeout: float = 10.0,
                 check=None, parse: bool = True, accept: str | None = None):
        self.url = url + "/metrics"
        self.headers = {"Accept": accept} if accept else {}
        self.interval = interval
        self.timeout = timeout
        self.check = check
        self.parse = parse
        self.log = ScrapeLog()
        self.last: Metrics | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def start(self) -> "Scraper":
        self._thread.start()
        return self

    def stop(self) -> ScrapeLog:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return self.log

    def __enter__(self) -> "Scraper":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                request = urllib.request.Request(self.url, headers=self.headers)
                with urllib.request.urlopen(request, timeout=self.timeout) as r:
                    status, body = r.status, r.read().decode()
                took = time.monotonic() - start
                if status != 200:
                    self.log.failures.append(f"status {status}")
                else:
                    if self.parse and self.headers.get("Accept", "").startswith(
                            "application/openmetrics-text"):
                        from prometheus_client.openmetrics.parser import \
                            text_string_to_metric_families
                        list(text_string_to_metric_families(body))
                    elif self.parse:
                        m = Metrics(body)   # raises on a body that does not parse
                        self.last = m
                        if self.check is not None:
                            problem = self.check(m)
                            if problem:
                                self.log.checks_failed.append(problem)
                    self.log.latencies.append(took)
            except urllib.error.HTTPError as e:
                self.log.failures.append(f"HTTP {e.code}")
            except Exception as e:  # noqa: BLE001 - any failure of a scrape is recorded
                self.log.failures.append(f"{type(e).__name__}: {e}")
            self._stop.wait(self.interval)


# --- the exporter's BPF maps, read-only --------------------------------------------------------

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
BPF_MAP_GET_NEXT_KEY, BPF_MAP_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 4, 14, 15
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    r = _libc.syscall(ctypes.c_long(_NR_BPF), ctypes.c_int(cmd), attr,
                      ctypes.c_uint(ctypes.sizeof(attr)))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _map_fd(map_id: int) -> int:
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<I", attr, 0, map_id)
    return _bpf(BPF_MAP_GET_FD_BY_ID, attr)


def _map_info(fd: int) -> tuple[str, int, int, int]:
    """(name, key_size, value_size, max_entries)."""
    info = ctypes.create_string_buffer(256)
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIQ", attr, 0, fd, ctypes.sizeof(info), ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    _type, _id, key_size, value_size, max_entries, _flags = struct.unpack_from("<6I", info, 0)
    name = info.raw[24:40].split(b"\0", 1)[0].decode()
    return name, key_size, value_size, max_entries


def map_exists(map_id: int) -> bool:
    try:
        os.close(_map_fd(map_id))
        return True
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise


def map_ids(pid: int) -> dict[str, int]:
    """BPF map name -> id, for the maps process `pid` holds open (bcc's names, which the
    kernel truncates to 15 characters)."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = open(f"/proc/{pid}/fdinfo/{fd}").read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("map_id:"):
                map_id = int(line.split()[1])
                try:
                    mfd = _map_fd(map_id)
                except OSError:
                    continue
                try:
                    out[_map_info(mfd)[0]] = map_id
                finally:
                    os.close(mfd)
    return out


def map_keys(map_id: int) -> list[bytes]:
    """Every key of a map (raw bytes), by BPF_MAP_GET_NEXT_KEY. The map may change while it
    is walked; keys are de-duplicated and the walk is bounded."""
    fd = _map_fd(map_id)
    try:
        _, key_size, _, max_entries = _map_info(fd)
        key = ctypes.create_string_buffer(key_size)
        nxt = ctypes.create_string_buffer(key_size)
        attr = ctypes.create_string_buffer(64)
        seen: dict[bytes, None] = {}
        first = True
        for _ in range(2 * max_entries + 2):
            struct.pack_into("<IIQQ", attr, 0, fd, 0,
                             0 if first else ctypes.addressof(key), ctypes.addressof(nxt))
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    break
                raise
            raw = nxt.raw
            if raw in seen:   # the walk restarted (its key was deleted meanwhile)
                break
            seen[raw] = None
            ctypes.memmove(key, nxt, key_size)
            first = False
        return list(seen)
    finally:
        os.close(fd)


def net_keys(pid: int) -> list[tuple[int, int, int]]:
    """(ifindex, dir, proto) of every net_counters entry of exporter `pid`."""
    return [struct.unpack_from("<IBB", k) for k in map_keys(map_ids(pid)["net_counters"])]


def bucket_owners(pid: int) -> set[int]:
    """The ifindexes counting in a bucket of exporter `pid`'s net_buckets (read through the
    map's mmap, as the exporter does; bpf/net.bpf.c's struct net_slot starts with it)."""
    import mmap
    from exporter.bpfconsts import NET_SLOT_SIZE
    fd = _map_fd(map_ids(pid)["net_buckets"])
    try:
        _, _, _, max_entries = _map_info(fd)
        size = -(-max_entries * NET_SLOT_SIZE // mmap.PAGESIZE) * mmap.PAGESIZE
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as mem:
            return {struct.unpack_from("<I", mem, i * NET_SLOT_SIZE)[0]
                    for i in range(max_entries)} - {0}
    finally:
        os.close(fd)


def syscall_keys(pid: int, name: str = "syscall_counts") -> list[tuple[int, int]]:
    """(cgroup_id, nr or slot) of every syscall_counts / syscall_latency entry."""
    return [struct.unpack_from("<QI", k) for k in map_keys(map_ids(pid)[name])]


# --- a slow API: a TCP proxy that can delay what clients send ----------------------------------

class DelayProxy:
    """127.0.0.1:<port> -> 127.0.0.1:<upstream>. While `delay` > 0, each chunk a client
    sends waits that long before it goes upstream, so every request is answered late."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._writers: set = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy",
                                        daemon=True)

    def start(self) -> "DelayProxy":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close():
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _pipe(self, reader, writer, delayed: bool) -> None:
        try:
            while data := await reader.read(65536):
                if delayed and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    async def _handle(self, creader, cwriter) -> None:
        self._writers.add(cwriter)
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cwriter.transport.abort()
            self._writers.discard(cwriter)
            return
        self._writers.add(uwriter)
        await asyncio.gather(self._pipe(creader, uwriter, True),
                             self._pipe(ureader, cwriter, False))
        self._writers.discard(cwriter)
        self._writers.discard(uwriter)


def kubeconfig_via(api_kubeconfig: str, port: int, path: str) -> str:
    """A copy of the test API server's kubeconfig that points at 127.0.0.1:`port`."""
    import json
    cfg = json.loads(open(api_kubeconfig).read())
    cfg["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def slow_client(port: int, request_head: bytes) -> socket.socket:
    """A connection that has sent only the start of a request (slowloris)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(request_head)
    return s

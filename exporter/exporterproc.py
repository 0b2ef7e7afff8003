"""Run podsnoop as a child process and read its /metrics: for tests, the demo and benchmarks.

The exporter is started exactly as a user starts it (python -m exporter with flags), so a
test exercises the real process: flag parsing, BPF compile, attach, HTTP, signals.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_metrics(text: str) -> dict[str, list[tuple[dict, float]]]:
    """sample name -> [(labels, value)]."""
    out: dict[str, list] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


class Metrics:
    def __init__(self, text: str):
        self.text = text
        self.samples = parse_metrics(text)

    def value(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(v for lab, v in self.samples.get(name, [])
                   if all(lab.get(k) == want for k, want in labels.items()))

    def series(self, name: str, **labels) -> list[dict]:
        return [lab for lab, _ in self.samples.get(name, [])
                if all(lab.get(k) == want for k, want in labels.items())]


class ExporterProcess:
    def __init__(self, *args: str, env: dict | None = None, wrapper: list[str] | None = None,
                 command: list[str] | None = None, cwd: str | None = None):
        """command: how podsnoop is started (default: this interpreter's -m exporter; an
        installed venv's bin/podsnoop, a runc wrapper...); cwd: where."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--listen", f"127.0.0.1:{self.port}", *args]
        self.env = {**os.environ, **(env or {})}
        self.wrapper = wrapper or []
        self.command = command or [sys.executable, "-m", "exporter"]
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.log_path = None

    def start(self, wait_ready: float = 60.0) -> "ExporterProcess":
        import tempfile
        self.log = tempfile.NamedTemporaryFile(prefix="podsnoop-", suffix=".log", delete=False)
        self.log_path = self.log.name
        self.proc = subprocess.Popen([*self.wrapper, *self.command, *self.args], cwd=self.cwd,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        if wait_ready:
            self.wait_ready(wait_ready)
        return self

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.get("/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"exporter not ready after {timeout}s:\n{self.output()}")

    def metrics(self) -> Metrics:
        status, text = self.get("/metrics")
        assert status == 200, text
        return Metrics(text)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the exporter; its log stays readable through output() but leaves /tmp."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            if self.proc.poll() is not None and self.log_path and os.path.exists(self.log_path):
                self._final_output = self.output()
                os.unlink(self.log_path)

    def output(self) -> str:
        if getattr(self, "_final_output", None) is not None and not os.path.exists(self.log_path):
            return self._final_output
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def __enter__(self) -> "ExporterProcess":
        # `with run_exporter(...)` hands over a started process: starting a second one
        # here would leave the first running.
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

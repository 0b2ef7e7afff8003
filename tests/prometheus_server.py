"""A real Prometheus (Debian's /usr/bin/prometheus) scraping podsnoop, for tests and
dashboards/render.py.

    with PrometheusServer(["127.0.0.1:9435"]) as prom:
        prom.wait_for(lambda: prom.value('up{job="podsnoop"}') == 1, what="a scrape")
        prom.query("sum(rate(podsnoop_syscalls_total[1m]))")

It listens on 127.0.0.1 on an ephemeral port, keeps its TSDB in a temporary directory,
scrapes the targets as job "podsnoop" every second (evaluation every second too) with the
alert rule file loaded (deploy/prometheus-rules.yaml by default), and on stop() (or at
interpreter exit) terminates the process and removes the directory. Every wait is bounded.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus-rules.yaml"
JOB = "podsnoop"  # the job name the alert rules match (dashboards/promql.py JOB_NAME)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(self, targets: Iterable[str], *, job: str = JOB, interval: str = "1s",
                 rule_files: Iterable[str | os.PathLike] = (RULES,),
                 binary: str = "prometheus", job_config: dict | None = None,
                 extra_jobs: Iterable[dict] = ()):
        """job_config: more keys for the job's scrape config (scheme, tls_config,
        basic_auth...); extra_jobs: whole further scrape configs."""
        self.targets = list(targets)
        self.job_config = dict(job_config or {})
        self.extra_jobs = list(extra_jobs)
        self.job = job
        self.interval = interval
        self.rule_files = [str(Path(f).resolve()) for f in rule_files]
        self.binary = shutil.which(binary) or binary
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.url = ""
        self._log = None

    # -- lifecycle ----------------------------------------------------------------------

    def config(self) -> str:
        """prometheus.yml (JSON is YAML)."""
        return json.dumps({
            "global": {"scrape_interval": self.interval, "scrape_timeout": self.interval,
                       "evaluation_interval": self.interval},
            "rule_files": self.rule_files,
            "scrape_configs": [{"job_name": self.job,
                                "static_configs": [{"targets": self.targets}],
                                **self.job_config}, *self.extra_jobs],
        }, indent=2)

    def start(self, timeout: float = 60) -> "PrometheusServer":
        if not shutil.which(self.binary):
            raise PrometheusError(f"{self.binary} is not installed: apt-get install prometheus "
                                  "(./dev setup does)")
        self.dir = Path(tempfile.mkdtemp(prefix="podsnoop-prom-"))
        atexit.register(self.stop)
        (self.dir / "prometheus.yml").write_text(self.config())
        self._log = open(self.dir / "prometheus.log", "wb")
        for _ in range(5):  # the ephemeral port may be taken between probe and bind
            self.port = _free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}",
                 "--storage.tsdb.retention.time=1d",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready(timeout):
                return self
            if "address already in use" not in self.output():
                break
        log = self.output()[-4000:]
        self.stop()
        raise PrometheusError(f"prometheus did not become ready in {timeout}s:\n{log}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        self.proc.kill()
        self.proc.wait()
        return False

    def output(self) -> str:
        if self.dir is None or not (self.dir / "prometheus.log").exists():
            return ""
        return (self.dir / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP API -----------------------------------------------------------------------

    def get(self, path: str, params: dict | list | None = None, timeout: float = 30) -> dict:
        """GET an API path; Prometheus' JSON (an error body too: status "error")."""
        query = urllib.parse.urlencode(params or {}, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "errorType": f"http {e.code}",
                        "error": body.decode(errors="replace")}

    def query(self, expr: str, at: float | None = None) -> dict:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.get("/api/v1/query", params)

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict:
        return self.get("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}",
                                                "end": f"{end:.3f}", "step": f"{step:g}"})

    def result(self, expr: str, at: float | None = None) -> list[dict]:
        """The result vector of an instant query; raises on an error."""
        r = self.query(expr, at)
        if r.get("status") != "success":
            raise PrometheusError(f"{expr}: {r.get('errorType')}: {r.get('error')}")
        return r["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The value of a one-sample instant query, None when it returns nothing."""
        result = self.result(expr)
        return float(result[0]["value"][1]) if result else None

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """/api/v1/label/<label>/values (what Grafana's label_values() asks for)."""
        r = self.get(f"/api/v1/label/{label}/values", {"match[]": match} if match else None)
        if r.get("status") != "success":
            raise PrometheusError(f"label values of {label}: {r.get('error')}")
        return r["data"]

    def rules(self) -> list[dict]:
        r = self.get("/api/v1/rules")
        if r.get("status") != "success":
            raise PrometheusError(f"rules: {r.get('error')}")
        return r["data"]["groups"]

    def wait_for(self, cond: Callable[[], object], timeout: float = 60,
                 interval: float = 0.5, what: str = "condition") -> None:
        """Poll `cond` until truthy, at most `timeout` s; a PrometheusError counts as false."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited:\n{self.output()[-4000:]}")
            try:
                if cond():
                    return
            except PrometheusError as e:
                last = e
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                           + (f" (last error: {last})" if last else ""))

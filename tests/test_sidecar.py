"""Sidecar mode as the shipped manifest runs it: podsnoop started as a container of a test pod.

The launcher gives the process what a container runtime gives the sidecar container of
deploy/sidecar/podsnoop-sidecar.yaml: the pod's network namespace with its own sysfs view,
a PID namespace and a mount namespace of its own, a read-only root, the manifest's volume
mounts (hostPath from the host, read-only where it says so, emptyDir as tmpfs, the downward
API's labels file), its own container cgroup in the pod, only the manifest's capabilities,
and only the manifest's env (downward-API fields filled in) and args. The exporter itself is
this checkout's (tests/test_image.py runs the image).
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from exporter import names
from exporter.exporterproc import ExporterProcess
from exporter.testapiserver import KubeApiServer
from prometheus_server import PrometheusServer
from test_syscalls import GETSID

CHECKOUT = Path(__file__).resolve().parent.parent
DEPLOY = CHECKOUT / "deploy" / "sidecar"
NAMESPACE, NODE = "shop", "node-7"
APP_LABEL = "app.kubernetes.io/name"


def manifest(*components: str):
    """The sidecar's pod spec and container, with the env of the named components' patches
    (e.g. read-own-pod) merged in by name, as kustomize's strategic merge does."""
    (patch,) = yaml.safe_load_all((DEPLOY / "podsnoop-sidecar.yaml").read_text())
    spec = patch["spec"]["template"]["spec"]
    (ctr,) = [c for c in spec["containers"] if c["name"] == "podsnoop"]
    for component in components:
        kust = yaml.safe_load((DEPLOY / component / "kustomization.yaml").read_text())
        for p in kust.get("patches", []):
            (doc,) = yaml.safe_load_all((DEPLOY / component / p["path"]).read_text())
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["name"] == "podsnoop":
                    env = {e["name"]: e for e in ctr["env"]}
                    env.update({e["name"]: e for e in c.get("env", [])})
                    ctr["env"] = list(env.values())
    return spec, ctr


def container_env(ctr, pod) -> dict[str, str]:
    fields = {"metadata.name": pod.name, "metadata.namespace": NAMESPACE,
              "metadata.uid": pod.uid, "spec.nodeName": NODE}
    env = {}
    for e in ctr.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def launcher(spec, ctr, pod, stash: Path) -> list[str]:
    """argv that starts the manifest's container command in `pod` (see the module doc)."""
    container = pod.containers["podsnoop"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    setup = []
    # hostPath volumes are bound before the pod's sysfs hides the host's /sys submounts.
    outer = [f"echo $$ > {shlex.quote(str(container.cgroup))}/cgroup.procs",
             "mount --make-rprivate /"]
    for i, m in enumerate(ctr["volumeMounts"]):
        vol, target = volumes[m["name"]], shlex.quote(m["mountPath"])
        if "hostPath" in vol:
            src = stash / str(i)
            src.mkdir()
            outer.append(f"mount --rbind {shlex.quote(vol['hostPath']['path'])} {src}")
            setup.append(f"mount --rbind {src} {target}")
        elif "emptyDir" in vol:
            setup.append(f"mount -t tmpfs tmpfs {target}")
        elif "downwardAPI" in vol:
            src = stash / str(i)
            src.mkdir()
            for item in vol["downwardAPI"]["items"]:
                assert item["fieldRef"]["fieldPath"] == "metadata.labels", item
                (src / item["path"]).write_text(f'{APP_LABEL}="checkout"\nteam="payments"\n')
            # The image has the mount point; this root is the host's, where it is made
            # (and removed again by the fixture).
            setup.append(f"mkdir -p {target}; mount --bind {src} {target}")
        if m.get("readOnly"):
            setup.append(f"mount -o remount,bind,ro {target}")
    # The exporter's own files, as an image would hold them: this checkout (the editable
    # venv points into it), put back where a volume (the /tmp emptyDir) may hide it.
    src = stash / "checkout"
    src.mkdir()
    outer.append(f"mount --bind {shlex.quote(str(CHECKOUT))} {src}")
    setup.append(f"mkdir -p {shlex.quote(str(CHECKOUT))}; "
                 f"mount --bind {src} {shlex.quote(str(CHECKOUT))}")
    sc = ctr["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged")
    caps = ",".join(f"+{c.lower()}" for c in sc["capabilities"]["add"])
    if sc.get("readOnlyRootFilesystem"):  # last: the mounts above need their mount points
        setup.append("mount -o remount,bind,ro /")
    env = container_env(ctr, pod)
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = ["setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all",
               f"--reuid={sc.get('runAsUser', 0)}", "env", "-i",
               *(f"{k}={v}" for k, v in env.items()),
               sys.executable, "-m", "exporter", *ctr["args"]]
    inner = ["mount -t sysfs sysfs /sys", "mount -t proc proc /proc", *setup,
             "exec " + shlex.join(command)]
    outer.append(f"exec nsenter --net=/run/netns/{pod.netns} sh -ec {shlex.quote('; '.join(inner))}")
    return ["unshare", "--mount", "--pid", "--fork", "sh", "-ec", "; ".join(outer)]


FETCH = """import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))
    status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
sys.stdout.write(f"{status}\\n{body.decode()}")
"""


class Sidecar(ExporterProcess):
    def __init__(self, pod, *extra_args: str, components: tuple = ()):
        super().__init__()
        spec, ctr = manifest(*components)
        self.args = []  # the manifest's args, in the launcher
        ctr["args"] = [*ctr["args"], *extra_args]
        # The launcher's bind sources live outside every mount target (not in /tmp, which
        # the emptyDir covers).
        self.scratch = Path(tempfile.mkdtemp(prefix="podsnoop-sidecar-", dir="/var/tmp"))
        self.command = launcher(spec, ctr, pod, self.scratch)
        port = next(p["containerPort"] for p in ctr["ports"] if p["name"] == "metrics")
        self.netns = pod.netns
        self.local_url = f"http://127.0.0.1:{port}"
        self.target = f"{pod.pod_ip}:{port}"  # for Prometheus, from the host

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        """From inside the pod over its loopback, as a kubelet probe or a local curl would:
        a scrape over eth0 would itself move the counters it is compared with."""
        r = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.netns}", sys.executable, "-c", FETCH,
             self.local_url + path, str(timeout)], capture_output=True, text=True,
            timeout=timeout + 5)
        if r.returncode != 0:
            raise OSError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "fetch failed")
        status, _, body = r.stdout.partition("\n")
        return int(status), body

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """The signal goes to podsnoop, the PID 1 of its PID namespace, as a runtime sends
        it: `unshare --fork` (self.proc) blocks SIGTERM and returns the child's status."""
        if self.proc is not None and self.proc.poll() is None:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            for pid in children.split():
                os.kill(int(pid), sig)
        try:
            return super().stop(sig, timeout)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


def eth0_stats(pod) -> dict[str, int]:
    out = pod.exec(["sh", "-c", "cd /sys/class/net/eth0/statistics && "
                                "echo $(cat rx_bytes tx_bytes rx_packets tx_packets)"])
    return dict(zip(("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"),
                    map(int, out.stdout.split())))


NET = {"receive_bytes": (names.NET_RECEIVE_BYTES, "rx_bytes"),
       "transmit_bytes": (names.NET_TRANSMIT_BYTES, "tx_bytes"),
       "receive_packets": (names.NET_RECEIVE_PACKETS, "rx_packets"),
       "transmit_packets": (names.NET_TRANSMIT_PACKETS, "tx_packets")}


def snapshot(sidecar, pod):
    """Exported eth0 counters and eth0's own, on a quiet link (else read again)."""
    for _ in range(30):
        before = eth0_stats(pod)
        m = sidecar.metrics()
        if eth0_stats(pod) == before:
            break
    else:
        raise AssertionError("eth0 never went quiet")
    exported = {k: m.value(n + "_total", interface="eth0") for k, (n, _) in NET.items()}
    udp = {d: m.value(getattr(names, f"NET_{d.upper()}_PACKETS") + "_total",
                      interface="eth0", protocol="udp") for d in ("receive", "transmit")}
    return exported, before, udp, m


@contextlib.contextmanager
def running_sidecar(pod, *extra_args: str, components: tuple = ()):
    """The sidecar, stopped at the end (exit 0, no traceback), mount points it made removed."""
    _, ctr = manifest()
    created = [Path(m["mountPath"]) for m in ctr["volumeMounts"]
               if not Path(m["mountPath"]).exists()]
    sidecar = Sidecar(pod, *extra_args, components=components)
    try:
        sidecar.start(wait_ready=120)
        yield sidecar
    finally:
        code = sidecar.stop()
        for path in created:
            path.rmdir()
    assert code == 0, sidecar.output()
    assert "Traceback" not in sidecar.output()
    assert not our_filters_in(pod), "filters left behind on the pod's eth0"


def our_filters_in(pod) -> list[str]:
    """podsnoop's attachments (tcx links or clsact filters) on the pod's eth0, seen from
    inside the pod's network namespace."""
    r = subprocess.run(
        ["ip", "netns", "exec", pod.netns, sys.executable, "-c",  # with the pod's sysfs
         "import sys; sys.path.insert(0, sys.argv[1]); from conftest import our_filters; "
         "print('\\n'.join(our_filters('eth0')))", str(Path(__file__).parent)],
        capture_output=True, text=True, check=True)
    return r.stdout.split("\n")[:-1] if r.stdout.strip() else []


@pytest.fixture(scope="module")
def rig(factory):
    pod = factory.create(containers=("app", "podsnoop"))
    other = factory.create(containers=("app",))
    with running_sidecar(pod) as sidecar:
        pod.exec(["ping", "-c", "1", "-W", "2", pod.host_ip])  # neighbours resolved
        assert len(our_filters_in(pod)) == 2
        yield pod, other, sidecar


def test_ready_in_sidecar_mode_from_the_downward_api(rig):
    pod, _, sidecar = rig
    status, body = sidecar.get("/readyz")
    assert status == 200 and "mode: sidecar" in body, body
    assert "mode: sidecar" in sidecar.output() and f"uid {pod.uid}" in sidecar.output()


def test_directions_are_the_pods_and_equal_eth0s_own_counters(rig):
    pod, _, sidecar = rig
    e0, k0, u0, _ = snapshot(sidecar, pod)
    # 300 UDP datagrams out of the pod, 20 pings into it (and their 20 replies out).
    pod.exec(["python3", "-c", "import socket\ns = socket.socket(socket.AF_INET, "
              "socket.SOCK_DGRAM)\nfor _ in range(300): s.sendto(b'x' * 64, "
              f"('{pod.host_ip}', 9))"])
    subprocess.run(["ping", "-c", "20", "-i", "0.01", "-W", "2", pod.pod_ip], check=True,
                   capture_output=True)
    e1, k1, u1, _ = snapshot(sidecar, pod)
    exported = {k: e1[k] - e0[k] for k in e0}
    kernel = {k: k1[sysfs] - k0[sysfs] for k, (_, sysfs) in NET.items()}
    assert exported == kernel, (exported, kernel)
    assert u1["transmit"] - u0["transmit"] == 300 and u1["receive"] - u0["receive"] == 0
    assert kernel["receive_packets"] >= 20


def test_samples_name_the_pod_and_only_the_pod(rig):
    pod, other, sidecar = rig
    # Activity in the other pod of the node: syscalls, execs, traffic.
    other.exec(["python3", "-c", GETSID, "500"])
    other.exec(["ping", "-c", "3", "-i", "0.01", "-W", "2", other.host_ip])
    # And in this pod, by a container that runs as nobody.
    pod.exec(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
              "/usr/bin/python3", "-c", GETSID, "700"], container="app")
    m = sidecar.metrics()
    app_id = pod.containers["app"].id
    assert m.value(names.SYSCALLS + "_total", container_id=app_id, syscall="getsid") == 700
    owners = set()
    for samples in m.samples.values():
        for labels, _ in samples:
            if "pod_uid" in labels:
                owners.add((labels.get("namespace"), labels.get("pod"), labels["pod_uid"]))
            assert other.uid not in labels.values()
            assert not any(c.id in labels.values() for c in other.containers.values())
    assert owners == {(NAMESPACE, pod.name, pod.uid)}, owners
    assert m.value(names.POD_INFO, pod_uid=pod.uid, node=NODE,
                   label_app_kubernetes_io_name="checkout") == 1
    assert other.host_if not in m.text


def podmonitor_scrape_config(pod, target: str) -> dict:
    """The scrape job the Prometheus Operator makes of podmonitor.yaml for this pod: target
    labels namespace, pod, container, endpoint, then the PodMonitor's own relabelings."""
    (pm,) = yaml.safe_load_all((DEPLOY / "podmonitor.yaml").read_text())
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    relabel = [{keys.get(k, k): v for k, v in r.items()} for r in ep.get("relabelings", [])]
    return {"job_name": "podmonitor/podsnoop-sidecar", "metrics_path": ep["path"],
            "honor_labels": ep.get("honorLabels", False), "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "static_configs": [{"targets": [target], "labels": {
                "namespace": NAMESPACE, "pod": pod.name, "container": "podsnoop",
                "endpoint": ep["port"]}}],
            "relabel_configs": relabel}


def test_prometheus_with_the_podmonitors_relabelling_keeps_the_pods_labels(rig):
    pod, _, sidecar = rig
    with PrometheusServer([], rule_files=(),
                          extra_jobs=[podmonitor_scrape_config(pod, sidecar.target)]) as prom:
        metric = names.NET_TRANSMIT_BYTES + "_total"
        prom.wait_for(lambda: prom.result(metric), 60, what=f"{metric} in Prometheus")
        series = [r["metric"] for r in prom.result('{__name__=~"podsnoop_.*"}')]
    assert series
    for labels in series:
        assert not any(k.startswith("exported_") for k in labels), labels
        assert labels.get("namespace") == NAMESPACE and labels.get("pod") == pod.name, labels
        assert labels.get("container", "") != "podsnoop", labels


def test_with_read_access_to_its_own_pod_containers_get_their_names(factory):
    """Optional: a Role that lets the sidecar read its own pod; it asks for that pod only,
    in its namespace (no node-wide list)."""
    pod = factory.create(containers=("app", "podsnoop"))
    with KubeApiServer(host=pod.host_ip) as api:
        api.add_pod(pod.name, NAMESPACE, NODE, uid=pod.uid,
                    containers={c.name: c.id for c in pod.containers.values()})
        api.add_pod("neighbour", NAMESPACE, NODE)
        # The component's env (PODSNOOP_KUBE=auto); the kubeconfig stands in for the
        # in-cluster service account a pod would have, outside /tmp (the emptyDir).
        kubeconfig = Path(shutil.copy(api.kubeconfig_path, tempfile.mkdtemp(dir="/var/tmp")))
        with running_sidecar(pod, "--kubeconfig", str(kubeconfig),
                             components=("read-own-pod",)) as sidecar:
            pod.exec(["python3", "-c", GETSID, "400"], container="app")
            deadline = time.monotonic() + 30
            while not sidecar.metrics().value(names.SYSCALLS + "_total", container="app",
                                              pod=pod.name, syscall="getsid"):
                assert time.monotonic() < deadline, "no container names from the API"
                time.sleep(0.2)
            m = sidecar.metrics()
            assert m.value(names.SYSCALLS + "_total", container="app", syscall="getsid") == 400
            assert not m.series(names.POD_INFO, pod="neighbour")
        paths = {r.path for r in api.request_log if "/pods" in r.path}
        shutil.rmtree(kubeconfig.parent)
    assert paths == {f"/api/v1/namespaces/{NAMESPACE}/pods"}, paths

"""The image, run as the manifests say: deploy/Dockerfile built by `./dev image`, started by
runc with a runtime config generated from deploy/daemonset.yaml (scripts/podrunc.py:
capabilities, user, read-only root, host namespaces, every volume mount with its readOnly
flag, env, args, limits), so what is tested is the manifest, not a hand-written config.

Each run: ready (/readyz 200), a test pod's packets counted exactly against the veth's own
counters, a known syscall workload counted exactly, SIGTERM -> exit 0 with no podsnoop TC
filter left. The same for the privileged component, and for a node without kernel headers
(the image's bundled headers are used, and say so). A manifest that breaks the exporter
(no cgroup mount, no CAP_BPF) makes the container fail with podsnoop's one-line error.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import our_filters, wait_for_filters
from test_network import deltas, snapshot, wait_for
from test_syscalls import GETSID, calls

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
sys.path.insert(0, str(ROOT / "scripts"))
import podrunc  # noqa: E402

# The image build (about 2 min when its inputs changed; a reused image costs nothing) runs in
# the first test's fixture set-up.
pytestmark = pytest.mark.timeout(900)
BUNDLED_LINE = "using the headers bundled in the image at /opt/podsnoop/kernel-headers"


def build_image(target: str) -> str:
    r = subprocess.run([str(ROOT / "scripts" / "image.sh")], capture_output=True, text=True,
                       timeout=1200, env={**os.environ, "PODSNOOP_IMAGE_TARGET": target})
    if r.returncode != 0:
        pytest.fail(f"./dev image ({target}) failed:\n{r.stderr[-4000:]}")
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def image() -> str:
    """The default image: precompiled programs, no bcc."""
    return build_image("default")


@pytest.fixture(scope="session")
def bcc_image() -> str:
    """The -bcc image, for user programs in bcc C."""
    return build_image("bcc")


def image_files(image: str, *patterns: str) -> list[str]:
    """Paths in the image's filesystem matching any of the glob patterns."""
    c = subprocess.run(["buildah", "from", image], capture_output=True, text=True,
                       check=True).stdout.strip()
    try:
        root = Path(subprocess.run(["buildah", "mount", c], capture_output=True, text=True,
                                   check=True).stdout.strip())
        return sorted(str(p.relative_to(root)) for pat in patterns for p in root.glob(pat))
    finally:
        subprocess.run(["buildah", "umount", c], capture_output=True)
        subprocess.run(["buildah", "rm", c], capture_output=True)


COMPILER_FILES = ("usr/lib/x86_64-linux-gnu/libLLVM*", "usr/lib/x86_64-linux-gnu/libclang*",
                  "usr/lib/x86_64-linux-gnu/libbcc*", "usr/lib/python3/dist-packages/bcc",
                  "opt/podsnoop/kernel-headers")


def confined(factory) -> list[str]:
    """Appended after the manifest's own args. --kube off: there is no API server here;
    --interfaces and --kubepods-root: this shared machine has other test pods (other runs,
    other sessions), and the exporter must only attach to and count this test's; --listen
    (added by podrunc) a free port instead of 9435 in the host's network namespace."""
    return ["--kube", "off", "--interfaces", rf"{factory.tag}h\d+",
            "--kubepods-root", str(factory.kubepods)]


def cap_mask(names: list[str]) -> int:
    return sum(1 << podrunc.ALL_CAPS.index(n.removeprefix("CAP_")) for n in names)


def container_pid(c: podrunc.ManifestContainer) -> int:
    out = subprocess.run(["runc", "--root", c.RUNC_ROOT, "state", c.id],
                         capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(out)["pid"]


def proc_status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(key)


def count_and_stop(c: podrunc.ManifestContainer, pod) -> str:
    """Exact packet and syscall counts through the container, then SIGTERM; its output."""
    wait_for_filters(pod)
    pod.exec(["ping", "-c", "1", "-W", "2", pod.host_ip])  # ARP resolved before measuring
    before = snapshot(c.proc, pod)
    pod.exec(["ping", "-c", "5", "-i", "0.01", "-W", "2", "-s", "100", pod.host_ip])
    exported, kernel, _, _ = deltas(before, snapshot(c.proc, pod))
    assert exported == kernel and kernel["transmit_packets"] >= 5, (exported, kernel)
    app = pod.first_container
    n0 = calls(c.proc, app, "getsid")
    pod.exec(["python3", "-c", GETSID, "1234"])
    assert calls(c.proc, app, "getsid") - n0 == 1234
    code = c.stop()
    out = c.output()
    assert code == 0, out
    assert our_filters(pod.host_if) == [], "podsnoop filters left behind"
    assert "Traceback" not in out, out
    return out


# --------------------------------------------------------------------------- no root needed

def test_generated_config_follows_the_daemonset():
    wl = podrunc.load_workload(DEPLOY / "daemonset.yaml")
    image_cfg = {"Entrypoint": ["podsnoop"], "Cmd": ["--x"], "Env": ["PATH=/bin"]}
    with_tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    cfg = podrunc.runc_config(wl, image_cfg, "/rootfs", with_tmp / "podrunc-unit",
                              {"spec.nodeName": "n1"}, ["--extra"])
    shutil.rmtree(with_tmp / "podrunc-unit", ignore_errors=True)
    caps = cfg["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == \
        ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"]
    assert cfg["process"]["args"] == ["podsnoop", "--listen", "0.0.0.0:9435", "--kube", "auto",
                                      "--extra"]
    assert "NODE_NAME=n1" in cfg["process"]["env"] and "PATH=/bin" in cfg["process"]["env"]
    assert cfg["process"]["user"] == {"uid": 0, "gid": 0}
    assert "rlimits" not in cfg["process"]
    assert cfg["root"] == {"path": "/rootfs", "readonly": True}
    assert {ns["type"] for ns in cfg["linux"]["namespaces"]} == {"mount", "ipc"}
    binds = {m["destination"]: m for m in cfg["mounts"] if m["type"] == "bind"}
    assert set(binds) == {"/sys/fs/bpf", "/sys/fs/cgroup", "/sys/kernel/tracing",
                          "/lib/modules", "/usr/src", "/tmp"}
    for dest, m in binds.items():
        assert ("ro" in m["options"]) == (dest != "/tmp"), dest
        if dest != "/tmp":
            assert m["source"] == dest
    # the manifest's /sys/fs/cgroup replaces the runtime's own cgroup mount
    assert [m["type"] for m in cfg["mounts"] if m["destination"] == "/sys/fs/cgroup"] == ["bind"]
    assert cfg["linux"]["resources"]["memory"]["limit"] == \
        podrunc.quantity(wl["spec"]["template"]["spec"]["containers"][0]
                         ["resources"]["limits"]["memory"])


def test_privileged_component_gives_every_capability():
    wl = podrunc.load_workload(DEPLOY / "daemonset.yaml", (DEPLOY / "privileged",))
    (ctr,) = wl["spec"]["template"]["spec"]["containers"]
    assert ctr["securityContext"]["privileged"] is True
    assert "capabilities" not in ctr["securityContext"]
    assert "/sys/kernel/debug" in {m["mountPath"] for m in ctr["volumeMounts"]}
    cfg = podrunc.runc_config(wl, {"Entrypoint": ["podsnoop"]}, "/rootfs", Path("/nonexistent"),
                              {"spec.nodeName": "n1"})
    # every capability (those this machine's own bounding set has: see podrunc)
    have = [c for c in podrunc.ALL_CAPS
            if podrunc.host_bounding_caps() >> podrunc.ALL_CAPS.index(c) & 1]
    assert cfg["process"]["capabilities"]["effective"] == [f"CAP_{c}" for c in have]
    assert {"CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"} <= \
        set(cfg["process"]["capabilities"]["effective"])
    assert cfg["linux"]["maskedPaths"] == []


def test_component_merge_equals_kustomize(tmp_path):
    """podrunc's strategic merge of deploy/privileged gives what kustomize gives."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed: the merge is not compared with kustomize's")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, tmp_path)],
        "components": [os.path.relpath(DEPLOY / "privileged", tmp_path)]}))
    out = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    (ds,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "DaemonSet"]
    ours = podrunc.load_workload(DEPLOY / "daemonset.yaml", (DEPLOY / "privileged",))
    theirs_pod, ours_pod = ds["spec"]["template"]["spec"], ours["spec"]["template"]["spec"]
    by_name = lambda vs: sorted(vs, key=lambda v: v["name"])  # noqa: E731
    assert by_name(theirs_pod["volumes"]) == by_name(ours_pod["volumes"])
    (t,), (o,) = theirs_pod["containers"], ours_pod["containers"]
    for key in ("securityContext", "args", "env", "resources"):
        assert t[key] == o[key], key
    assert by_name(t["volumeMounts"]) == by_name(o["volumeMounts"])


# --------------------------------------------------------------------------- the image, run

@pytest.mark.parametrize("components", [(), ("privileged",)], ids=["base", "privileged"])
def test_image_as_the_manifest_says_counts_exactly(image, pods, components):
    comps = tuple(DEPLOY / c for c in components)
    pod = pods.create()
    with podrunc.ManifestContainer(image, DEPLOY / "daemonset.yaml", comps,
                                   extra_args=confined(pods)) as c:
        # The process runs with what the manifest grants, no more.
        pid = container_pid(c)
        want = c.config["process"]["capabilities"]["effective"]
        assert int(proc_status(pid, "CapEff"), 16) == cap_mask(want)
        assert int(proc_status(pid, "CapBnd"), 16) == cap_mask(want)
        if not components:
            assert want == ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"]
        out = count_and_stop(c, pod)
    # This node has headers: they were used, not the image's.
    assert BUNDLED_LINE not in out, out


def test_image_counts_exactly_on_a_node_without_kernel_headers(image, pods, tmp_path):
    """hostPath /lib/modules and /usr/src empty, as on a node without a headers package:
    the programs are precompiled, nothing looks for headers (they matter to user programs
    in bcc C only)."""
    empty = {p: str(tmp_path / p.strip("/").replace("/", "-")) for p in ("/lib/modules", "/usr/src")}
    pod = pods.create()
    with podrunc.ManifestContainer(image, DEPLOY / "daemonset.yaml", extra_args=confined(pods),
                                   host_paths=empty) as c:
        out = count_and_stop(c, pod)
    assert BUNDLED_LINE not in out and "kernel headers" not in out, out


def test_default_image_has_no_compiler_and_the_bcc_image_has_it(image, bcc_image):
    assert image_files(image, *COMPILER_FILES) == []
    assert image_files(image, "opt/podsnoop/venv/lib/python3*/site-packages/exporter/bpf/"
                              "net.bpf.o")
    found = image_files(bcc_image, *COMPILER_FILES)
    assert any("libLLVM" in f for f in found) and "opt/podsnoop/kernel-headers" in found, found


DEFAULT_IMAGE_MAX_BYTES = 150e6  # the target (bench/image.py reports against it)


def test_default_image_is_only_what_runs(image):
    """FROM scratch with the files of the runtime packages and the venv (deploy/Dockerfile,
    stage rootfs): no shell, no package manager, and within the size target."""
    size = int(subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", image],
                              capture_output=True, text=True, check=True).stdout)
    assert size <= DEFAULT_IMAGE_MAX_BYTES, f"{size / 1e6:.0f} MB"
    assert image_files(image, "usr/bin/sh", "usr/bin/bash", "usr/bin/dash", "usr/bin/apt*",
                       "usr/bin/dpkg*", "usr/bin/perl*") == []
    found = image_files(image, "usr/bin/python3.11", "usr/lib/x86_64-linux-gnu/libbpf.so.1",
                        "etc/ssl/certs/ca-certificates.crt", "var/lib/dpkg/status")
    assert len(found) == 4, found


def test_default_image_has_every_kubernetes_api_podsnoop_uses(image):
    """deploy/Dockerfile keeps only the kubernetes API modules exporter/ names (the client
    imports them lazily: a missing one would fail only at its first use, with --kube auto)."""
    import kubernetes.client.api as kapi
    exports: dict[str, str] = kapi._exports  # class name -> ".module"
    used = {m.group(1) for f in (ROOT / "exporter").rglob("*.py")
            for m in re.finditer(r"\b([A-Z]\w*Api)\b", f.read_text())} & set(exports)
    assert {"CoreV1Api", "CustomObjectsApi", "VersionApi"} <= used, used
    have = {Path(f).stem for f in image_files(
        image, "opt/podsnoop/venv/lib/python3*/site-packages/kubernetes/client/api/*_api.py")}
    assert {exports[name].lstrip(".") for name in used} <= have, used


def test_bcc_image_runs_a_user_program_in_bcc_c(bcc_image, pods, tmp_path):
    """The -bcc image, as the manifest says, with the ported ebpf_exporter syscalls example
    in a hostPath directory: it compiles it at start and counts a syscall exactly."""
    from test_user_programs import SCHED_GET_PRIORITY_MAX, _dir
    programs = _dir(tmp_path, "syscalls")
    programs.chmod(0o755)

    def with_programs(wl):
        spec = wl["spec"]["template"]["spec"]
        spec["volumes"].append({"name": "programs",
                                "hostPath": {"path": str(programs), "type": "Directory"}})
        ctr = spec["containers"][0]
        ctr["volumeMounts"].append({"name": "programs", "mountPath": "/programs",
                                    "readOnly": True})
    pod = pods.create()
    with podrunc.ManifestContainer(bcc_image, DEPLOY / "daemonset.yaml", edit=with_programs,
                                   extra_args=[*confined(pods), "--programs", "/programs",
                                               "--syscalls", "off"]) as c:  # same name
        name = "podsnoop_syscalls_total"
        before = c.proc.metrics().value(name, syscall="sched_get_priority_max")
        pod.exec([sys.executable, "-c", "import ctypes; libc = ctypes.CDLL(None); "
                  f"[libc.syscall({SCHED_GET_PRIORITY_MAX}, 0) for _ in range(29)]"])
        wait_for(lambda: c.proc.metrics().value(name, syscall="sched_get_priority_max")
                 - before >= 29, what="29 syscalls")
        assert c.proc.metrics().value(name, syscall="sched_get_priority_max") - before == 29
        assert c.proc.metrics().value("podsnoop_program_loaded", program="syscalls") == 1
        assert c.stop() == 0, c.output()


def _without_cgroup_mount(wl):
    ctr = wl["spec"]["template"]["spec"]["containers"][0]
    ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["mountPath"] != "/sys/fs/cgroup"]
    wl["spec"]["template"]["spec"]["volumes"] = [
        v for v in wl["spec"]["template"]["spec"]["volumes"] if v["name"] != "cgroup"]
    return wl


def _without_cap_bpf(wl):
    sc = wl["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    sc["capabilities"]["add"] = [c for c in sc["capabilities"]["add"] if c != "BPF"]
    return wl


@pytest.mark.parametrize("edit,error", [
    (_without_cgroup_mount, "cgroup"),
    (_without_cap_bpf, "without CAP_BPF")],
    ids=["no-cgroup-mount", "no-CAP_BPF"])
def test_a_manifest_that_breaks_the_exporter_makes_it_fail(image, pods, edit, error):
    """The generated config really follows the manifest: take away what the exporter needs
    in a copy of it, and the container ends with podsnoop's one-line error."""
    wl = podrunc.load_workload(DEPLOY / "daemonset.yaml")
    assert edit(copy.deepcopy(wl)) != wl
    c = podrunc.ManifestContainer(image, DEPLOY / "daemonset.yaml", extra_args=confined(pods),
                                  edit=edit)
    try:
        with pytest.raises(RuntimeError, match="exporter exited with 1"):
            c.start(wait_ready=120)
        out = c.output()
    finally:
        c.close()
    errors = [ln for ln in out.splitlines() if ln.startswith("podsnoop: error:")]
    assert len(errors) == 1, out
    assert error in errors[0], out
    assert any(ln.startswith("podsnoop: fix:") for ln in out.splitlines()), out
    assert "Traceback" not in out, out

"""The deployment manifests: they parse, the core kinds deserialize through the `kubernetes`
client's models without losing a field, and what matters is right: the exporter's flags
(parsed by the exporter's own parser), ports and probe paths (the exporter's own routes),
capabilities, mounts, RBAC, Service/ServiceMonitor wiring, the rules, the kustomizations and
the Dockerfile. Kustomize builds (kubectl kustomize) are checked too where kubectl exists."""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
sys.path.insert(0, str(ROOT))

from dashboards import promql as q  # noqa: E402
from exporter import bpfload, config  # noqa: E402
from exporter.server import Health, make_app  # noqa: E402

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
API = ApiClient()
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "V1CustomResourceDefinition",
}
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
# deploy/ files that are not manifests (everything else must be listed by the kustomization)
NOT_MANIFESTS = {"README.md", "Dockerfile", "Dockerfile.dockerignore", "kustomization.yaml"}


@functools.cache
def endpoints() -> frozenset[str]:
    """The HTTP paths the exporter really serves, from its own aiohttp app."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # aiohttp on a callable handler
        app = make_app(registry=None, health=Health())
    return frozenset(r.resource.canonical for r in app.router.routes())


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def deserialize(doc: dict):
    """Through the kubernetes client's model; the round trip must give back every field (the
    client silently drops fields it does not know, e.g. a misspelt one)."""
    model = MODELS[(doc["apiVersion"], doc["kind"])]
    obj = API.deserialize(json.dumps(doc), model, "application/json")
    assert API.sanitize_for_serialization(obj) == doc, f"{model}: fields lost in the round trip"
    return obj


def base_objects() -> dict[str, dict]:
    """kind -> object, for the base's resource files."""
    kust = load(DEPLOY / "kustomization.yaml")[0]
    out = {}
    for name in kust["resources"]:
        for doc in load(DEPLOY / name):
            assert doc["kind"] not in out
            out[doc["kind"]] = doc
    return out


BASE = base_objects()


def only_container(pod_spec: dict, name: str = "podsnoop") -> dict:
    (c,) = [c for c in pod_spec["containers"] if c["name"] == name]
    return c


# --------------------------------------------------------------------------- every file

def resource_files() -> set[Path]:
    """Files that kustomizations list as whole resources (not patches)."""
    out = set()
    for kust_path in DEPLOY.rglob("kustomization.yaml"):
        for name in load(kust_path)[0].get("resources", []):
            p = (kust_path.parent / name).resolve()
            if p.is_file():
                out.add(p)
    return out


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses_and_has_a_known_kind(path):
    docs = load(path)
    assert docs, path
    if path.name == "prometheus-rules.yaml":  # a plain Prometheus rule file
        assert list(docs[0]) == ["groups"]
        return
    if isinstance(docs[0], list):  # a JSON patch (RFC 6902), e.g. deploy/web-config's
        (ops,) = docs
        assert ops and all(op["op"] in {"add", "replace", "remove", "test"}
                           and op["path"].startswith("/spec/") for op in ops), path
        return
    for doc in docs:
        kind = doc["kind"]
        assert kind in {k for _, k in MODELS} | OPERATOR_KINDS | KUSTOMIZE_KINDS, kind
        assert (kind in KUSTOMIZE_KINDS) == (path.name == "kustomization.yaml")
        if path.resolve() in resource_files() and (doc["apiVersion"], kind) in MODELS:
            deserialize(doc)  # patches are partial objects: checked in the builds below


@pytest.mark.parametrize("kind", sorted(k for k in BASE if k not in OPERATOR_KINDS))
def test_base_core_objects_deserialize(kind):
    deserialize(BASE[kind])


def test_a_misspelt_field_is_caught():
    doc = json.loads(json.dumps(BASE["DaemonSet"]))
    doc["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(AssertionError, match="fields lost"):
        deserialize(doc)
    doc = json.loads(json.dumps(BASE["DaemonSet"]))
    doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(Exception):
        deserialize(doc)


# --------------------------------------------------------------------------- DaemonSet

DS = BASE["DaemonSet"]
POD = DS["spec"]["template"]["spec"]
CTR = only_container(POD)


def test_daemonset_runs_in_the_host_namespaces():
    assert POD["hostNetwork"] is True and POD["hostPID"] is True
    assert POD["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert POD["serviceAccountName"] == BASE["ServiceAccount"]["metadata"]["name"]
    labels = DS["spec"]["template"]["metadata"]["labels"]
    assert DS["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_daemonset_flags_are_the_exporters_own():
    assert CTR["args"] == ["--listen", "0.0.0.0:9435", "--kube", "auto"]
    cfg = config.parse(CTR["args"])  # the exporter's parser accepts them
    assert (cfg.host, cfg.port, cfg.kube) == ("0.0.0.0", 9435, "auto")
    (env,) = [e for e in CTR["env"] if e["name"] == "NODE_NAME"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert any(flag == "--node-name" and var == "NODE_NAME" for flag, var, *_ in config.FLAGS)


def test_daemonset_port_and_probes():
    (port,) = CTR["ports"]
    assert port == {"name": "metrics", "containerPort": config.DEFAULT_PORT, "protocol": "TCP"}
    served = endpoints()
    assert {"/metrics", "/healthz", "/readyz"} <= served
    assert CTR["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert CTR["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert CTR[probe]["httpGet"]["path"] in served


def test_daemonset_image_and_resources():
    assert CTR["image"] == "podsnoop"
    assert CTR["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"},
                                "limits": {"cpu": "1", "memory": "256Mi"}}
    # the figures come from a benchmark, named beside them
    text = (DEPLOY / "daemonset.yaml").read_text()
    assert "bench/image.py" in text and "Placeholder" not in text
    assert (ROOT / "bench" / "image.py").is_file()
    assert "<!-- bench:image -->" in (ROOT / "bench" / "RESULTS.md").read_text()
    kust = load(DEPLOY / "kustomization.yaml")[0]
    assert kust["images"] == [{"name": "podsnoop", "newName": "podsnoop", "newTag": VERSION}]


ADDED_CAPS = {"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"}


def test_daemonset_capabilities_are_narrow_and_documented():
    sc = CTR["securityContext"]
    assert sc.get("privileged") is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == ADDED_CAPS
    assert sc["readOnlyRootFilesystem"] is True
    assert "allowPrivilegeEscalation" not in sc  # false would forbid SYS_ADMIN in overlays
    comments = "\n".join(ln for ln in (DEPLOY / "daemonset.yaml").read_text().splitlines()
                         if ln.strip().startswith("#"))
    for cap in ADDED_CAPS:
        assert re.search(rf"#\s+{cap}\s", comments), f"{cap} is not explained"
    assert "SYS_ADMIN" in comments  # why it is left out, and when to add it


def _mounts(pod_spec: dict, ctr: dict) -> dict[str, dict]:
    """host path -> the volumeMount of it."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    names = [m["name"] for m in ctr["volumeMounts"]]
    assert set(names) == set(volumes), "a volume is declared but not mounted, or the reverse"
    assert len(names) == len(set(names))
    return {volumes[m["name"]]["hostPath"]["path"]: m
            for m in ctr["volumeMounts"] if "hostPath" in volumes[m["name"]]}


def test_daemonset_mounts():
    mounts = _mounts(POD, CTR)
    assert set(mounts) == {"/sys/fs/bpf", "/sys/fs/cgroup", "/sys/kernel/tracing",
                           "/lib/modules", "/usr/src"}
    for host, m in mounts.items():
        assert m["mountPath"] == host  # bcc and the exporter look at the usual paths
        assert m.get("readOnly") is True, f"{host} should be read-only"
    tmp = [m for m in CTR["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp, "a writable /tmp is needed under the read-only root"
    assert bpfload.TRACEFS == "/sys/kernel/tracing"


# --------------------------------------------------------------------------- RBAC, Service

def test_rbac_is_get_list_watch_on_pods_and_services_only():
    role = BASE["ClusterRole"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods", "services"],
                              "verbs": ["get", "list", "watch"]}]
    binding = BASE["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}
    sa = BASE["ServiceAccount"]["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"],
                                    "namespace": sa["namespace"]}]


def test_service_is_headless_and_selects_the_daemonset():
    svc = BASE["Service"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": config.DEFAULT_PORT,
                                     "targetPort": "metrics", "protocol": "TCP"}]
    labels = DS["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["metadata"]["name"] == q.JOB_NAME  # the job label the alert rules match


def test_servicemonitor_scrapes_the_service():
    sm = BASE["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    service_labels = BASE["Service"]["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    assert "jobLabel" not in sm["spec"]  # job = the Service's name
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["path"] in endpoints()
    # podsnoop's namespace/pod/container labels must win over the target's
    assert ep["honorLabels"] is True


def test_prometheusrule_groups_equal_the_plain_rules_file():
    plain = load(DEPLOY / "prometheus-rules.yaml")[0]
    assert BASE["PrometheusRule"]["spec"]["groups"] == plain["groups"]
    assert plain["groups"] and all(g["rules"] for g in plain["groups"])


def test_namespace_allows_privileged_pods_and_holds_everything():
    ns = BASE["Namespace"]["metadata"]
    assert ns["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    kust = load(DEPLOY / "kustomization.yaml")[0]
    assert kust["namespace"] == ns["name"]
    for kind, doc in BASE.items():
        if kind not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"]["namespace"] == ns["name"], kind


# --------------------------------------------------------------------------- kustomizations

def _listed(kust: dict) -> set[str]:
    files = set(kust.get("resources", []))
    files |= {p["path"] for p in kust.get("patches", []) if "path" in p}
    for gen in kust.get("configMapGenerator", []):
        files |= {f.split("=", 1)[-1] for f in gen.get("files", [])}
    return files


@pytest.mark.parametrize("sub", ["", "privileged", "sidecar", "sidecar/read-own-pod",
                                 "web-config", "programs"])
def test_kustomization_lists_every_file_in_its_directory(sub):
    d = DEPLOY / sub
    kust = load(d / "kustomization.yaml")[0]
    listed = _listed(kust)
    local = {p for p in listed if not p.startswith("..")}
    for name in local:
        assert (d / name).is_file(), f"{name} is listed but missing"
    present = {p.name for p in d.iterdir() if p.is_file()} - NOT_MANIFESTS
    assert present == local, f"not listed: {present - local}; listed only: {local - present}"


def test_privileged_is_a_component_that_only_patches():
    kust = load(DEPLOY / "privileged" / "kustomization.yaml")[0]
    assert kust["kind"] == "Component"
    assert "resources" not in kust
    (patch,) = load(DEPLOY / "privileged" / kust["patches"][0]["path"])
    ctr = only_container(patch["spec"]["template"]["spec"])
    assert ctr["securityContext"] == {"privileged": True, "capabilities": None}


# --------------------------------------------------------------------------- sidecar

def _sidecar_patch() -> tuple[dict, dict]:
    (patch,) = load(DEPLOY / "sidecar" / "podsnoop-sidecar.yaml")
    pod = patch["spec"]["template"]["spec"]
    return pod, only_container(pod)


def test_sidecar_is_one_pods_exporter_without_api_access():
    pod, ctr = _sidecar_patch()
    assert "hostNetwork" not in pod and "hostPID" not in pod  # the pod's own namespaces
    assert ctr["args"][:2] == ["--listen", "0.0.0.0:9435"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in ctr["env"]
           if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                   "POD_UID": "metadata.uid", "NODE_NAME": "spec.nodeName"}
    values = {e["name"]: e["value"] for e in ctr["env"] if "value" in e}
    assert values == {"PODSNOOP_KUBE": "off"}
    os.environ["PODSNOOP_KUBE"] = "off"
    try:
        cfg = config.parse(ctr["args"])
    finally:
        del os.environ["PODSNOOP_KUBE"]
    assert (cfg.port, cfg.kube) == (9435, "off")
    assert ctr["ports"] == CTR["ports"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert ctr[probe] == CTR[probe]
    assert ctr["resources"] == CTR["resources"]
    sc = ctr["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= ADDED_CAPS
    mounts = _mounts(pod, ctr)
    assert {"/lib/modules", "/usr/src", "/sys/kernel/tracing", "/sys/fs/cgroup"} <= set(mounts)
    assert all(m.get("readOnly") for m in mounts.values())
    kust = load(DEPLOY / "sidecar" / "kustomization.yaml")[0]
    kinds = {d["kind"] for name in kust["resources"] for d in load(DEPLOY / "sidecar" / name)}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}


def test_sidecar_optional_role_reads_pods_of_its_namespace_only():
    role, binding = load(DEPLOY / "sidecar" / "read-own-pod" / "role.yaml")
    deserialize(role)
    deserialize(binding)
    assert (role["kind"], binding["kind"]) == ("Role", "RoleBinding")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                              "verbs": ["get", "list", "watch"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_sidecar_podmonitor_selects_the_example_pods():
    (pm,) = load(DEPLOY / "sidecar" / "podmonitor.yaml")
    (app,) = load(DEPLOY / "sidecar" / "example-app.yaml")
    deserialize(app)
    labels = app["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "metrics" and ep["path"] in endpoints()


# --------------------------------------------------------------------------- Dockerfile

def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out, buf = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        buf += " " + line.rstrip().rstrip("\\")
        if not line.rstrip().endswith("\\"):
            op, _, args = buf.strip().partition(" ")
            out.append((op.upper(), args.strip()))
            buf = ""
    return out


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each a list of instructions starting with its FROM."""
    stages: list[list[tuple[str, str]]] = []
    for op, args in _instructions():
        if op == "FROM":
            stages.append([])
        stages[-1].append((op, args))
    return stages


def _stage(name: str) -> list[tuple[str, str]]:
    return next(st for st in _stages() if re.search(rf" AS {name}$", st[0][1], re.I))


def _apt(stage) -> list[str]:
    runs = " ".join(a for op, a in stage if op == "RUN")
    m = re.search(r"apt-get install (.*?)(&&|$)", runs)
    return m.group(1).split() if m else []


def _rootfs_packages() -> list[str]:
    """The packages whose files the rootfs stage puts into the default image."""
    (arg,) = [a for op, a in _stage("rootfs") if op == "ARG" and a.startswith("ROOTFS_PACKAGES=")]
    return arg.partition("=")[2].strip('"').split()


def test_dockerfile_base_and_packages():
    stages = _stages()
    assert _instructions()[0][0] == "FROM"
    for stage in stages[:-1]:  # every stage starts from Debian 12, or from an earlier stage
        assert re.fullmatch(r"(debian:12(-slim)?|runtime)( AS \w+)?", stage[0][1], re.I), stage[0]
    # the default image (the last stage) is no Debian base: the root filesystem that the
    # rootfs stage assembles from the runtime packages' files, and the venv. No shell: its
    # RUN (a check) is in exec form.
    default = stages[-1]
    assert re.fullmatch(r"scratch AS default", default[0][1], re.I)
    assert re.fullmatch(r"runtime AS rootfs", _stage("rootfs")[0][1], re.I)
    assert [a.split() for op, a in default if op == "COPY"] == [
        ["--from=rootfs", "/rootfs/", "/"],
        ["--from=build", "/opt/podsnoop/venv", "/opt/podsnoop/venv"]]
    assert all(json.loads(a)[0] == "python" for op, a in default if op == "RUN")
    pkgs = _rootfs_packages()
    assert {"libbpf1", "python3.11-minimal", "libpython3.11-stdlib", "libc6"} <= set(pkgs)
    assert not {"python3-bpfcc", "clang", "llvm", "libbpf-dev", "bash", "dash", "apt", "dpkg",
                "perl-base", "coreutils"} & set(pkgs)
    assert not any(p.startswith(("linux-headers-", "libllvm", "libclang")) for p in pkgs)
    runtime = _apt(_stage("runtime"))
    assert "libbpf1" in runtime and "python3" in runtime
    assert not {"python3-bpfcc", "clang", "llvm", "libbpf-dev"} & set(runtime)
    assert not any(p.startswith("linux-headers-") for p in runtime)
    bcc = _apt(_stage("bcc"))
    assert "python3-bpfcc" in bcc and not any(p.startswith("linux-headers-") for p in bcc)
    # the header packages, clang and libbpf-dev (for the CO-RE objects) stay in the build stage
    build = _apt(_stage("build"))
    assert any(p.startswith("linux-headers-") for p in build)
    assert {"clang", "libbpf-dev", "bpftool", "make"} <= set(build)


def test_dockerfile_bundles_headers_once_for_nodes_without():
    """In the -bcc image only: the default one has no bcc to use headers."""
    bcc, runtime = _stage("bcc"), _stage("runtime")
    assert "PODSNOOP_BUNDLED_KERNEL_HEADERS" not in " ".join(a for _, a in runtime)
    env = " ".join(a for op, a in bcc if op == "ENV")
    m = re.search(r"PODSNOOP_BUNDLED_KERNEL_HEADERS=(\S+)", env)
    assert m, "the bcc stage must tell bpfload where the bundled headers are"
    headers = m.group(1)
    assert not headers.startswith(("/usr/src", "/lib/modules"))  # the node's mounts hide those
    copies = [a.split() for op, a in bcc if op == "COPY"]
    assert any(c[0].startswith("--from=") and headers.startswith(c[-1]) for c in copies)
    build = " ".join(a for op, a in _stage("build") if op == "RUN")
    assert re.search(rf"\bmv \S+ {re.escape(headers)}", build), "moved, not copied twice"
    assert "PODSNOOP_BUNDLED_KERNEL_HEADERS" in (ROOT / "exporter" / "bpfload.py").read_text()


def test_dockerfile_final_stage_carries_no_build_workaround():
    """A proxy CA for pip may be passed to the build stage only (scripts/image.sh does, on
    the development machines); neither image carries one."""
    for final in (_stage("runtime"), _stage("bcc"), _stage("rootfs"), _stage("default")):
        text = " ".join(a for _, a in final)
        assert "PIP_CERT" not in text and "host-ca" not in text
        for op, args in final:
            assert op != "ARG" or "PIP" not in args

def test_dockerfile_never_pip_installs_bcc():
    for op, args in _instructions():
        if op != "RUN":
            continue
        for cmd in re.split(r"&&|;|\|\|", args):
            if re.search(r"\bpip3?\b.*\binstall\b", cmd):
                pkgs = [w for w in cmd.split() if not w.startswith("-")]
                assert not any(re.fullmatch(r"['\"]?bcc([=<>~!].*)?['\"]?", p) for p in pkgs), cmd


def test_dockerfile_entrypoint_and_bpf_sources():
    ins = _instructions()
    # the default image (FROM scratch) and the runtime stage (and so the -bcc image) each
    # set them, the same
    for stage in (_stage("runtime"), _stage("default")):
        (entry,) = [a for op, a in stage if op == "ENTRYPOINT"]
        assert json.loads(entry) == ["podsnoop"]
        (cmd,) = [a for op, a in stage if op == "CMD"]
        assert json.loads(cmd) == CTR["args"]
    assert "podsnoop" in PYPROJECT["project"]["scripts"]
    # the C sources go into the package the image installs (exporter/bpf in the wheel)
    copies = [a.split() for op, a in ins if op == "COPY"]
    assert ["bpf/", "/src/bpf/"] in copies
    # what the COPYs need is not excluded from the build context
    ignored = {ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    for src in ("bpf", "exporter", "pyproject.toml", "README.md"):
        assert src not in ignored


# --------------------------------------------------------------------------- kustomize builds

def kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed: kustomize builds not checked")
    r = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    out = {}
    for d in docs:
        assert d["kind"] not in out
        out[d["kind"]] = d
    return out


def test_base_builds():
    docs = _by_kind(kustomize(DEPLOY))
    assert set(docs) == set(BASE) | {"ConfigMap"}
    for kind, doc in docs.items():
        if kind not in OPERATOR_KINDS:
            deserialize(doc)
    ctr = only_container(docs["DaemonSet"]["spec"]["template"]["spec"])
    assert ctr["image"] == f"podsnoop:{VERSION}"
    cm = docs["ConfigMap"]
    assert cm["metadata"]["name"] == "podsnoop-prometheus-rules"
    assert cm["data"]["prometheus-rules.yaml"] == (DEPLOY / "prometheus-rules.yaml").read_text()


def test_privileged_component_builds(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, overlay)],
        "components": [os.path.relpath(DEPLOY / "privileged", overlay)],
    }))
    docs = _by_kind(kustomize(overlay))
    ds = docs["DaemonSet"]
    deserialize(ds)
    pod = ds["spec"]["template"]["spec"]
    ctr = only_container(pod)
    assert ctr["securityContext"]["privileged"] is True
    assert "capabilities" not in ctr["securityContext"]
    assert "/sys/kernel/debug" in _mounts(pod, ctr)
    base = _by_kind(kustomize(DEPLOY))["DaemonSet"]
    base_ctr = only_container(base["spec"]["template"]["spec"])
    assert {k: v for k, v in ctr.items() if k not in ("securityContext", "volumeMounts")} == \
        {k: v for k, v in base_ctr.items() if k not in ("securityContext", "volumeMounts")}


def test_sidecar_builds():
    docs = _by_kind(kustomize(DEPLOY / "sidecar"))
    assert set(docs) == {"Deployment", "PodMonitor"}
    dep = docs["Deployment"]
    deserialize(dep)
    pod = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["podsnoop", "app"]
    ctr = only_container(pod)
    assert ctr["image"] == f"podsnoop:{VERSION}"
    assert "--kube" not in ctr["args"]
    assert {"name": "PODSNOOP_KUBE", "value": "off"} in ctr["env"]
    _mounts(pod, ctr)


def test_sidecar_read_own_pod_component_builds(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "sidecar", overlay)],
        "components": [os.path.relpath(DEPLOY / "sidecar" / "read-own-pod", overlay)],
    }))
    docs = _by_kind(kustomize(overlay))
    assert set(docs) == {"Deployment", "PodMonitor", "Role", "RoleBinding"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    ctr = only_container(pod)
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["PODSNOOP_KUBE"] == "auto" and "POD_UID" in env


# --------------------------------------------------------------------------- programs

PROGRAMS = DEPLOY / "programs"


def _with_programs(tmp_path: Path, **extra) -> dict[tuple[str, str], dict]:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, overlay)],
        "components": [os.path.relpath(PROGRAMS, overlay)], **extra}))
    return {(d["kind"], d["metadata"]["name"]): d for d in kustomize(overlay)}


def test_programs_component_uses_the_bcc_image(tmp_path):
    """PodsnoopPrograms may be bcc C, which only the -bcc image can compile; an overlay
    whose programs are all objects keeps the default image by its own images entry (the
    one the component's comment shows)."""
    kust = load(PROGRAMS / "kustomization.yaml")[0]
    assert kust["images"] == [{"name": "podsnoop", "newTag": f"{VERSION}-bcc"}]
    assert f"images: [{{name: podsnoop, newTag: {VERSION}}}]" in \
        (PROGRAMS / "kustomization.yaml").read_text()
    docs = _with_programs(tmp_path)
    ds = docs[("DaemonSet", "podsnoop")]
    deserialize(ds)
    ctr = only_container(ds["spec"]["template"]["spec"])
    assert ctr["image"] == f"podsnoop:{VERSION}-bcc"
    assert {"name": "PODSNOOP_PROGRAM_CRDS", "value": "on"} in ctr["env"]
    for doc in docs.values():
        if doc["kind"] in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            deserialize(doc)
    assert ("CustomResourceDefinition", "podsnoopprograms.podsnoop.io") in docs
    (tmp_path / "default").mkdir()
    plain = _with_programs(tmp_path / "default", images=[{"name": "podsnoop",
                                                          "newTag": VERSION}])
    assert only_container(plain[("DaemonSet", "podsnoop")]["spec"]["template"]["spec"])[
        "image"] == f"podsnoop:{VERSION}"


def test_program_crd_schema_carries_source_or_object():
    """Every key the exporter reads from a PodsnoopProgram's spec is in the schema (the API
    server prunes unknown fields), and exactly one of source and object is required."""
    from exporter.programs import spec as specmod
    (crd,) = load(PROGRAMS / "podsnoopprogram-crd.yaml")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["required"] == ["metrics"]
    assert schema["oneOf"] == [{"required": ["source"]}, {"required": ["object"]}]
    assert schema["properties"]["object"] == {**schema["properties"]["object"],
                                              "type": "string", "format": "byte"}
    assert set(schema["properties"]) == {"source", "object", "metrics", "attach", "selector",
                                         "series_cap", "kaddrs"}
    # each of them parses (one spec with all: the object kind takes kaddrs, not uprobes)
    specmod.parse("p", {"metrics": {"counters": [{"name": "c"}]}, "selector": {},
                        "series_cap": 5, "kaddrs": ["do_exit"]}, "object")


# --------------------------------------------------------------------------- web-config

WEB = DEPLOY / "web-config"
WEB_CONFIG_PATH = "/etc/podsnoop/web/web-config.yml"


def _with_web_config(tmp_path: Path, base: Path) -> dict[str, dict]:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(base, overlay)],
        "components": [os.path.relpath(WEB, overlay)],
    }))
    return _by_kind(kustomize(overlay))


def _check_web_config_container(pod: dict, ctr: dict, plain_ctr: dict) -> None:
    from exporter.server import UNAUTHENTICATED
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["PODSNOOP_WEB_CONFIG_FILE"] == WEB_CONFIG_PATH
    assert any(var == "PODSNOOP_WEB_CONFIG_FILE" and flag == "--web-config-file"
               for flag, var, *_ in config.FLAGS)
    (mount,) = [m for m in ctr["volumeMounts"] if m["name"] == "web-config"]
    assert mount == {"name": "web-config", "mountPath": os.path.dirname(WEB_CONFIG_PATH),
                     "readOnly": True}
    (vol,) = [v for v in pod["volumes"] if v["name"] == "web-config"]
    assert vol["secret"]["secretName"] == "podsnoop-web-config"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = ctr[probe]["httpGet"]
        # kubelet probes carry no credentials: only unauthenticated paths can pass
        assert get["scheme"] == "HTTPS" and get["path"] in UNAUTHENTICATED, probe
        assert get["port"] == "metrics"
    # nothing else of the container changed
    skip = ("env", "volumeMounts", "startupProbe", "livenessProbe", "readinessProbe")
    assert ({k: v for k, v in ctr.items() if k not in skip}
            == {k: v for k, v in plain_ctr.items() if k not in skip})
    assert [e for e in ctr["env"] if e["name"] != "PODSNOOP_WEB_CONFIG_FILE"] == \
        plain_ctr.get("env", [])


def _check_scrape_endpoint(ep: dict, plain: dict) -> None:
    assert ep["scheme"] == "https"
    assert ep["tlsConfig"]["ca"]["secret"] == {"name": "podsnoop-scrape-tls", "key": "ca.crt"}
    assert ep["tlsConfig"]["serverName"]
    assert ep["basicAuth"] == {
        "username": {"name": "podsnoop-scrape-auth", "key": "username"},
        "password": {"name": "podsnoop-scrape-auth", "key": "password"}}
    assert {k: v for k, v in ep.items() if k not in ("scheme", "tlsConfig", "basicAuth")} == plain


def test_web_config_is_a_component_that_only_patches():
    kust = load(WEB / "kustomization.yaml")[0]
    assert kust["kind"] == "Component"
    assert "resources" not in kust and "secretGenerator" not in kust  # no credentials here


def test_web_config_component_builds_on_the_base(tmp_path):
    docs = _with_web_config(tmp_path, DEPLOY)
    plain = _by_kind(kustomize(DEPLOY))
    assert set(docs) == set(plain)
    ds = docs["DaemonSet"]
    deserialize(ds)
    pod = ds["spec"]["template"]["spec"]
    _check_web_config_container(pod, only_container(pod),
                                only_container(plain["DaemonSet"]["spec"]["template"]["spec"]))
    (ep,) = docs["ServiceMonitor"]["spec"]["endpoints"]
    (plain_ep,) = plain["ServiceMonitor"]["spec"]["endpoints"]
    _check_scrape_endpoint(ep, plain_ep)


def test_web_config_component_builds_on_the_sidecar(tmp_path):
    docs = _with_web_config(tmp_path, DEPLOY / "sidecar")
    plain = _by_kind(kustomize(DEPLOY / "sidecar"))
    dep = docs["Deployment"]
    deserialize(dep)
    pod = dep["spec"]["template"]["spec"]
    plain_pod = plain["Deployment"]["spec"]["template"]["spec"]
    _check_web_config_container(pod, only_container(pod), only_container(plain_pod))
    assert only_container(pod, "app") == only_container(plain_pod, "app")
    (ep,) = docs["PodMonitor"]["spec"]["podMetricsEndpoints"]
    (plain_ep,) = plain["PodMonitor"]["spec"]["podMetricsEndpoints"]
    _check_scrape_endpoint(ep, plain_ep)


def test_web_config_readme_example_is_a_valid_web_config(tmp_path):
    """The example in deploy/web-config/README.md loads with the exporter's own loader (with
    a certificate and key where it points), and its hash is of the password it names."""
    import bcrypt
    from exporter import webconfig
    text = (WEB / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "web-config.yml").write_text(example)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=podsnoop",
                    "-days", "1", "-keyout", str(tmp_path / "tls.key"),
                    "-out", str(tmp_path / "tls.crt")], check=True, capture_output=True)
    cfg = webconfig.load(str(tmp_path / "web-config.yml"))
    assert cfg.ssl_context is not None and set(cfg.users) == {"prometheus"}
    assert "change-me" in text and bcrypt.checkpw(b"change-me", cfg.users["prometheus"])
    for secret in ("podsnoop-web-config", "podsnoop-scrape-tls", "podsnoop-scrape-auth"):
        assert secret in text

"""Run podsnoop's image with runc exactly as a Kubernetes manifest grants it.

The OCI runtime config (config.json) is generated from the manifest's pod spec and its
podsnoop container (deploy/daemonset.yaml, optionally with kustomize Component patches such
as deploy/privileged), so a test of the running container is a test of the manifest:

- securityContext: runAsUser, readOnlyRootFilesystem (the image's root filesystem, from
  `buildah from` + `buildah mount`, read-only or not), capabilities add/drop on top of the
  container runtime's default set, privileged (every capability, nothing masked);
- hostNetwork / hostPID / hostIPC: no network (and UTS) / PID / IPC namespace;
- every volumeMount of a hostPath (its `type` checked as the kubelet does) or emptyDir (a
  fresh directory) volume, read-only where readOnly says so;
- env (`value`, and `valueFrom.fieldRef` from the values the caller gives, e.g. NODE_NAME),
  command/args over the image's ENTRYPOINT/CMD;
- resources.limits: memory limit and CPU quota on the container's cgroup.

Used by tests/test_image.py and bench/image_startup.py. MACHINE-ONLY parts (quirks of the
development machines, see shared/containers-on-this-machine.md) are marked so: they are
here, never in the image or the manifests.

    python scripts/podrunc.py IMAGE [--component deploy/privileged] [-- EXTRA ARGS...]
(prints the generated config.json; the image's rootfs path is left as ROOTFS)
"""
from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.exporterproc import ExporterProcess, free_port  # noqa: E402

# containerd's default capabilities (what a container gets before add/drop).
DEFAULT_CAPS = ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
                "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
                "AUDIT_WRITE"]
# Every capability runc 1.1 knows (what privileged: true grants), in kernel order.
ALL_CAPS = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
            "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
            "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
            "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
            "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
            "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
            "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"]
# The mounts every container gets (runc spec's defaults, as containerd's).
DEFAULT_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
]
MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
          "/proc/scsi"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# Strategic merge patch keys of the lists a pod spec patch merges (Kubernetes' API types).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name",
              "volumeMounts": "mountPath", "env": "name", "ports": "containerPort"}


class ManifestError(Exception):
    pass


def host_bounding_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    return 0


# --------------------------------------------------------------------------- the manifest

def strategic_merge(base, patch, key: str | None = None):
    """Kubernetes' strategic merge for what pod-spec patches use: maps merge, null deletes,
    lists of named things merge by their merge key, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            for i, existing in enumerate(out):
                if existing.get(mk) == item.get(mk):
                    out[i] = strategic_merge(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def load_workload(manifest: Path, components: tuple[Path, ...] = ()) -> dict:
    """The workload (DaemonSet, Deployment...) in `manifest`, with each kustomize
    Component's patches for it applied."""
    docs = [d for d in yaml.safe_load_all(Path(manifest).read_text()) if d]
    (obj,) = [d for d in docs if "template" in d.get("spec", {})]
    for comp in components:
        kust = yaml.safe_load((Path(comp) / "kustomization.yaml").read_text())
        for p in kust.get("patches", []):
            for patch in yaml.safe_load_all((Path(comp) / p["path"]).read_text()):
                if patch and patch["kind"] == obj["kind"] and \
                        patch["metadata"]["name"] == obj["metadata"]["name"]:
                    obj = strategic_merge(obj, patch)
    return obj


def quantity(q: str | int) -> float:
    """A Kubernetes quantity (128Mi, 500m, 1G, 2) as a number."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    if not m:
        raise ManifestError(f"bad quantity {q!r}")
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024, "Mi": 1024 ** 2,
             "Gi": 1024 ** 3}
    return float(m.group(1)) * units[m.group(2)]


def image_config(image: str) -> dict:
    out = subprocess.run(["buildah", "inspect", "--type", "image", image],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise ManifestError(f"image {image} not found: {out.stderr.strip()} (./dev image)")
    return json.loads(out.stdout)["OCIv1"]["config"]


def runc_config(workload: dict, image_cfg: dict, rootfs: str, scratch: Path,
                field_values: dict[str, str], extra_args: list[str] = (),
                cgroups_path: str = "", apply_resources: bool = True,
                container: str = "podsnoop") -> dict:
    """config.json for the container `container` of the workload's pod template."""
    pod = workload["spec"]["template"]["spec"]
    (ctr,) = [c for c in pod["containers"] if c["name"] == container]
    sc = ctr.get("securityContext") or {}
    privileged = bool(sc.get("privileged"))

    # Capabilities: the runtime's defaults, minus drop, plus add; privileged: all.
    if privileged:
        # MACHINE-ONLY: these machines' own bounding set lacks CAP_SYS_RESOURCE, and runc
        # cannot grant a capability it does not have ("unable to apply caps"): privileged
        # gets every capability this machine has.
        caps = [c for c in ALL_CAPS if host_bounding_caps() >> ALL_CAPS.index(c) & 1]
    else:
        add = (sc.get("capabilities") or {}).get("add") or []
        drop = (sc.get("capabilities") or {}).get("drop") or []
        caps = [] if "ALL" in drop else [c for c in DEFAULT_CAPS if c not in drop]
        caps += [c for c in add if c not in caps]
        unknown = set(caps) - set(ALL_CAPS)
        if unknown:
            raise ManifestError(f"unknown capabilities {sorted(unknown)}")
    capnames = [f"CAP_{c}" for c in caps]

    # Arguments: command replaces ENTRYPOINT, args replace CMD (Kubernetes' rules).
    argv = list(ctr.get("command") or image_cfg.get("Entrypoint") or [])
    argv += list(ctr["args"] if "args" in ctr else (image_cfg.get("Cmd") or []))
    argv += list(extra_args)

    env = dict(e.split("=", 1) for e in image_cfg.get("Env", []))
    for e in ctr.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in field_values:
                raise ManifestError(f"env {e['name']}: no value given for fieldRef {path}")
            env[e["name"]] = field_values[path]
        else:
            raise ManifestError(f"env {e['name']}: only value and fieldRef are supported")

    # Mounts: the defaults, with those the manifest mounts over replaced; then the volumes,
    # parents first (as the kubelet orders them).
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts_wanted = []
    for vm in ctr.get("volumeMounts", []):
        vol = volumes.get(vm["name"])
        if vol is None:
            raise ManifestError(f"volumeMount {vm['name']} has no volume")
        if "hostPath" in vol:
            src = Path(vol["hostPath"]["path"])
            kind = vol["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                src.mkdir(parents=True, exist_ok=True)
            elif kind == "Directory" and not src.is_dir():
                raise ManifestError(f"hostPath {src} (volume {vm['name']}) is not a directory")
        elif "emptyDir" in vol:
            src = scratch / "emptydir" / vm["name"]
            src.mkdir(parents=True, exist_ok=True)
        else:
            raise ManifestError(f"volume {vm['name']}: only hostPath and emptyDir are supported")
        # readOnly is not recursive in Kubernetes (recursiveReadOnly is off by default).
        opts = ["rbind", "ro" if vm.get("readOnly") else "rw", "rprivate"]
        mounts_wanted.append({"destination": vm["mountPath"], "type": "bind",
                              "source": str(src), "options": opts})
    taken = {m["destination"] for m in mounts_wanted}
    mounts = []
    for m in DEFAULT_MOUNTS:
        if m["destination"] in taken:
            continue
        m = copy.deepcopy(m)
        if privileged and m["destination"] in ("/sys", "/sys/fs/cgroup"):
            m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
        mounts.append(m)
    mounts += sorted(mounts_wanted, key=lambda m: m["destination"].count("/"))

    namespaces = [{"type": "mount"}]
    if not pod.get("hostPID"):
        namespaces.append({"type": "pid"})
    if not pod.get("hostIPC"):
        namespaces.append({"type": "ipc"})
    if not pod.get("hostNetwork"):
        namespaces += [{"type": "network"}, {"type": "uts"}]

    resources: dict = {"devices": [{"allow": privileged, "access": "rwm"}]}
    limits = (ctr.get("resources") or {}).get("limits") or {}
    if apply_resources and "memory" in limits:
        resources["memory"] = {"limit": int(quantity(limits["memory"]))}
    if apply_resources and "cpu" in limits:
        resources["cpu"] = {"period": 100000, "quota": int(quantity(limits["cpu"]) * 100000)}

    user = {"uid": int(sc.get("runAsUser", 0)), "gid": int(sc.get("runAsGroup", 0))}
    cfg = {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False, "user": user, "args": argv,
            "env": [f"{k}={v}" for k, v in env.items()], "cwd": ctr.get("workingDir", "/"),
            "capabilities": {"bounding": capnames, "effective": capnames,
                             "permitted": capnames},
            # allowPrivilegeEscalation defaults to true: no no_new_privs.
            "noNewPrivileges": sc.get("allowPrivilegeEscalation") is False,
            # MACHINE-ONLY: no "rlimits": these machines lack CAP_SYS_RESOURCE, so no runtime
            # can set them here ("error setting rlimits ... operation not permitted").
        },
        "root": {"path": rootfs, "readonly": bool(sc.get("readOnlyRootFilesystem"))},
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": [] if privileged else MASKED,
            "readonlyPaths": [] if privileged else READONLY,
        },
    }
    if cgroups_path:
        cfg["linux"]["cgroupsPath"] = cgroups_path
    return cfg


# --------------------------------------------------------------------------- running it

def _run(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise ManifestError(f"{' '.join(argv)} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


class ManifestContainer:
    """podsnoop from `image`, run by runc as `manifest` (+ `components`) says.

    extra_args are appended after the manifest's args; field_values give the downward API's
    fieldRef values; host_paths maps a hostPath volume's path to another directory (to
    simulate a node whose /lib/modules is empty, say). As a context manager it starts the
    container and waits for /readyz; stop() sends SIGTERM (runc forwards it) and returns
    podsnoop's exit code. close() removes everything: the runc container, the bundle, the
    buildah working container and its mount, the emptyDir directories."""

    RUNC_ROOT = "/run/podsnoop-test-runc"

    def __init__(self, image: str, manifest: Path, components: tuple[Path, ...] = (),
                 extra_args: list[str] = (), field_values: dict | None = None,
                 host_paths: dict[str, str] | None = None, edit=None,
                 apply_resources: bool = True):
        self.image, self.manifest, self.components = image, Path(manifest), tuple(components)
        self.field_values = {"spec.nodeName": "podsnoop-test-node",
                             "metadata.name": "podsnoop-test", "metadata.namespace": "podsnoop",
                             "metadata.uid": "00000000-0000-0000-0000-000000000000",
                             **(field_values or {})}
        self.host_paths = host_paths or {}
        self.edit = edit  # a function that changes the workload before the config is made
        self.apply_resources = apply_resources
        self.id = f"podsnoop-test-{secrets.token_hex(4)}"
        self.port = free_port()
        # The test's own listen address after the manifest's: the manifest's 0.0.0.0:9435
        # would clash with other exporters on this shared machine (hostNetwork).
        self.extra_args = ["--listen", f"127.0.0.1:{self.port}", *extra_args]
        self.scratch = Path(tempfile.mkdtemp(prefix="podsnoop-runc-"))
        self.container = self.mountpoint = None
        self.proc: ExporterProcess | None = None
        self.cgroups_path = f"/podsnoop-test/{self.id}"

    def workload(self) -> dict:
        wl = load_workload(self.manifest, self.components)
        for v in wl["spec"]["template"]["spec"].get("volumes", []):
            if "hostPath" in v and v["hostPath"]["path"] in self.host_paths:
                v["hostPath"]["path"] = self.host_paths[v["hostPath"]["path"]]
        if self.edit:
            wl = self.edit(wl) or wl
        return wl

    def start(self, wait_ready: float = 120.0) -> "ManifestContainer":
        try:
            cfg_image = image_config(self.image)
            self.container = _run("buildah", "from", "--pull=never", "--name", self.id,
                                  self.image)
            self.mountpoint = _run("buildah", "mount", self.container)
            bundle = self.scratch / "bundle"
            bundle.mkdir()
            cfg = runc_config(self.workload(), cfg_image, self.mountpoint, self.scratch,
                              self.field_values, self.extra_args, self.cgroups_path,
                              self.apply_resources)
            (bundle / "config.json").write_text(json.dumps(cfg, indent=2))
            self.config = cfg
            self.proc = ExporterProcess(command=["runc", "--root", self.RUNC_ROOT, "run",
                                                 "--bundle", str(bundle), self.id])
            self.proc.args = []  # podsnoop's arguments are in config.json
            self.proc.port, self.proc.url = self.port, f"http://127.0.0.1:{self.port}"
            self.proc.start(wait_ready=wait_ready)
        except BaseException:
            self.close()
            raise
        return self

    def memory_cgroup(self) -> Path | None:
        """The container's memory cgroup: v1 controller (hybrid hosts) or the v2 tree."""
        for base in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
            p = Path(base + self.cgroups_path)
            if (p / "memory.max_usage_in_bytes").exists() or (p / "memory.peak").exists():
                return p
        return None

    def memory_peak(self) -> int:
        """Peak memory of the container's cgroup so far, bytes (page cache included)."""
        cg = self.memory_cgroup()
        if cg is None:
            raise ManifestError(f"no memory cgroup for {self.cgroups_path}")
        f = cg / "memory.max_usage_in_bytes"
        return int((f if f.exists() else cg / "memory.peak").read_text())

    def memory_stat(self) -> dict[str, int]:
        cg = self.memory_cgroup()
        return {k: int(v) for k, v in (ln.split() for ln in
                                       (cg / "memory.stat").read_text().splitlines())}

    def wait_exit(self, timeout: float = 120) -> int:
        return self.proc.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.proc.output() if self.proc and self.proc.log_path else ""

    def stop(self, timeout: float = 60) -> int:
        return self.proc.stop(timeout=timeout) if self.proc else 0

    def close(self) -> None:
        if self.proc and self.proc.proc and self.proc.proc.poll() is None:
            try:
                self.proc.stop(timeout=30)
            except Exception:  # noqa: BLE001 - killed by stop(); carry on cleaning up
                pass
        if self.proc and self.proc.proc and self.proc.log_path and \
                os.path.exists(self.proc.log_path):
            self.proc._final_output = self.proc.output()
            os.unlink(self.proc.log_path)
        subprocess.run(["runc", "--root", self.RUNC_ROOT, "delete", "--force", self.id],
                       capture_output=True)
        if self.container:
            subprocess.run(["buildah", "umount", self.container], capture_output=True)
            subprocess.run(["buildah", "rm", self.container], capture_output=True)
            self.container = None
        shutil.rmtree(self.scratch, ignore_errors=True)
        parent = self.cgroups_path.rsplit("/", 1)[0]
        for base in Path("/sys/fs/cgroup").iterdir():  # runc leaves the empty parent behind
            try:
                (base / parent.lstrip("/")).rmdir()
            except OSError:
                pass

    def __enter__(self) -> "ManifestContainer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> int:
    import argparse
    ap = argparse.ArgumentParser(description="print (or run) the runc config generated from "
                                             "a manifest")
    ap.add_argument("image")
    ap.add_argument("--manifest", default=str(ROOT / "deploy" / "daemonset.yaml"))
    ap.add_argument("--component", action="append", default=[])
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    wl = load_workload(Path(args.manifest), tuple(Path(c) for c in args.component))
    with tempfile.TemporaryDirectory() as scratch:
        cfg = runc_config(wl, image_config(args.image), "ROOTFS", Path(scratch),
                          {"spec.nodeName": os.uname().nodename}, args.extra)
    print(json.dumps(cfg, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

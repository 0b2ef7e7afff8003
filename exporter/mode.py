"""Node exporter or a pod's sidecar: which one this process is, and who the pod is.

Node mode runs in the host's network namespace and counts every pod through its host-side
veth. Sidecar mode runs inside one pod's network namespace: it counts that pod's own
interfaces, from the pod's side, and only that pod's cgroups. The same metric names and
labels come out of both.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PodsnoopError

log = logging.getLogger(__name__)

# The initial PID namespace's inode number is fixed (PROC_PID_INIT_INO in the kernel).
INIT_PID_NS_INO = 0xEFFFFFFC
DOWNWARD_ENV = {"name": "POD_NAME", "namespace": "POD_NAMESPACE", "uid": "POD_UID",
                "node": "NODE_NAME"}


def _ns_ino(pid: str, ns: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return None


def detect_mode() -> tuple[str, str]:
    """("node" | "sidecar", why). In the host's PID namespace (the DaemonSet's hostPID) the
    answer is certain: node iff we share PID 1's network namespace. Where the host's init
    cannot be seen (a PID namespace of its own, or no ptrace access to it) the downward API
    decides: the sidecar manifest sets POD_UID, the DaemonSet's does not."""
    init_net = _ns_ino("1", "net")  # needs ptrace read access to PID 1
    if _ns_ino("self", "pid") == INIT_PID_NS_INO and init_net is not None:
        if _ns_ino("self", "net") == init_net:
            return "node", "in the host's network namespace"
        return "sidecar", "in a network namespace other than the host's"
    if os.environ.get("POD_UID"):
        return "sidecar", "POD_UID is set (downward API) and the host's init is not visible"
    return "node", "POD_UID is not set"


@dataclass(frozen=True)
class PodIdentity:
    """The sidecar's own pod, from the downward API."""
    uid: str
    namespace: str = ""
    name: str = ""
    node: str = ""
    labels: dict[str, str] = field(default_factory=dict, hash=False)


def parse_labels_file(text: str) -> dict[str, str]:
    """The downward API's labels file: one `key="value"` per line, value Go-quoted."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r'\s*([^=\s]+)="(.*)"\s*', line)
        if m:
            out[m.group(1)] = m.group(2).encode().decode("unicode_escape")
    return out


def pod_identity(info_dir: str) -> PodIdentity:
    """From the env (POD_UID, POD_NAME, POD_NAMESPACE, NODE_NAME) or, where the downward API
    volume is mounted, its files (uid, name, namespace, labels); the env wins."""
    files = {}
    base = Path(info_dir)
    for key in ("uid", "name", "namespace", "node", "labels"):
        try:
            files[key] = (base / key).read_text().strip()
        except OSError:
            pass
    value = {k: os.environ.get(env) or files.get(k, "") for k, env in DOWNWARD_ENV.items()}
    if not value["uid"]:
        raise PodsnoopError(
            "sidecar mode needs its pod's UID and found neither POD_UID nor "
            f"{base / 'uid'}",
            "set POD_UID (and POD_NAME, POD_NAMESPACE) from the downward API "
            "(fieldRef metadata.uid), as deploy/sidecar/podsnoop-sidecar.yaml does")
    return PodIdentity(value["uid"].lower(), value["namespace"], value["name"], value["node"],
                       parse_labels_file(files.get("labels", "")))

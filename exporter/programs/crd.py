"""Live user programs from the cluster-scoped PodsnoopProgram custom resource
(podsnoop.io/v1alpha1, deploy/programs/podsnoopprogram-crd.yaml).

A PodsnoopProgram carries its program as `spec.source` (the bcc C) or `spec.object` (a
compiled `.bpf.o`, base64, as Kubernetes carries bytes: loaded with libbpf like a file's,
no bcc), never both; the rest of its spec is the program's YAML (metrics, attach,
selector, series_cap, kaddrs). The watcher lists them, then watches from the
list's resourceVersion: ADDED loads, MODIFIED replaces (only when the spec changed),
DELETED unloads; a 410 Gone or a broken stream lists again (programs no longer listed are
unloaded), with exponential backoff on failures. Every load error is the manager's one line
and podsnoop_program_errors_total, as for files.
"""
from __future__ import annotations

import json
import logging
import threading

from . import spec as specmod

log = logging.getLogger("podsnoop.programs")

GROUP, VERSION, PLURAL = "podsnoop.io", "v1alpha1", "podsnoopprograms"
WATCH_SECONDS = 60
MAX_BACKOFF = 30.0


def _object_bytes(name: str, encoded) -> bytes:
    """spec.object's bytes (the API server checks `format: byte`; a test server may not)."""
    import base64
    import binascii
    try:
        data = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        data = b""
    if not data:
        raise specmod.SpecError(f"program {name}: bad spec: spec.object is not base64 of a "
                                ".bpf.o", "set it to the output of base64 -w0 NAME.bpf.o")
    return data


class ProgramWatcher:
    def __init__(self, manager, client_factory):
        self.manager = manager
        self.client_factory = client_factory
        self.applied: dict[str, str] = {}   # program -> JSON of the spec it was loaded from
        self.restarts = 0
        self._stop = threading.Event()
        self._resp = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ProgramWatcher":
        self._thread = threading.Thread(target=self._run, name="program-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            from ..kube import _shutdown
            _shutdown(resp)  # unblocks the reading thread (close() could deadlock)
        if self._thread is not None:
            self._thread.join(5)

    # -- applying objects ------------------------------------------------------------
    def apply(self, kind: str, obj: dict) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        if kind == "DELETED":
            if self.applied.pop(name, None) is not None:
                self.manager.unload(name)
            return
        spec = dict(obj.get("spec") or {})
        text = json.dumps(spec, sort_keys=True)
        if self.applied.get(name) == text:
            return  # e.g. a relist, or a status-only change
        self.applied[name] = text
        source, encoded = spec.pop("source", None), spec.pop("object", None)
        try:
            if not specmod.PROGRAM_RE.fullmatch(name):
                raise specmod.SpecError(f"program {name}: bad spec: the name is not a DNS "
                                        "label", "name the PodsnoopProgram with a-z, 0-9, -")
            if source is not None and encoded is not None:
                raise specmod.SpecError(f"program {name}: bad spec: both spec.source and "
                                        "spec.object", "keep one: the bcc C or the object")
            if encoded is not None:
                code: str | bytes = _object_bytes(name, encoded)
            elif not isinstance(source, str) or not source.strip():
                raise specmod.SpecError(f"program {name}: bad spec: spec.source (the bcc C) "
                                        "or spec.object (a .bpf.o, base64) is missing",
                                        "put the program's C in spec.source, or its "
                                        "object in spec.object (base64 -w0 NAME.bpf.o)")
            else:
                code = source
            parsed = specmod.parse(name, spec, "object" if encoded is not None else "bcc")
        except specmod.SpecError as e:
            from .manager import ProgramError
            self.manager.unload(name)
            self.manager._failed(ProgramError(name, "spec", e.message, e.fix))
            return
        self.manager.load(parsed, code)

    def _relisted(self, items: list[dict]) -> None:
        names = {(o.get("metadata") or {}).get("name") for o in items}
        for name in [n for n in self.applied if n not in names]:
            self.apply("DELETED", {"metadata": {"name": name}})
        for obj in items:
            self.apply("ADDED", obj)

    # -- list + watch ----------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                from kubernetes import client as kclient
                api = kclient.CustomObjectsApi(self.client_factory())
                listed = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                self._relisted(listed.get("items") or [])
                rv = listed["metadata"]["resourceVersion"]
                failures = 0
                while not self._stop.is_set():
                    rv = self._watch(api, rv)
                    if rv is None:   # 410 Gone: list again
                        break
            except Exception as e:  # noqa: BLE001 - logged, retried with backoff
                if self._stop.is_set():
                    return
                failures += 1
                self.restarts += 1
                wait = min(MAX_BACKOFF, 0.5 * 2 ** min(failures, 6))
                log.warning("PodsnoopProgram watch failed (%s); retrying in %.1fs",
                            str(e).splitlines()[0] if str(e) else type(e).__name__, wait)
                self._stop.wait(wait)

    def _watch(self, api, rv: str) -> str | None:
        resp = api.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, watch=True, resource_version=rv,
            timeout_seconds=WATCH_SECONDS, _preload_content=False)
        self._resp = resp
        try:
            buf = b""
            for chunk in resp.stream(4096, decode_content=True):
                if self._stop.is_set():
                    return rv
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return None
                        raise RuntimeError(obj.get("message", "watch error"))
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self.apply(kind, obj)
            return rv
        finally:
            self._resp = None
            try:
                resp.release_conn()
            except Exception:  # noqa: BLE001 - a cut connection may not release cleanly
                pass

"""Load, run and unload user programs: compile each `<name>.bpf.c` with bcc (podsnoop.h
inlined in front), or load a compiled `<name>.bpf.o` with libbpf (objects.py; bcc is
imported only for bcc C), check it against its `<name>.yaml`, attach, and collect its maps.

A program that cannot be loaded (bad spec, clang error, verifier rejection, a map that
does not match its spec, a metric name podsnoop already exports) is logged as ONE line
naming the program, the reason and the fix, counted in
podsnoop_program_errors_total{program,reason}, and shown as podsnoop_program_loaded 0;
everything else keeps running. Unloading calls bcc's cleanup, which detaches every
tracepoint, raw tracepoint and uprobe the program attached and closes its maps; an object's
cleanup destroys its libbpf links and closes the object (bpfobject.LinkedObject).

Tracepoints and raw tracepoints attach through bcc's TRACEPOINT_PROBE /
RAW_TRACEPOINT_PROBE (at compile time). Uprobes (`attach.uprobes` in the YAML) attach to
each distinct file (device + inode) that pods run as the binary, found through
/proc/<pid>/root of the pods' processes at load and on a rescan every
UPROBE_RESCAN_SECONDS; a file no pod process has any more is detached.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
import time
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import bpfload, names
from ..errors import PodsnoopError
from ..kuberoots import RootSync, choose_level, filter_defines
from . import spec as specmod
from .collector import ProgramCollector, metric_name
from .errors import REASONS, ProgramError  # noqa: F401 (crd.py, tests)

log = logging.getLogger("podsnoop.programs")

SELECTED_MAX = 16384
UPROBE_RESCAN_SECONDS = 2.0
PATH_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*[<"]podsnoop\.h[>"].*$', re.M)
# Self metrics.
PROGRAM_LOADED = "podsnoop_program_loaded"
PROGRAM_ERRORS = "podsnoop_program_errors"
PROGRAM_UPROBES = "podsnoop_program_uprobes_attached"
PROGRAM_SELECTED = "podsnoop_program_selected_cgroups"


def _classify_bcc_failure(program: str, text: str, failure: Exception) -> ProgramError:
    lines = text.splitlines()
    msg = str(failure)
    if "Failed to load" in msg or "bpf_prog_load" in msg:
        # The verifier's log goes to stderr: its last statement is the reason, and the
        # kernel sometimes adds a HINT, which is the best fix there is.
        why = next((ln.strip() for ln in reversed(lines) if ln.strip() and
                    not ln.startswith(("processed", "HINT", "Loading", "verification time",
                                       "stack depth", "mark_precise"))), msg)
        hint = next((ln.removeprefix("HINT:").strip() for ln in lines
                     if ln.startswith("HINT:")), "")
        return ProgramError(program, "verifier", f"program {program}: rejected by the "
                            f"kernel's verifier: {why}",
                            hint or f"fix {program}.bpf.c: check pointers from map lookups "
                            "for NULL, bound loops and reads")
    first = next((ln for ln in lines if re.search(r"\berror\b|fatal", ln, re.I)), "")
    if first:
        return ProgramError(program, "compile", f"program {program}: compile error: "
                            f"{first.strip()}", f"fix {program}.bpf.c (bcc C)")
    return ProgramError(program, "attach" if "attach" in msg.lower() else "compile",
                        f"program {program}: {msg.splitlines()[0] if msg else 'failed'}",
                        f"fix {program}.bpf.c or its attach points")


SELECTED_MAP = "podsnoop_selected_cgroups"


class Program:
    """One loaded program: its bcc module (or libbpf object), collector and attachments.
    root_sync is None for an object (podsnoop.h's kubepods roots are bcc C's), and
    `selected` is kept only where the program has the podsnoop_selected_cgroups map."""

    def __init__(self, spec, bpf, collector, root_sync, has_selected: bool = True):
        self.spec = spec
        self.bpf = bpf
        self.collector = collector
        self.root_sync = root_sync
        self.has_selected = has_selected
        self.uprobes: dict[tuple, tuple[bytes, str]] = {}  # (probe i, dev, ino) -> ev name
        self.last_rescan = float("-inf")
        self.selected = 0  # cgroup ids in podsnoop_selected_cgroups

    def close(self) -> None:
        for ev_name, _ in list(self.uprobes.values()):
            try:
                self.bpf.detach_uprobe_event(ev_name)
            except Exception:
                pass
        self.uprobes.clear()
        self.bpf.cleanup()


class ProgramManager:
    """The user programs of this podsnoop, as one collector for ScrapeCollector."""

    def __init__(self, scope, resolver, labeler, pod_index=None, grace_seconds=330.0,
                 links=None, reserved=frozenset()):
        self.scope = scope          # what "in a pod" means (kubepods roots, or own pod)
        self.resolver = resolver
        self.labeler = labeler
        self.pod_index = pod_index
        self.grace_seconds = grace_seconds
        self.links = links          # callable -> LinkManager or None
        self.reserved = set(reserved)
        self.programs: dict[str, Program] = {}
        self.loaded: dict[str, int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self._lock = threading.RLock()

    # -- loading -----------------------------------------------------------------------
    def load_dir(self, directory: str) -> None:
        d = Path(directory)
        if not d.is_dir():
            raise PodsnoopError(f"--programs {directory} is not a directory",
                                "point --programs (PODSNOOP_PROGRAMS) at a directory of "
                                "<name>.yaml files, each beside its <name>.bpf.c or "
                                "<name>.bpf.o")
        names_ = sorted({specmod.program_name(p) for p in d.iterdir()
                         if p.name.endswith((".bpf.c", ".bpf.o", ".yaml"))})
        for name in names_:
            c, o, y = d / f"{name}.bpf.c", d / f"{name}.bpf.o", d / f"{name}.yaml"
            if c.is_file() and o.is_file():
                self._failed(ProgramError(name, "spec", f"program {name}: both {c.name} and "
                                          f"{o.name} are in {directory}", "keep one: the bcc "
                                          "C source or the compiled object"))
                continue
            code = o if o.is_file() else c
            if not code.is_file() or not y.is_file():
                missing = y.name if code.is_file() else f"{c.name} (or {o.name})"
                self._failed(ProgramError(name, "spec", f"program {name}: {missing} is "
                                          f"missing in {directory}",
                                          f"add {missing} beside the other file, or remove "
                                          "the one that is there"))
                continue
            self.load_files(code, y)
        log.info("user programs: %d loaded, %d failed (from %s)",
                 sum(self.loaded.values()), len(self.loaded) - sum(self.loaded.values()),
                 directory)

    def load_files(self, code_path: Path, yaml_path: Path) -> bool:
        """A pair from a directory: <name>.bpf.c (bcc C) or <name>.bpf.o, and its YAML."""
        name = specmod.program_name(yaml_path)
        kind = "object" if code_path.name.endswith(".bpf.o") else "bcc"
        try:
            spec = specmod.load(yaml_path, kind)
            code = code_path.read_bytes() if kind == "object" else code_path.read_text()
        except specmod.SpecError as e:
            self._failed(ProgramError(name, "spec", e.message, e.fix))
            return False
        except (OSError, UnicodeDecodeError) as e:
            self._failed(ProgramError(name, "spec", f"program {name}: cannot read "
                                      f"{code_path}: {getattr(e, 'strerror', None) or e}",
                                      "check the file"))
            return False
        return self.load(spec, code)

    def load(self, spec, code: str | bytes) -> bool:
        """Load (or replace) one program: `code` is the bcc C (spec.kind "bcc") or the
        object's bytes ("object"); False (logged, counted) if it cannot be loaded."""
        name = spec.name
        with self._lock:
            old = self.programs.pop(name, None)
            if old is not None:
                self._close(name, old)
        try:
            program = (self._build_object(spec, code) if spec.kind == "object"
                       else self._build(spec, code))
        except ProgramError as e:
            self._failed(e)
            return False
        except specmod.SpecError as e:
            self._failed(ProgramError(name, "maps", e.message, e.fix))
            return False
        except PodsnoopError as e:
            self._failed(ProgramError(name, "internal", f"program {name}: {e.message}", e.fix))
            return False
        except Exception as e:  # never let one program take podsnoop down
            self._failed(ProgramError(name, "internal", f"program {name}: "
                                      f"{type(e).__name__}: {e}", "report this as a bug"))
            return False
        with self._lock:
            self.programs[name] = program
            self.loaded[name] = 1
        log.info("program %s loaded: %s", name, ", ".join(metric_name(m)
                                                        for m in spec.metrics))
        return True

    def _check_names(self, spec) -> None:
        name = spec.name
        taken = [metric_name(m) for m in spec.metrics
                 if metric_name(m) in self.reserved or
                 any(metric_name(m) == metric_name(m2) for n, p in self.programs.items()
                     if n != name for m2 in p.spec.metrics)]
        if taken:
            raise ProgramError(name, "name_conflict", f"program {name}: podsnoop already "
                               f"exports {taken[0]}", "rename the metric (and its map) in "
                               f"{name}.yaml and {spec.file}, or turn the podsnoop "
                               "feature that exports it off")

    def _build_object(self, spec, data: bytes) -> Program:
        """A compiled object: libbpf loads and attaches it (objects.py); no bcc."""
        from . import objects
        self._check_names(spec)
        bpf = objects.load(spec, data)
        try:
            has_selected = SELECTED_MAP in bpf
            if has_selected:
                table = bpf[SELECTED_MAP]
                if ctypes.sizeof(table.Key) != 8 or ctypes.sizeof(table.Leaf) != 1:
                    raise ProgramError(spec.name, "maps", f"program {spec.name}: map "
                                       f"{SELECTED_MAP} is not u64 -> u8", "declare it as "
                                       "a hash of __type(key, u64), __type(value, u8)")
            elif spec.selector is not None:
                raise ProgramError(spec.name, "maps", f"program {spec.name}: selector needs "
                                   f"a map {SELECTED_MAP} in {spec.file}", "declare a hash "
                                   f"{SELECTED_MAP} (u64 cgroup id -> u8) and look the "
                                   "current cgroup id up in it")
            collector = ProgramCollector(spec, bpf, self.resolver, self.labeler, self.links,
                                         self.grace_seconds)
            program = Program(spec, bpf, collector, None, has_selected)
            if has_selected:
                self._sync_selected(program)
            return program
        except BaseException:
            bpf.cleanup()
            raise

    def _build(self, spec, source: str) -> Program:
        name = spec.name
        self._check_names(spec)
        header = (bpfload.BPF_DIR / "podsnoop.h").read_text()
        text = (header + f'\n#line 1 "{name}.bpf.c"\n' + INCLUDE_RE.sub("", source))
        level = choose_level(self.scope)
        cflags = bpfload.defines(**filter_defines(level), PODSNOOP_SELECTED_MAX=SELECTED_MAX)
        cflags.append(f"-I{bpfload.BPF_DIR}")
        bcc = bpfload.import_bcc()
        bpf = None
        with bpfload._captured_stderr() as err:
            try:
                bpf = bcc.BPF(text=text.encode(), cflags=cflags)
                failure = None
            except Exception as e:  # bcc raises bare Exception
                failure = e
        if failure is not None:
            raise _classify_bcc_failure(name, "".join(err), failure)
        try:
            for u in spec.uprobes:  # loaded (verified) now, attached per binary later
                try:
                    with bpfload._captured_stderr():  # the verifier's log: not for the user
                        bpf.load_func(u.function.encode(), bcc.BPF.KPROBE)
                except Exception as e:
                    if "not found" in str(e) or "Failed to load" not in str(e):
                        raise ProgramError(name, "spec", f"program {name}: uprobe function "
                                           f"{u.function} is not in {name}.bpf.c ({e})",
                                           f"define int {u.function}(struct pt_regs *ctx) "
                                           "or name it with attach.uprobes[].function")
                    raise ProgramError(name, "verifier", f"program {name}: {u.function} "
                                       f"rejected by the kernel's verifier ({e})",
                                       f"fix {u.function} in {name}.bpf.c")
            collector = ProgramCollector(spec, bpf, self.resolver, self.labeler, self.links,
                                         self.grace_seconds)
            root_sync = RootSync(bpf[b"kubepods_roots"], self.scope, level)
            root_sync.sync()
            program = Program(spec, bpf, collector, root_sync)
            self._sync_selected(program)
            self._rescan_uprobes(program)
            return program
        except BaseException:
            bpf.cleanup()
            raise

    def _failed(self, e: ProgramError) -> None:
        with self._lock:
            self.loaded[e.program] = 0
            key = (e.program, e.reason)
            self.errors[key] = self.errors.get(key, 0) + 1
        log.error("program %s not loaded (%s): %s (fix: %s)", e.program, e.reason,
                  e.message.removeprefix(f"program {e.program}: "), e.fix)

    def _close(self, name: str, program: Program) -> None:
        try:
            program.close()
        except Exception as e:
            log.error("program %s: unloading failed: %s", name, e)

    def unload(self, name: str) -> bool:
        with self._lock:
            program = self.programs.pop(name, None)
            self.loaded.pop(name, None)
            if program is None:
                return False
            self._close(name, program)
        log.info("program %s unloaded", name)
        return True

    def close(self) -> None:
        for name in list(self.programs):
            self.unload(name)

    # -- keeping maps and attachments current -----------------------------------------
    def _selected_ids(self, selector) -> set[int]:
        own = getattr(self.scope, "pod_uid", None)  # sidecar mode: only its own pod
        if own is not None:
            pods = {own: self.resolver.pods().get(own, [])}
        else:
            pods = self.resolver.pods()
        if selector is None:
            return {i.cgroup_id for infos in pods.values() for i in infos}
        if self.pod_index is None:
            return set()
        ns = selector.get("namespace")
        namespaces = {ns} if isinstance(ns, str) else set(ns or ())
        want = {f"label_{k}" if not k.startswith("label_") else k: str(v)
                for k, v in (selector.get("matchLabels") or {}).items()}
        from ..kube import sanitize_label_name
        want = {sanitize_label_name(k.removeprefix("label_")): v for k, v in want.items()}
        ids = set()
        for uid, infos in pods.items():
            meta = self.pod_index.get(uid)
            if meta is None or (namespaces and meta.namespace not in namespaces):
                continue
            if any(meta.labels.get(k) != v for k, v in want.items()):
                continue
            ids.update(i.cgroup_id for i in infos)
        return ids

    def _sync_selected(self, program: Program) -> None:
        table = program.bpf[SELECTED_MAP.encode()]
        want = self._selected_ids(program.spec.selector)
        have = {int(k.value) for k in table.keys()}
        for cid in have - want:
            try:
                del table[table.Key(cid)]
            except KeyError:
                pass
        for cid in list(want - have)[:SELECTED_MAX]:
            table[table.Key(cid)] = ctypes.c_uint8(1)
        program.selected = min(len(want), SELECTED_MAX)

    def _pod_files(self, binary: str) -> dict[tuple[int, int], str]:
        """(dev, inode) -> a path to it, of every file that pods' processes run as
        `binary` (a name looked up in the containers' PATH directories, or an absolute
        path inside the container)."""
        found: dict[tuple[int, int], str] = {}
        seen_roots: set[tuple[int, int]] = set()
        for infos in self.resolver.pods().values():
            for info in infos:
                try:
                    pids = Path(info.path, "cgroup.procs").read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    root = f"/proc/{pid}/root"
                    try:
                        st = os.stat(root)
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) in seen_roots:
                        continue
                    seen_roots.add((st.st_dev, st.st_ino))
                    candidates = ([binary.lstrip("/")] if binary.startswith("/") else
                                  [f"{d}/{binary}" for d in PATH_DIRS])
                    for rel in candidates:
                        path = f"{root}/{rel}"
                        try:
                            fst = os.stat(path)
                        except OSError:
                            continue
                        found.setdefault((fst.st_dev, fst.st_ino), path)
                        break
        return found

    def _rescan_uprobes(self, program: Program) -> None:
        if not program.spec.uprobes:
            return
        program.last_rescan = time.monotonic()
        bcc = bpfload.import_bcc()
        for i, u in enumerate(program.spec.uprobes):
            files = self._pod_files(u.binary)
            for key in [k for k in program.uprobes if k[0] == i and k[1:] not in files]:
                ev_name, path = program.uprobes.pop(key)
                try:
                    program.bpf.detach_uprobe_event(ev_name)
                    log.info("program %s: detached from %s (no pod runs it)", program.spec.name,
                             path)
                except Exception as e:
                    log.warning("program %s: detaching from %s failed: %s",
                                program.spec.name, path, e)
            for fid, path in files.items():
                if (i,) + fid in program.uprobes:
                    continue
                try:
                    with bpfload._captured_stderr():  # bcc's own complaints: logged below
                        # bcc names the probe event after the path and address; kept to
                        # detach it later, when the path (/proc/<pid>/root/...) may be gone
                        real, addr = bcc.BPF._check_path_symbol(
                            path.encode(), u.symbol.encode(), None, -1, 0)
                        prefix = b"r" if u.ret else b"p"
                        ev_name = program.bpf._get_uprobe_evname(prefix, real, addr, -1)
                        attach = (program.bpf.attach_uretprobe if u.ret
                                  else program.bpf.attach_uprobe)
                        attach(name=path.encode(), sym=u.symbol.encode(),
                               fn_name=u.function.encode())
                except Exception as e:
                    key = (program.spec.name, "attach")
                    with self._lock:
                        self.errors[key] = self.errors.get(key, 0) + 1
                    log.error("program %s: cannot attach %s to %s in %s: %s (fix: check "
                              "that the binary has the symbol)", program.spec.name,
                              u.function, u.symbol, path, str(e).splitlines()[0])
                    # remember it, so a broken binary is not retried every rescan
                    program.uprobes[(i,) + fid] = (b"", path)
                    continue
                program.uprobes[(i,) + fid] = (ev_name, path)
                log.info("program %s: %s attached to %s:%s", program.spec.name, u.function,
                         path, u.symbol)

    def sync(self) -> None:
        """Once a second (app.sync_feature_maps): kubepods roots, selected cgroups, and
        the uprobe rescan."""
        now = time.monotonic()
        with self._lock:  # a program unloaded by the CRD watcher meanwhile is not synced
            self._sync_all(now)

    def _sync_all(self, now: float) -> None:
        for p in list(self.programs.values()):
            try:
                if p.root_sync is not None:
                    p.root_sync.sync()
                if p.has_selected:
                    self._sync_selected(p)
                if p.spec.uprobes and now - p.last_rescan >= UPROBE_RESCAN_SECONDS:
                    self.resolver.rescan(full=False)
                    self._rescan_uprobes(p)
            except Exception as e:
                log.error("program %s: syncing failed: %s", p.spec.name, e)

    # -- metrics -----------------------------------------------------------------------
    def _self_families(self):
        loaded = GaugeMetricFamily(PROGRAM_LOADED, "1 if the user program is loaded and "
                                   "attached, 0 if it failed.", labels=["program"])
        errors = CounterMetricFamily(PROGRAM_ERRORS, "User programs that failed to load or "
                                     "attach, by reason.", labels=["program", "reason"])
        uprobes = GaugeMetricFamily(PROGRAM_UPROBES, "Files a user program's uprobes are "
                                    "attached to.", labels=["program"])
        selected = GaugeMetricFamily(PROGRAM_SELECTED, "Cgroups podsnoop_selected() is true "
                                     "for (pods matching the program's selector).",
                                     labels=["program"])
        cap = CounterMetricFamily(names.SERIES_CAP_DROPPED,
                                  'Series folded into "other" by a series cap.',
                                  labels=["collector"])
        with self._lock:
            for name, ok in sorted(self.loaded.items()):
                loaded.add_metric([name], ok)
            for (name, reason), n in sorted(self.errors.items()):
                errors.add_metric([name, reason], n)
            for name, p in sorted(self.programs.items()):
                cap.add_metric([f"program:{name}"], p.collector.cap_dropped)
                if p.has_selected:
                    selected.add_metric([name], p.selected)
                if p.spec.uprobes:
                    uprobes.add_metric([name], sum(1 for ev, _ in p.uprobes.values() if ev))
        return [loaded, errors, uprobes, selected, cap]

    def describe(self):
        with self._lock:
            programs = list(self.programs.values())
        for p in programs:
            yield from p.collector.empty_families()
        yield from self._self_families()

    def collect(self):
        with self._lock:
            programs = list(self.programs.items())
        for name, p in programs:
            try:
                yield from list(p.collector.collect())
            except Exception as e:
                log.error("program %s: reading its maps failed: %s", name, e)
        yield from self._self_families()


def reserved_names(collectors: dict) -> set[str]:
    """Metric names podsnoop's own collectors export (a user program must not reuse one):
    what the enabled collectors describe, plus the network metrics and self metrics."""
    out = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)
           and v.startswith("podsnoop_") and not k.startswith(("SYSCALL", "EXEC", "TCP",
                                                                   "CONTAINER_NET",
                                                                   "RESIZE"))}
    out |= {PROGRAM_LOADED, PROGRAM_ERRORS, PROGRAM_UPROBES, PROGRAM_SELECTED}
    for collector in collectors.values():
        try:
            out |= {f.name for f in collector.describe()}
        except Exception:
            pass
    return out


def start_crd_watcher(cfg, manager: ProgramManager):
    """The PodsnoopProgram watcher (--program-crds on), on its own API client."""
    from .. import kube
    from .crd import ProgramWatcher
    if cfg.kube == "off" or kube.load_kubernetes_client(cfg.kube, cfg.kubeconfig) is None:
        raise PodsnoopError("--program-crds on needs the Kubernetes API",
                            "run with --kube auto in a cluster (or with --kubeconfig), or "
                            "--program-crds off")
    return ProgramWatcher(manager, lambda: kube.load_kubernetes_client(
        cfg.kube, cfg.kubeconfig)).start()

"""A program's YAML, in cloudflare/ebpf_exporter's configuration format.

Re-implemented from their documented format (README "Configuration"): `metrics.counters`
and `metrics.histograms`, each with name, help and labels; a label has a name, a size in
bytes of the map key, an optional padding and a list of decoders. Histograms have
bucket_type (exp2, exp2zero, linear, fixed), bucket_min / bucket_max (or bucket_keys) and
bucket_multiplier; their last label is the bucket. The BPF map is named as its metric. A
counter without labels is one u32 0 key (an array's first slot), as in ebpf_exporter.

A spec is read for its program's kind: "bcc" (`<name>.bpf.c`, compiled by bcc) or
"object" (an ebpf_exporter-style compiled `<name>.bpf.o`). `kaddrs` (kernel symbols whose
addresses become the object's `const volatile u64 kaddr_<symbol>`) needs an object;
`attach.uprobes` needs bcc C (an object names its uprobes in its section names). What
podsnoop does not do is refused by name (`tracing` spans, `cgroup_id_map`,
`perf_event_array` counters, decoders it does not have), never silently ignored.

podsnoop's additions, all optional (ebpf_exporter ignores nothing here, so a spec of theirs
reads unchanged):
- decoders `pod` (an 8-byte cgroup id -> namespace, pod, pod_uid, container, container_id)
  and `pod_interface` (a 4-byte ifindex -> namespace, pod, pod_uid, interface);
- a label's `top: N`: its N most frequent values are named, the rest is "other";
- `series_cap` (default 1000): label sets beyond it fold into one series, all labels "other";
- `attach.uprobes`: [{binary, symbol, function, return}] attached in every pod that runs
  the binary;
- `selector`: {namespace, matchLabels} for podsnoop_selected() in bpf/podsnoop.h.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PodsnoopError

KNOWN_DECODERS = {"uint", "hex", "string", "static_map", "syscall", "errno", "ksym",
                  "pod", "pod_interface"}
BUCKET_TYPES = {"exp2", "exp2zero", "linear", "fixed"}
DEFAULT_SERIES_CAP = 1000
NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
PROGRAM_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
# Labels a decoder adds in place of the configured label's name.
EXPANDED = {"pod": ("namespace", "pod", "pod_uid", "container", "container_id"),
            "pod_interface": ("namespace", "pod", "pod_uid", "interface")}


class SpecError(PodsnoopError):
    """A bad program spec: the message names what is wrong, the fix says what to write."""


@dataclass(frozen=True)
class Label:
    name: str
    size: int
    padding: int
    decoders: tuple[dict, ...]
    top: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The Prometheus label names this key field becomes."""
        last = self.decoders[-1]["name"] if self.decoders else ""
        return EXPANDED.get(last, (self.name,))


@dataclass(frozen=True)
class Metric:
    kind: str               # "counter" | "histogram"
    name: str               # also the BPF map's name
    help: str
    labels: tuple[Label, ...]
    bucket_type: str = ""
    bucket_min: int = 0
    bucket_max: int = 0
    bucket_keys: tuple[int, ...] = ()
    bucket_multiplier: float = 1.0

    @property
    def key_size(self) -> int:
        return sum(lb.size + lb.padding for lb in self.labels)


@dataclass(frozen=True)
class Uprobe:
    binary: str
    symbol: str
    function: str
    ret: bool


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    metrics: tuple[Metric, ...]
    uprobes: tuple[Uprobe, ...] = ()
    selector: dict | None = None
    series_cap: int = DEFAULT_SERIES_CAP
    kaddrs: tuple[str, ...] = field(default_factory=tuple)
    kind: str = "bcc"       # "bcc" (<name>.bpf.c) or "object" (<name>.bpf.o)

    @property
    def file(self) -> str:
        """The program's file, for messages: <name>.bpf.c or <name>.bpf.o."""
        return f"{self.name}.bpf.{'o' if self.kind == 'object' else 'c'}"


def _fail(program: str, what: str, fix: str):
    raise SpecError(f"program {program}: bad spec: {what}", fix)


def _int(program, where, value, lo=0, hi=1 << 31) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _fail(program, f"{where} is {value!r}", f"make {where} a whole number in {lo}..{hi}")
    return value


def _label(program: str, where: str, raw) -> Label:
    if not isinstance(raw, dict) or "name" not in raw:
        _fail(program, f"{where} is not a mapping with a name", "write labels as "
              "- {name: ..., size: N, decoders: [{name: uint}]}")
    name = raw["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        _fail(program, f"{where} name {name!r} is not a Prometheus label name",
              "use letters, digits and _")
    size = _int(program, f"{where} ({name}) size", raw.get("size"), 1, 4096)
    padding = _int(program, f"{where} ({name}) padding", raw.get("padding", 0), 0, 4096)
    decoders = raw.get("decoders") or []
    if not isinstance(decoders, list):
        _fail(program, f"{where} ({name}) decoders is not a list",
              "write decoders: [{name: uint}]")
    out = []
    for i, d in enumerate(decoders):
        if isinstance(d, str):
            d = {"name": d}
        if not isinstance(d, dict) or d.get("name") not in KNOWN_DECODERS:
            got = d.get("name") if isinstance(d, dict) else d
            _fail(program, f"{where} ({name}) decoder {got!r} is unknown",
                  f"use one of {', '.join(sorted(KNOWN_DECODERS))}")
        if d["name"] == "static_map" and not isinstance(d.get("static_map"), dict):
            _fail(program, f"{where} ({name}) static_map decoder has no static_map mapping",
                  "add static_map: {1: read, 2: write}")
        if d["name"] in EXPANDED and i != len(decoders) - 1:
            _fail(program, f"{where} ({name}) decoder {d['name']} is not the last one",
                  f"make {d['name']} the only decoder of its label")
        if d["name"] == "pod" and size != 8:
            _fail(program, f"{where} ({name}) pod decoder needs size 8 (a u64 cgroup id), "
                  f"not {size}", "key the map by bpf_get_current_cgroup_id() as a u64")
        if d["name"] == "pod_interface" and size != 4:
            _fail(program, f"{where} ({name}) pod_interface decoder needs size 4 (a u32 "
                  f"ifindex), not {size}", "key the map by the interface index as a u32")
        out.append(dict(d))
    top = raw.get("top")
    if top is not None:
        top = _int(program, f"{where} ({name}) top", top, 0, 10000)
    return Label(name, size, padding, tuple(out), top)


def _metric(program: str, kind: str, raw, index: int) -> Metric:
    where = f"metrics.{kind}s[{index}]"
    if not isinstance(raw, dict):
        _fail(program, f"{where} is not a mapping", "see ebpf_exporter's README, Configuration")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        _fail(program, f"{where} name {name!r} is not a metric name",
              "use letters, digits and _ (it is also the BPF map's name)")
    labels_raw = raw.get("labels") or []
    if not isinstance(labels_raw, list):
        _fail(program, f"{where} ({name}) labels is not a list", "write labels: [- name: ...]")
    labels = tuple(_label(program, f"{where} ({name}) labels[{i}]", lb)
                   for i, lb in enumerate(labels_raw))
    seen: set[str] = set()
    for lb in labels[:-1] if kind == "histogram" else labels:
        for n in lb.names:
            if n in seen:
                _fail(program, f"{where} ({name}) has the label {n} twice",
                      "rename one of them")
            seen.add(n)
    helptext = raw.get("help", "")
    if not isinstance(helptext, str):
        _fail(program, f"{where} ({name}) help is not text", "write help: \"...\"")
    if kind == "counter":
        if raw.get("perf_event_array"):
            _fail(program, f"{where} ({name}) uses perf_event_array, which podsnoop does not "
                  "read", "count in a BPF hash keyed by the labels instead")
        return Metric("counter", name, helptext, labels)  # no labels: one u32 0 key
    bucket_type = raw.get("bucket_type")
    if bucket_type not in BUCKET_TYPES:
        _fail(program, f"{where} ({name}) bucket_type is {bucket_type!r}",
              f"use one of {', '.join(sorted(BUCKET_TYPES))}")
    if not labels:
        _fail(program, f"{where} ({name}) has no bucket label",
              "make the last label the bucket (size 8, decoders [uint])")
    mult = raw.get("bucket_multiplier", 1)
    if isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult <= 0:
        _fail(program, f"{where} ({name}) bucket_multiplier is {mult!r}",
              "make it a positive number, e.g. 0.000001 for microseconds")
    keys: tuple[int, ...] = ()
    lo = hi = 0
    if bucket_type == "fixed":
        raw_keys = raw.get("bucket_keys")
        if not isinstance(raw_keys, list) or not raw_keys:
            _fail(program, f"{where} ({name}) fixed histogram without bucket_keys",
                  "add bucket_keys: [1, 10, 100]")
        keys = tuple(_int(program, f"{where} ({name}) bucket_keys", k, 0, 1 << 62)
                     for k in raw_keys)
        if list(keys) != sorted(set(keys)):
            _fail(program, f"{where} ({name}) bucket_keys are not increasing",
                  "list them smallest first, each once")
    else:
        lo = _int(program, f"{where} ({name}) bucket_min", raw.get("bucket_min"), 0, 1 << 20)
        hi = _int(program, f"{where} ({name}) bucket_max", raw.get("bucket_max"), lo, 1 << 20)
        if hi - lo > 1000:
            _fail(program, f"{where} ({name}) has {hi - lo + 1} buckets",
                  "use at most 1001 buckets")
    return Metric("histogram", name, helptext, labels, bucket_type, lo, hi, keys, float(mult))


def parse(program: str, data, kind: str = "bcc") -> ProgramSpec:
    """Check a parsed YAML document for a program of `kind` ("bcc" or "object"); SpecError
    names the first problem and its fix."""
    if not isinstance(data, dict):
        _fail(program, "the YAML is not a mapping", "start it with metrics:")
    if data.get("tracing"):
        _fail(program, "tracing (ebpf_exporter's OpenTelemetry spans) is not exported by "
              "podsnoop", "drop tracing:, or count the events in a map under metrics:")
    if data.get("cgroup_id_map"):
        _fail(program, "cgroup_id_map is not supported by podsnoop",
              "drop it; filter by pod with podsnoop_selected_cgroups (README, User programs)")
    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict):
        _fail(program, "metrics is not a mapping", "write metrics: {counters: [...]}")
    out: list[Metric] = []
    for metric_kind in ("counter", "histogram"):
        items = metrics.get(f"{metric_kind}s") or []
        if not isinstance(items, list):
            _fail(program, f"metrics.{metric_kind}s is not a list",
                  f"write metrics.{metric_kind}s as a list")
        out += [_metric(program, metric_kind, m, i) for i, m in enumerate(items)]
    if not out:
        _fail(program, "no metrics.counters or metrics.histograms",
              "describe at least one map under metrics.counters")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        _fail(program, "two metrics share a name", "give every metric (map) its own name")
    attach = data.get("attach") or {}
    if not isinstance(attach, dict):
        _fail(program, "attach is not a mapping", "write attach: {uprobes: [...]}")
    uprobes = []
    if attach.get("uprobes") and kind == "object":
        _fail(program, "attach.uprobes is for programs in bcc C, not a .bpf.o",
              'name the uprobe in the program\'s section: SEC("uprobe/<binary>:<symbol>")')
    for i, u in enumerate(attach.get("uprobes") or []):
        if not isinstance(u, dict) or not isinstance(u.get("binary"), str) \
                or not isinstance(u.get("symbol"), str):
            _fail(program, f"attach.uprobes[{i}] needs binary and symbol",
                  "write - {binary: bash, symbol: readline, return: true}")
        ret = bool(u.get("return", False))
        fn = u.get("function") or ("uretprobe_" if ret else "uprobe_") + u["symbol"]
        uprobes.append(Uprobe(u["binary"], u["symbol"], fn, ret))
    # `name` is ebpf_exporter's too (it names a config by its file, as podsnoop does)
    unknown = set(data) - {"metrics", "attach", "selector", "series_cap", "kaddrs", "name",
                           "tracing", "cgroup_id_map"}
    if unknown:
        _fail(program, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}",
              "use metrics, attach, selector, series_cap, kaddrs")
    selector = data.get("selector")
    if selector is not None:
        if not isinstance(selector, dict) or not set(selector) <= {"namespace", "matchLabels"}:
            _fail(program, "selector has other keys than namespace and matchLabels",
                  "write selector: {namespace: shop, matchLabels: {app: web}}")
        if not isinstance(selector.get("matchLabels", {}), dict):
            _fail(program, "selector.matchLabels is not a mapping", "write matchLabels: {app: web}")
    cap = _int(program, "series_cap", data.get("series_cap", DEFAULT_SERIES_CAP), 1, 10**6)
    kaddrs = data.get("kaddrs") or []
    if kaddrs and kind != "object":
        _fail(program, "kaddrs needs a compiled .bpf.o (it sets the object's const volatile "
              "kaddr_<symbol>)", "drop kaddrs, or compile the program to a .bpf.o")
    if not isinstance(kaddrs, list) or not all(isinstance(k, str) and NAME_RE.fullmatch(k)
                                               for k in kaddrs):
        _fail(program, "kaddrs is not a list of kernel symbol names",
              "write kaddrs: [symbol_name]")
    return ProgramSpec(program, tuple(out), tuple(uprobes), selector, cap, tuple(kaddrs),
                       kind)


def load(yaml_path: Path, kind: str = "bcc") -> ProgramSpec:
    import yaml
    program = program_name(yaml_path)
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except OSError as e:
        _fail(program, f"cannot read {yaml_path}: {e.strerror}", "check the file")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        _fail(program, f"{yaml_path.name} is not valid YAML{where} "
              f"({getattr(e, 'problem', None) or e})", "fix the YAML syntax")
    return parse(program, data, kind)


def program_name(path: Path) -> str:
    return path.name.removesuffix(".yaml").removesuffix(".bpf.c").removesuffix(".bpf.o")

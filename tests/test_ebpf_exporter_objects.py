"""User programs as compiled objects: ebpf_exporter's `<name>.bpf.o` beside its
`<name>.yaml`, loaded unchanged by libbpf (exporter/programs/objects.py, bpfobject
load_linked), never by bcc.

The programs are podsnoop's own, in ebpf_exporter's conventions (tests/ebpf_exporter_format/),
compiled here with clang into the test's temporary directory. On the real kernel: exact
counts of a syscall nothing else makes (a counter per container, an exp2 histogram with
known buckets and sum, a counter without labels, a kaddrs address) with bcc hidden from the
process; a uprobe named in its section counting an interactive bash's lines; broken objects
as one line each; unloading leaves no program or link (bpftool); PodsnoopProgram objects
carrying the object in spec.object.
"""
from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_exporter
from exporter.programs import spec as specmod
from test_cli import in_private_mounts
from test_network import wait_for
from test_user_programs import QUIET, SCHED_GET_PRIORITY_MAX, _bash, _calls, _drain, _fds

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "tests" / "ebpf_exporter_format"
VMLINUX_H = ROOT / "bpf" / ".output" / "vmlinux.h"
BCC_DIR = "/usr/lib/python3/dist-packages/bcc"
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
ARCH = {"x86_64": "x86", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def compile_object(source: Path, out: Path) -> Path:
    """clang -target bpf, as ebpf_exporter's examples/Makefile builds its objects."""
    if not VMLINUX_H.is_file():
        subprocess.run(["make", "-C", str(ROOT / "bpf"), ".output/vmlinux.h"], check=True,
                       capture_output=True)
    r = subprocess.run(["clang", "-g", "-O2", "-mcpu=v3", "-Wall", "-Werror", "-target", "bpf",
                        f"-D__TARGET_ARCH_{ARCH}", f"-I{VMLINUX_H.parent}", "-c", str(source),
                        "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("objects")
    return {name: compile_object(SOURCES / f"{name}.bpf.c", out / f"{name}.bpf.o")
            for name in ("policy", "readline")}


def _dir(tmp_path: Path, built: dict[str, Path], *names: str) -> Path:
    d = tmp_path / "programs"
    d.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(built[name], d / f"{name}.bpf.o")
        shutil.copy(SOURCES / f"{name}.yaml", d / f"{name}.yaml")
    return d


def _host_calls(n: int) -> None:
    """n calls by a host process (in no pod)."""
    subprocess.run(_calls([0] * n), check=True)


# -- the spec, for objects (no kernel) ------------------------------------------------------
@pytest.mark.parametrize("text,kind,needle", [
    ("tracing: {spans: [{name: x}]}\nmetrics: {}", "object", "tracing"),
    ("cgroup_id_map: {name: m, type: hash, regexps: [x]}\n"
     "metrics: {counters: [{name: c}]}", "object", "cgroup_id_map"),
    ("attach: {uprobes: [{binary: bash, symbol: readline}]}\n"
     "metrics: {counters: [{name: c}]}", "object", "attach.uprobes is for programs in bcc C"),
    ("kaddrs: [do_exit]\nmetrics: {counters: [{name: c}]}", "bcc", "kaddrs needs a compiled"),
    ("kaddrs: do_exit\nmetrics: {counters: [{name: c}]}", "object", "kaddrs is not a list"),
])
def test_object_specs_refuse_what_podsnoop_does_not_do(text, kind, needle):
    with pytest.raises(specmod.SpecError) as e:
        specmod.parse("p", yaml.safe_load(text), kind)
    assert needle in e.value.message and e.value.fix


def test_their_spec_forms_read():
    """A counter without labels (one u32 0 key), kaddrs for an object, and `name`."""
    s = specmod.parse("p", yaml.safe_load(
        "name: p\nkaddrs: [do_exit]\nmetrics: {counters: [{name: c, help: h}]}"), "object")
    assert s.kind == "object" and s.file == "p.bpf.o" and s.kaddrs == ("do_exit",)
    assert s.metrics[0].labels == ()
    assert specmod.program_name(Path("x/p.bpf.o")) == "p"


def test_a_name_with_both_c_and_object_is_one_spec_error(tmp_path):
    from exporter.programs.manager import ProgramManager
    for ext in (".bpf.c", ".bpf.o", ".yaml"):
        (tmp_path / f"twice{ext}").write_text("")
    (tmp_path / "alone.bpf.o").write_bytes(b"")
    mgr = ProgramManager(None, None, None)
    mgr.load_dir(str(tmp_path))
    assert mgr.errors == {("twice", "spec"): 1, ("alone", "spec"): 1}
    assert mgr.loaded == {"twice": 0, "alone": 0}


# -- the real kernel ------------------------------------------------------------------------
def test_object_counts_exactly_without_bcc(pods, tmp_path, built):
    """bcc's module is hidden from the exporter (an empty tmpfs over it): the object loads
    with libbpf alone, and libbcc is never mapped."""
    pod = pods.create()
    e = run_exporter(pods, "--programs", str(_dir(tmp_path, built, "policy")), *QUIET,
                     wrapper=in_private_mounts(BCC_DIR))
    try:
        m = e.metrics()
        assert m.value("podsnoop_program_loaded", program="policy") == 1, e.output()
        # no selector: every pod's cgroups (the pod's and its container's) are selected
        wait_for(lambda: e.metrics().value("podsnoop_program_selected_cgroups",
                                           program="policy") == 2, what="the pod selected")
        values = [1] * 3 + [4] * 4 + [5] * 2
        pod.exec(_calls(values))
        _host_calls(7)
        wait_for(lambda: e.metrics().value("podsnoop_policy_all_calls_total") >= 16,
                 what="16 calls")
        m = e.metrics()
        cid = pod.first_container.id
        name = "podsnoop_policy_calls_total"
        assert m.value(name, container_id=cid) == 9
        assert m.series(name) == m.series(name, container_id=cid)  # the host's: not selected
        assert m.series(name)[0]["pod_uid"] == pod.uid
        h = "podsnoop_policy_values"
        buckets = {s["le"]: v for s, v in m.samples[h + "_bucket"] if s["container_id"] == cid}
        assert buckets == {"1.0": 3, "2.0": 3, "4.0": 7, "8.0": 9, "16.0": 9, "+Inf": 9}
        assert m.value(h + "_count", container_id=cid) == 9
        assert m.value(h + "_sum", container_id=cid) == 3 * 1 + 4 * 4 + 2 * 5
        assert m.samples["podsnoop_policy_all_calls_total"] == [({}, 16)]  # no labels
        assert m.samples["podsnoop_policy_kaddr_calls_total"] == [({"function": "do_exit"}, 16)]
        maps = open(f"/proc/{e.proc.pid}/maps").read()
        assert "libbpf.so" in maps and "libbcc" not in maps
    finally:
        assert e.stop() == 0
    assert "Traceback" not in e.output() and "bcc" not in e.output()


def test_bcc_is_not_imported_for_objects(pods, tmp_path, built):
    """In a fresh interpreter: the exporter's app and the manager, an object loaded."""
    script = (
        "import json, sys\n"
        "import exporter.app\n"
        "from exporter.cgroups import CgroupResolver, find_cgroup2_mount\n"
        "from exporter.labels import PodLabeler\n"
        "from exporter.programs.manager import ProgramManager\n"
        f"r = CgroupResolver(root=find_cgroup2_mount(), kubepods_roots=[{str(pods.kubepods)!r}])\n"
        "mgr = ProgramManager(r, r, PodLabeler())\n"
        f"mgr.load_dir({str(_dir(tmp_path, built, 'policy'))!r})\n"
        "list(mgr.collect())\n"
        "mgr.close()\n"
        "print(json.dumps([mgr.errors and str(mgr.errors), sorted(\n"
        "    m for m in sys.modules if m == 'bcc' or m.startswith('bcc.'))]))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == [{}, []]


BROKEN_C = {
    "verifier": ("SEC(\"tp_btf/sched_process_exec\")\nint BPF_PROG(exec_seen)\n{\n"
                 "    u64 zero = 0, *v = bpf_map_lookup_elem(&counts_total, &zero);\n"
                 "    *v += 1;  // no NULL check\n    return 0;\n}\n", "verifier"),
    "no-binary": ("SEC(\"uprobe//nonexistent/podsnoop-test:main\")\nint on_main(void *ctx)\n"
                  "{\n    return 0;\n}\n", "attach"),
    "kprobe": ("SEC(\"kprobe/do_exit\")\nint on_exit(void *ctx)\n{\n    return 0;\n}\n",
               "attach" if not KPROBE_PMU.exists() else None),
}
COUNTS_MAP = """#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, u64);
    __type(value, u64);
} counts_total SEC(".maps");

"""
COUNTS_YAML = ("metrics: {counters: [{name: counts_total, help: h, labels: "
               "[{name: n, size: 8, decoders: [{name: uint}]}]}]}\n")


def test_broken_objects_are_one_line_each_and_the_rest_keeps_running(pods, tmp_path, built):
    d = _dir(tmp_path, built, "policy")
    expected = {}
    for name, (body, reason) in BROKEN_C.items():
        src = tmp_path / f"{name}.bpf.c"
        src.write_text(COUNTS_MAP + body + 'char LICENSE[] SEC("license") = "GPL";\n')
        compile_object(src, d / f"{name}.bpf.o")
        (d / f"{name}.yaml").write_text(COUNTS_YAML)
        expected[name] = reason
    (d / "garbage.bpf.o").write_bytes(b"not an ELF object\n")
    (d / "garbage.yaml").write_text(COUNTS_YAML)
    expected["garbage"] = "object"
    policy_yaml = (SOURCES / "policy.yaml").read_text()
    for name, yaml_text, reason in (
            ("key-size", policy_yaml.replace("size: 8\n          decoders:\n            - name: "
                                             "pod", "size: 4\n          decoders:\n"
                                             "            - name: uint", 1), "maps"),
            ("no-map", policy_yaml.replace("name: policy_calls_total", "name: nope_total"),
             "maps"),
            ("no-symbol", policy_yaml.replace("- do_exit", "- no_such_symbol_podsnoop"),
             "spec"),
            ("uprobes", policy_yaml + "attach: {uprobes: [{binary: bash, symbol: readline}]}\n",
             "spec"),
            ("twice", policy_yaml, "spec")):
        shutil.copy(built["policy"], d / f"{name}.bpf.o")
        (d / f"{name}.yaml").write_text(yaml_text)
        expected[name] = reason
    (d / "twice.bpf.c").write_text("BPF_HASH(policy_calls_total, u64, u64, 16);\n")
    pods.create()
    e = run_exporter(pods, "--programs", str(d), *QUIET)
    try:
        m = e.metrics()
        assert m.value("podsnoop_program_loaded", program="policy") == 1
        for name, reason in expected.items():
            if reason is None:  # a kernel with kprobes attaches it
                assert m.value("podsnoop_program_loaded", program=name) == 1
                continue
            assert m.value("podsnoop_program_loaded", program=name) == 0, name
            assert m.series("podsnoop_program_errors_total", program=name) == [
                {"program": name, "reason": reason}], name
            assert m.value("podsnoop_program_errors_total", program=name) == 1, name
        before = m.value("podsnoop_policy_all_calls_total")
        _host_calls(5)
        wait_for(lambda: e.metrics().value("podsnoop_policy_all_calls_total") - before >= 5,
                 what="5 calls")
        assert e.metrics().value("podsnoop_policy_all_calls_total") - before == 5
    finally:
        assert e.stop() == 0
    out = e.output()
    assert "Traceback" not in out
    lines = {}
    for name, reason in expected.items():
        if reason is None:
            continue
        found = [ln for ln in out.splitlines() if f"program {name} not loaded ({reason})" in ln]
        assert len(found) == 1 and "(fix: " in found[0], (name, out)
        lines[name] = found[0]
    assert "no NULL check" not in lines["verifier"] and "verifier" in lines["verifier"]
    assert "/nonexistent/podsnoop-test" in lines["no-binary"]
    if expected["kprobe"]:
        assert "no kprobes" in lines["kprobe"]
    assert "both twice.bpf.c and twice.bpf.o" in lines["twice"]
    assert "no map named nope_total" in lines["no-map"]
    assert "4 bytes" in lines["key-size"] or "8-byte" in lines["key-size"]


def _bpftool(*args: str) -> list[dict]:
    r = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(r.stdout or "[]")


def test_unloading_leaves_no_program_or_link(pods, tmp_path, built):
    """A tp_btf program (a bpf_link fd) and a uretprobe (a perf-event link libbpf makes and
    destroys); the uprobe counts an interactive bash's lines in a pod exactly."""
    from exporter.cgroups import CgroupResolver, find_cgroup2_mount
    from exporter.labels import PodLabeler
    from exporter.programs.manager import ProgramManager
    pod = pods.create()
    resolver = CgroupResolver(root=find_cgroup2_mount(), kubepods_roots=[str(pods.kubepods)])
    before = _fds()
    names = ("policy_enter", "readline_return")
    # other tests' programs of these names may still be on their way out of the kernel
    earlier = {p["id"] for p in _bpftool("prog", "show") if p.get("name") in names}
    mgr = ProgramManager(resolver, resolver, PodLabeler())
    mgr.load_dir(str(_dir(tmp_path, built, "policy", "readline")))
    try:
        assert mgr.loaded == {"policy": 1, "readline": 1}, mgr.errors
        ours = {p["id"] for p in _bpftool("prog", "show")
                if p.get("name") in names and p["id"] not in earlier}
        assert len(ours) == 2
        linked = {ln["prog_id"] for ln in _bpftool("link", "show") if ln["prog_id"] in ours}
        assert linked == ours  # both attached through links
        proc, master = _bash(pod)
        for line in ("true", "true", "echo x", "exit"):
            os.write(master, (line + "\n").encode())
        assert proc.wait(timeout=30) == 0
        _drain(master)
        os.close(master)
        fams = {f.name: f for f in mgr.collect()}
        got = [s.value for s in fams["podsnoop_readline_calls"].samples
               if s.labels["container_id"] == pod.first_container.id]
        assert got == [4]
    finally:
        mgr.close()
    # a program's id goes when its last reference does, which the kernel may drop a moment
    # after the link (an RCU callback): wait for that, however long it takes
    wait_for(lambda: not [p for p in _bpftool("prog", "show") if p["id"] in ours],
             what="the programs freed", timeout=30)
    assert not [ln for ln in _bpftool("link", "show") if ln["prog_id"] in ours]
    assert _fds() == before


# -- PodsnoopProgram objects carrying a .bpf.o ---------------------------------------------
def test_program_crd_carries_an_object(pods, tmp_path, built):
    from exporter.testapiserver import KubeApiServer
    pod = pods.create()
    spec = {"object": base64.b64encode(built["policy"].read_bytes()).decode(),
            **yaml.safe_load((SOURCES / "policy.yaml").read_text())}
    with KubeApiServer() as api:
        api.add_pod(pod.name, "shop", "node-a", uid=pod.uid,
                    containers={c.name: c.id for c in pod.containers.values()})
        api.put_program("policy", spec)
        api.put_program("bad-object", {**spec, "object": "not base64!"})
        api.put_program("both", {**spec, "source": "BPF_HASH(x, u64, u64, 1);"})
        e = run_exporter(pods, "--kube", "auto", "--kubeconfig", str(api.kubeconfig_path),
                         "--node-name", "node-a", "--program-crds", "on", *QUIET,
                         wrapper=in_private_mounts(BCC_DIR))
        try:
            wait_for(lambda: e.metrics().value("podsnoop_program_selected_cgroups",
                                               program="policy") == 2,
                     what="the object loaded, the pod selected", timeout=30)
            pod.exec(_calls([2] * 7))
            name = "podsnoop_policy_calls_total"
            wait_for(lambda: e.metrics().value(name, pod=pod.name) >= 7, what="7 calls")
            m = e.metrics()
            assert m.value(name, pod=pod.name, namespace="shop") == 7
            for bad in ("bad-object", "both"):
                assert m.series("podsnoop_program_errors_total", program=bad) == [
                    {"program": bad, "reason": "spec"}]
            api.delete_program("policy")
            wait_for(lambda: name not in e.metrics().text, what="the object unloaded")
        finally:
            assert e.stop() == 0
    assert "Traceback" not in e.output()
    assert SCHED_GET_PRIORITY_MAX == 146  # what policy.bpf.c counts

"""The helper probe asks this kernel's verifier: an allowed helper loads, an unknown one
does not, and the answer for the pod filter's helper matches a real compile."""
from __future__ import annotations

from exporter import bpfload, kfeatures, kuberoots

KTIME_GET_NS = 5            # allowed for every program type
NO_SUCH_HELPER = 100000


def test_allowed_and_unknown_helpers(kernel):
    for prog_type in (kfeatures.PROG_TYPE_TRACEPOINT, kfeatures.PROG_TYPE_RAW_TRACEPOINT):
        assert kfeatures.helper_allowed(prog_type, KTIME_GET_NS)
        assert not kfeatures.helper_allowed(prog_type, NO_SUCH_HELPER)


def test_both_pod_filters_load_and_the_probe_agrees(kernel, tmp_path):
    """Both ways of finding a task's kubepods root load: the helper and the task walk, in
    the precompiled objects (.rodata ancestor_helper) and in bcc's podfilter.h for user
    programs (ANCESTOR_HELPER); the probe picks the helper exactly where the kernel has it
    for tracing programs."""
    from exporter import btf, bpfobject
    with_helper = kuberoots.filter_defines(3)
    assert with_helper["ANCESTOR_HELPER"] == int(kfeatures.tracing_ancestor_cgroup_helper())
    for helper in (0, 1):
        bpfobject.load(bpfload.OBJECT_DIR / "exec.bpf.o", "exec", rodata={
            "kubepods_level": 3, "ancestor_helper": helper}).cleanup()
    source = tmp_path / "filtered.c"
    source.write_text('#include "podfilter.h"\n'
                      "RAW_TRACEPOINT_PROBE(sys_enter)\n{\n    u32 zero = 0;\n"
                      "    return in_kubepods_root(kubepods_roots.lookup(&zero), "
                      "kubepods_root_id());\n}\n")
    walk = {**with_helper, "ANCESTOR_HELPER": 0, **btf.socket_offsets(),
            **btf.task_cgroup_offsets()}
    for flags in (with_helper, walk):
        bpfload.compile_program(str(source.with_suffix("")), bpfload.defines(**flags) + [
            f"-I{bpfload.BPF_DIR}"]).cleanup()

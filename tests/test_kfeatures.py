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


def test_both_pod_filters_compile_load_and_agree_with_the_probe(kernel):
    """The helper and the task-walk variants of bpf/podfilter.h both load here; the probe
    picks the helper exactly where the kernel has it for tracing programs."""
    with_helper = kuberoots.filter_defines(3)
    assert with_helper["ANCESTOR_HELPER"] == int(kfeatures.tracing_ancestor_cgroup_helper())
    from exporter import btf
    walk = {**with_helper, "ANCESTOR_HELPER": 0, **btf.socket_offsets(),
            **btf.task_cgroup_offsets()}
    for flags in (with_helper, walk):
        bpf = bpfload.compile_program("exec", bpfload.defines(
            **flags, EXEC_MAX_ENTRIES=64, EXEC_EVENTS=0) + [f"-I{bpfload.BPF_DIR}"])
        bpf.cleanup()

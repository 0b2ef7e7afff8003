"""What this kernel lets a BPF program do, asked of the kernel itself
(libbpf_probe_bpf_helper): a tiny program that calls one helper is loaded, and the
verifier's answer is the answer. Microseconds, no compiler, no kernel version guesses
(distributions backport helpers).

Used where BTF cannot tell: a helper that exists but a program type may not call yet
(bpf_get_current_ancestor_cgroup_id: cgroup_skb since 5.7, tracing programs since 5.14;
task storage: the map type since 5.11, from tracing programs since 5.13;
bpf_get_current_task_btf: 5.11).
"""
from __future__ import annotations

import ctypes as ct
import logging
from functools import lru_cache

from .bpffd import libbpf

PROG_TYPE_TRACEPOINT = 5
PROG_TYPE_RAW_TRACEPOINT = 17
HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID = 123
HELPER_TASK_STORAGE_GET = 156
HELPER_GET_CURRENT_TASK_BTF = 158


@lru_cache(maxsize=None)
def helper_allowed(prog_type: int, helper: int) -> bool:
    """Whether a program of `prog_type` may call helper number `helper`: libbpf loads a
    tiny program that calls it and reads the verifier's log (an argument the probe gets
    wrong is not a "no"; an unknown or disallowed helper is)."""
    lib = libbpf()
    lib.libbpf_probe_bpf_helper.argtypes = [ct.c_int, ct.c_int, ct.c_void_p]
    return lib.libbpf_probe_bpf_helper(prog_type, helper, None) == 1


@lru_cache(maxsize=1)
def tracing_ancestor_cgroup_helper() -> bool:
    """bpf_get_current_ancestor_cgroup_id from (raw) tracepoint programs (5.14+); said once
    in the log where it is missing (the pod filters then read the task's cgroup)."""
    allowed = all(helper_allowed(t, HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID)
                  for t in (PROG_TYPE_TRACEPOINT, PROG_TYPE_RAW_TRACEPOINT))
    if not allowed:
        logging.getLogger("podsnoop").info(
            "tracing programs of this kernel may not call bpf_get_current_ancestor_cgroup_id "
            "(5.14+): the pod filter reads the task's cgroup instead")
    return allowed


def tracing_task_storage() -> bool:
    """Task-local storage from raw tracepoint programs (5.13+; the map type is 5.11's)."""
    return helper_allowed(PROG_TYPE_RAW_TRACEPOINT, HELPER_TASK_STORAGE_GET)


def tracing_task_btf() -> bool:
    """bpf_get_current_task_btf from raw tracepoint programs (5.11+): the pod filter then
    reads the task's cgroup id with plain loads (bpf/podfilter.bpf.h current_cgroup_id)."""
    return helper_allowed(PROG_TYPE_RAW_TRACEPOINT, HELPER_GET_CURRENT_TASK_BTF)

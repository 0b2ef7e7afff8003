"""tcx mode (the default on kernels >= 6.6): podsnoop's packet programs are tcx links at the
head of each pod veth's chains, so a CNI's tcx program (Cilium in TCX mode) that redirects
or drops cannot hide packets from it. Real veths, real tcx links, the real exporter."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from exporter import bpfload, names, tcx
from conftest import our_filters, run_exporter
from test_network import deltas, snapshot, wait_for

pytestmark = pytest.mark.skipif(not tcx.supported(), reason="this kernel has no tcx (< 6.6)")


def attached(pod) -> list[str]:
    return our_filters(pod.host_if)


def has_clsact(host_if: str) -> bool:
    return "clsact" in subprocess.run(["tc", "qdisc", "show", "dev", host_if],
                                      capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def foreign(kernel):
    bpf = bpfload.compile_program("testing/foreign", [])
    yield {name: bpf.load_func(name, bpf.SCHED_CLS).fd
           for name in ("redirect_back", "drop_all", "pass_final")}
    bpf.cleanup()


def test_default_attaches_tcx_links_at_the_head_and_leaves_nothing(pods):
    pod = pods.create()
    proc = run_exporter(pods)
    wait_for(lambda: len(attached(pod)) == 2, what="attach")
    lines = attached(pod)
    assert all(" tcx #0 podsnoop_tc_" in ln for ln in lines), lines
    assert not has_clsact(pod.host_if), "tcx mode needs no clsact qdisc"
    assert "attach as tcx links" in proc.output()
    assert proc.stop(signal.SIGTERM) == 0, proc.output()
    assert attached(pod) == []


def test_sigkill_leaves_nothing_and_a_restart_counts_once(pods):
    """A tcx link lives as long as its fd: the kernel detaches it when the process dies."""
    pod = pods.create()
    first = run_exporter(pods)
    wait_for(lambda: len(attached(pod)) == 2, what="attach")
    first.stop(signal.SIGKILL)
    wait_for(lambda: attached(pod) == [], what="the killed process's links to go")
    second = run_exporter(pods)
    try:
        wait_for(lambda: len(attached(pod)) == 2, what="attach")
        before = snapshot(second, pod)
        pod.exec(["ping", "-c", "3", "-i", "0.05", "-q", pod.host_ip])
        exported, kernel, _, _ = deltas(before, snapshot(second, pod))
        assert exported == kernel and kernel["transmit_packets"] >= 3, (exported, kernel)
        assert len(attached(pod)) == 2
    finally:
        assert second.stop() == 0, second.output()


def udp_out_of_pod(pod, count: int = 50) -> None:
    pod.exec(["python3", "-c", "import socket\ns = socket.socket(socket.AF_INET, "
              f"socket.SOCK_DGRAM)\nfor _ in range({count}): s.sendto(b'x' * 100, "
              f"('{pod.host_ip}', 9))"])


# (program, hooks): the redirect sends what comes out of the pod straight back into it
# (host veth ingress -> its egress), as a CNI delivering pod-to-pod traffic itself does; on
# egress the same redirect would loop, so it sits on ingress only. A drop sits on ingress:
# on egress podsnoop, first in the chain, counts a packet that a later program drops and
# the veth never sends (README: "receive" is what reached the pod's veth; such drops are in
# podsnoop_network_drops_total), so there the veth's own counter is not the reference.
CNI_PROGRAMS = [("redirect_back", ("ingress",)), ("drop_all", ("ingress",)),
                ("pass_final", ("ingress", "egress"))]


@pytest.mark.parametrize("program,hooks", CNI_PROGRAMS, ids=[p for p, _ in CNI_PROGRAMS])
@pytest.mark.parametrize("when", ["before podsnoop starts", "after podsnoop attached"])
def test_a_cni_tcx_program_that_redirects_or_drops_hides_nothing(pods, foreign, program,
                                                                 hooks, when):
    """The CNI's program goes to the end of the chain, whenever it comes; podsnoop's runs
    first. Counts equal the veth's own in both directions, packet for packet."""
    pod = pods.create()
    pod.exec(["ping", "-c", "1", "-W", "2", pod.host_ip])  # neighbours resolved first
    links = []
    if when == "before podsnoop starts":
        links = [tcx.attach_tcx(foreign[program], pod.host_ifindex(), hook) for hook in hooks]
    proc = run_exporter(pods)
    try:
        wait_for(lambda: len(attached(pod)) == 2, what="attach")
        if not links:
            links = [tcx.attach_tcx(foreign[program], pod.host_ifindex(), hook)
                     for hook in hooks]
        assert all(" tcx #0 " in ln for ln in attached(pod)), attached(pod)
        before = snapshot(proc, pod)
        udp_out_of_pod(pod)
        subprocess.run(["ping", "-c", "5", "-i", "0.02", "-W", "1", pod.pod_ip],
                       capture_output=True)  # replies may be dropped: no check
        exported, kernel, protos, _ = deltas(before, snapshot(proc, pod))
        assert exported == kernel, (exported, kernel)
        assert protos[("tx", "udp")] == 50, protos
        assert proc.metrics().value(names.INTERFACES_BEHIND_TCX) == 0
    finally:
        for fd in links:
            os.close(fd)
        assert proc.stop() == 0, proc.output()


def test_a_program_put_in_front_of_ours_is_reported(pods, foreign):
    """A tcx program inserted at the head after podsnoop attached runs first: podsnoop
    cannot see what it ends, and says so."""
    pod = pods.create()
    proc = run_exporter(pods)
    link = None
    try:
        wait_for(lambda: len(attached(pod)) == 2, what="attach")
        link = tcx.attach_tcx(foreign["pass_final"], pod.host_ifindex(), "ingress", head=True)
        wait_for(lambda: proc.metrics().value(names.INTERFACES_BEHIND_TCX) == 1, timeout=30,
                 what="the interface reported behind a tcx program")
    finally:
        if link is not None:
            os.close(link)
        assert proc.stop() == 0, proc.output()
    assert "that run before podsnoop's" in proc.output()

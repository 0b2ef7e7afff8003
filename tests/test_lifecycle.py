"""Attach lifecycle in clsact mode (`--tc-attach clsact`, the fallback for kernels without
tcx): coexistence with foreign filters, clean exit, crash and restart, hand-over between two
instances. Real veths, real TC, the real exporter process. tcx mode: tests/test_tcx.py."""
from __future__ import annotations

import signal
import subprocess

import pytest
from pyroute2 import IPRoute

from exporter import bpfload, names
from exporter.tc import TC_H_EGRESS, TC_H_INGRESS
import conftest
from conftest import our_filters
from test_network import wait_for

TRANSMIT_ICMP = names.NET_TRANSMIT_PACKETS + "_total"


def run_exporter(factory, *args: str, **kw):
    """In clsact mode (a later flag still wins)."""
    return conftest.run_exporter(factory, "--tc-attach", "clsact", *args, **kw)


def tc_lines(host_if: str) -> list[str]:
    out = []
    for hook in ("ingress", "egress"):
        out += [f"{hook}: {ln}" for ln in subprocess.run(
            ["tc", "filter", "show", "dev", host_if, hook], capture_output=True,
            text=True).stdout.splitlines() if "handle" in ln]
    return out


def has_clsact(host_if: str) -> bool:
    return "clsact" in subprocess.run(["tc", "qdisc", "show", "dev", host_if],
                                      capture_output=True, text=True).stdout


@pytest.fixture
def foreign(kernel):
    """A CNI stand-in: a counting filter in front of ours (prio 100) and one behind (60000)."""
    bpf = bpfload.compile_program("testing/foreign", [])
    fn = bpf.load_func("foreign_count", bpf.SCHED_CLS)

    def attach(pod):
        with IPRoute() as ipr:
            idx = pod.host_ifindex()
            ipr.tc("add", "clsact", idx)
            for prio in (100, 60000):
                for hook in (TC_H_INGRESS, TC_H_EGRESS):
                    ipr.tc("add-filter", "bpf", idx, 0x77, fd=fn.fd, name=f"cni_{prio}",
                           parent=hook, classid=1, direct_action=True, prio=prio)

    yield attach, (lambda: bpf["seen"][bpf["seen"].Key(0)].value)
    bpf.cleanup()


def test_coexists_with_foreign_filters_and_leaves_them(pods, foreign):
    attach_foreign, foreign_seen = foreign
    pod = pods.create()
    attach_foreign(pod)
    proc = run_exporter(pods)
    try:
        wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="our filters")
        before = foreign_seen()
        pod.exec(["ping", "-c", "5", "-i", "0.05", "-q", pod.host_ip])
        wait_for(lambda: proc.metrics().value(TRANSMIT_ICMP, interface=pod.host_if,
                                              protocol="icmp") == 5, what="our count")
        # Both foreign filters (in front and behind ours) saw every ping and reply on both
        # hooks: our program handed each packet on instead of ending classification.
        assert foreign_seen() - before >= 5 * 2 * 2
    finally:
        assert proc.stop() == 0, proc.output()
    lines = tc_lines(pod.host_if)
    assert not our_filters(pod.host_if)
    assert sum("cni_100" in ln for ln in lines) == 2
    assert sum("cni_60000" in ln for ln in lines) == 2
    assert has_clsact(pod.host_if), "the foreign clsact qdisc must stay"


def test_sigterm_detaches_everything_and_exits_zero(pods):
    pod = pods.create()
    proc = run_exporter(pods)
    wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="attach")
    assert has_clsact(pod.host_if)
    assert proc.stop(signal.SIGTERM) == 0, proc.output()
    assert tc_lines(pod.host_if) == []
    assert not has_clsact(pod.host_if), "the clsact qdisc podsnoop created must go"


def test_sigint_also_exits_cleanly(pods):
    pod = pods.create()
    proc = run_exporter(pods)
    wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="attach")
    assert proc.stop(signal.SIGINT) == 0, proc.output()
    assert tc_lines(pod.host_if) == []


def test_restart_after_sigkill_does_not_double_attach(pods):
    pod = pods.create()
    first = run_exporter(pods)
    wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="attach")
    first.stop(signal.SIGKILL)
    leftovers = our_filters(pod.host_if)
    assert len(leftovers) == 2, "SIGKILL leaves the filters behind; the next start owns them"
    second = run_exporter(pods)
    try:
        wait_for(lambda: all(f"@{second.proc.pid}" in ln for ln in our_filters(pod.host_if)),
                 what="the new instance to take over")
        assert len(our_filters(pod.host_if)) == 2
        pod.exec(["ping", "-c", "3", "-i", "0.05", "-q", pod.host_ip])
        wait_for(lambda: second.metrics().value(TRANSMIT_ICMP, interface=pod.host_if,
                                                protocol="icmp") == 3, what="counting")
    finally:
        assert second.stop() == 0
    assert tc_lines(pod.host_if) == []


def test_leftover_on_an_excluded_link_is_swept_at_start(pods):
    pod = pods.create()
    first = run_exporter(pods)
    wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="attach")
    first.stop(signal.SIGKILL)
    # The next run is configured not to watch this link: the dead run's filters must go.
    second = run_exporter(pods, "--interfaces", "nothing-matches")  # the last flag wins
    try:
        wait_for(lambda: not our_filters(pod.host_if), what="the sweep")
    finally:
        assert second.stop() == 0


def test_older_instance_exiting_leaves_the_newer_ones_filters(pods):
    """A rolling update with surge: the new pod starts before the old one stops."""
    pod = pods.create()
    old = run_exporter(pods)
    wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="attach")
    new = run_exporter(pods)
    try:
        wait_for(lambda: all(f"@{new.proc.pid}" in ln for ln in our_filters(pod.host_if)),
                 what="the new instance to take over")
        assert old.stop() == 0
        assert len(our_filters(pod.host_if)) == 2
        pod.exec(["ping", "-c", "2", "-i", "0.05", "-q", pod.host_ip])
        wait_for(lambda: new.metrics().value(TRANSMIT_ICMP, interface=pod.host_if,
                                             protocol="icmp") == 2, what="counting")
    finally:
        assert new.stop() == 0
    assert tc_lines(pod.host_if) == []


REPAIRS = names.TC_FILTER_REPAIRS + "_total"


def test_deleted_filter_and_qdisc_are_put_back(pods):
    pod = pods.create()
    proc = run_exporter(pods)
    try:
        wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="attach")
        assert proc.metrics().value(REPAIRS) == 0
        subprocess.run(["tc", "filter", "del", "dev", pod.host_if, "ingress", "pref", "50000"],
                       check=True)
        wait_for(lambda: len(our_filters(pod.host_if)) == 2, timeout=2, what="filter put back")
        assert all(f"@{proc.proc.pid}" in ln for ln in our_filters(pod.host_if))
        wait_for(lambda: proc.metrics().value(REPAIRS) == 1, what="one repair counted")
        subprocess.run(["tc", "qdisc", "del", "dev", pod.host_if, "clsact"], check=True)
        wait_for(lambda: len(our_filters(pod.host_if)) == 2, timeout=2, what="qdisc put back")
        wait_for(lambda: proc.metrics().value(REPAIRS) == 3, what="both hooks counted")
        before = pod.host_stats()["tx_packets"]
        pod.exec(["ping", "-c", "3", "-i", "0.05", "-q", pod.host_ip])
        wait_for(lambda: proc.metrics().value(TRANSMIT_ICMP, interface=pod.host_if,
                                              protocol="icmp") >= 3, what="counting again")
        assert pod.host_stats()["tx_packets"] > before
    finally:
        assert proc.stop() == 0
    assert tc_lines(pod.host_if) == []
    assert "Traceback" not in proc.output(), proc.output()[-3000:]


def test_newer_instance_exiting_first_gives_the_hooks_back(pods):
    """A rolled-back update: the newer instance took over our filters, then exits first."""
    pod = pods.create()
    old = run_exporter(pods)
    try:
        wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="attach")
        new = run_exporter(pods)
        wait_for(lambda: all(f"@{new.proc.pid}" in ln for ln in our_filters(pod.host_if)),
                 what="the new instance to take over")
        assert new.stop() == 0
        wait_for(lambda: len(our_filters(pod.host_if)) == 2 and all(
            f"@{old.proc.pid}" in ln for ln in our_filters(pod.host_if)), timeout=2,
            what="the older instance to put its filters back")
        pod.exec(["ping", "-c", "2", "-i", "0.05", "-q", pod.host_ip])
        wait_for(lambda: old.metrics().value(TRANSMIT_ICMP, interface=pod.host_if,
                                             protocol="icmp") >= 2, what="counting")
    finally:
        assert old.stop() == 0
    assert tc_lines(pod.host_if) == []
    assert "Traceback" not in old.output() + new.output()


def test_tcx_program_in_front_is_detected(pods, kernel):
    """Cilium in TCX mode (kernel >= 6.6): a tcx program with a final verdict runs before
    clsact, so our filter never sees those packets. podsnoop must say so, not stay silent."""
    import os

    from exporter import tcx
    bpf = bpfload.compile_program("testing/foreign", [])
    final = bpf.load_func("pass_final", bpf.SCHED_CLS)
    pod = pods.create()
    link_fd = tcx.attach_tcx(final.fd, pod.host_ifindex(), "ingress")
    proc = run_exporter(pods)
    try:
        wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="attach")
        assert proc.metrics().value(names.INTERFACES_BEHIND_TCX) == 1
        pod.exec(["ping", "-c", "3", "-i", "0.05", "-q", pod.host_ip])
        m = proc.metrics()
        # The undercount is real: replies into the pod are seen (egress has no tcx), the
        # requests out of it (host ingress, behind the tcx program) are not.
        assert m.value(names.NET_RECEIVE_PACKETS + "_total", interface=pod.host_if,
                       protocol="icmp") == 3
        assert m.value(TRANSMIT_ICMP, interface=pod.host_if, protocol="icmp") == 0
    finally:
        os.close(link_fd)
        assert proc.stop() == 0, proc.output()
        bpf.cleanup()
    assert "has tcx programs on ingress" in proc.output()


def test_link_renamed_out_of_the_pattern_is_detached(pods):
    pod = pods.create()
    proc = run_exporter(pods)
    try:
        wait_for(lambda: len(our_filters(pod.host_if)) == 2, what="attach")
        renamed = "zz" + pod.host_if[2:]
        subprocess.run(["ip", "link", "set", pod.host_if, "name", renamed], check=True)
        pod.host_if = renamed  # so the pod's teardown finds it
        wait_for(lambda: not our_filters(renamed), what="detach from the renamed link")
        # The link is forgotten just after its last filter goes (the qdisc is removed in
        # between): bounded wait, not a single read.
        wait_for(lambda: proc.metrics().value(names.ATTACHED_INTERFACES) == 0,
                 what="the renamed link to be forgotten")
    finally:
        assert proc.stop() == 0, proc.output()

"""What `pip install .` gives a user: the wheel built from this checkout, installed (not
editable) into a fresh venv outside the tree, started from another directory.

The dev venv's editable install finds everything through the checkout, so only this test
shows that the wheel holds every subpackage and the BPF C sources.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path


from exporter.exporterproc import ExporterProcess
from conftest import run_checked as _run, wait_for_filters
from test_network import NET_METRICS, deltas, snapshot

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_every_subpackage_and_the_bpf_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in (ROOT / "exporter").rglob("__init__.py"):
        assert pkg.relative_to(ROOT).as_posix() in names
    shipped = {n.removeprefix("exporter/bpf/") for n in names if n.startswith("exporter/bpf/")}
    bcc_sources = {p.name for p in (ROOT / "bpf").glob("*.[ch]")
                   if not p.name.endswith((".bpf.c", ".bpf.h"))}
    objects = {p.name.replace(".bpf.c", ".bpf.o") for p in (ROOT / "bpf").glob("*.bpf.c")}
    assert shipped == bcc_sources | objects  # the objects built, not their CO-RE sources
    assert not any("testing" in n for n in names if n.startswith("exporter/bpf/"))


def test_installed_wheel_counts_a_pod_exactly_from_another_directory(
        installed, factory, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PODSNOOP_BPF_DIR", "PYTHONPATH", "VIRTUAL_ENV")}
    # Started from an empty directory, with the venv's own entry point: nothing of the
    # checkout is on its path.
    exporter = ExporterProcess(
        "--kube", "off", "--interfaces", rf"{factory.tag}h\d+",
        "--kubepods-root", str(factory.kubepods), "--syscalls", "off",
        command=[str(installed / "bin" / "podsnoop")], cwd=str(tmp_path))
    exporter.env = env  # exactly this environment, not the test's own plus it
    pod = factory.create()
    with exporter:
        out = _run(str(installed / "bin" / "python"), "-c",
                   "import exporter, bcc; from exporter import bpfload; "
                   "print(exporter.__file__); print(bpfload.BPF_DIR)", cwd=str(tmp_path), env=env)
        pkg_file, bpf_dir = out.stdout.split()
        assert pkg_file.startswith(str(installed)) and bpf_dir.startswith(str(installed))
        wait_for_filters(pod)
        pod.exec(["ping", "-c", "1", "-W", "2", pod.host_ip])
        before = snapshot(exporter, pod)
        pod.exec(["ping", "-c", "5", "-i", "0.01", "-W", "2", pod.host_ip])
        exported, kernel, _, _ = deltas(before, snapshot(exporter, pod))
        assert exported == kernel and kernel["transmit_packets"] >= 5, (exported, kernel)
        assert set(exported) == set(NET_METRICS)
        # `podsnoop top` from the wheel (its rich dependency installed with it) sees the pod
        top = _run(str(installed / "bin" / "podsnoop"), "top", "--once", "--interval", "0.2",
                   "--url", exporter.url, cwd=str(tmp_path), env=env)
        assert pod.uid in top.stdout, top.stdout
    assert exporter.proc.returncode == 0, exporter.output()
    assert "Traceback" not in exporter.output()

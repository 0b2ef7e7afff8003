"""The wheel's build step beyond pyproject.toml: the precompiled CO-RE BPF objects.

build_py also runs bpf/Makefile, which compiles every bpf/<name>.bpf.c with clang into
<build_lib>/exporter/bpf/<name>.bpf.o (beside the bcc sources), so an installed podsnoop
loads them with libbpf and never compiles them. Needs clang, bpftool, libbpf-dev and make
where the wheel is built (./dev setup, the image's build stage install them).
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithBpfObjects(build_py):
    def run(self):
        out = os.path.join(os.path.abspath(self.build_lib), "exporter", "bpf")
        # a reused build/ directory must not ship sources or objects removed since
        shutil.rmtree(out, ignore_errors=True)
        super().run()
        subprocess.run(["make", "-s", "-C", os.path.join(HERE, "bpf"), f"OUTPUT={out}"],
                       check=True)
        os.remove(os.path.join(out, "vmlinux.h"))  # a build input, not shipped


setup(cmdclass={"build_py": BuildPyWithBpfObjects})

#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, run as root: apt packages, kernel headers
# where bcc looks for them, tracefs, and a venv that sees Debian's bcc (PyPI's "bcc" is an
# unrelated package and must never be installed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "setup: $*" >&2; }

if [ "$(id -u)" != 0 ]; then say "must run as root (eBPF, netns, cgroups)"; exit 1; fi

apt_pkgs=(python3-bpfcc bpfcc-tools linux-headers-cloud-amd64 iproute2 iputils-ping iperf3
          prometheus python3-venv procps
          # tests/test_dns.py: the DNS server and client in the test pods (Debian's python3)
          python3-dnslib
          # the image (./dev image, tests/test_image.py): build with buildah, run with runc,
          # a local debian:12-slim made with mmdebstrap (gpgv checks the mirror's release)
          buildah podman runc mmdebstrap gpgv uidmap
          # the kernel matrix (scripts/kmatrix/, tests/test_kernel_matrix.py): qemu boots
          # Debian's kernels; bpftool lists what is left loaded after a test
          qemu-system-x86 qemu-utils busybox-static cpio zstd xz-utils bpftool
          # the precompiled CO-RE programs (bpf/Makefile)
          clang llvm libbpf-dev make)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's prometheus package may start a service; the tests run their own instance.
if command -v systemctl >/dev/null && systemctl is-active -q prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi

# bcc wants /lib/modules/$(uname -r)/build. No package matches this kernel; Debian's cloud
# headers are enough for TC and tracepoint programs.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build/Makefile" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-cloud-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -n "$hdr" ] && [ -n "$common" ]; then
    mkdir -p "$kdir"
    ln -sfn "$hdr" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
    say "linked $kdir/build -> $hdr"
  else
    say "no kernel headers found under /usr/src"; exit 1
  fi
fi

# bcc needs tracefs for tracepoints.
if ! mountpoint -q /sys/kernel/tracing 2>/dev/null; then
  mount -t tracefs tracefs /sys/kernel/tracing
fi

# The precompiled CO-RE programs, bpf/.output/<name>.bpf.o (rebuilt when a source changes).
make -s -C "$here/bpf"

# The kernel matrix's kernels: Debian's linux-image/linux-headers .debs (cached outside the
# checkout, shared by clones; downloaded once: rm -r the cache to take newer ones).
"$here/scripts/kmatrix/kernels.sh" >/dev/null

# The venv: the machine's python3, plus a link to Debian's bcc module (pure Python over
# libbcc.so), rather than all of dist-packages, so Debian's other packages cannot shadow ours.
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  say "installing podsnoop into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[test]"
  touch "$stamp"
fi
"$venv/bin/python" -c 'import bcc, pyroute2, prometheus_client, aiohttp, kubernetes, rich' \
  || { say "venv is broken; remove $venv and re-run"; exit 1; }

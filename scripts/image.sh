#!/usr/bin/env bash
# ./dev image: build podsnoop's image from deploy/Dockerfile with buildah, on a development
# machine. Prints the image name (localhost/podsnoop:src-<hash>, or src-<hash>-bcc with
# PODSNOOP_IMAGE_TARGET=bcc) on stdout, the last line.
#
# Idempotent and quick when nothing changed: the tag is a hash of everything the build reads
# (the Dockerfile, its .dockerignore, the copied sources, this script, the base image's id),
# so an image with that tag is reused as it is. PODSNOOP_IMAGE_REBUILD=1 forces a build.
#
# Everything below marked "MACHINE-ONLY" works around a quirk of these development machines
# (no container registry, a TLS-intercepting proxy, no systemd, hybrid cgroups); none of it
# goes into the image or the manifests (shared/containers-on-this-machine.md).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
say() { echo "image: $*" >&2; }
if [ "$(id -u)" != 0 ]; then say "must run as root (buildah with the host's storage)"; exit 1; fi
for tool in buildah podman mmdebstrap gpgv; do
  command -v "$tool" >/dev/null || { say "$tool is missing: run ./dev setup"; exit 1; }
done

base=docker.io/library/debian:12-slim
# MACHINE-ONLY: there is no registry to pull debian:12-slim from, so make a local one with
# mmdebstrap (Debian's mirror is reachable), slimmed the way the official debian:12-slim is
# (no docs, man pages or locales; no apt lists), so image sizes measured here are
# comparable with a real build. APT::Sandbox::User "root": /dev/null is mode 0600 on these
# machines, which apt's unprivileged _apt sandbox user cannot open.
if ! podman image exists "$base"; then
  say "no local $base: making one with mmdebstrap (about 20 s)"
  tar=$(mktemp /var/tmp/podsnoop-debian12.XXXXXX.tar)
  trap 'rm -f "$tar"' EXIT
  mmdebstrap --quiet --variant=minbase --aptopt='APT::Sandbox::User "root"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$tar" http://deb.debian.org/debian
  podman import "$tar" "$base" >/dev/null
  rm -f "$tar"
  trap - EXIT
fi
base_id=$(podman image inspect --format '{{.Id}}' "$base")

# The build's inputs: what the Dockerfile COPYs (deploy/Dockerfile.dockerignore's patterns
# left out), the Dockerfile, its ignore file, this script and the base image.
inputs_hash=$( {
  echo "base $base_id"
  find pyproject.toml setup.py README.md exporter bpf deploy/Dockerfile deploy/Dockerfile.dockerignore \
       scripts/image.sh -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
       ! -path '*.egg-info/*' ! -path 'bpf/.output/*' -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
# PODSNOOP_IMAGE_TARGET: default (no bcc) or bcc (tag suffix -bcc: bcc and kernel headers,
# for user programs in bcc C); both come from the same Dockerfile and inputs.
target=${PODSNOOP_IMAGE_TARGET:-default}
case "$target" in
  default) image="localhost/podsnoop:src-$inputs_hash" ;;
  bcc)     image="localhost/podsnoop:src-$inputs_hash-bcc" ;;
  *) say "PODSNOOP_IMAGE_TARGET=$target: choose default or bcc"; exit 2 ;;
esac

if [ "${PODSNOOP_IMAGE_REBUILD:-0}" != 1 ] && podman image exists "$image"; then
  say "$image is current (inputs unchanged): reused"
  echo "$image"; exit 0
fi

build_args=()
# MACHINE-ONLY: the package registries are reached through a TLS-intercepting proxy whose CA
# is in the host's bundle. Mount it for the build (never COPY it) and point pip at it through
# the build stage's PIP_CERT argument; the final stage carries neither.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  build_args+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/host-ca.crt:ro
               --build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)
fi
say "building $image from deploy/Dockerfile (about 2 min)"
# MACHINE-ONLY: --isolation chroot because crun/runc-based isolation refuses hybrid cgroups
# here; --network host and --pull=never because there is no registry (the base is local).
buildah bud --quiet --isolation chroot --network host --pull=never --layers \
  --ignorefile deploy/Dockerfile.dockerignore \
  "${build_args[@]}" \
  --label io.podsnoop.inputs="$inputs_hash" \
  --target "$target" -f deploy/Dockerfile -t "$image" . >&2
# Older builds of this script do not pile up: their src-* tags, and the untagged
# intermediate images (layer cache) that carry another inputs label than this build's. Only
# images with podsnoop's label are touched; one still in use is left (rmi refuses).
for old in $(podman images --format '{{.Repository}}:{{.Tag}}' --filter reference='localhost/podsnoop:src-*'); do
  case "$old" in *"src-$inputs_hash"*) continue ;; esac  # this build's default and -bcc
  podman rmi "$old" >/dev/null 2>&1 || true
done
for id in $(podman images -a -q --filter dangling=true --filter label=io.podsnoop.inputs); do
  label=$(podman image inspect --format '{{index .Labels "io.podsnoop.inputs"}}' "$id" 2>/dev/null || true)
  [ "$label" = "$inputs_hash" ] || podman rmi "$id" >/dev/null 2>&1 || true
done
say "built $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
echo "$image"

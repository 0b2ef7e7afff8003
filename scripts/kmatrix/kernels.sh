#!/usr/bin/env bash
# Download the Debian kernels the kernel matrix boots (linux-image, linux-headers and
# linux-headers-*-common .debs) into $KMATRIX/debs, idempotently. Which kernels: the one
# Debian's metapackages pointed at when first run (rm -r $KMATRIX/debs to move on).
#   5.10  Debian 11 (bullseye)           linux-image-cloud-amd64
#   6.1   Debian 12 (bookworm)           linux-image-cloud-amd64
#   6.12  Debian 12 (bookworm-security)  linux-image-6.12-cloud-amd64
# bookworm is this machine's own apt; bullseye gets a private apt state under $KMATRIX/apt
# so the machine's sources are left alone.
set -euo pipefail
KMATRIX=${KMATRIX:-/var/cache/podsnoop-kmatrix}
debs=$KMATRIX/debs
say() { echo "kernels: $*" >&2; }
mkdir -p "$debs"
exec 9>"$KMATRIX/.download.lock"; flock 9

bullseye_apt() {   # apt-get/apt-cache with a private bullseye source list and state
  local tool=$1; shift
  local a=$KMATRIX/apt
  "$tool" -o Dir::Etc::SourceList="$a/bullseye.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$a/lists" -o Dir::Cache="$a/cache" -o APT::Sandbox::User=root \
    -o Debug::NoLocking=1 "$@"
}
bullseye_update() {
  local a=$KMATRIX/apt
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
  local kr=/usr/share/keyrings/debian-archive-keyring.gpg
  printf '%s\n' "deb [signed-by=$kr] http://deb.debian.org/debian bullseye main" \
    "deb [signed-by=$kr] http://deb.debian.org/debian-security bullseye-security main" >"$a/bullseye.list"
  bullseye_apt apt-get update -qq
}

release_of() {     # the linux-image-<release> a metapackage depends on
  local tool=$1 meta=$2
  $tool show "$meta" 2>/dev/null | sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*\).*/\1/p' |
    head -n1 | sed 's/^linux-image-//'
}

have() { compgen -G "$debs/$1_*.deb" >/dev/null; }

fetch_kernel() {   # tool-prefix metapackage
  local tool=$1 meta=$2 rel
  rel=$(release_of "$tool apt-cache" "$meta")
  [ -n "$rel" ] || { say "cannot resolve $meta"; return 1; }
  local common=${rel%-cloud-amd64}-common
  local pkgs=()
  for p in "linux-image-$rel" "linux-headers-$rel" "linux-headers-$common"; do
    have "$p" || pkgs+=("$p")
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    say "downloading ${pkgs[*]}"
    (cd "$debs" && $tool apt-get download -qq "${pkgs[@]}")
  fi
  echo "$rel"
}

plain() { "$1" -o APT::Sandbox::User=root "${@:2}"; }
if ! compgen -G "$debs/linux-image-6.1.*.deb" >/dev/null || ! compgen -G "$debs/linux-image-6.12.*.deb" >/dev/null; then
  apt-get update -qq || true
fi
compgen -G "$debs/linux-image-6.1.*.deb" >/dev/null || fetch_kernel plain linux-image-cloud-amd64 >/dev/null
compgen -G "$debs/linux-image-6.12.*.deb" >/dev/null || fetch_kernel plain linux-image-6.12-cloud-amd64 >/dev/null
if ! compgen -G "$debs/linux-image-5.10.*.deb" >/dev/null; then
  bullseye_update
  fetch_kernel bullseye_apt linux-image-cloud-amd64 >/dev/null
fi
ls "$debs" | sed -n 's/^linux-image-\([^_]*\)_.*/\1/p'

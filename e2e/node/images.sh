#!/usr/bin/env bash
# Builds the real node's step images without Docker and pushes them to the local registry (the
# e2e cluster must be up). Writes their references as shell assignments to stdout:
#   BASE_IMAGE     sluice-node/python: Debian bookworm (debootstrap minbase) with Python 3.11 (also as
#                  `python`), pip, CA certificates and git
#   TOOLS_IMAGE    sluice-node/evip-tools: the base plus the example app's pinned requirements and the
#                  tools its stages run (pytest, coverage, ruff, Bandit, the audit's YAML/CVSS
#                  parsers); pods have no internet, so everything a step needs is in the image
#   RUNTIME_IMAGE  sluice-node/evip-runtime: the base plus only the app's requirements; the build stage
#                  passes it as the Containerfile's BASE_IMAGE (upstream python images cannot be
#                  pulled here), so the Containerfile's own `pip install` finds them satisfied
#   DAST_IMAGE     sluice-node/wapiti: the base plus wapiti3, a real DAST scanner from PyPI
#   BUILDAH_IMAGE  sluice-node/buildah: the base plus Debian's buildah
#   RUST_IMAGE     sluice-node/rust: the base plus gcc and this repository's pinned Rust toolchain
#                  (copied from rustup's, as the `rust` images on Docker Hub cannot be pulled here):
#                  the operator Containerfile's build stage (e2e/node/operator-image.sh)
# Every layer is made in a chroot over an overlay of the base; the root filesystems are cached as
# tarballs beside the node's tools, keyed by what goes in.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="${SLUICE_E2E_DIR:-$repo/.e2e}"
app="$repo/examples/evip/app"
# The stage tools, pinned like the requirements (the versions e2e/tests/example_tasks.rs uses, and
# the code-quality stage's coverage and ruff).
TOOLS="pytest==8.3.3 bandit==1.7.10 coverage==7.6.4 ruff==0.8.4 pyyaml==6.0.2 packaging==24.1 cvss==3.2"
DAST="wapiti3==3.2.3"
MIRROR=http://deb.debian.org/debian

log() { printf '[images] %s\n' "$*" >&2; }

tools="$("$here/build.sh")"
cache="$tools/images"
mkdir -p "$cache"
crane="$(cat "$state/bin")/crane"
registry="$(cat "$state/registry")"

# python-is-python3: the example's scripts call `python`.
BASE_PACKAGES=python3,python3-pip,python-is-python3,ca-certificates,git
base_key="$(echo "bookworm $BASE_PACKAGES $MIRROR" | sha256sum | cut -c1-8)"
base_tar="$cache/python-bookworm-$base_key.tar"
build_base() {
  command -v debootstrap >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  local work
  work="$(mktemp -d)"
  log "debootstrap bookworm with python3 (a few minutes, network bound)"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" \
    bookworm "$work/rootfs" "$MIRROR" >"$cache/debootstrap.log" 2>&1
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" --numeric-owner -cf "$base_tar.tmp" .
  mv "$base_tar.tmp" "$base_tar"
  rm -rf "$work"
}

# layer TAR LOG COMMAND...: runs COMMAND in a chroot over an overlay of the base and keeps the
# upper directory as TAR (one image layer). The host's resolver and CA bundle (this machine reaches
# the package indexes through its own CA) are there only while the command runs; overlayfs
# deletions become OCI whiteouts.
layer() {
  local tar="$1" logfile="$2"
  shift 2
  local work merged status=0
  work="$(mktemp -d)"
  merged="$work/merged"
  mkdir -p "$work/lower" "$work/upper" "$work/work" "$merged"
  tar -C "$work/lower" -xf "$base_tar"
  mount -t overlay overlay -o "lowerdir=$work/lower,upperdir=$work/upper,workdir=$work/work" "$merged"
  cp "$app/requirements.txt" "$merged/tmp/requirements.txt"
  cp /etc/ssl/certs/ca-certificates.crt "$merged/tmp/host-ca.crt"
  cp /etc/resolv.conf "$merged/tmp/resolv.conf"
  mount --bind "$merged/tmp/resolv.conf" "$merged/etc/resolv.conf"
  mount -t proc proc "$merged/proc"
  mount --bind /dev "$merged/dev"
  chroot "$merged" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_CERT=/tmp/host-ca.crt DEBIAN_FRONTEND=noninteractive \
    "$@" >"$logfile" 2>&1 || status=$?
  umount "$merged/dev" "$merged/proc" "$merged/etc/resolv.conf"
  umount "$merged"
  if ((status != 0)); then
    rm -rf "$work"
    log "building $(basename "$tar") failed; see $logfile"
    return 1
  fi
  rm -rf "$work/upper/tmp/"* "$work/upper/var/cache/apt/"*.bin "$work/upper/var/lib/apt/lists/"* \
    "$work/upper/root/.cache"
  # overlayfs marks a deleted file with a 0/0 character device; an image layer with `.wh.<name>`.
  find "$work/upper" -type c | while read -r dev; do
    rm -f "$dev" && : >"$(dirname "$dev")/.wh.$(basename "$dev")"
  done
  tar -C "$work/upper" --numeric-owner -cf "$tar.tmp" .
  mv "$tar.tmp" "$tar"
  rm -rf "$work"
}

# pip_layer NAME PACKAGES...: a layer with those packages (and the app's requirements when
# PACKAGES includes `-r /tmp/requirements.txt`).
pip_layer() {
  local name="$1"
  shift
  log "$name: pip install $*"
  layer "$cache/$name.tar" "$cache/$name.log" pip install --no-cache-dir -q "$@"
}

[[ -f "$base_tar" ]] || build_base

req_key="$(sha256sum <"$app/requirements.txt" | cut -c1-8)"
tools_name="evip-tools-$(echo "$TOOLS $req_key $base_key" | sha256sum | cut -c1-12)"
runtime_name="evip-runtime-$(echo "$req_key $base_key" | sha256sum | cut -c1-12)"
dast_name="wapiti-$(echo "$DAST $base_key" | sha256sum | cut -c1-12)"
buildah_name="buildah-$(echo "buildah $MIRROR $base_key" | sha256sum | cut -c1-12)"

# shellcheck disable=SC2086
[[ -f "$cache/$tools_name.tar" ]] || pip_layer "$tools_name" -r /tmp/requirements.txt $TOOLS
[[ -f "$cache/$runtime_name.tar" ]] || pip_layer "$runtime_name" -r /tmp/requirements.txt
# shellcheck disable=SC2086
[[ -f "$cache/$dast_name.tar" ]] || pip_layer "$dast_name" $DAST
if [[ ! -f "$cache/$buildah_name.tar" ]]; then
  log "$buildah_name: apt-get install buildah"
  layer "$cache/$buildah_name.tar" "$cache/$buildah_name.log" sh -c \
    "echo 'deb $MIRROR bookworm main' >/etc/apt/sources.list && apt-get update -q && apt-get install -y -q --no-install-recommends buildah"
fi

# The pinned toolchain's sysroot (rust-toolchain.toml picks it in the repository), without its
# documentation: rustc finds its standard library relative to its own binary.
sysroot="$(cd "$repo" && rustc --print sysroot)"
rust_version="$(cd "$repo" && rustc -V | cut -d' ' -f2)"
rust_name="rust-$(echo "gcc libc6-dev $rust_version $MIRROR $base_key" | sha256sum | cut -c1-12)"
if [[ ! -f "$cache/$rust_name.tar" ]]; then
  log "$rust_name: apt-get install gcc libc6-dev, Rust $rust_version from $sysroot"
  layer "$cache/$rust_name-gcc.tar" "$cache/$rust_name.log" sh -c \
    "echo 'deb $MIRROR bookworm main' >/etc/apt/sources.list && apt-get update -q && apt-get install -y -q --no-install-recommends gcc libc6-dev"
  tar -C "$sysroot" --numeric-owner --transform 's,^,usr/local/rust/,' -cf "$cache/$rust_name-toolchain.tar" \
    bin/rustc bin/cargo lib libexec
  mv "$cache/$rust_name-gcc.tar" "$cache/$rust_name.tar"
fi

# Debian's Python refuses `pip install` outside a venv (PEP 668) and the example's scripts call
# pip; pods have no index to reach, so pip is told not to try one.
IMAGE_ENV=(PATH=/usr/local/bin:/usr/bin:/bin PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_INDEX=1)
env_key="$(printf '%s\n' "$base_key" "${IMAGE_ENV[@]}" | sha256sum | cut -c1-8)"
base_ref="$registry/sluice-node/python:bookworm-$env_key"
if ! "$crane" manifest "$base_ref" >/dev/null 2>&1; then
  "$crane" append --oci-empty-base -f "$base_tar" -t "$base_ref-layer" >/dev/null 2>&1
  env_flags=()
  for e in "${IMAGE_ENV[@]}"; do env_flags+=(--env "$e"); done
  "$crane" mutate "$base_ref-layer" --set-platform linux/amd64 "${env_flags[@]}" -t "$base_ref" >/dev/null 2>&1
fi

# push NAME: the base plus that layer, tagged by the layer's key; prints the reference.
push() {
  local repo_name="${1%-*}" key="${1##*-}"
  local ref="$registry/sluice-node/$repo_name:$key-$env_key"
  if ! "$crane" manifest "$ref" >/dev/null 2>&1; then
    "$crane" append -b "$base_ref" -f "$cache/$1.tar" -t "$ref" >/dev/null 2>&1
  fi
  echo "$ref"
}

echo "BASE_IMAGE=$base_ref"
echo "TOOLS_IMAGE=$(push "$tools_name")"
echo "RUNTIME_IMAGE=$(push "$runtime_name")"
echo "DAST_IMAGE=$(push "$dast_name")"
echo "BUILDAH_IMAGE=$(push "$buildah_name")"
rust_ref="$registry/sluice-node/rust:$rust_version-${rust_name##*-}-$env_key"
if ! "$crane" manifest "$rust_ref" >/dev/null 2>&1; then
  "$crane" append -b "$base_ref" -f "$cache/$rust_name.tar" -f "$cache/$rust_name-toolchain.tar" \
    -t "$rust_ref-layers" >/dev/null 2>&1
  "$crane" mutate "$rust_ref-layers" --env PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/bin:/usr/bin:/bin \
    --env CARGO_HOME=/usr/local/cargo -t "$rust_ref" >/dev/null 2>&1
fi
echo "RUST_IMAGE=$rust_ref"

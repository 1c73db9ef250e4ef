#!/usr/bin/env bash
# Builds the real node's step images without Docker and pushes them to the local registry (the
# e2e cluster must be up); prints the tools image reference.
#   sluice-node/python:bookworm-*   Debian bookworm (debootstrap minbase) with Python 3.11 (also as
#                                   `python`), pip, CA certificates and git
#   sluice-node/evip-tools:<key>    that base plus one layer: the example app's pinned requirements
#                                   and its test tools, installed by pip in a chroot (pods have no
#                                   internet, so everything a step needs is in the image)
# Both root filesystems are cached as tarballs beside the node's tools, keyed by what goes in.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="${SLUICE_E2E_DIR:-$repo/.e2e}"
app="$repo/examples/evip/app"
# The test tools, pinned like the requirements (the same versions e2e/tests/example_tasks.rs uses).
TOOLS="pytest==8.3.3 bandit==1.7.10"
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

tools_key="$(cat "$app/requirements.txt" <(echo "$TOOLS $base_key") | sha256sum | cut -c1-12)"
tools_tar="$cache/evip-tools-$tools_key.tar"
# pip in a chroot over an overlay of the base: the upper directory is the new layer.
build_tools() {
  local work merged
  work="$(mktemp -d)"
  merged="$work/merged"
  mkdir -p "$work/lower" "$work/upper" "$work/work" "$merged"
  tar -C "$work/lower" -xf "$base_tar"
  mount -t overlay overlay -o "lowerdir=$work/lower,upperdir=$work/upper,workdir=$work/work" "$merged"
  cp "$app/requirements.txt" "$merged/tmp/requirements.txt"
  # The host's CA bundle for pip's TLS (this machine's package index is reached through its own
  # CA), only while pip runs: it is not part of the layer.
  cp /etc/ssl/certs/ca-certificates.crt "$merged/tmp/host-ca.crt"
  cp /etc/resolv.conf "$merged/etc/resolv.conf.sluice"
  mount --bind "$merged/etc/resolv.conf.sluice" "$merged/etc/resolv.conf" 2>/dev/null ||
    cp /etc/resolv.conf "$merged/etc/resolv.conf"
  log "pip install of the app's requirements and $TOOLS"
  # shellcheck disable=SC2086
  chroot "$merged" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root PIP_BREAK_SYSTEM_PACKAGES=1 PIP_CERT=/tmp/host-ca.crt \
    pip install --no-cache-dir -q -r /tmp/requirements.txt $TOOLS >"$cache/pip.log" 2>&1 || {
    umount "$merged/etc/resolv.conf" 2>/dev/null || true
    umount "$merged"
    rm -rf "$work"
    log "pip failed; see $cache/pip.log"
    return 1
  }
  umount "$merged/etc/resolv.conf" 2>/dev/null || true
  umount "$merged"
  # Only what pip added: not the resolver file, the requirements copy or Python's byte code of
  # the base.
  rm -f "$work/upper/etc/resolv.conf" "$work/upper/etc/resolv.conf.sluice" "$work/upper/tmp/requirements.txt" \
    "$work/upper/tmp/host-ca.crt"
  # overlayfs marks deletions with 0/0 character devices; an image layer cannot carry them.
  if [[ -n "$(find "$work/upper" -type c -print -quit)" ]]; then
    log "the tools layer deletes files of the base; refusing to build it"
    rm -rf "$work"
    return 1
  fi
  tar -C "$work/upper" --numeric-owner -cf "$tools_tar.tmp" .
  mv "$tools_tar.tmp" "$tools_tar"
  rm -rf "$work"
}

[[ -f "$base_tar" ]] || build_base
[[ -f "$tools_tar" ]] || build_tools

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
tools_ref="$registry/sluice-node/evip-tools:$tools_key-$env_key"
if ! "$crane" manifest "$tools_ref" >/dev/null 2>&1; then
  "$crane" append -b "$base_ref" -f "$tools_tar" -t "$tools_ref" >/dev/null 2>&1
fi
echo "$tools_ref"

#!/usr/bin/env bash
# Builds the real node's components from pinned Go modules into a cache directory keyed by their
# versions (versions.env, e2e/tools/versions.env, tools/*/go.mod and this script's pause program)
# and prints that directory: kubelet and kube-proxy (the control plane's Kubernetes version, in a
# module of their own), containerd with its runc shim and ctr, the CNI plugins, CoreDNS, a pause
# program, Tekton's helper commands (entrypoint, nop, sidecarlogresults, workingdirinit) and
# Debian's static busybox for shell steps. runc comes from Debian (`e2e/node/node` installs it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/../tools"
# shellcheck source=../tools/versions.env
source "$tools/versions.env"
# shellcheck source=versions.env
source "$here/versions.env"

key="$(cat "$tools/versions.env" "$here/versions.env" "$here"/tools/*/go.mod "$here/pause/main.go" | sha256sum | cut -c1-16)"
root="${SLUICE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/node-$key"
bin="$root/bin"
mkdir -p "$bin" "$root/logs"
# shellcheck source=../tools/lib.sh
source "$tools/lib.sh"

build_kubelet() {
  (cd "$here/tools/kubelet" && go build -ldflags "$(k8s_ldflags)" -o "$bin/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
}

build_containerd() {
  local tmp pkg="github.com/containerd/containerd/v2"
  tmp="$(mktemp -d)"
  GOBIN="$tmp" go install -tags "no_btrfs no_devmapper no_zfs urfave_cli_no_docs" \
    -ldflags "-s -w -X $pkg/version.Version=$CONTAINERD_VERSION" \
    "$pkg/cmd/containerd@$CONTAINERD_VERSION" "$pkg/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "$pkg/cmd/ctr@$CONTAINERD_VERSION"
  mv "$tmp"/* "$bin/"
  rmdir "$tmp"
}

build_cni() {
  local tmp pkg="github.com/containernetworking/plugins/plugins"
  tmp="$(mktemp -d)"
  GOBIN="$tmp" go install -ldflags "-s -w" "$pkg/main/bridge@$CNI_PLUGINS_VERSION" \
    "$pkg/ipam/host-local@$CNI_PLUGINS_VERSION" "$pkg/main/loopback@$CNI_PLUGINS_VERSION" \
    "$pkg/meta/portmap@$CNI_PLUGINS_VERSION"
  mkdir -p "$root/cni"
  mv "$tmp"/* "$root/cni/"
  rmdir "$tmp"
  # build() checks for an executable under bin/: this marker says the plugins are in cni/.
  touch "$bin/cni-plugins"
  chmod +x "$bin/cni-plugins"
}

build_tekton_helpers() {
  (cd "$here/tools/tekton" && for cmd in entrypoint nop sidecarlogresults workingdirinit; do
    go build -ldflags "-s -w" -o "$bin/tekton-$cmd" "github.com/tektoncd/pipeline/cmd/$cmd" || exit 1
  done)
}

# A shell image for Tekton's script steps: Debian's statically linked busybox, its applets as links.
fetch_busybox() {
  local tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download busybox-static >/dev/null && dpkg-deb -x busybox-static_*.deb x) || { rm -rf "$tmp"; return 1; }
  cp "$tmp/x/bin/busybox" "$bin/busybox"
  rm -rf "$tmp"
}

build_pause() {
  (cd "$here/pause" && go build -ldflags "-s -w" -o "$bin/pause" .)
}

main() {
  build kubelet build_kubelet
  build containerd build_containerd
  build cni-plugins build_cni
  build coredns go_install coredns "github.com/coredns/coredns@$COREDNS_VERSION"
  build pause build_pause
  build tekton-entrypoint build_tekton_helpers
  build busybox fetch_busybox
  echo "$root"
}

main "$@"

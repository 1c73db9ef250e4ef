#!/usr/bin/env bash
# Builds the Tekton Chains controller from its Go module into a cache directory keyed by its own
# pinned version (apart from build.sh's key: adding it rebuilds nothing else), keeps its config
# manifests beside it, and prints that directory.
#
# Chains v0.28.1, the newest version the Go module proxy serves here (v0.29.0 is refused). Its
# go.mod has replace directives (glog, an Alibaba SDK fork), which `go install pkg@version`
# refuses: the module is copied and built as the main module, where they apply.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHAINS_VERSION=v0.28.1
key="$(cat "$0" | sha256sum | cut -c1-16)"
root="${SLUICE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/chains-$key"
bin="$root/bin"
share="$root/share"
mkdir -p "$bin" "$share" "$root/logs"
# shellcheck source=lib.sh
source "$here/lib.sh"

build_chains() {
  local dir src="$root/src"
  dir="$(go mod download -json "github.com/tektoncd/chains@$CHAINS_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  rm -rf "$src"
  cp -r "$dir" "$src"
  chmod -R u+w "$src"
  (cd "$src" && GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w" -o "$bin/tekton-chains-controller" ./cmd/controller)
  mkdir -p "$share/chains"
  cp "$src"/config/config-*.yaml "$share/chains/"
  rm -rf "$src"
}

build tekton-chains-controller build_chains
echo "$root"

#!/usr/bin/env bash
# Builds every pinned upstream tool of the e2e control plane from its Go module into a cache
# directory keyed by the pinned versions (versions.env and the wrapper go.mod files), and prints
# that directory.
# Tools already there are kept, so a warm run only hashes a few files.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

key="$(cat "$here/versions.env" "$here"/*/go.mod | sha256sum | cut -c1-16)"
root="${SLUICE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/$key"
bin="$root/bin"
share="$root/share"
mkdir -p "$bin" "$share" "$root/logs"

# shellcheck source=lib.sh
source "$here/lib.sh"

build_k8s() {
  (cd "$here/k8s" && go build -ldflags "$(k8s_ldflags)" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}

build_tekton() {
  (cd "$here/tekton" && go build -ldflags "-s -w" -o "$bin/tekton-controller" github.com/tektoncd/pipeline/cmd/controller)
}

build_etcd() {
  (cd "$here/etcd" && go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
}

main() {
  local only="${1:-all}"
  build kube-apiserver build_k8s
  build etcd build_etcd
  build kwok go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  build tekton-controller build_tekton
  build crane go_install crane "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
  if [[ "$only" == all ]]; then
    build cosign go_install cosign "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION"
    build registry go_install registry "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION"
    build helm go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  fi
  [[ -d "$share/tekton" ]] || (cd "$here/tekton" && copy_module_dir "github.com/tektoncd/pipeline@$TEKTON_VERSION" config tekton)
  [[ -d "$share/kwok" ]] || copy_module_dir "sigs.k8s.io/kwok@$KWOK_VERSION" kustomize/stage kwok
  echo "$root"
}

main "$@"

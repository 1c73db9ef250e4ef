#!/usr/bin/env bash
# Builds the e2e KMS, a Vault-API server with the transit engine, from its Go module into a cache
# directory keyed by its own pinned version (apart from build.sh's key: adding it rebuilds nothing
# else), and prints that directory's bin/.
#
# HashiCorp Vault v1.13.0 (MPL-2.0). OpenBao, its open-source fork, is not served by the Go module
# proxy here (every version tried was refused). Vault's go.mod replaces its api/ and sdk/ modules
# with directories the module zip leaves out, so the source is copied, those replaces dropped and
# it is built as the main module against the released api and sdk its go.mod names. That works for
# v1.13.0, whose in-tree sdk matched the released v0.8.1; later releases (v1.14.0, v1.14.8) carry
# in-tree sdk changes no released sdk has, and do not compile this way.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VAULT_VERSION=v1.13.0
key="$(cat "$0" | sha256sum | cut -c1-16)"
root="${SLUICE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/kms-$key"
bin="$root/bin"
mkdir -p "$bin" "$root/logs"
# shellcheck source=lib.sh
source "$here/lib.sh"

build_vault() {
  local dir src="$root/src"
  dir="$(go mod download -json "github.com/hashicorp/vault@$VAULT_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  rm -rf "$src"
  cp -r "$dir" "$src"
  chmod -R u+w "$src"
  (
    cd "$src"
    go mod edit -dropreplace=github.com/hashicorp/vault/api \
      -dropreplace=github.com/hashicorp/vault/api/auth/approle \
      -dropreplace=github.com/hashicorp/vault/api/auth/kubernetes \
      -dropreplace=github.com/hashicorp/vault/api/auth/userpass \
      -dropreplace=github.com/hashicorp/vault/sdk
    GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w" -o "$bin/vault" .
  )
  rm -rf "$src"
}

build vault build_vault
echo "$bin"

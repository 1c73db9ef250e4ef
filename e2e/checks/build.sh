#!/usr/bin/env bash
# Builds sluice-checks (kstatus, Argo CD-style Lua health, OLM bundle validation) into a cache
# directory keyed by its sources and pinned modules, and prints the binary's path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
key="$(cat "$here"/go.mod "$here"/go.sum "$here"/*.go | sha256sum | cut -c1-16)"
dir="${SLUICE_CHECKS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/checks}/$key"
if [[ ! -x "$dir/sluice-checks" ]]; then
  echo "[checks] building sluice-checks (about 2 minutes, once)" >&2
  mkdir -p "$dir"
  (cd "$here" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -ldflags "-s -w" -o "$dir/sluice-checks" .)
fi
echo "$dir/sluice-checks"

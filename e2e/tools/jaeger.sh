#!/usr/bin/env bash
# Builds Jaeger v2 (an OpenTelemetry Collector distribution: OTLP receiver, in-memory trace
# store, query API) from its Go module into a cache directory keyed by its own pinned version, and
# prints that directory's bin/. The e2e cluster runs it as the real OTLP endpoint the operator's
# tracing is tested against (e2e/tests/tracing.rs reads the traces back from its query API).
#
# Its go.mod pins a dependency with a replace directive, which `go install pkg@version` refuses:
# the module is copied and built as the main module, where it applies.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
JAEGER_VERSION=v1.76.0
key="$(cat "$0" | sha256sum | cut -c1-16)"
root="${SLUICE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/jaeger-$key"
bin="$root/bin"
mkdir -p "$bin" "$root/logs"
# shellcheck source=lib.sh
source "$here/lib.sh"

build_jaeger() {
  local dir src="$root/src"
  dir="$(go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  rm -rf "$src"
  cp -r "$dir" "$src"
  chmod -R u+w "$src"
  (cd "$src" && GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w" -o "$bin/jaeger" ./cmd/jaeger)
  rm -rf "$src"
}

build jaeger build_jaeger
echo "$bin"

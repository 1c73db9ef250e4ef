# Shared by e2e/tools/build.sh (the control plane) and e2e/node/build.sh (the real node): build
# helpers writing into "$root" and "$bin", which the sourcing script sets first.

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# Go's build cache for these builds grows to ~8 GB and is useless once the binaries are cached:
# it lives under the tools root while the script runs and is removed when it exits (a cold CI
# run ran out of disk with it in ~/.cache/go-build).
export GOCACHE="$root/go-build"
trap 'rm -rf "$GOCACHE" 2>/dev/null || { chmod -R u+w "$GOCACHE"; rm -rf "$GOCACHE"; }' EXIT

log() { printf '[tools] %s\n' "$*" >&2; }

# build NAME CMD...: runs CMD unless bin/NAME exists; the log keeps the compiler's output.
build() {
  local name="$1"; shift
  [[ -x "$bin/$name" ]] && return 0
  log "building $name"
  local start=$SECONDS
  if ! "$@" >"$root/logs/$name.log" 2>&1; then
    log "building $name failed; last lines of $root/logs/$name.log:"
    tail -n 30 "$root/logs/$name.log" >&2
    exit 1
  fi
  [[ -x "$bin/$name" ]] || { log "$name was not produced"; exit 1; }
  log "built $name in $((SECONDS - start))s"
}

k8s_ldflags() {
  local v="$KUBERNETES_VERSION" major minor
  major="$(cut -d. -f1 <<<"${v#v}")"; minor="$(cut -d. -f2 <<<"$v")"
  local flags="-s -w"
  # Without these the binaries report v0.0.0-master and Tekton refuses the server version.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# go_install NAME PKG@VERSION: modules without replace directives install directly.
go_install() {
  local name="$1" pkg="$2" tmp
  tmp="$(mktemp -d)"
  GOBIN="$tmp" go install -ldflags "-s -w" "$pkg" || { rm -rf "$tmp"; return 1; }
  mv "$tmp/$(basename "${pkg%@*}")" "$bin/$name"
  rmdir "$tmp"
}

# copy_module_dir MODULE@VERSION SUBDIR DEST: keeps manifests shipped in a module next to the tools.
copy_module_dir() {
  local dir
  dir="$(go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  mkdir -p "$share/$3"
  cp -r "$dir/$2/." "$share/$3/"
  chmod -R u+w "$share/$3"
}


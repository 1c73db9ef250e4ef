#!/usr/bin/env bash
# Builds the operator image from the repository's Containerfile with buildah (no Docker), on this
# machine, and pushes it to the local registry (the e2e cluster must be up). Prints
#   OPERATOR_IMAGE=<registry>/sluice/operator@sha256:...
# The Containerfile's Docker Hub images are replaced through its build arguments by local ones
# (e2e/node/images.sh): RUST_IMAGE (Debian, gcc, the pinned Rust toolchain) to build, BASE_IMAGE
# (Debian minbase) to run. Cargo's registry cache and a release target directory are mounted into
# the build as volumes, so a warm build compiles only Sluice itself; buildah's storage lives under
# the tools cache.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="${SLUICE_E2E_DIR:-$repo/.e2e}"

log() { printf '[operator-image] %s\n' "$*" >&2; }

command -v buildah >/dev/null || {
  log "installing Debian's buildah"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends buildah >/dev/null
}

eval "$("$here/images.sh")"
tools="$("$here/build.sh")"
cache="$tools/operator-image"
registry="$(cat "$state/registry")"
mkdir -p "$cache/storage" "$cache/target" "$state/buildah-run"
# Cargo never prunes its target directory; past the cap the next build starts cold.
if (($(du -sk "$cache/target" | cut -f1) > 4 * 1024 * 1024)); then
  log "$cache/target is over 4 GiB: removing it"
  rm -rf "$cache/target" && mkdir -p "$cache/target"
fi
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
mkdir -p "$cargo_home/registry"

bah=(buildah --root "$cache/storage" --runroot "$state/buildah-run" --storage-driver overlay)
tag="$registry/sluice/operator:dev"
start=$SECONDS
log "buildah build -f Containerfile (release build; cold ~10 min on 2 cores, warm ~2 min)"
# --network host: cargo may fetch a crate the host's cache lacks from the crate registry.
if ! "${bah[@]}" build --network host --tls-verify=false --layers=false --pull=missing \
    --build-arg "BUILDER_IMAGE=$RUST_IMAGE" --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" \
    -v "$cargo_home/registry:/usr/local/cargo/registry" -v "$cache/target:/src/target" \
    -f "$repo/Containerfile" -t "$tag" "$repo" >"$cache/build.log" 2>&1; then
  log "buildah build failed; last lines of $cache/build.log:"
  tail -n 40 "$cache/build.log" >&2
  exit 1
fi
"${bah[@]}" push --tls-verify=false --digestfile "$cache/digest" "$tag" "docker://$tag" >"$cache/push.log" 2>&1 || {
  log "buildah push failed:"; tail -n 20 "$cache/push.log" >&2; exit 1
}
# Only the pushed image matters; the local copies would pile up build after build.
"${bah[@]}" rmi --all --force >/dev/null 2>&1 || true
log "built and pushed in $((SECONDS - start))s"
echo "OPERATOR_IMAGE=$registry/sluice/operator@$(cat "$cache/digest")"

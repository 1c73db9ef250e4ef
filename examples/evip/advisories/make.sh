#!/usr/bin/env bash
# Writes pypa-subset.tar.gz: the advisories of the packages the eVIP example and its vulnerable
# variant pin, taken from the PyPA advisory database snapshot in ../shared/data (CC-BY 4.0, its
# LICENSE included). The Task-script test uses the full snapshot when present, this subset otherwise.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${1:-$here/../../../../shared/data/pypa-advisory-database-20241010.tar.gz}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
tar xzf "$src" -C "$tmp"
keep=(flask werkzeug jinja2 markupsafe itsdangerous click blinker gunicorn requests)
paths=(LICENSE)
for p in "${keep[@]}"; do
  if [[ -d "$tmp/vulns/$p" ]]; then paths+=("vulns/$p"); fi
done
tar czf "$here/pypa-subset.tar.gz" --sort=name --owner=0 --group=0 --numeric-owner --mtime=2024-10-10 \
  -C "$tmp" "${paths[@]}"
echo "wrote $here/pypa-subset.tar.gz from $(basename "$src")"

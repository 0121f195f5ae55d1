#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds e2e/podrunner into the e2e cache, keyed by a hash of its sources, and prints the
# binary's path. A warm build (Go caches filled by build.sh's Kubernetes build) takes seconds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../cluster/versions.sh"
hash=$(cd "$here" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)
out="$E2E_CACHE/podrunner-$hash/podrunner"
if [[ ! -x "$out" ]]; then
  mkdir -p "$(dirname "$out")"
  t0=$SECONDS
  (cd "$here" && CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags '-s -w' -o "$out.tmp" .)
  mv "$out.tmp" "$out"
  echo "[podrunner] built $out in $((SECONDS - t0))s" >&2
fi
echo "$out"

#!/usr/bin/env bash
# Stops a cluster started by up.sh: every recorded process by its pid (only if it still runs the
# recorded binary), SIGTERM then SIGKILL after 10 s; etcd last, so the API server never outlives
# its store. Removes $E2E_CLUSTER_DIR (kept when E2E_KEEP_DIR=1). Safe to run twice, or on a
# half-started cluster.
set -euo pipefail
dir="${E2E_CLUSTER_DIR:-${TMPDIR:-/tmp}/llamaduo-e2e}"
log() { printf '[down %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# stop <name pid>...: SIGTERM to all at once, then wait for each (SIGKILL after 10 s).
stop() {
  local name pid exe live=()
  while (($# >= 2)); do
    name="$1" pid="$2"; shift 2
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    [[ "$(basename "$exe")" == "$name" ]] || continue # gone, or the pid was reused
    kill -TERM "$pid" 2>/dev/null && live+=("$name" "$pid")
  done
  set -- "${live[@]}"
  while (($# >= 2)); do
    name="$1" pid="$2"; shift 2
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  done
}

if [[ -f "$dir/pids" ]]; then
  # shellcheck disable=SC2046 # word splitting of "name pid" pairs is intended
  stop $(awk '$1 != "etcd"' "$dir/pids")
  # shellcheck disable=SC2046
  stop $(awk '$1 == "etcd"' "$dir/pids")
  : >"$dir/pids"
fi
if [[ "${E2E_KEEP_DIR:-0}" != 1 && -d "$dir" ]]; then rm -rf "$dir"; fi

#!/usr/bin/env bash
# Stops a cluster started by up.sh: each recorded process by its pid, in reverse start order,
# SIGTERM then SIGKILL after 10 s, and removes $E2E_CLUSTER_DIR (kept when E2E_KEEP_DIR=1).
# Safe to run twice, or on a half-started cluster.
set -euo pipefail
dir="${E2E_CLUSTER_DIR:-${TMPDIR:-/tmp}/llamaduo-e2e}"
log() { printf '[down %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ -f "$dir/pids" ]]; then
  tac "$dir/pids" | while read -r name pid; do
    # Only a process that still runs the recorded binary: a reused pid is left alone.
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    [[ "$(basename "$exe")" == "$name" ]] || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  done
  : >"$dir/pids"
fi
if [[ "${E2E_KEEP_DIR:-0}" != 1 && -d "$dir" ]]; then rm -rf "$dir"; fi

#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Entry point of the e2e tier.
#   e2e/run.sh build [etcd|kubernetes|kwok|helm ...]  build missing binaries into the cache
#   e2e/run.sh cached      exit 0 if every binary is cached (CI runs the tier only then)
#   e2e/run.sh up | down   start / stop a cluster (E2E_CLUSTER_DIR, default /tmp/llamaduo-e2e)
#   e2e/run.sh smoke       build what is missing (unless E2E_NO_BUILD=1), start a fresh cluster,
#                          run tests/smoke.sh, tear the cluster down (also on failure)
#   e2e/run.sh operator    the same for tests/operator.sh, on a cluster whose kwok leaves the
#                          operator's stage pods to e2e/podrunner; builds llamaduo and
#                          llamaduo-trainer (cargo, debug) unless E2E_LLAMADUO/E2E_TRAINER name them
#   e2e/run.sh least-privilege  the chart with watchNamespaces and secretChecks=false: the
#                          operator under that RBAC reconciles only the watched namespaces and
#                          reads no Secret (tests/least-privilege.sh)
#   e2e/run.sh load        operator load test (tests/load.sh): LOAD_MIGRATIONS (1000) migrations
#                          to their first Job, on a cluster without the Job controller (no pods);
#                          builds llamaduo (cargo, release) unless E2E_LLAMADUO names it
#   e2e/run.sh paths       print `export PATH=...` putting the cached binaries first
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cluster/versions.sh"
export K8S_VERSION ETCD_VERSION KWOK_VERSION HELM_VERSION E2E_CACHE

all_cached() {
  local c b
  for c in etcd kubernetes kwok helm; do
    for b in $(e2e_component_bins "$c"); do
      [[ -x "$(e2e_bin_dir "$c")/$b" ]] || { echo "missing: $(e2e_bin_dir "$c")/$b" >&2; return 1; }
    done
  done
  [[ -d "$(e2e_bin_dir kwok)/../stages" ]] || { echo "missing: kwok stages" >&2; return 1; }
}

# with_cluster <test script...>: a fresh cluster for the duration of the tests, always torn down.
with_cluster() {
  export E2E_CLUSTER_DIR="${E2E_CLUSTER_DIR:-${TMPDIR:-/tmp}/llamaduo-e2e-$$}"
  trap '"$here/cluster/down.sh"' EXIT
  local t0=$SECONDS rc=0
  "$here/cluster/up.sh"
  echo "[run] cluster start: $((SECONDS - t0))s" >&2
  # shellcheck disable=SC1091
  source "$E2E_CLUSTER_DIR/env"
  local t1=$SECONDS
  "$@" || rc=$?
  echo "[run] $(basename "$1"): $((SECONDS - t1))s, exit $rc; total with cluster $((SECONDS - t0))s" >&2
  if ((rc != 0)); then
    for f in "$E2E_CLUSTER_DIR"/logs/*.log; do
      echo "--- last lines of $f" >&2; tail -n 20 "$f" >&2
    done
  fi
  return "$rc"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  build) exec "$here/cluster/build.sh" "$@" ;;
  cached) all_cached ;;
  up) exec "$here/cluster/up.sh" ;;
  down) exec "$here/cluster/down.sh" ;;
  paths) echo "export PATH='$(e2e_path)'" ;;
  smoke)
    if ! all_cached 2>/dev/null; then
      [[ "${E2E_NO_BUILD:-0}" != 1 ]] || { all_cached; echo "binaries missing and E2E_NO_BUILD=1" >&2; exit 1; }
      "$here/cluster/build.sh"
    fi
    with_cluster "$here/tests/smoke.sh"
    ;;
  operator)
    if ! all_cached 2>/dev/null; then
      [[ "${E2E_NO_BUILD:-0}" != 1 ]] || { all_cached; echo "binaries missing and E2E_NO_BUILD=1" >&2; exit 1; }
      "$here/cluster/build.sh"
    fi
    if [[ -z "${E2E_LLAMADUO:-}" || -z "${E2E_TRAINER:-}" ]]; then
      t=$SECONDS
      (cd "$here/.." && cargo build -p llamaduo --bin llamaduo -p llamaduo-trainer --bin llamaduo-trainer)
      echo "[run] cargo build: $((SECONDS - t))s" >&2
    fi
    # kwok's pod-complete stage leaves the operator's pods to podrunner.
    export E2E_KWOK_RUNTIME_LABEL="app.kubernetes.io/managed-by=llamaduo-operator"
    with_cluster "$here/tests/operator.sh"
    ;;
  least-privilege)
    if ! all_cached 2>/dev/null; then
      [[ "${E2E_NO_BUILD:-0}" != 1 ]] || { all_cached; echo "binaries missing and E2E_NO_BUILD=1" >&2; exit 1; }
      "$here/cluster/build.sh"
    fi
    if [[ -z "${E2E_LLAMADUO:-}" ]]; then
      (cd "$here/.." && cargo build -p llamaduo --bin llamaduo)
    fi
    with_cluster "$here/tests/least-privilege.sh"
    ;;
  load)
    if ! all_cached 2>/dev/null; then
      [[ "${E2E_NO_BUILD:-0}" != 1 ]] || { all_cached; echo "binaries missing and E2E_NO_BUILD=1" >&2; exit 1; }
      "$here/cluster/build.sh"
    fi
    if [[ -z "${E2E_LLAMADUO:-}" ]]; then
      t=$SECONDS
      (cd "$here/.." && cargo build --release -p llamaduo --bin llamaduo)
      echo "[run] cargo build --release: $((SECONDS - t))s" >&2
    fi
    # The operator's reaction is measured up to Job creation: without the Job controller its
    # Jobs make no pods, so 1,000 migrations start no stage process on this machine.
    export E2E_KCM_CONTROLLERS='*,-job-controller'
    with_cluster "$here/tests/load.sh"
    ;;
  *) sed -n '3,15p' "$0" >&2; exit 2 ;;
esac

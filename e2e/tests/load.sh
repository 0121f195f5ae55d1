#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Operator load test (run by `e2e/run.sh load`, on a cluster without the Job controller, so the
# stage Jobs make no pods and nothing trains): `llamaduo operator` runs as in tests/operator.sh
# (the chart's RBAC by ServiceAccount token, the chart Deployment's args and env), then
# LOAD_MIGRATIONS migrations are created at once by tests/load-client.py (parallel POSTs to the
# API server) and timed to their first Job from a watch on the operator's Jobs. Measures:
#   - seconds from the first create to the moment every migration has its first Job, and to
#     50% / 90% of them; the creation rate;
#   - the operator's peak RSS (VmHWM), RSS at the end, CPU seconds (utime + stime) over the run;
#   - the operator's own view (/metrics): reconciles, failures, reconcile duration p50/p99.
# Checks with the API server: every migration has exactly one Job, <name>-r1-synthesize
# (round 1, attempt 1, controller-owned by it), and its status was written; no Job was created
# twice. Fails when not every migration has its Job within LOAD_TIMEOUT, or when a status lost
# its `current` run (a status written from a stale cache read, which the status write's
# resourceVersion precondition now refuses; LOAD_STRICT_STATUS=0 only counts it).
# Prints `[measure] operator_load <figure> <value> <unit>` lines and one JSON line (stdout, and
# $LOAD_RESULT if set).
# Environment: LOAD_MIGRATIONS (1000), LOAD_TIMEOUT (s, 600), LOAD_WORKERS (8 parallel create
# connections), LOAD_RESULT (JSON output file), LOAD_STRICT_STATUS (1: fail on a status that lost
# its `current` run; 0: count and report it), LOAD_OPERATOR_CONCURRENCY (the operator's LLAMADUO_CONCURRENCY;
# default unset: its own, 8), E2E_LLAMADUO (default target/release/llamaduo), E2E_CHART
# (default charts/llamaduo).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
repo="$(cd "$here/../.." && pwd)"
: "${E2E_CLUSTER_DIR:?source the cluster env first}" "${E2E_API_SERVER:?}" "${E2E_CA_FILE:?}"
llamaduo="${E2E_LLAMADUO:-$repo/target/release/llamaduo}"
chart="${E2E_CHART:-$repo/charts/llamaduo}"
count="${LOAD_MIGRATIONS:-1000}"
timeout="${LOAD_TIMEOUT:-600}"
workers="${LOAD_WORKERS:-8}"
work="$E2E_CLUSTER_DIR/load-test"
opns="llamaduo-system"
ns="load"
rm -rf "$work"; mkdir -p "$work"
[[ "$count" =~ ^[1-9][0-9]*$ ]] || fail "LOAD_MIGRATIONS must be a positive integer, got '$count'"
[[ "$timeout" =~ ^[1-9][0-9]*$ ]] || fail "LOAD_TIMEOUT must be a positive number of seconds, got '$timeout'"

op_pid=""
cleanup() {
  local rc=$?
  [[ -z "$op_pid" ]] || stop_pid "$op_pid"
  if ((rc != 0)) && [[ -f "$work/operator.log" ]]; then
    echo "--- last lines of $work/operator.log" >&2; tail -n 25 "$work/operator.log" >&2
  fi
}
trap cleanup EXIT

check "binary: $llamaduo"
[[ -x "$llamaduo" ]] || fail "$llamaduo not built (cargo build --release -p llamaduo --bin llamaduo)"
"$llamaduo" operator --help >/dev/null 2>&1 || fail "$llamaduo has no 'operator' subcommand"
# Without the Job controller no pod is made: only the operator's reaction is measured.
kcm_pid=$(awk '$1 == "kube-controller-manager" {print $2}' "$E2E_CLUSTER_DIR/pids")
tr '\0' ' ' <"/proc/$kcm_pid/cmdline" | grep -q -- '-job-controller' ||
  fail "the cluster runs the Job controller: start it with E2E_KCM_CONTROLLERS='*,-job-controller' (e2e/run.sh load does)"

check "CRD installed and Established"
kubectl apply --server-side -f "$repo/crds/" >/dev/null || fail "could not apply crds/"
kubectl wait --for=condition=Established crd/llamaduomigrations.llamaduo.dev --timeout=60s >/dev/null ||
  fail "CRD not Established"

check "operator RBAC from the chart; a ServiceAccount token kubeconfig"
kubectl create namespace "$opns" >/dev/null
version=$(kubectl version -o json | jq -r .serverVersion.gitVersion)
helm template llamaduo "$chart" --namespace "$opns" --kube-version "$version" \
  >"$work/chart.yaml" || fail "helm template failed"
python3 "$here/chart-operator.py" rbac <"$work/chart.yaml" >"$work/rbac.yaml"
kubectl apply -n "$opns" -f "$work/rbac.yaml" >/dev/null || fail "could not apply the chart's RBAC"
sa=$(python3 "$here/chart-operator.py" sa <"$work/chart.yaml")
"$repo/e2e/cluster/sa-kubeconfig.sh" "$opns" "$sa" "$work/operator.kubeconfig"

check "restricted namespace $ns with the artifact PVC and the coverage ConfigMap"
new_restricted_namespace "$ns"
# The operator only checks that the claim exists before a Job is created; no pod mounts it.
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: artifacts, namespace: $ns}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  resources: {requests: {storage: 1Gi}}
YAML
kubectl create configmap triage-coverage -n "$ns" --from-file=coverage.jsonl="$repo/examples/quickstart/coverage.jsonl" >/dev/null

check "operator started, ready and leading"
mapfile -t op_args < <(python3 "$here/chart-operator.py" command <"$work/chart.yaml")
mapfile -t op_env < <(python3 "$here/chart-operator.py" env <"$work/chart.yaml")
pod="llamaduo-operator-load"
port=$(free_port)
env=()
for e in "${op_env[@]}"; do
  case "$e" in
    *=@metadata.name) e="${e%%=*}=$pod" ;;
    *=@metadata.namespace) e="${e%%=*}=$opns" ;;
    *=@*) fail "operator env $e: unsupported fieldRef" ;;
    LLAMADUO_METRICS_ADDR=*) e="LLAMADUO_METRICS_ADDR=127.0.0.1:$port" ;;
  esac
  env+=("$e")
done
# The chart sets no concurrency: the operator's default (8) unless LOAD_OPERATOR_CONCURRENCY.
concurrency="${LOAD_OPERATOR_CONCURRENCY:-8}"
[[ -z "${LOAD_OPERATOR_CONCURRENCY:-}" ]] || env+=("LLAMADUO_CONCURRENCY=$concurrency")
env -i PATH="$PATH" HOME="$work" KUBECONFIG="$work/operator.kubeconfig" "${env[@]}" \
  "$llamaduo" "${op_args[@]}" >"$work/operator.log" 2>&1 &
op_pid=$!
eventually 60 "operator /readyz" curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz"
# /readyz answers before the Lease is won; the controller only starts once it is.
if grep -q '^LLAMADUO_LEADER_ELECTION=true$' < <(printf '%s\n' "${op_env[@]}"); then
  lease=$(printf '%s\n' "${op_env[@]}" | sed -n 's/^LLAMADUO_LEASE_NAME=//p')
  eventually 60 "Lease ${lease:-llamaduo-operator} held by $pod" bash -c \
    "[[ \$(kubectl get lease '${lease:-llamaduo-operator}' -n $opns -o jsonpath='{.spec.holderIdentity}') == $pod ]]"
fi
eventually 30 "operator started (log)" grep -q '"operator started"' "$work/operator.log"
printf '[test]      operator pid %s, %s, metrics on 127.0.0.1:%s\n' "$op_pid" "$llamaduo" "$port" >&2

check "$count migrations created at once; each gets its first Job"
# One migration as in tests/operator.sh; its teacher is never called (no stage runs).
python3 - "$ns" >"$work/migration.json" <<'PY'
import json, sys
print(json.dumps({
    "apiVersion": "llamaduo.dev/v1alpha1", "kind": "LlamaDuoMigration",
    "metadata": {"namespace": sys.argv[1], "labels": {"llamaduo.dev/load-test": "true"}},
    "spec": {
        "task": {"description": "Route the customer message to one team (billing, shipping, account, returns or technical) and reply with the team name only."},
        "coverage": {"source": "configmap://triage-coverage/coverage.jsonl"},
        "teacher": {"provider": "simulated", "model": "triage", "baseUrl": "http://127.0.0.1:9/v1", "maxRetries": 1, "timeoutSeconds": 20},
        "student": {"fromScratch": {"architecture": "llama", "hiddenSize": 64, "numLayers": 1, "numHeads": 2, "vocabSize": 256}},
        "synthesis": {"initialSamples": 40, "samplesPerRound": 40, "pairsPerCall": 10},
        "training": {"method": "full", "epochs": 1, "learningRate": 0.002, "batchSize": 8, "gradientAccumulation": 1, "maxSeqLen": 96, "checkpointEvery": 20},
        "evaluation": {"metric": "judge", "answersPerPrompt": 1, "judgeSamples": 1, "generation": {"maxNewTokens": 24}},
        "target": {"meanScore": 100},
        "stop": {"maxRounds": 3, "plateauRounds": 3, "stageRetries": 1},
        "storage": {"url": "file:///artifacts", "volume": {"claimName": "artifacts"}},
    },
}))
PY
# A spec the server refuses would fail every create: check one by dry run first.
jq '.metadata.name = "dry-run"' "$work/migration.json" | kubectl create --dry-run=server -f - >/dev/null 2>"$work/dry-run.err" ||
  fail "the migration is refused: $(cat "$work/dry-run.err")"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# The API server's request counters before and after: what one migration costs it.
api_requests() { # api_requests <out>: apiserver_request_total summed by verb and resource
  kubectl get --raw /metrics | awk '/^apiserver_request_total\{/ {
    verb = res = sub_ = ""
    if (match($0, /verb="[^"]*"/)) verb = substr($0, RSTART + 6, RLENGTH - 7)
    if (match($0, /resource="[^"]*"/)) res = substr($0, RSTART + 10, RLENGTH - 11)
    if (match($0, /subresource="[^"]*"/)) sub_ = substr($0, RSTART + 13, RLENGTH - 14)
    n[verb " " res (sub_ != "" ? "/" sub_ : "")] += $NF
  } END { for (k in n) print k, n[k] }' >"$1"
}
api_requests "$work/requests.before"
components=()
for c in kube-apiserver etcd kube-controller-manager kube-scheduler kwok; do components+=(--component "$c=$(awk -v n="$c" '$1 == n {print $2}' "$E2E_CLUSTER_DIR/pids")"); done
client_rc=0
python3 "$here/load-client.py" --namespace "$ns" --count "$count" --manifest "$work/migration.json" \
  --pid "$op_pid" --timeout "$timeout" --workers "$workers" "${components[@]}" \
  --metrics-url "http://127.0.0.1:$port/metrics" --out "$work/client.json" || client_rc=$?
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
api_requests "$work/requests.after"
# Per migration, the requests that changed by at least one per ten migrations (the rest is the
# cluster's own background), e.g. {"GET jobs": 3.0, "POST jobs": 1.0, ...}.
requests=$(awk -v n="$count" 'NR == FNR {b[$1 " " $2] = $3; next}
  {d = ($3 - b[$1 " " $2]) / n; if (d >= 0.1) printf "%s\t%.2f\n", $1 " " $2, d}' \
  "$work/requests.before" "$work/requests.after" | sort -t$'\t' -k2,2nr |
  jq -R -s -c 'split("\n") | map(select(length > 0) | split("\t") | {key: .[0], value: (.[1] | tonumber)}) | from_entries')
[[ -s "$work/client.json" ]] || fail "load-client wrote no result (exit $client_rc)"
r=$(cat "$work/client.json")
jq -e '.watch_errors == []' <<<"$r" >/dev/null || fail "the Job watch failed: $(jq -c .watch_errors <<<"$r")"
if ((client_rc != 0)); then
  fail "only $(jq .with_first_job <<<"$r") of $count migrations had a Job after ${timeout}s; without one: $(jq -c .without_job <<<"$r")"
fi
jq -e '.duplicates == []' <<<"$r" >/dev/null || fail "duplicate Jobs: $(jq -c '.duplicates[:10]' <<<"$r")"
kill -0 "$op_pid" 2>/dev/null || fail "the operator exited"
jq -e '.settled' <<<"$r" >/dev/null ||
  fail "the operator was still reconciling 120 s after the last first Job: $(jq -c '{reconciliations, decisions}' <<<"$r")"

check "the API server's view: one Job per migration, each recorded in its status"
kubectl get llamaduomigrations -n "$ns" -o json >"$work/migrations.json"
kubectl get jobs -n "$ns" -l app.kubernetes.io/managed-by=llamaduo-operator -o json >"$work/jobs.json"
[[ $(jq '.items | length' "$work/migrations.json") == "$count" ]] ||
  fail "$(jq '.items | length' "$work/migrations.json") migrations, expected $count"
[[ $(jq '.items | length' "$work/jobs.json") == "$count" ]] ||
  fail "$(jq '.items | length' "$work/jobs.json") Jobs for $count migrations: $(jq -c '[.items[].metadata.name] | group_by(.[:10]) | map(select(length > 1))[:5]' "$work/jobs.json")"
# Each Job is <migration>-r1-synthesize, round 1 attempt 1, controller-owned by that migration.
bad=$(jq -r --slurpfile m "$work/migrations.json" '
  ($m[0].items | map({key: .metadata.uid, value: .metadata.name}) | from_entries) as $uid
  | .items[] | . as $j | ($j.metadata.ownerReferences // [] | map(select(.controller)) | .[0]) as $o
  | select(($o == null) or ($uid[$o.uid] == null)
      or ($j.metadata.name != ($uid[$o.uid] + "-r1-synthesize"))
      or ($j.metadata.labels["llamaduo.dev/migration"] != $uid[$o.uid])
      or ($j.metadata.labels["llamaduo.dev/round"] != "1")
      or ($j.metadata.labels["llamaduo.dev/attempt"] != "1"))
  | $j.metadata.name' "$work/jobs.json" | head -5)
[[ -z "$bad" ]] || fail "Jobs not <migration>-r1-synthesize owned by their migration: $bad"
# Each status was written: phase Synthesizing, the message naming the run, the four conditions
# at its generation.
bad=$(jq -r '.items[] | .metadata.generation as $g | (.metadata.name + "-r1-synthesize") as $run
  | select(.status.phase != "Synthesizing"
    or ((.status.message // "") | contains($run) | not) or .status.observedGeneration != $g
    or ([.status.conditions[]? | select(.observedGeneration == $g)
         | select(.type | IN("Ready", "Reconciling", "Stalled", "TargetReached"))] | length) != 4)
  | "\(.metadata.name): \(.status | tostring | .[:300])"' "$work/migrations.json" | head -3)
[[ -z "$bad" ]] || fail "status not written: $bad"
# ... and it still records the run: round 1 and `current` = that run. A status written from a
# stale cache would lose them (see e2e/README.md); fatal unless LOAD_STRICT_STATUS=0.
jq -r '.items[] | select(.status.current.name != (.metadata.name + "-r1-synthesize") or .status.round != 1
    or (.status.rounds | length) != 1) | "\(.metadata.name): \(.status | del(.conditions) | tostring)"' \
  "$work/migrations.json" >"$work/status-lost.txt"
lost=$(wc -l <"$work/status-lost.txt")
if ((lost > 0)); then
  printf '[test]      WARN %d of %d statuses lost the run they record (no current, round 0), e.g. %s\n' \
    "$lost" "$count" "$(head -1 "$work/status-lost.txt")" >&2
  [[ "${LOAD_STRICT_STATUS:-1}" == 0 ]] || fail "$lost statuses lost current/round/rounds: $(head -3 "$work/status-lost.txt")"
fi
phases=$(jq -r '[.items[].status.phase] | group_by(.) | map("\(.[0]) \(length)") | join(", ")' "$work/migrations.json")
printf '[test]      phases: %s\n' "$phases" >&2
if grep -iE 'forbidden|\b403\b' "$work/operator.log" >"$work/forbidden.txt"; then
  fail "the operator was refused by RBAC: $(head -3 "$work/forbidden.txt" | cut -c1-300)"
fi
warnings=$(grep -c '"level":"WARN"' "$work/operator.log" || true)
# Status writes refused as decided from a stale read (resourceVersion precondition, 409);
# each was requeued and redone from the fresh object. Absent from binaries before the fix.
stale=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '$1 == "llamaduo_stale_status_writes_total" {print $2}' || true)
stale="${stale:-0}"
check_done

# --- figures ------------------------------------------------------------------------------------
binary="$(basename "$(dirname "$llamaduo")")"
measure() { printf '[measure] operator_load %s %s %s\n' "$1" "$2" "$3" >&2; }
measure migrations "$count" "(operator concurrency $concurrency)"
measure created_seconds "$(jq .created_seconds <<<"$r")" "s ($(jq .creates_per_second <<<"$r") creates/s, $workers connections)"
measure first_job_seconds "$(jq .first_job_seconds <<<"$r")" "s (the first migration's Job)"
measure p50_seconds "$(jq .p50_seconds <<<"$r")" "s (50% of migrations have their first Job)"
measure p90_seconds "$(jq .p90_seconds <<<"$r")" "s (90%)"
measure seconds_to_all_first_jobs "$(jq .seconds_to_all_first_jobs <<<"$r")" "s (100%)"
measure operator_cpu_seconds "$(jq .operator_cpu_seconds <<<"$r")" "s (utime+stime, first create to last first Job)"
measure operator_peak_rss_mib "$(jq .operator_peak_rss_mib_settled <<<"$r")" "MiB (VmHWM, $binary build)"
measure operator_rss_mib_end "$(jq .operator_rss_mib_end <<<"$r")" "MiB (VmRSS once quiet, $(jq .settled_seconds <<<"$r") s)"
measure operator_cpu_seconds_settled "$(jq .operator_cpu_seconds_settled <<<"$r")" "s (until quiet)"
measure reconciliations "$(jq .reconciliations <<<"$r")" "($(jq -c .decisions <<<"$r"), failures $(jq .reconcile_failures <<<"$r"), $warnings WARN log lines)"
measure reconcile_p50_ms "$(jq .reconcile_p50_ms <<<"$r")" "ms (histogram estimate)"
measure reconcile_p99_ms "$(jq .reconcile_p99_ms <<<"$r")" "ms (histogram estimate)"
measure status_lost_current "$lost" "of $count (status without current/round after the run)"
measure stale_status_writes "$stale" "(status writes refused by the resourceVersion precondition and requeued)"
measure cpu_seconds "$(jq -c .cpu_seconds <<<"$r")" "(utime+stime, first create to last first Job)"
measure other_processes_cpu_seconds "$(jq .other_processes_cpu_seconds <<<"$r")" "s (busy CPU of the machine, $(jq .machine_busy_cpu_seconds <<<"$r") s on $(jq .cores <<<"$r") cores, less the operator, the cluster and the client: other work running meanwhile)"
measure api_requests_per_migration "$requests" "(API server requests per migration, all clients; the client's own: 1 POST)"
measure loadavg "'$load_before' -> '$load_after'" "(1/5/15 min, before and after)"
json=$(jq -c --arg binary "$binary" --arg lb "$load_before" --arg la "$load_after" --argjson warnings "$warnings" --argjson lost "$lost" --argjson stale "$stale" --argjson requests "$requests" \
  --argjson workers "$workers" --argjson concurrency "$concurrency" '{bench: "operator_load", migrations, seconds_to_all_first_jobs, p50_seconds, p90_seconds,
    first_job_seconds, created_seconds, creates_per_second, workers: $workers, operator_concurrency: $concurrency,
    operator_peak_rss_mib: .operator_peak_rss_mib_settled, operator_rss_mib_end, operator_cpu_seconds,
    operator_cpu_seconds_settled, reconciliations, reconcile_failures, decisions, reconcile_p50_ms,
    reconcile_p99_ms, operator_warn_lines: $warnings, status_lost_current: $lost, stale_status_writes: $stale, cpu_seconds,
    machine_busy_cpu_seconds, other_processes_cpu_seconds, cores, api_requests_per_migration: $requests, binary: $binary, loadavg_before: $lb, loadavg_after: $la}' <<<"$r")
echo "$json"
if [[ -n "${LOAD_RESULT:-}" ]]; then echo "$json" >"$LOAD_RESULT"; fi
printf '[test] load: all %d checks passed in %ds\n' "$E2E_PASSED" "$SECONDS" >&2

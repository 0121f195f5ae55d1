#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Operator end-to-end test (needs a cluster started with E2E_KWOK_RUNTIME_LABEL, see run.sh):
# `llamaduo operator` runs as a child process under the Helm chart's RBAC (a ServiceAccount
# token, so a missing permission fails), configured like the chart's Deployment, and drives
# migrations in a Pod-Security-restricted namespace. Stage Jobs are created by the operator,
# their pods by the real Job controller, bound by the real scheduler to the kwok node, and run
# by e2e/podrunner (the node's container runtime) with `llamaduo-trainer` (or, for stages left
# out of E2E_REAL_STAGES, tests/fake-stage.py; see tests/stage.sh). Checks:
#   - two rounds to Succeeded: status (phase, rounds, best, tokens, observedGeneration),
#     the four conditions, the Events, one Job per stage run, each pod admitted and Succeeded;
#   - the operator killed (SIGKILL) mid-stage and restarted under a new identity (taking over
#     the Lease): the Job that finished while it was down is recorded once, not re-created;
#   - a stage that fails is retried (a new Job, attempt 2) and then reported: phase Failed,
#     Stalled=True/StageFailed, Warning Events; the fix pushed as a spec edit resumes it
#     (attempt 3 in the same round);
#   - a Job refused by a ResourceQuota: Stalled=True/JobRejected with the API server's message,
#     then created by the retry once the quota is gone;
#   - serving.when: best: a migration stopped on MaxRoundsReached gets its Deployment and Service,
#     and a real request through the serving pod's process answers (tests/operator-serving.sh);
#   - deleting a migration garbage-collects its Jobs and their pods (and serving objects);
#   - SIGTERM: the operator exits 0 and releases its Lease;
#   - the operator's log has no "forbidden" (every call it made was allowed by the chart).
# Environment: E2E_LLAMADUO, E2E_TRAINER (binaries; default target/debug), E2E_REAL_STAGES
# (stages run by the real trainer; default all three), E2E_STAGE_TIMEOUT (s, default 900),
# E2E_CHART (the chart whose RBAC and Deployment are used; default charts/llamaduo).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
repo="$(cd "$here/../.." && pwd)"
: "${E2E_CLUSTER_DIR:?source the cluster env first}" "${E2E_API_SERVER:?}" "${E2E_CA_FILE:?}"
node="${E2E_NODE_NAME:-kwok-node-0}"
llamaduo="${E2E_LLAMADUO:-$repo/target/debug/llamaduo}"
trainer="${E2E_TRAINER:-$repo/target/debug/llamaduo-trainer}"
timeout="${E2E_STAGE_TIMEOUT:-900}"
chart="${E2E_CHART:-$repo/charts/llamaduo}"
work="$E2E_CLUSTER_DIR/operator-test"
opns="llamaduo-system"
ns="op-$(date +%s)"
rm -rf "$work"; mkdir -p "$work"

# --- child processes (operator, podrunner, simulated teacher), stopped on exit by pid ---------
declare -A child=()
stop_child() { # stop_child <name> [signal]
  local pid="${child[$1]:-}"
  [[ -n "$pid" ]] || return 0
  stop_pid "$pid" "${2:-TERM}"
  unset "child[$1]"
}
cleanup() {
  local rc=$?
  for name in "${!child[@]}"; do stop_child "$name"; done
  if ((rc != 0)); then
    for f in "$work"/*.log; do
      [[ -f "$f" ]] && { echo "--- last lines of $f" >&2; tail -n 25 "$f" >&2; }
    done
  fi
}
trap cleanup EXIT

mig() { kubectl get llamaduomigration "$1" -n "$ns" -o json; }
mq() { mig "$1" | jq -r "$2"; } # mq <migration> <jq filter>
jobs_of() { kubectl get jobs -n "$ns" -l "llamaduo.dev/migration=$1" -o json; }
# events_of <migration>: "type reason count note" lines, oldest first. An Event repeated with
# the same type, reason and action is one events.k8s.io object with a series (count > 1) whose
# note is the first occurrence's: kube-rs's Recorder aggregates like client-go's.
events_of() {
  kubectl get events.events.k8s.io -n "$ns" -o json | jq -r --arg n "$1" '
    [.items[] | select(.regarding.kind == "LlamaDuoMigration" and .regarding.name == $n)]
    | sort_by(.metadata.creationTimestamp) | .[] | "\(.type) \(.reason) \(.series.count // 1) \(.note)"'
}
# event_count <events> <type> <reason>: occurrences, series included
event_count() { awk -v t="$2" -v r="$3" '$1 == t && $2 == r {n += $3} END {print n + 0}' <<<"$1"; }
# wait_migration <name> <what> <jq condition>: poll status until the condition holds; fail early
# when the migration fails unexpectedly.
wait_migration() {
  local name="$1" what="$2" cond="$3" deadline=$((SECONDS + timeout)) m
  while :; do
    m=$(mig "$name")
    jq -e "$cond" <<<"$m" >/dev/null && return 0
    if [[ "$cond" != *Failed* ]] && [[ $(jq -r '.status.phase // ""' <<<"$m") == Failed ]]; then
      fail "$name failed while waiting for $what: $(jq -c '.status | {message, rounds}' <<<"$m")"
    fi
    # A permission the chart lacks shows as a 403 in the operator's log: fail on it at once.
    if grep -iE 'forbidden' "$work/operator.log" 2>/dev/null | grep -m1 -v 'exceeded quota' >"$work/forbidden.txt"; then
      fail "the operator was refused by RBAC while waiting for $what: $(cut -c1-600 "$work/forbidden.txt")"
    fi
    ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for $what: $(jq -c .status <<<"$m")"
    sleep 0.5
  done
}

check "binaries: llamaduo, llamaduo-trainer, podrunner"
[[ -x "$llamaduo" ]] || fail "$llamaduo not built (cargo build -p llamaduo)"
"$llamaduo" operator --help >/dev/null 2>&1 || fail "$llamaduo has no 'operator' subcommand yet"
[[ -x "$trainer" ]] || fail "$trainer not built (cargo build -p llamaduo-trainer)"
podrunner="$("$here/../podrunner/build.sh")" || fail "could not build e2e/podrunner"

# Every stage runs the real trainer unless E2E_REAL_STAGES names fewer (the others then run
# tests/fake-stage.py, e.g. E2E_REAL_STAGES="" to test only the operator/cluster side quickly).
E2E_REAL_STAGES="${E2E_REAL_STAGES-synthesize train evaluate}"
E2E_REAL_STAGES="$(xargs <<<"$E2E_REAL_STAGES")"
fake_stages="$(for s in synthesize train evaluate; do [[ " $E2E_REAL_STAGES " == *" $s "* ]] || echo -n "$s "; done | xargs)"
printf '[test]      stages run by the real llamaduo-trainer: %s; by tests/fake-stage.py: %s\n' \
  "${E2E_REAL_STAGES:-none}" "${fake_stages:-none}" >&2

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
can() { kubectl auth can-i --kubeconfig "$work/operator.kubeconfig" "$@" 2>/dev/null; }
[[ $(can create jobs -n default) == yes ]] || fail "the chart's ServiceAccount cannot create Jobs"
[[ $(can list secrets -n default) == no ]] || fail "the chart's ServiceAccount may list Secrets (it should only get them)"

check "restricted namespace $ns with a bound artifact PVC and the coverage ConfigMap"
new_restricted_namespace "$ns"
mkdir -p "$work/pv"
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: $ns-artifacts}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: "$work/pv", type: Directory}
  claimRef: {namespace: $ns, name: artifacts}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: artifacts, namespace: $ns}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: $ns-artifacts
  resources: {requests: {storage: 1Gi}}
YAML
kubectl create configmap triage-coverage -n "$ns" --from-file=coverage.jsonl="$repo/examples/quickstart/coverage.jsonl" >/dev/null
eventually 60 "PVC $ns/artifacts Bound" \
  bash -c "[[ \$(kubectl get pvc artifacts -n $ns -o jsonpath='{.status.phase}') == Bound ]]"

check "simulated teacher, podrunner and the operator started"
teacher_url="http://127.0.0.1:$(free_port)/v1" # nothing listens there unless the teacher runs
if [[ " $E2E_REAL_STAGES " == *" synthesize "* || " $E2E_REAL_STAGES " == *" evaluate "* ]]; then
  # It prints {"baseUrl": ...} once it listens on the free port it picked.
  "$trainer" simulate-teacher --listen 127.0.0.1:0 >"$work/teacher.out" 2>"$work/teacher.log" &
  child[teacher]=$!
  eventually 60 "simulate-teacher listening" jq -e .baseUrl "$work/teacher.out"
  teacher_url=$(jq -r .baseUrl "$work/teacher.out")
  curl -fsS -o /dev/null "$teacher_url/models" || fail "simulate-teacher does not answer at $teacher_url/models"
fi
mkdir -p "$work/hold"
# No network namespace: the serving pod's server listens on this free host port (tests/stage.sh).
serve_listen="127.0.0.1:$(free_port)"
"$podrunner" --node "$node" --work-dir "$work/podrunner" --ready-file "$work/podrunner.ready" \
  --hold-dir "$work/hold" \
  --exec "llamaduo-trainer=$here/stage.sh" --env "E2E_TRAINER=$trainer" \
  --env "E2E_REAL_STAGES=$E2E_REAL_STAGES" --env "E2E_FAKE_STAGE_SECONDS=${E2E_FAKE_STAGE_SECONDS:-3}" \
  --env "E2E_FAKE_SCORES=40,60,80" --env "E2E_FAKE_FAIL=broken/synthesize" \
  --env "E2E_SERVE_LISTEN=$serve_listen" \
  --pass-env LLAMADUO_LOG --pass-env RAYON_NUM_THREADS >"$work/podrunner.log" 2>&1 &
child[podrunner]=$!
eventually 60 "podrunner ready" test -f "$work/podrunner.ready"

# The operator runs with the chart Deployment's args and env; the downward-API values are what
# its pod would get, the metrics address is moved to a free loopback port.
mapfile -t op_args < <(python3 "$here/chart-operator.py" command <"$work/chart.yaml")
mapfile -t op_env < <(python3 "$here/chart-operator.py" env <"$work/chart.yaml")
operators=0
start_operator() { # start_operator: a new "pod" of the operator Deployment
  operators=$((operators + 1))
  local pod="llamaduo-operator-e2e-$operators" port env=() e
  port=$(free_port)
  for e in "${op_env[@]}"; do
    case "$e" in
      *=@metadata.name) e="${e%%=*}=$pod" ;;
      *=@metadata.namespace) e="${e%%=*}=$opns" ;;
      *=@*) fail "operator env $e: unsupported fieldRef" ;;
      LLAMADUO_METRICS_ADDR=*) e="LLAMADUO_METRICS_ADDR=127.0.0.1:$port" ;;
    esac
    env+=("$e")
  done
  # A short lease, so a restarted operator takes over quickly (the chart's default is 15 s).
  env+=("LLAMADUO_LEASE_DURATION_SECONDS=${E2E_LEASE_SECONDS:-5}")
  env -i PATH="$PATH" HOME="$work" KUBECONFIG="$work/operator.kubeconfig" "${env[@]}" \
    "$llamaduo" "${op_args[@]}" >>"$work/operator.log" 2>&1 &
  child[operator]=$!
  op_port=$port
  eventually 60 "operator $pod /readyz" curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz"
  printf '[test]      operator %s (pid %s) ready on 127.0.0.1:%s\n' "$pod" "${child[operator]}" "$port" >&2
}
start_operator

check "a migration runs round 1 (synthesize, train, evaluate) below its target"
migration() { # migration <name> <teacher base URL>
  cat <<YAML
apiVersion: llamaduo.dev/v1alpha1
kind: LlamaDuoMigration
metadata: {name: $1, namespace: $ns}
spec:
  task:
    description: Route the customer message to one team (billing, shipping, account, returns or technical) and reply with the team name only.
  coverage: {source: configmap://triage-coverage/coverage.jsonl}
  teacher: {provider: simulated, model: triage, baseUrl: "$2", maxRetries: 1, timeoutSeconds: 20}
  student:
    fromScratch: {architecture: llama, hiddenSize: 64, numLayers: 1, numHeads: 2, vocabSize: 256}
  synthesis: {initialSamples: 40, samplesPerRound: 40, pairsPerCall: 10}
  training: {method: full, epochs: 1, learningRate: 0.002, batchSize: 8, gradientAccumulation: 1, maxSeqLen: 96, checkpointEvery: 20}
  evaluation: {metric: judge, answersPerPrompt: 1, judgeSamples: 1, generation: {maxNewTokens: 24}}
  target: {meanScore: 100}
  stop: {maxRounds: 3, plateauRounds: 3, stageRetries: 1}
  storage: {url: "file:///artifacts", volume: {claimName: artifacts}}
YAML
}
# Round 2's train pod will keep looking Running after its process ends, until the test lets
# podrunner report it (see the restart check).
touch "$work/hold/${ns}_triage-r2-train"
migration triage "$teacher_url" | kubectl apply -f - >/dev/null
wait_migration triage "round 1 decided" '.status.rounds[0].outcome == "belowTarget"'
m=$(mig triage)
jq -e '.status.rounds[0] | (.stages | map(select(.succeeded)) | length) == 3 and .scores.mean != null
  and .modelUri != null' <<<"$m" >/dev/null || fail "round 1 record incomplete: $(jq -c '.status.rounds[0]' <<<"$m")"
round1=$(jq -r '.status.rounds[0].scores.mean' <<<"$m")
printf '[test]      round 1 mean score %s (target 100)\n' "$round1" >&2

check "spec change: target lowered to 0 applies to round 2"
kubectl patch llamaduomigration triage -n "$ns" --type merge -p '{"spec":{"target":{"meanScore":0}}}' >/dev/null
gen=$(mq triage .metadata.generation)

check "operator killed (SIGKILL) while round 2 trains, restarted: no duplicate Job, no lost result"
job=triage-r2-train
# The train process has ended but podrunner holds the pod's end: the Job is still running.
eventually "$timeout" "round 2 train process finished (held by podrunner)" \
  grep -q "holding its status while $work/hold/${ns}_$job exists" "$work/podrunner.log"
uid_before=$(kubectl get job "$job" -n "$ns" -o jsonpath='{.metadata.uid}')
stop_child operator KILL
[[ $(kubectl get job "$job" -n "$ns" -o json | jq -r '[.status.conditions[]? | select(.status == "True") | .type] | join(",")') == "" ]] ||
  fail "Job $job finished before the operator was killed; the test needs it running"
rm "$work/hold/${ns}_$job" # now the Job completes while no operator runs
kubectl wait -n "$ns" --for=condition=Complete "job/$job" --timeout=120s >/dev/null ||
  fail "Job $job did not complete while the operator was down"
sleep 2 # a live operator would record the result within this time; none may
jq -e '.status.current.name == "triage-r2-train" and ((.status.rounds[1].stages // []) | map(select(.stage == "train")) | length) == 0' \
  <<<"$(mig triage)" >/dev/null || fail "status changed while the operator was down: $(mq triage -c .status)"
start_operator
wait_migration triage "round 2 train recorded after the restart" \
  '(.status.rounds[1].stages // []) | map(select(.stage == "train" and .succeeded and .attempts == 1)) | length == 1'
[[ $(kubectl get job "$job" -n "$ns" -o jsonpath='{.metadata.uid}') == "$uid_before" ]] ||
  fail "Job $job was re-created after the restart"
! kubectl get job "$job-a2" -n "$ns" >/dev/null 2>&1 || fail "a second attempt $job-a2 was created"
[[ $(kubectl get pods -n "$ns" -l "batch.kubernetes.io/job-name=$job" -o json | jq '.items | length') == 1 ]] ||
  fail "Job $job has more than one pod"

check "round 2 reaches the target: Succeeded"
wait_migration triage "phase Succeeded" '.status.phase == "Succeeded"'
m=$(mig triage)
# The artifacts live under the object's uid, so a re-created "triage" would start afresh.
root="file:///artifacts/$ns/triage/$(mq triage .metadata.uid)"
jq -e --argjson gen "$gen" --arg root "$root" '.status
  | .round == 2 and (.rounds | length) == 2
  and .rounds[0].outcome == "belowTarget" and .rounds[1].outcome == "targetReached"
  and ([.rounds[].stages[]] | length) == 6 and ([.rounds[].stages[] | select(.succeeded and .attempts == 1)] | length) == 6
  and .artifacts == $root and .best.round != null and (.best.modelUri | startswith($root + "/round-"))
  and .current == null and .observedGeneration == $gen' <<<"$m" >/dev/null ||
  fail "status not as specified: $(jq -c .status <<<"$m")"
for c in "Ready True" "Reconciling False" "Stalled False" "TargetReached True"; do
  read -r type want <<<"$c"
  got=$(jq -r --arg t "$type" '.status.conditions[] | select(.type == $t) | "\(.status) \(.observedGeneration)"' <<<"$m")
  [[ "$got" == "$want $gen" ]] || fail "condition $type is '$got', expected '$want $gen': $(jq -c .status.conditions <<<"$m")"
done
jobs=$(jobs_of triage)
names=$(jq -r '[.items[].metadata.name] | sort | join(" ")' <<<"$jobs")
[[ "$names" == "triage-r1-evaluate triage-r1-synthesize triage-r1-train triage-r2-evaluate triage-r2-synthesize triage-r2-train" ]] ||
  fail "Jobs: $names"
jq -e --arg uid "$(mq triage .metadata.uid)" 'all(.items[]; (.metadata.ownerReferences[0] | .uid == $uid and .controller)
  and .metadata.labels["app.kubernetes.io/managed-by"] == "llamaduo-operator"
  and ([.status.conditions[]? | select(.type == "Complete" and .status == "True")] | length) == 1)' <<<"$jobs" >/dev/null ||
  fail "Jobs not owned by the migration, or not Complete: $(jq -c '[.items[] | {n: .metadata.name, o: .metadata.ownerReferences, c: .status.conditions}]' <<<"$jobs")"
pods=$(kubectl get pods -n "$ns" -l app.kubernetes.io/managed-by=llamaduo-operator -o json)
jq -e --arg node "$node" '(.items | length) == 6 and all(.items[]; .spec.nodeName == $node and .status.phase == "Succeeded"
  and .spec.automountServiceAccountToken == false)' <<<"$pods" >/dev/null ||
  fail "stage pods: $(jq -c '[.items[] | {n: .metadata.name, node: .spec.nodeName, phase: .status.phase}]' <<<"$pods")"
ev=$(events_of triage)
for want in "Normal StageStarted 6" "Normal StageSucceeded 6" "Normal TargetReached 1"; do
  read -r type reason n <<<"$want"
  [[ $(event_count "$ev" "$type" "$reason") == "$n" ]] ||
    fail "expected $n $type $reason Events, got $(event_count "$ev" "$type" "$reason"):"$'\n'"$ev"
done
# One action per stage run: six StageStarted objects, none folded into another's series
# (a series would show round 2's start under round 1's note).
[[ $(awk '$1 == "Normal" && $2 == "StageStarted" && $3 == 1' <<<"$ev" | wc -l) == 6 ]] ||
  fail "each stage start must be its own Event:"$'\n'"$ev"
! grep -q '^Warning ' <<<"$ev" || fail "unexpected Warning Events: $(grep '^Warning ' <<<"$ev")"
[[ -f "$work/pv/$ns/triage/$(mq triage .metadata.uid)/round-2/evaluate.result.json" ]] || fail "round-2/evaluate.result.json not in the artifact store"
# /metrics of the operator that finished the migration: its round, best score and tokens.
metrics=$(curl -fsS "http://127.0.0.1:$op_port/metrics") || fail "no /metrics on 127.0.0.1:$op_port"
best=$(jq -r .status.best.meanScore <<<"$m"); tokens=$(jq -r '.status.serviceTokens | .input + .output' <<<"$m")
for want in "llamaduo_migration_round 2" "llamaduo_migration_best_score $best" "llamaduo_migration_service_tokens $tokens"; do
  read -r metric value <<<"$want"
  got=$(awk -v m="$metric" -v ns="namespace=\"$ns\"" 'index($1, m "{") == 1 && index($1, ns) && index($1, "name=\"triage\"") {print $2}' <<<"$metrics")
  if [[ -z "$got" ]] || ! awk -v a="$got" -v b="$value" 'BEGIN {exit !(a + 0 == b + 0)}'; then
    fail "$metric for $ns/triage is '$got', expected $value:"$'\n'"$(grep '^llamaduo_' <<<"$metrics")"
  fi
done
grep -Eq '^llamaduo_reconciliations_total [1-9]' <<<"$metrics" || fail "llamaduo_reconciliations_total not counting"

check "a failing stage is retried, then reported: Failed"
closed_port=$(free_port) # nothing listens there: the real synthesize cannot reach its teacher
migration broken "http://127.0.0.1:$closed_port/v1" | kubectl apply -f - >/dev/null
wait_migration broken "phase Failed" '.status.phase == "Failed"'
m=$(mig broken)
jq -e '.status.rounds[0].stages[0] | .stage == "synthesize" and .attempts == 2 and (.succeeded | not) and (.message | length) > 0' \
  <<<"$m" >/dev/null || fail "stage record: $(jq -c .status.rounds <<<"$m")"
jq -e '(.status.message | test("synthesize failed after 2 attempt")) and .status.current == null
  and (.status.conditions[] | select(.type == "Stalled") | .status == "True" and .reason == "StageFailed")
  and (.status.conditions[] | select(.type == "Ready") | .status == "False")' <<<"$m" >/dev/null ||
  fail "status/conditions: $(jq -c '.status | {message, conditions}' <<<"$m")"
jobs=$(jobs_of broken)
[[ $(jq -r '[.items[].metadata.name] | sort | join(" ")' <<<"$jobs") == "broken-r1-synthesize broken-r1-synthesize-a2" ]] ||
  fail "Jobs: $(jq -c '[.items[].metadata.name]' <<<"$jobs")"
jq -e 'all(.items[]; [.status.conditions[]? | select(.type == "Failed" and .status == "True")] | length == 1)' <<<"$jobs" >/dev/null ||
  fail "Jobs not Failed: $(jq -c '[.items[] | .status.conditions]' <<<"$jobs")"
ev=$(events_of broken)
# Two failed attempts and the final report, all Warning StageFailed (one series).
[[ $(event_count "$ev" Warning StageFailed) == 3 ]] || fail "expected 3 Warning StageFailed Events:"$'\n'"$ev"
printf '[test]      reported: %s\n' "$(jq -r .status.message <<<"$m")" >&2

check "the fix pushed to the failed migration resumes it: the stage gets one more attempt"
kubectl patch llamaduomigration broken -n "$ns" --type merge \
  -p "{\"spec\":{\"teacher\":{\"baseUrl\":\"$teacher_url\"}}}" >/dev/null
resumed() {
  mig broken | jq -e '.status.rounds[0].stages[] | select(.stage == "synthesize")
    | .succeeded and .attempts == 3' >/dev/null
}
eventually "$timeout" "broken's synthesize attempt 3 to succeed" resumed
kubectl get job broken-r1-synthesize-a3 -n "$ns" >/dev/null || fail "no Job broken-r1-synthesize-a3"
m=$(mig broken)
jq -e '.status.phase != "Failed" and .status.rounds[0].outcome != "failed"' <<<"$m" >/dev/null ||
  fail "not resumed: $(jq -c '.status | {phase, message, rounds}' <<<"$m")"

check "a Job the API server refuses (ResourceQuota) stalls the migration as JobRejected, and starts once allowed"
kubectl create quota no-jobs -n "$ns" --hard=count/jobs.batch=0 >/dev/null
eventually 60 "quota no-jobs counted" \
  bash -c "[[ -n \$(kubectl get quota no-jobs -n $ns -o jsonpath='{.status.hard}') ]]"
# Its pods run as their own ServiceAccount (workload identity), which the operator checks exists.
kubectl create serviceaccount llamaduo-stages -n "$ns" >/dev/null
migration quota "$teacher_url" | sed 's/^spec:$/spec:\n  serviceAccountName: llamaduo-stages/' |
  kubectl apply -f - >/dev/null
wait_migration quota "Stalled=True JobRejected" \
  '[.status.conditions[]? | select(.type == "Stalled" and .status == "True" and .reason == "JobRejected")] | length == 1'
m=$(mig quota)
jq -e '(.status.message | test("refused Job .*quota-r1-synthesize.*exceeded quota: no-jobs"))
  and .status.current.name == "quota-r1-synthesize"' <<<"$m" >/dev/null ||
  fail "status: $(jq -c '.status | {message, current}' <<<"$m")"
[[ $(event_count "$(events_of quota)" Warning JobRejected) -ge 1 ]] || fail "no Warning JobRejected Event: $(events_of quota)"
kubectl delete quota no-jobs -n "$ns" >/dev/null
# Retried with backoff (5 s doubling): the Job appears by itself, and the stall clears.
eventually 120 "Job quota-r1-synthesize created once the quota is gone" \
  kubectl get job quota-r1-synthesize -n "$ns"
[[ $(kubectl get job quota-r1-synthesize -n "$ns" -o jsonpath='{.spec.template.spec.serviceAccountName}') == llamaduo-stages ]] ||
  fail "quota-r1-synthesize does not run as spec.serviceAccountName"
wait_migration quota "Stalled=False" \
  '[.status.conditions[]? | select(.type == "Stalled" and .status == "False")] | length == 1'
kubectl delete llamaduomigration quota -n "$ns" --wait=true --timeout=60s >/dev/null

source "$here/operator-serving.sh"

check "deleting migrations garbage-collects their Jobs and pods, a running one included, and drops their metrics"
# gc's first stage stays active (podrunner holds its pod Running) when it is deleted.
touch "$work/hold/${ns}_gc-r1-synthesize"
migration gc "$teacher_url" | kubectl apply -f - >/dev/null
eventually "$timeout" "gc-r1-synthesize held" \
  grep -q "holding its status while $work/hold/${ns}_gc-r1-synthesize exists" "$work/podrunner.log"
[[ $(kubectl get job gc-r1-synthesize -n "$ns" -o jsonpath='{.status.active}') == 1 ]] ||
  fail "gc-r1-synthesize is not active: $(kubectl get job gc-r1-synthesize -n "$ns" -o jsonpath='{.status}')"
kubectl delete llamaduomigration triage broken gc best -n "$ns" --wait=true --timeout=60s >/dev/null
eventually 120 "Jobs of the deleted migrations gone" \
  bash -c "[[ \$(kubectl get jobs -n $ns -o json | jq '.items | length') == 0 ]]"
eventually 120 "their pods gone" \
  bash -c "[[ \$(kubectl get pods -n $ns -o json | jq '.items | length') == 0 ]]"
eventually 30 "podrunner to stop the deleted running pod" grep -q "gc-r1-synthesize-.*stopped while held" "$work/podrunner.log"
eventually 60 "the serving Deployment and Service gone" \
  bash -c "[[ \$(kubectl get deployments,services -n $ns -o json | jq '.items | length') == 0 ]]"
eventually 30 "podrunner to stop the serving pod's process" grep -q "best-serve-.*: stopped" "$work/podrunner.log"
# No finalizer: a deleted migration is never reconciled again, so /metrics must drop its series
# from the operator's cache, not wait for a reconcile.
no_deleted_series() {
  curl -fsS "http://127.0.0.1:$op_port/metrics" > "$work/metrics-after-delete.txt" &&
    grep -q '^llamaduo_reconciliations_total' "$work/metrics-after-delete.txt" &&
    ! grep -qE 'name="(triage|broken|gc|best)"' "$work/metrics-after-delete.txt"
}
for _ in $(seq 120); do no_deleted_series && break; sleep 0.25; done
no_deleted_series || fail "/metrics still has series of deleted migrations:"$'\n'"$(grep '^llamaduo_migration' "$work/metrics-after-delete.txt")"

check "every stage pod was admitted under Pod Security 'restricted'; the operator was never forbidden"
if kubectl get events -n "$ns" -o json | jq -e '[.items[] | select(.reason == "FailedCreate")] | length > 0' >/dev/null; then
  fail "FailedCreate events: $(kubectl get events -n "$ns" --field-selector reason=FailedCreate -o jsonpath='{.items[*].message}')"
fi
# The quota check's refusals are the API server's quota admission, not RBAC.
if grep -iE 'forbidden|\b403\b' "$work/operator.log" | grep -v 'exceeded quota' >"$work/forbidden.txt"; then
  fail "the operator was refused by RBAC: $(head -3 "$work/forbidden.txt")"
fi
check_done
# The operator's memory once idle (every migration deleted), for the issue note and
# BENCHMARKS.md: VmRSS now and VmHWM (its peak over the whole run).
if [[ -r /proc/${child[operator]}/status ]]; then
  rss=$(awk '$1 == "VmRSS:" {print int($2 / 1024)}' "/proc/${child[operator]}/status")
  hwm=$(awk '$1 == "VmHWM:" {print int($2 / 1024)}' "/proc/${child[operator]}/status")
  printf '[measure] operator (%s) idle RSS %s MiB, peak %s MiB\n' "$(basename "$(dirname "$llamaduo")")" "$rss" "$hwm" >&2
fi

check "SIGTERM: the operator exits 0 and hands its Lease back, so a new replica need not wait"
op_pid=${child[operator]}
kill -TERM "$op_pid"
op_rc=0; wait "$op_pid" || op_rc=$?
unset "child[operator]"
((op_rc == 0)) || fail "the operator exited $op_rc on SIGTERM"
holder=$(kubectl get leases -n "$opns" -o json | jq -r '[.items[] | select(.metadata.name | startswith("llamaduo"))][0].spec.holderIdentity // ""')
[[ -z "$holder" ]] || fail "the Lease is still held by $holder after a clean shutdown"
grep -q "released the leader lease" "$work/operator.log" || fail "no 'released the leader lease' in the log"
check_done
printf '[test] operator: all %d checks passed in %ds\n' "$E2E_PASSED" "$SECONDS" >&2

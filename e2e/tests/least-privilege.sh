#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The least-privileged install shape on the real control plane: the chart rendered with
# `watchNamespaces={A,B}` and `secretChecks=false`, its RBAC applied, and `llamaduo operator`
# run as a child process with that ServiceAccount's token and the chart Deployment's env.
# Checks:
#   - the RBAC is a Role per watched namespace: Jobs may be created in A and B only, Secrets
#     read nowhere, nothing cluster-wide;
#   - a migration in A whose API-key Secret does not exist gets its status and its first Job
#     (the operator reads no Secret; the pod would report the missing Secret itself);
#   - a migration in B is reconciled too (one set of watches per namespace);
#   - a migration in C, not watched, is never touched (no status, no Job);
#   - the operator's log has no "forbidden" and no error: every call it made was allowed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
repo="$(cd "$here/../.." && pwd)"
: "${E2E_CLUSTER_DIR:?source the cluster env first}" "${E2E_API_SERVER:?}" "${E2E_CA_FILE:?}"
llamaduo="${E2E_LLAMADUO:-$repo/target/debug/llamaduo}"
chart="${E2E_CHART:-$repo/charts/llamaduo}"
work="$E2E_CLUSTER_DIR/least-privilege-test"
opns="llamaduo-system"
stamp=$(date +%s)
a="lp-a-$stamp" b="lp-b-$stamp" c="lp-c-$stamp"
rm -rf "$work"; mkdir -p "$work"
operator_pid=""
cleanup() {
  local rc=$?
  [[ -z "$operator_pid" ]] || stop_pid "$operator_pid"
  if ((rc != 0)) && [[ -f "$work/operator.log" ]]; then
    echo "--- last lines of $work/operator.log" >&2; tail -n 25 "$work/operator.log" >&2
  fi
}
trap cleanup EXIT

check "CRD installed; namespaces $a, $b (watched) and $c (not)"
kubectl apply --server-side -f "$repo/crds/" >/dev/null || fail "could not apply crds/"
kubectl wait --for=condition=Established crd/llamaduomigrations.llamaduo.dev --timeout=60s >/dev/null ||
  fail "CRD not Established"
for n in "$a" "$b" "$c"; do new_restricted_namespace "$n"; done
kubectl create namespace "$opns" >/dev/null 2>&1 || true

check "chart RBAC with watchNamespaces and secretChecks=false: Roles only where watched, no Secrets"
version=$(kubectl version -o json | jq -r .serverVersion.gitVersion)
helm template llamaduo "$chart" --namespace "$opns" --kube-version "$version" \
  --set "watchNamespaces={$a,$b}" --set secretChecks=false >"$work/chart.yaml" ||
  fail "helm template failed"
python3 "$here/chart-operator.py" rbac <"$work/chart.yaml" >"$work/rbac.yaml"
if grep -q "kind: ClusterRole" "$work/rbac.yaml"; then fail "a ClusterRole was rendered"; fi
# Roles live in the watched namespaces; the rest (ServiceAccount, leader election) in $opns.
python3 - "$work/rbac.yaml" "$opns" <<'PY' >"$work/rbac-placed.yaml"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
        d["metadata"].setdefault("namespace", sys.argv[2])
print(yaml.safe_dump_all(docs))
PY
kubectl apply -f "$work/rbac-placed.yaml" >/dev/null || fail "could not apply the chart's RBAC"
sa=$(python3 "$here/chart-operator.py" sa <"$work/chart.yaml")
"$repo/e2e/cluster/sa-kubeconfig.sh" "$opns" "$sa" "$work/operator.kubeconfig"
can() { kubectl auth can-i --kubeconfig "$work/operator.kubeconfig" "$@" 2>/dev/null || true; }
for n in "$a" "$b"; do
  [[ $(can create jobs -n "$n") == yes ]] || fail "cannot create Jobs in watched $n"
  [[ $(can get pods --subresource=log -n "$n") == yes ]] || fail "cannot read pod logs in watched $n"
  [[ $(can get secrets -n "$n") == no ]] || fail "may read Secrets in $n"
done
[[ $(can create jobs -n "$c") == no ]] || fail "may create Jobs in unwatched $c"
[[ $(can list llamaduomigrations.llamaduo.dev --all-namespaces) == no ]] ||
  fail "may list migrations cluster-wide"

check "the operator runs under that token with the chart Deployment's env"
mapfile -t op_args < <(python3 "$here/chart-operator.py" command <"$work/chart.yaml")
mapfile -t op_env < <(python3 "$here/chart-operator.py" env <"$work/chart.yaml")
port=$(free_port)
env=()
for e in "${op_env[@]}"; do
  case "$e" in
    *=@metadata.name) e="${e%%=*}=llamaduo-operator-lp" ;;
    *=@metadata.namespace) e="${e%%=*}=$opns" ;;
    LLAMADUO_METRICS_ADDR=*) e="LLAMADUO_METRICS_ADDR=127.0.0.1:$port" ;;
  esac
  env+=("$e")
done
printf '%s\n' "${env[@]}" | grep -qx "LLAMADUO_WATCH_NAMESPACE=$a,$b" ||
  fail "the chart does not pass both namespaces: ${env[*]}"
printf '%s\n' "${env[@]}" | grep -qx "LLAMADUO_SECRET_CHECKS=false" || fail "secretChecks not passed"
env -i PATH="$PATH" HOME="$work" KUBECONFIG="$work/operator.kubeconfig" "${env[@]}" \
  "$llamaduo" "${op_args[@]}" >>"$work/operator.log" 2>&1 &
operator_pid=$!
eventually 60 "operator /readyz" curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz"

migration() { # migration <name> <namespace>: an OpenAI teacher whose key Secret does not exist
  cat <<YAML
apiVersion: llamaduo.dev/v1alpha1
kind: LlamaDuoMigration
metadata: {name: $1, namespace: $2}
spec:
  task: {description: Add the two numbers and reply with the sum only.}
  coverage: {source: "s3://coverage/rows.jsonl"}
  teacher: {provider: openai, model: gpt-4o-mini, apiKeySecretRef: {name: openai, key: api-key}}
  student:
    fromScratch: {architecture: llama, hiddenSize: 64, numLayers: 1, numHeads: 2, vocabSize: 256}
  target: {meanScore: 80}
  storage: {url: "s3://artifacts"}
YAML
}
for n in "$a" "$b" "$c"; do migration sum "$n" | kubectl apply -f - >/dev/null; done

check "watched namespaces: status written and the first Job created without reading the Secret"
for n in "$a" "$b"; do
  eventually 60 "$n/sum synthesizing" bash -c \
    "kubectl get llamaduomigration sum -n $n -o json | jq -e '.status.phase == \"Synthesizing\"'"
  eventually 30 "$n Job" kubectl get job sum-r1-synthesize -n "$n"
done

check "the unwatched namespace is never touched"
sleep 3
st=$(kubectl get llamaduomigration sum -n "$c" -o json | jq -c '.status // null')
[[ "$st" == null ]] || fail "$c/sum got a status: $st"
if kubectl get job sum-r1-synthesize -n "$c" >/dev/null 2>&1; then fail "a Job was created in $c"; fi

check "the operator was never forbidden and logged no error"
if grep -qi "forbidden" "$work/operator.log"; then
  fail "forbidden calls: $(grep -i forbidden "$work/operator.log" | head -3)"
fi
if grep -q '"level":"ERROR"' "$work/operator.log"; then
  fail "errors: $(grep '"level":"ERROR"' "$work/operator.log" | head -3)"
fi
check_done
printf '[test] least-privilege: all %s checks passed\n' "$E2E_PASSED" >&2

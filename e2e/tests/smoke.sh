#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Smoke test of the e2e control plane (needs a running cluster: `source $E2E_CLUSTER_DIR/env`).
# Proves each piece the operator tests rely on is real and wired:
#   - a Job in a Pod-Security-restricted namespace: the Job controller creates its pod, the
#     scheduler binds it to the kwok node, kwok runs it to completion, the Job is Complete;
#   - kwok's chaos stage fails a labelled pod: the Job controller retries, then fails the Job;
#   - a ServiceAccount's bound token (cluster/sa-kubeconfig.sh) has exactly its Role's rights;
#   - Pod Security admission refuses a non-compliant pod, and a non-compliant Job's pods;
#   - the LlamaDuoMigration CRD (from crds/) becomes Established and the server enforces its CEL
#     rules (a valid example passes a server dry-run; target.meanScore: 150 is refused);
#   - the Helm chart (charts/llamaduo, when present) renders and the server accepts every object
#     in a restricted namespace without a Pod Security warning.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
repo="$(cd "$here/../.." && pwd)"
ns="smoke-$(date +%s)"
node="${E2E_NODE_NAME:-kwok-node-0}"
t0=$SECONDS

check "server version is the one built"
server=$(kubectl version -o json | jq -r .serverVersion.gitVersion)
client=$(kubectl version -o json | jq -r .clientVersion.gitVersion)
[[ "$server" == "${K8S_VERSION:-$server}" && "$server" == "$client" ]] ||
  fail "server $server, kubectl $client, expected ${K8S_VERSION:-the same}"

check "restricted namespace $ns"
new_restricted_namespace "$ns"

check "compliant Job runs to completion on the kwok node"
kubectl apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: compliant}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: main
        image: registry.invalid/never-pulled:1   # kwok plays the runtime; nothing is pulled
        command: ["/bin/true"]
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
YAML
kubectl wait -n "$ns" --for=condition=Complete job/compliant --timeout=120s >/dev/null ||
  fail "job not Complete: $(kubectl get -n "$ns" job/compliant -o jsonpath='{.status}')"
pod=$(kubectl get pods -n "$ns" -l batch.kubernetes.io/job-name=compliant -o json)
[[ $(jq '.items | length' <<<"$pod") == 1 ]] || fail "expected exactly 1 pod, got: $(jq -c '[.items[].metadata.name]' <<<"$pod")"
owner=$(jq -r '.items[0].metadata.ownerReferences[0] | "\(.kind)/\(.name)/\(.controller)"' <<<"$pod")
[[ $owner == Job/compliant/true ]] || fail "pod owner is $owner, expected the Job controller's Job/compliant"
bound=$(jq -r '.items[0].spec.nodeName' <<<"$pod")
[[ $bound == "$node" ]] || fail "pod bound to '$bound', expected $node"
phase=$(jq -r '.items[0].status.phase' <<<"$pod")
[[ $phase == Succeeded ]] || fail "pod phase $phase, expected Succeeded"
pname=$(jq -r '.items[0].metadata.name' <<<"$pod")
sched=$(kubectl get events -n "$ns" --field-selector "reason=Scheduled,involvedObject.name=$pname" \
  -o jsonpath='{.items[0].reportingComponent}')
[[ $sched == default-scheduler ]] || fail "no Scheduled event from default-scheduler for $pname (got '$sched')"
succeeded=$(kubectl get -n "$ns" job/compliant -o jsonpath='{.status.succeeded}')
[[ $succeeded == 1 ]] || fail "job status.succeeded=$succeeded"

check "kwok's failure stage fails a labelled Job pod; the Job controller retries, then fails the Job"
kubectl apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: failing}
spec:
  backoffLimit: 1
  template:
    metadata:
      labels: {pod-container-running-failed.stage.kwok.x-k8s.io: "true"}
      annotations: {pod-container-running-failed.stage.kwok.x-k8s.io/message: "stage failed on purpose"}
    spec:
      restartPolicy: Never
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: main
        image: registry.invalid/never-pulled:1
        command: ["/bin/false"]
        securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
YAML
kubectl wait -n "$ns" --for=condition=Failed job/failing --timeout=120s >/dev/null ||
  fail "job not Failed: $(kubectl get -n "$ns" job/failing -o jsonpath='{.status}')"
reason=$(kubectl get -n "$ns" job/failing -o jsonpath='{.status.conditions[?(@.type=="Failed")].reason}')
[[ $reason == BackoffLimitExceeded ]] || fail "Failed reason $reason, expected BackoffLimitExceeded"
pods=$(kubectl get pods -n "$ns" -l batch.kubernetes.io/job-name=failing -o json)
[[ $(jq '[.items[] | select(.status.phase == "Failed")] | length' <<<"$pods") == 2 ]] ||
  fail "expected 2 failed pods (1 + 1 retry): $(jq -c '[.items[] | {n: .metadata.name, p: .status.phase}]' <<<"$pods")"
msg=$(jq -r '.items[0].status.containerStatuses[0].state.terminated | "\(.exitCode) \(.message)"' <<<"$pods")
[[ $msg == "1 stage failed on purpose" ]] || fail "terminated state '$msg', expected exit 1 with the annotated message"

check "a ServiceAccount token gets exactly its Role's rights (RBAC)"
kubectl create serviceaccount -n "$ns" reader >/dev/null
kubectl create role -n "$ns" read-jobs --verb=get,list,watch --resource=jobs.batch >/dev/null
kubectl create rolebinding -n "$ns" reader --role=read-jobs --serviceaccount="$ns:reader" >/dev/null
sa_kcfg="$(mktemp)"
trap 'rm -f "$sa_kcfg"' EXIT
"$here/../cluster/sa-kubeconfig.sh" "$ns" reader "$sa_kcfg" 10m
# RBAC caches are event-driven: poll until the new binding is visible to the authorizer.
eventually 30 "the reader role binding to take effect" kubectl --kubeconfig "$sa_kcfg" get jobs -n "$ns"
expect_refused 'forbidden: User "system:serviceaccount:'"$ns"':reader" cannot delete resource "jobs"' \
  kubectl --kubeconfig "$sa_kcfg" delete job -n "$ns" compliant
expect_refused 'cannot list resource "secrets"' kubectl --kubeconfig "$sa_kcfg" get secrets -n "$ns"

check "Pod Security refuses a non-compliant pod"
expect_refused 'violates PodSecurity "restricted:latest"' kubectl run -n "$ns" rooty \
  --image=registry.invalid/never-pulled:1 --restart=Never --command -- /bin/true

check "Pod Security refuses the pods of a non-compliant Job (FailedCreate)"
kubectl create job -n "$ns" rooty --image=registry.invalid/never-pulled:1 -- /bin/true >/dev/null 2>&1 ||
  fail "the Job object itself should be admitted (Pod Security only warns on workloads)"
eventually 60 "a FailedCreate event for job/rooty" bash -c \
  "kubectl get events -n '$ns' --field-selector reason=FailedCreate,involvedObject.name=rooty -o jsonpath='{.items[*].message}' | grep -q 'violates PodSecurity'"
[[ $(kubectl get pods -n "$ns" -l batch.kubernetes.io/job-name=rooty -o name | wc -l) == 0 ]] ||
  fail "a pod of the non-compliant job exists"

crd_files=()
if [[ -d "$repo/crds" ]]; then
  mapfile -t crd_files < <(find "$repo/crds" -maxdepth 1 -name '*.yaml' -o -maxdepth 1 -name '*.yml' | sort)
fi
if ((${#crd_files[@]} == 0)); then
  check_done
  printf '[test] SKIP CRD checks: no YAML in %s/crds (generate the CRDs first)\n' "$repo" >&2
else
  check "CRDs from crds/ install and become Established"
  crds=()
  for f in "${crd_files[@]}"; do
    out=$(kubectl apply --server-side --field-manager=llamaduo-e2e -o name -f "$f" 2>&1) || fail "apply $f refused: $out"
    mapfile -t -O "${#crds[@]}" crds < <(grep '^customresourcedefinition' <<<"$out")
  done
  ((${#crds[@]} > 0)) || fail "no CustomResourceDefinition in ${crd_files[*]}"
  kubectl wait --for=condition=Established "${crds[@]}" --timeout=60s >/dev/null ||
    fail "not Established: $(kubectl get "${crds[@]}" -o jsonpath='{range .items[*]}{.metadata.name}: {.status.conditions}{"\n"}{end}')"
  eventually 30 "llamaduomigrations served" kubectl get llamaduomigrations -n "$ns"

  check "a valid LlamaDuoMigration passes server-side validation"
  example="$repo/examples/simulated/migration.yaml"
  [[ -f "$example" ]] || fail "missing $example"
  valid=$(kubectl create --dry-run=client -o json -f "$example" | jq --arg ns "$ns" \
    '(if .kind == "List" then .items[] else . end) | select(.kind == "LlamaDuoMigration") | .metadata.namespace = $ns')
  [[ -n "$valid" ]] || fail "no LlamaDuoMigration in $example"
  out=$(kubectl apply --dry-run=server -f - <<<"$valid" 2>&1) || fail "example refused: $out"

  check "target.meanScore: 150 is refused with the CEL message"
  expect_refused 'target.meanScore must be between 0 and 100' kubectl apply --dry-run=server -f - \
    <<<"$(jq '.spec.target.meanScore = 150' <<<"$valid")"

  # The corpus `llamaduo validate` is tested on (tests/manifests.rs): the API server must
  # refuse every manifest at the same field, except the semantic checks marked validate-only.
  check "the server refuses tests/invalid at the fields llamaduo validate names"
  refused=0
  for f in "$repo"/tests/invalid/*.yaml; do
    grep -q '^# validate-only' "$f" && continue
    field=$(sed -n '1s/^# expect: //p' "$f")
    [[ -n "$field" ]] || fail "$f has no '# expect: FIELD' header"
    manifest=$(sed "s/namespace: team-a/namespace: $ns/" "$f")
    if out=$(kubectl apply --dry-run=server -f - <<<"$manifest" 2>&1); then
      fail "$(basename "$f") was accepted; expected a refusal at $field"
    fi
    grep -qF -- "$field" <<<"$out" || fail "$(basename "$f") refused, but not at $field: $out"
    refused=$((refused + 1))
  done
  ((refused >= 15)) || fail "only $refused manifests checked"
  printf '[test]      %d manifests refused at their field\n' "$refused" >&2
fi

chart="$repo/charts/llamaduo"
if [[ ! -f "$chart/Chart.yaml" ]]; then
  check_done
  printf '[test] SKIP chart check: no %s/Chart.yaml yet\n' "$chart" >&2
else
  check "helm template charts/llamaduo | kubectl apply --dry-run=server (restricted, no warnings)"
  # helm template assumes Kubernetes v1.20 offline; render for the server under test.
  # stdout only: helm's warnings on stderr must not reach kubectl as YAML.
  rendered=$(helm template llamaduo "$chart" --namespace "$ns" --kube-version "$server") ||
    fail "helm template failed (its error is above)"
  # Pod Security only *warns* on workloads (Deployments); a warning here means the operator's own
  # pod would be refused in a restricted namespace, so it fails the check.
  out=$(kubectl apply --dry-run=server -n "$ns" -f - <<<"$rendered" 2>&1) || fail "server refused the chart: $out"
  ! grep -q 'would violate PodSecurity' <<<"$out" || fail "chart violates Pod Security restricted: $out"
fi
check_done
kubectl delete namespace "$ns" --wait=false >/dev/null
printf '[test] smoke: %d checks passed in %ss\n' "$E2E_PASSED" "$((SECONDS - t0))" >&2

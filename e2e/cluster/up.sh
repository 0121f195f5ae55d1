#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts a real control plane on 127.0.0.1 only: etcd, kube-apiserver (Node,RBAC authorization,
# PodSecurity and OwnerReferencesPermissionEnforcement admission, as hardened clusters and
# OpenShift run), kube-controller-manager (all controllers, service-account credentials),
# kube-scheduler and kwok managing one fake node. Binaries come from build.sh's cache.
# Writes into $E2E_CLUSTER_DIR (default ${TMPDIR:-/tmp}/llamaduo-e2e):
#   kubeconfig  admin kubeconfig (system:masters)      env   `source` it: KUBECONFIG and PATH
#   pids        one "<name> <pid>" per component        logs/ one log per component
#   pki/        CA, certs, service-account key pair     kwok.yaml  kwok config and stages
# Extra kwok Stage files: E2E_KWOK_STAGES="a.yaml b.yaml" (added after kwok's own fast stages).
# E2E_KWOK_RUNTIME_LABEL="key=value": kwok's pod-complete stage leaves pods with this label
# Running, for an external runtime (e2e/podrunner) to complete or fail.
# E2E_KCM_CONTROLLERS: kube-controller-manager's --controllers (default '*'); the load test
# runs without the Job controller ('*,-job-controller'), so Jobs make no pods.
# On any failure everything started so far is torn down (down.sh) and the log tails are printed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/versions.sh"
source "$here/pki.sh"

dir="${E2E_CLUSTER_DIR:-${TMPDIR:-/tmp}/llamaduo-e2e}"
node="${E2E_NODE_NAME:-kwok-node-0}"
timeout_s="${E2E_START_TIMEOUT:-180}"
PATH="$(e2e_path)"; export PATH

log() { printf '[up %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
  command -v "$b" >/dev/null || die "$b not built; run e2e/cluster/build.sh first"
done
if [[ -f "$dir/pids" ]]; then
  while read -r name pid; do
    kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) of a cluster in $dir still runs; run down.sh first"
  done <"$dir/pids"
fi
rm -rf "$dir"; mkdir -p "$dir/logs"; : >"$dir/pids"

on_exit() {
  local rc=$?
  if ((rc != 0)); then
    for f in "$dir"/logs/*.log; do
      [[ -f "$f" ]] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
    done
    E2E_CLUSTER_DIR="$dir" E2E_KEEP_DIR=1 "$here/down.sh" || true
    log "start failed; logs kept in $dir/logs"
  fi
}
trap on_exit EXIT

# Ports the kernel hands out free now; each cluster gets its own, so parallel runs don't clash.
read -r p_etcd p_peer p_api p_kcm p_sched p_kwok < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

start() { # start <name> <command...>: run in the background, log to logs/<name>.log
  local name="$1"; shift
  "$@" </dev/null >"$dir/logs/$name.log" 2>&1 &
  echo "$name $!" >>"$dir/pids"
}

pid_of() { awk -v n="$1" '$1 == n {print $2}' "$dir/pids"; }

# wait_for <name> <what> <command...>: poll (every 0.2 s) until the command succeeds; fail at
# once if the component died, or after E2E_START_TIMEOUT seconds.
wait_for() {
  local name="$1" what="$2" deadline pid
  shift 2
  deadline=$((SECONDS + timeout_s)); pid="$(pid_of "$name")"
  until "$@" >/dev/null 2>&1; do
    [[ -z "$pid" ]] || kill -0 "$pid" 2>/dev/null || die "$name exited while waiting for $what"
    ((SECONDS < deadline)) || die "timed out after ${timeout_s}s waiting for $what"
    sleep 0.2
  done
  log "$what ($((SECONDS - t0))s)"
}

t0=$SECONDS
pki="$dir/pki"
pki_init "$pki"
api="https://127.0.0.1:$p_api"
pki_kubeconfig "$dir/kubeconfig" "$api" "$pki" admin
pki_kubeconfig "$dir/controller-manager.kubeconfig" "$api" "$pki" controller-manager
pki_kubeconfig "$dir/scheduler.kubeconfig" "$api" "$pki" scheduler
pki_kubeconfig "$dir/kwok.kubeconfig" "$api" "$pki" kwok
curl_admin=(curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")

# etcd: loopback, plain HTTP (nothing else can reach it), no fsync (a test cluster is disposable).
start etcd etcd --name e2e --data-dir "$dir/etcd" --log-level warn --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$p_etcd" --advertise-client-urls "http://127.0.0.1:$p_etcd" \
  --listen-peer-urls "http://127.0.0.1:$p_peer" --initial-advertise-peer-urls "http://127.0.0.1:$p_peer" \
  --initial-cluster "e2e=http://127.0.0.1:$p_peer"
wait_for etcd "etcd ready" curl -fsS "http://127.0.0.1:$p_etcd/readyz"

# Pod Security admission with its built-in defaults (privileged unless a namespace is labelled),
# spelled out so the policy under test is visible.
cat >"$dir/admission.yaml" <<YAML
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults: {enforce: privileged, enforce-version: latest, audit: privileged, audit-version: latest, warn: privileged, warn-version: latest}
    exemptions: {usernames: [], runtimeClasses: [], namespaces: []}
YAML

# --endpoint-reconciler-type=none: the loopback address may not be published as the
# `kubernetes` Service endpoint; in-cluster clients are not part of these tests.
start kube-apiserver kube-apiserver --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
  --secure-port "$p_api" --etcd-servers "http://127.0.0.1:$p_etcd" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --requestheader-client-ca-file "$pki/ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NodeRestriction,PodSecurity,OwnerReferencesPermissionEnforcement \
  --admission-control-config-file "$dir/admission.yaml" --profiling=false --v 1
wait_for kube-apiserver "kube-apiserver /readyz" "${curl_admin[@]}" "$api/readyz"

for c in controller-manager scheduler; do
  # Both authenticate and authorize their own /healthz callers through the API server.
  common=(--kubeconfig "$dir/$c.kubeconfig" --authentication-kubeconfig "$dir/$c.kubeconfig"
    --authorization-kubeconfig "$dir/$c.kubeconfig" --client-ca-file "$pki/ca.crt"
    --bind-address 127.0.0.1 --cert-dir "$dir/$c-serving" --leader-elect=false --profiling=false --v 1)
  if [[ $c == controller-manager ]]; then
    start kube-controller-manager kube-controller-manager "${common[@]}" --secure-port "$p_kcm" \
      --controllers "${E2E_KCM_CONTROLLERS:-*}" --use-service-account-credentials \
      --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
      --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key"
  else
    start kube-scheduler kube-scheduler "${common[@]}" --secure-port "$p_sched"
  fi
done

# kwok: kwok's own "fast" node and pod stages, taken from the same release as the binary.
stages="$(e2e_bin_dir kwok)/../stages"
[[ -d "$stages" ]] || die "kwok stages missing in $stages; run e2e/cluster/build.sh kwok"
{
  cat <<YAML
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  manageAllNodes: false
  manageNodesWithAnnotationSelector: kwok.x-k8s.io/node=fake
  enableCRDs: []
  # A config file's options are not defaulted field by field: set what kwok needs (its defaults).
  nodeLeaseDurationSeconds: 40
  nodeLeaseParallelism: 4
  nodePlayStageParallelism: 4
  podPlayStageParallelism: 4
  cidr: 10.0.0.0/24
YAML
  for f in "$stages"/*.yaml; do
    echo "---"
    if [[ -n "${E2E_KWOK_RUNTIME_LABEL:-}" && "$(basename "$f")" == pod-complete.yaml ]]; then
      # Pods carrying this label are run by an external runtime (e2e/podrunner), which reports
      # their end itself: kwok must not complete them first.
      awk -v key="${E2E_KWOK_RUNTIME_LABEL%%=*}" -v val="${E2E_KWOK_RUNTIME_LABEL#*=}" '
        { print }
        /^    matchExpressions:$/ && !done {
          printf "    - key: \047.metadata.labels[\"%s\"]\047\n", key
          printf "      operator: \047NotIn\047\n      values: [\047%s\047]\n", val
          done = 1
        }' "$f"
    else
      cat "$f"
    fi
  done
  for f in ${E2E_KWOK_STAGES:-}; do echo "---"; cat "$f"; done
} >"$dir/kwok.yaml"
start kwok kwok --kubeconfig "$dir/kwok.kubeconfig" --config "$dir/kwok.yaml" \
  --server-address "127.0.0.1:$p_kwok" --node-port "$p_kwok" --node-ip 127.0.0.1

wait_for kube-controller-manager "kube-controller-manager /healthz" curl -fsSk "https://127.0.0.1:$p_kcm/healthz"
wait_for kube-scheduler "kube-scheduler /healthz" curl -fsSk "https://127.0.0.1:$p_sched/healthz"
wait_for kwok "kwok /healthz" curl -fsS "http://127.0.0.1:$p_kwok/healthz"

export KUBECONFIG="$dir/kubeconfig"
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $node
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: fake}
YAML
wait_for kwok "node $node Ready" kubectl wait --for=condition=Ready "node/$node" --timeout=2s
# The service-account controller must be working before any pod can be admitted.
wait_for kube-controller-manager "ServiceAccount default/default" kubectl get serviceaccount default -n default

cat >"$dir/env" <<ENV
export KUBECONFIG='$dir/kubeconfig'
export PATH='$(e2e_path)'
export E2E_CLUSTER_DIR='$dir'
export E2E_NODE_NAME='$node'
export E2E_API_SERVER='$api'
export E2E_CA_FILE='$pki/ca.crt'
export E2E_ADMIN_CERT='$pki/admin.crt'
export E2E_ADMIN_KEY='$pki/admin.key'
ENV
log "cluster up in $((SECONDS - t0))s: $api (source $dir/env)"

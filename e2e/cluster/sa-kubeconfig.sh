#!/usr/bin/env bash
# Writes a kubeconfig that authenticates as a ServiceAccount with a bound token (TokenRequest
# API), so a test can run a client (e.g. the operator) with exactly the RBAC granted to that
# ServiceAccount, never with the admin identity.
# Usage: e2e/cluster/sa-kubeconfig.sh <namespace> <serviceaccount> <out-file> [duration, default 2h]
# Needs the cluster env (`source $E2E_CLUSTER_DIR/env`): KUBECONFIG (admin), E2E_API_SERVER,
# E2E_CA_FILE.
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n '2,8p' "$0" >&2; exit 2; }
ns="$1" sa="$2" out="$3" duration="${4:-2h}"
: "${E2E_API_SERVER:?source the cluster env file first}" "${E2E_CA_FILE:?source the cluster env file first}"
token=$(kubectl create token "$sa" -n "$ns" --duration "$duration")
umask 077
cat >"$out" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: llamaduo-e2e
  cluster:
    server: $E2E_API_SERVER
    certificate-authority: $E2E_CA_FILE
users:
- name: $ns-$sa
  user:
    token: $token
contexts:
- name: $ns-$sa@llamaduo-e2e
  context: {cluster: llamaduo-e2e, user: $ns-$sa, namespace: $ns}
current-context: $ns-$sa@llamaduo-e2e
KCFG

# shellcheck shell=bash
# Versions of every control-plane binary the e2e tier builds, and where they are cached.
# Sourced by build.sh, up.sh and run.sh; override any of them from the environment.
: "${K8S_VERSION:=v1.36.3}"   # k8s.io/kubernetes; staging modules use v0.<minor>.<patch>
: "${ETCD_VERSION:=v3.6.16}"  # go.etcd.io/etcd/server/v3
: "${KWOK_VERSION:=v0.8.0}"   # sigs.k8s.io/kwok (kwok + kwokctl)
: "${HELM_VERSION:=v3.21.4}"  # helm.sh/helm/v3
: "${E2E_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/llamaduo/e2e}"

# One bin directory per component and version, so bumping one version rebuilds only that one.
e2e_bin_dir() { # <component> -> directory holding that component's binaries
  case "$1" in
    etcd) echo "$E2E_CACHE/etcd-$ETCD_VERSION/bin" ;;
    kubernetes) echo "$E2E_CACHE/kubernetes-$K8S_VERSION/bin" ;;
    kwok) echo "$E2E_CACHE/kwok-$KWOK_VERSION/bin" ;;
    helm) echo "$E2E_CACHE/helm-$HELM_VERSION/bin" ;;
    *) echo "unknown component '$1' (etcd|kubernetes|kwok|helm)" >&2; return 1 ;;
  esac
}

# The binaries each component must provide; a component counts as cached only if all exist.
e2e_component_bins() {
  case "$1" in
    etcd) echo "etcd" ;;
    kubernetes) echo "kube-apiserver kube-controller-manager kube-scheduler kubectl" ;;
    kwok) echo "kwok kwokctl" ;;
    helm) echo "helm" ;;
  esac
}

# PATH with every cached component first, so scripts use the versions built here and never
# the machine's own (older, out-of-skew) kubectl.
e2e_path() {
  local c p=""
  for c in etcd kubernetes kwok helm; do p="$p$(e2e_bin_dir "$c"):"; done
  echo "$p$PATH"
}

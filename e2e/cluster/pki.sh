# shellcheck shell=bash
# Certificates and keys for the e2e control plane, made with openssl (sourced by up.sh).
# One throw-away CA per cluster directory; every key stays inside that directory.

# pki_cert <dir> <name> <subject> <extKeyUsage> [subjectAltName]: an ECDSA P-256 key and a
# certificate signed by <dir>/ca.{crt,key}, valid one day (a test cluster lives minutes).
pki_cert() {
  local dir="$1" name="$2" subj="$3" eku="$4" san="${5:-}" ext
  ext="$dir/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$san" ]] && echo "subjectAltName=$san"
  } >"$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 1 -sha256 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$ext"
}

# pki_init <dir>: CA, API server serving cert, client certs of every component, and the
# service-account key pair (RSA: what the token signer and verifier both accept by default).
pki_init() {
  local dir="$1"
  mkdir -p "$dir"; chmod 700 "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -sha256 \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=llamaduo-e2e-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  pki_cert "$dir" apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1"
  # system:masters is the break-glass admin group; only the harness's own clients use it.
  pki_cert "$dir" admin "/O=system:masters/CN=llamaduo-e2e-admin" clientAuth
  pki_cert "$dir" controller-manager "/CN=system:kube-controller-manager" clientAuth
  pki_cert "$dir" scheduler "/CN=system:kube-scheduler" clientAuth
  # kwok stands in for the kubelet and the container runtime of its fake nodes: it writes node
  # and pod status of any node it manages, so it runs as an admin too (as kwokctl sets it up).
  pki_cert "$dir" kwok "/O=system:masters/CN=kwok-controller" clientAuth
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  chmod 600 "$dir"/*.key
}

# pki_kubeconfig <file> <server> <pki-dir> <client-name>: a kubeconfig using that client cert.
pki_kubeconfig() {
  local file="$1" server="$2" dir="$3" name="$4"
  cat >"$file" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: llamaduo-e2e
  cluster:
    server: $server
    certificate-authority: $dir/ca.crt
users:
- name: $name
  user:
    client-certificate: $dir/$name.crt
    client-key: $dir/$name.key
contexts:
- name: $name@llamaduo-e2e
  context: {cluster: llamaduo-e2e, user: $name, namespace: default}
current-context: $name@llamaduo-e2e
KCFG
  chmod 600 "$file"
}

# shellcheck shell=bash
# Small test harness for the e2e shell tests: named checks, timings, a clear failure message.
# Expects KUBECONFIG and PATH from the cluster's env file (see cluster/up.sh).

E2E_PASSED=0
E2E_CHECK=""
E2E_CHECK_T0=0

check() { # check <name>: starts a named check (ends the previous one as passed)
  check_done
  E2E_CHECK="$1"; E2E_CHECK_T0=$(date +%s.%N)
  printf '[test] %s ...\n' "$E2E_CHECK" >&2
}

check_done() {
  [[ -n "$E2E_CHECK" ]] || return 0
  printf '[test] ok   %s (%ss)\n' "$E2E_CHECK" \
    "$(awk -v a="$E2E_CHECK_T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')" >&2
  E2E_PASSED=$((E2E_PASSED + 1)); E2E_CHECK=""
}

fail() { # fail <message>: fails the current check and the test
  printf '[test] FAIL %s: %s\n' "${E2E_CHECK:-setup}" "$*" >&2
  exit 1
}

# eventually <timeout-s> <description> <command...>: polls every 0.25 s until the command succeeds.
eventually() {
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out waiting for $what"
    sleep 0.25
  done
}

# expect_refused <pattern> <command...>: the command must fail and its output match <pattern>
# (an extended regex); prints the server's message so the log shows what was refused.
expect_refused() {
  local pattern="$1" out
  shift
  if out=$("$@" 2>&1); then fail "expected refusal matching /$pattern/, but it was accepted: $out"; fi
  grep -Eq -- "$pattern" <<<"$out" || fail "refused, but without /$pattern/: $out"
  printf '[test]      refused as expected: %s\n' "$(grep -Eo -- ".{0,60}$pattern.{0,60}" <<<"$out" | head -1)" >&2
}

# stop_pid <pid> [signal]: sends the signal (TERM), waits up to 5 s, then SIGKILL; reaps it.
stop_pid() {
  local pid="$1"
  kill "-${2:-TERM}" "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# new_restricted_namespace <name>: a namespace enforcing Pod Security "restricted", ready for pods
# (its default ServiceAccount exists, which the ServiceAccount admission plugin requires).
new_restricted_namespace() {
  kubectl create namespace "$1" >/dev/null || fail "could not create namespace $1"
  kubectl label namespace "$1" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest >/dev/null || fail "could not label namespace $1"
  eventually 60 "ServiceAccount $1/default" kubectl get serviceaccount default -n "$1"
}

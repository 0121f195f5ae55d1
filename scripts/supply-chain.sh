#!/usr/bin/env bash
# Supply-chain checks (docs/supply-chain.md), run by .ci/run; a policy violation exits non-zero.
#   Rust:   cargo-deny against deny.toml (licences, duplicate versions, bans, sources), no `*`
#           requirement on a registry crate, and RustSec advisories where the database can be had.
#   Python: every line of the requirements files pinned with `==`, no other index or URL, one
#           version per package in each venv; pip-audit of the exact pins where it can query.
#   Go:     `go mod download` + `go mod verify` of every go.mod under e2e/ (go.sum, and the
#           checksum database for anything new); govulncheck where its database answers.
# A check whose database cannot be reached is reported as SKIPPED with the tool's own error,
# never as passed. The tools are built or installed once into
# ${XDG_CACHE_HOME:-~/.cache}/llamaduo/tools/ (cargo-deny cold: ~5 min on 2 cores).
# Usage: scripts/supply-chain.sh [rust|python|go]...   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
PIP_AUDIT_VERSION=2.10.1
GOVULNCHECK_VERSION=v1.10.0
tools="${XDG_CACHE_HOME:-$HOME/.cache}/llamaduo/tools"
# The Python environments and the requirements files installed into each (scripts/test.sh,
# scripts/build-cuda.sh): within one environment a package may have only one version.
py_envs=(".venv:requirements-test.txt requirements-torch.txt" ".venv-cuda:requirements-cuda.txt")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
skipped=()
t_all=$SECONDS
say() { echo "[supply-chain +$((SECONDS - t_all))s] $*"; }
skip() { skipped+=("$1"); say "SKIPPED: $1"; }

# --- Rust ----------------------------------------------------------------------------------
cargo_deny() {
  local bin="$tools/cargo-deny-$CARGO_DENY_VERSION/bin/cargo-deny"
  if command -v cargo-deny >/dev/null &&
     [[ "$(cargo-deny --version 2>/dev/null)" == "cargo-deny $CARGO_DENY_VERSION" ]]; then
    bin=$(command -v cargo-deny)
  elif [[ ! -x "$bin" ]]; then
    say "installing cargo-deny $CARGO_DENY_VERSION from crates.io into $tools (cold: ~5 min)" >&2
    local t=$SECONDS dir="$tools/cargo-deny-$CARGO_DENY_VERSION"
    rm -rf "$dir.tmp"
    # Its own temporary target directory, never the workspace's target/.
    env -u CARGO_TARGET_DIR cargo install --quiet --locked --version "$CARGO_DENY_VERSION" \
      --root "$dir.tmp" cargo-deny >&2
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    say "cargo-deny installed in $((SECONDS - t))s" >&2
  fi
  echo "$bin"
}

check_rust() {
  local deny
  deny=$(cargo_deny)
  say "cargo deny check licenses bans sources (deny.toml)"
  "$deny" --workspace --locked check licenses bans sources

  say "no wildcard requirement on a registry crate"
  cargo metadata --format-version 1 --locked >"$tmp/metadata.json"
  python3 - "$tmp/metadata.json" <<'PY'
import json, sys
meta = json.load(open(sys.argv[1]))
bad = [f"{p['name']} {p['version']} -> {d['name']} = \"*\""
       for p in meta["packages"] for d in p["dependencies"]
       if d["req"] == "*" and (d.get("source") or "").startswith(("registry+", "sparse+"))]
if bad:
    print("wildcard version requirements on registry crates:\n  " + "\n  ".join(bad))
    sys.exit(1)
PY

  say "cargo deny check advisories (RustSec)"
  if "$deny" fetch db >"$tmp/deny-fetch.log" 2>&1; then
    "$deny" --workspace --locked check advisories
  elif compgen -G "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/*/.git" >/dev/null; then
    say "could not update the advisory database; checking against the copy present (cargo-deny refuses one over 90 days old)"
    "$deny" --workspace --locked --offline check advisories
  else
    skip "Rust advisories and yanked crates: the RustSec database could not be fetched and no copy is present: $( (grep -m1 'fatal:' "$tmp/deny-fetch.log" || tail -1 "$tmp/deny-fetch.log") | sed -E 's/^[0-9: -]+//')"
  fi
}

# --- Python --------------------------------------------------------------------------------
check_python() {
  say "requirements pinned with ==, one version per package per environment"
  python3 - "$tmp/exact.txt" "${py_envs[@]}" <<'PY'
import re, sys
out, envs = sys.argv[1], sys.argv[2:]
line_re = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([0-9][A-Za-z0-9.+!-]*?)(\.\*)?"
                     r"(\s*;[^#]*)?(\s+--hash=\S+)*$")
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
errors, prefix, exact = [], [], []
for env in envs:
    venv, files = env.split(":")
    seen = {}
    for f in files.split():
        for no, raw in enumerate(open(f), 1):
            line = raw.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            m = line_re.match(line)
            if not m:
                # >=, ~=, no version, a URL or VCS reference, -e, -r/-c, --index-url and the like.
                errors.append(f"{f}:{no}: not an == pin on a package name: {line}")
                continue
            name, version, star = norm(m.group(1)), m.group(3), bool(m.group(4))
            if star:
                prefix.append(f"{f}:{no}: {line}")
            else:
                exact.append(f"{m.group(1)}=={version}")
            for other_f, other_v, other_star in seen.get(name, []):
                a, b = (version, star), (other_v, other_star)
                same = (a == b or (a[1] and (b[0] + ".").startswith(a[0] + "."))
                        or (b[1] and (a[0] + ".").startswith(b[0] + ".")))
                if not same:
                    errors.append(f"{f}:{no}: {name}=={version}{'.*' if star else ''} conflicts with "
                                  f"{other_f}'s {name}=={other_v}{'.*' if other_star else ''} in {venv}")
            seen.setdefault(name, []).append((f, version, star))
if prefix:
    print(f"note: {len(prefix)} prefix pins (==X.*) let pip pick the newest matching release:")
    print("  " + "\n  ".join(prefix))
if errors:
    print("\n".join(errors))
    sys.exit(1)
open(out, "w").write("\n".join(sorted(set(exact))) + "\n")
print(f"{len(exact)} exact pins, {len(prefix)} prefix pins, no violation")
PY

  say "pip-audit of the exact pins"
  local venv="$tools/pip-audit-$PIP_AUDIT_VERSION"
  if [[ ! -f "$venv/.complete" ]]; then
    say "installing pip-audit $PIP_AUDIT_VERSION from PyPI into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "pip-audit==$PIP_AUDIT_VERSION"
    touch "$venv/.complete"
  fi
  local rc=0
  "$venv/bin/pip-audit" -r "$tmp/exact.txt" --no-deps --disable-pip --progress-spinner off \
    -f json -o "$tmp/audit.json" >"$tmp/audit.log" 2>&1 || rc=$?
  python3 - "$tmp/audit.json" "$tmp/audit.log" "$rc" "$tmp/audit-skip" <<'PY'
import json, sys
path, log, rc, skip_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
try:
    deps = json.load(open(path))["dependencies"]
except (OSError, ValueError, KeyError):
    print(open(log).read()[-3000:])
    print(f"pip-audit failed (exit {rc}) without a report")
    sys.exit(1)
vulns = [(d["name"], d["version"], v["id"], v.get("fix_versions")) for d in deps for v in d.get("vulns", [])]
skipped = [d for d in deps if d.get("skip_reason")]
for name, version, vid, fixes in vulns:
    print(f"{name} {version}: {vid} (fixed in {', '.join(fixes) or 'no release yet'})")
if vulns:
    sys.exit(1)
if deps and len(skipped) == len(deps):
    # The vulnerability service answered for none of them: nothing was audited.
    open(skip_file, "w").write(f"pip-audit could audit none of the {len(deps)} exact pins; "
                               f"its service said, e.g.: {skipped[0]['skip_reason']}")
    sys.exit(0)
if skipped:
    print("pip-audit could not audit:\n  " + "\n  ".join(f"{d['name']}: {d['skip_reason']}" for d in skipped))
    sys.exit(1)
print(f"pip-audit: {len(deps)} packages, no known vulnerability")
PY
  if [[ -s "$tmp/audit-skip" ]]; then skip "Python advisories: $(cat "$tmp/audit-skip")"; fi
}

# --- Go ------------------------------------------------------------------------------------
check_go() {
  local mods mod
  mods=$(git ls-files 'e2e/*go.mod' | xargs -n1 dirname)
  if [[ "$(go env GOSUMDB)" == off || -n "$(go env GONOSUMDB)$(go env GOINSECURE)$(go env GOPRIVATE)" ]]; then
    say "warning: the checksum database is bypassed for some modules (GOSUMDB=$(go env GOSUMDB) GONOSUMDB=$(go env GONOSUMDB) GOINSECURE=$(go env GOINSECURE) GOPRIVATE=$(go env GOPRIVATE))"
  fi
  for mod in $mods; do
    say "go mod download + verify: $mod"
    (cd "$mod" && go mod download && go mod verify)
  done

  local bin="$tools/govulncheck-$GOVULNCHECK_VERSION/govulncheck"
  if [[ ! -x "$bin" ]]; then
    say "installing govulncheck $GOVULNCHECK_VERSION from the Go module proxy"
    GOBIN="$(dirname "$bin")" go install "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK_VERSION"
  fi
  for mod in $mods; do
    # The cluster/ wrapper modules hold only `tool` directives: no package of ours to scan.
    [[ -n "$(cd "$mod" && go list ./... 2>/dev/null)" ]] || continue
    say "govulncheck: $mod"
    local rc=0
    (cd "$mod" && "$bin" ./...) >"$tmp/govuln.log" 2>&1 || rc=$?
    if [[ $rc == 0 ]]; then
      tail -1 "$tmp/govuln.log"
    elif [[ $rc != 3 ]] && grep -q 'fetching vulnerabilities' "$tmp/govuln.log"; then
      skip "Go advisories ($mod): govulncheck could not reach its database: $(grep -m1 'fetching vulnerabilities' "$tmp/govuln.log")"
    else
      cat "$tmp/govuln.log"
      exit 1
    fi
  done
}

[[ $# -gt 0 ]] || set -- rust python go
for part in "$@"; do
  case "$part" in
    rust) check_rust ;;
    python) check_python ;;
    go) check_go ;;
    *) echo "usage: $0 [rust|python|go]..." >&2; exit 2 ;;
  esac
done

if ((${#skipped[@]})); then
  say "passed: $*; NOT checked (no database reachable from here, see docs/supply-chain.md):"
  printf '  - %s\n' "${skipped[@]}"
else
  say "passed: $*"
fi

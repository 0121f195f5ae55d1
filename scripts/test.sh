#!/usr/bin/env bash
# The project's test command (README): every tier that runs offline on this machine.
# It installs what it needs itself (a Python venv from PyPI, helm from the Go module proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target

echo "== Python test tools (.venv)"
if [[ ! -x .venv/bin/python ]] || ! cmp -s requirements-test.txt .venv/requirements-test.txt; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-test.txt
  cp requirements-test.txt .venv/requirements-test.txt
fi

echo "== unit, reconcile, stage and end-to-end tests (cargo test)"
cargo test --workspace --all-targets

echo "== Helm chart, kustomize base, Argo CD health check"
scripts/test-chart.sh

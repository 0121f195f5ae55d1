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
  rm -f .venv/requirements-torch.txt
fi
# torch CPU, transformers and peft for the PEFT cross-check: --no-deps because PyPI's torch
# wheel declares ~3-4 GB of nvidia-* packages (requirements-torch.txt pins the whole closure);
# torch_cpu_stubs.py gives its CUDA backend link stubs so it imports without them.
if ! cmp -s requirements-torch.txt .venv/requirements-torch.txt; then
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-torch.txt
  .venv/bin/python trainer-image/model/tests/python/torch_cpu_stubs.py
  .venv/bin/python -c 'import torch; assert not torch.cuda.is_available(); print("torch", torch.__version__, "CPU:", (torch.ones(2) @ torch.ones(2)).item())'
  cp requirements-torch.txt .venv/requirements-torch.txt
fi
export LLAMADUO_REQUIRE_PEFT=1

echo "== unit, reconcile, stage and end-to-end tests (cargo test)"
cargo test --workspace --all-targets --no-fail-fast

echo "== benchmark table scripts (bench/table.py, bench/mfu.py)"
python3 -m unittest bench/test_table.py bench/test_mfu.py

echo "== Helm chart, kustomize base, Argo CD health check"
scripts/test-chart.sh

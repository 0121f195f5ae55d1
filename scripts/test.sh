#!/usr/bin/env bash
# The project's test command (README): every tier that runs offline on this machine.
# Tiers that need extra toolchains install them themselves; see docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== unit, reconcile, stage and end-to-end tests (cargo test)"
cargo test --workspace --all-targets 2>&1 | tee target/test-cargo.log

#!/usr/bin/env bash
# The quickstart: migrate a toy feature (routing support tickets) from a simulated service LLM to
# a small model built from scratch, on this machine, offline, with no API keys.
#
# Builds llamaduo and llamaduo-trainer in release mode, then runs
#   llamaduo run examples/quickstart/migration.yaml --workdir ./quickstart-run
# Extra arguments go to `llamaduo run` (e.g. --json). Ctrl-C stops it; running the script
# again resumes where it stopped; once the migration has ended a rerun does nothing
# (remove ./quickstart-run to start afresh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p llamaduo -p llamaduo-trainer
exec ./target/release/llamaduo run examples/quickstart/migration.yaml --workdir ./quickstart-run "$@"

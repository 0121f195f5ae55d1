#!/usr/bin/env bash
# llamaduo beside its peers, side by side on this machine, in one table (see BENCHMARKS.md).
#
#   bench/run.sh            # from the repository root or anywhere; prints the table
#
# Knobs (environment): REPS (3) interleaved repetitions of the training and generation runs;
# TRAIN_STEPS (20) timed training steps per run; TRAIN25_STEPS (5) for the ~25M config (part
# train25m, ~2 s a step on 2 cores); BENCH_THREADS (2) threads on both sides;
# SYNTH_SECONDS (30) window of the synthesis bench; QUICKSTART (1; 0 skips the end-to-end run);
# BENCH_OUT (a new temp dir) where raw results go; BENCH_VENV (.venv-bench) the Python venv;
# SKIP_BUILD (0; 1 uses the release binaries already in target/, e.g. while another build
# holds cargo's lock; the reconcile bench is still built by `cargo bench` if missing);
# PARTS ("train generate synthesis reconcile quickstart operator") which measurements to run;
# OPERATOR_REPS (REPS) runs of the operator load test (e2e/run.sh load: LOAD_MIGRATIONS, 1000,
# migrations to their first Job on a fresh real control plane each; ~1.5-2 min a run);
# OMP_WAIT_POLICY (PASSIVE) for PyTorch's OpenMP pool: with the default busy-waiting, torch
# slows down up to 10x on a machine whose cores are shared with other work (see BENCHMARKS.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REPS="${REPS:-3}"
TRAIN_STEPS="${TRAIN_STEPS:-20}"
TRAIN25_STEPS="${TRAIN25_STEPS:-5}"
SYNTH_SECONDS="${SYNTH_SECONDS:-30}"
QUICKSTART="${QUICKSTART:-1}"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
OUT="${BENCH_OUT:-$(mktemp -d /tmp/llamaduo-bench.XXXXXX)}"
export BENCH_THREADS="${BENCH_THREADS:-2}"
export RAYON_NUM_THREADS="$BENCH_THREADS"
# torch's OpenMP pool and MKL follow these too; set so neither side uses more than the other.
export OMP_NUM_THREADS="$BENCH_THREADS" MKL_NUM_THREADS="$BENCH_THREADS"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
PARTS=" ${PARTS:-train train25m generate synthesis reconcile quickstart operator} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
export BENCH_NEW_TOKENS="${BENCH_NEW_TOKENS:-128}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)" > "$OUT/load.txt"
: > "$RESULTS"
log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }

# 1. The comparison side: torch (CPU use of PyPI's wheel), transformers, peft, pinned.
if ! "$VENV/bin/python" -c 'import torch, transformers, peft' 2>/dev/null; then
  log "installing the Python peers into $VENV (once; ~4.6 GB, mostly CUDA libraries torch links)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --no-deps -r bench/requirements-torch.txt
  "$VENV/bin/pip" install -q --no-deps -r bench/requirements.txt
fi
PY="$VENV/bin/python"

# 2. llamaduo's side, release builds.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building (cargo --release)"
  cargo build -q --release -p llamaduo-model --example train_bench --example bench_generate
  cargo build -q --release -p llamaduo-service-llm --example synthesis_bench
  cargo build -q --release -p llamaduo --bin llamaduo
  cargo build -q --release -p llamaduo-trainer --bin llamaduo-trainer
fi
BIN="$ROOT/target/release"

# 3. Training and generation, interleaved so load changes hit both sides alike.
GEN_DIR="$OUT/tiny-gen-model"
for rep in $(seq 1 "$REPS"); do
  for mode in full lora; do
    want train || continue
    log "rep $rep/$REPS: train $mode (llamaduo, then PyTorch)"
    "$BIN/examples/train_bench" "$mode" "$TRAIN_STEPS" | tail -n 1 >> "$RESULTS"
    "$PY" bench/torch_train.py "$mode" "$TRAIN_STEPS" 2>>"$OUT/python.err" | tail -n 1 >> "$RESULTS"
  done
  if want train25m; then
    for mode in full lora; do
      log "rep $rep/$REPS: train $mode, ~25M-parameter config (llamaduo, then PyTorch)"
      ( export BENCH_VOCAB=8192 BENCH_HIDDEN=512 BENCH_LAYERS=6 BENCH_HEADS=8 BENCH_INTERMEDIATE=1376
        "$BIN/examples/train_bench" "$mode" "$TRAIN25_STEPS" | tail -n 1 >> "$RESULTS"
        "$PY" bench/torch_train.py "$mode" "$TRAIN25_STEPS" 2>>"$OUT/python.err" | tail -n 1 >> "$RESULTS" )
    done
  fi
  if want generate; then
    log "rep $rep/$REPS: generate batch 1 and 8 (llamaduo, then transformers)"
    BENCH_MODEL_DIR="$GEN_DIR" "$BIN/examples/bench_generate" >> "$RESULTS"
    "$PY" bench/hf_generate.py "$GEN_DIR" 2>>"$OUT/python.err" >> "$RESULTS"
  fi
done

# 4. Synthesis flow control against the simulated teacher (200 ms latency, 600 RPM limit).
if want synthesis; then
  log "synthesis bench (${SYNTH_SECONDS}s per scheme)"
  "$BIN/examples/synthesis_bench" "$SYNTH_SECONDS" > "$OUT/synthesis.md"
fi

# 5. Reconcile decision cost.
if want reconcile; then
  log "reconcile_cost bench"
  cargo bench -q -p llamaduo --bench reconcile_cost 2>/dev/null | grep '^|' > "$OUT/reconcile.md"
fi

# 6. End to end: the quickstart from an empty work directory.
if [ "$QUICKSTART" != 0 ] && want quickstart; then
  log "quickstart end to end (a few minutes)"
  QS="$OUT/quickstart-run"
  rm -rf "$QS"
  start=$(date +%s%N)
  qs_rc=0
  "$BIN/llamaduo" run examples/quickstart/migration.yaml --workdir "$QS" --json \
    > "$OUT/quickstart.json" 2> "$OUT/quickstart.err" || qs_rc=$?
  end=$(date +%s%N)
  echo "{\"wall_ms\": $(( (end - start) / 1000000 )), \"exit_code\": $qs_rc}" > "$OUT/quickstart.time.json"
fi

# 7. The operator under load on the real control plane (e2e/README.md, "The load test").
if want operator; then
  : > "$OUT/operator_load.json"
  if ! cached_msg=$(e2e/run.sh cached 2>&1); then
    log "operator load SKIPPED: the control-plane binaries are not cached (e2e/run.sh build, ~31 min cold): $cached_msg"
    echo "control-plane binaries not cached (e2e/run.sh build)" > "$OUT/operator_load.skipped"
  else
    for rep in $(seq 1 "${OPERATOR_REPS:-$REPS}"); do
      log "operator load $rep/${OPERATOR_REPS:-$REPS}: ${LOAD_MIGRATIONS:-1000} migrations to their first Job (e2e/run.sh load)"
      rc=0
      E2E_LLAMADUO="$BIN/llamaduo" LOAD_RESULT="$OUT/operator_load.$rep.json" \
        e2e/run.sh load > "$OUT/operator_load.$rep.log" 2>&1 || rc=$?
      if [ "$rc" = 0 ] && [ -s "$OUT/operator_load.$rep.json" ]; then
        cat "$OUT/operator_load.$rep.json" >> "$OUT/operator_load.json"
      else
        log "operator load $rep failed (exit $rc): $(grep -m1 'FAIL' "$OUT/operator_load.$rep.log" || tail -n 1 "$OUT/operator_load.$rep.log")"
        echo "run $rep failed (exit $rc), see operator_load.$rep.log" >> "$OUT/operator_load.failed"
      fi
    done
  fi
fi

# 8. The machine.
{
  echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
  echo "cores=$(nproc)"
  echo "mem=$(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "rustc=$(rustc --version)"
  echo "python=$("$PY" -c 'import sys, torch, transformers, peft; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)')"
  cat "$OUT/load.txt"
  echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/machine.txt"

"$PY" bench/table.py "$OUT" | tee "$OUT/table.md"
log "raw results in $OUT"

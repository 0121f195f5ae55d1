#!/usr/bin/env bash
# The GPU training benchmark: llamaduo's CUDA build of train_bench beside PyTorch (+PEFT), bf16
# on one GPU, full fine-tuning and LoRA (r=8 on q,v), on a ~0.56B Llama (h1280 L24 v32000
# i3456, 20 heads, batch 8 x 512; LoRA dropout 0.05). Prints the table of bench/mfu.py (tokens/s, MFU, peak memory).
#
# Runs on the GPU machine from the repository root. It needs:
#   - the CUDA build of train_bench at BENCH_BIN (default target/cuda/train_bench), made on the
#     build machine by `scripts/build-cuda.sh --bench` (CUDA_COMPUTE_CAP=90 for H100/H200);
#   - python3 (or PYTHON) with torch, transformers and peft (the peer side);
#   - the NVIDIA driver (R580+) and CUDA 13 libraries; when the loader cannot find cuBLAS etc.,
#     the script adds the lib folders of python3's nvidia-* packages to LD_LIBRARY_PATH.
# Knobs: GPU_STEPS (10) timed steps after 3 warm-up steps; BENCH_* shapes as in BENCHMARKS.md;
# PEAK_TFLOPS (989); RUN_TIMEOUT (240 s per run); BENCH_OUT keeps the raw output (each run's
# stdout and stderr, results.jsonl, table.md); BENCH_DEVICE=cpu for a dry run. Exits non-zero
# when a run failed, after printing everything that did not.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_DEVICE="${BENCH_DEVICE:-cuda}" BENCH_DTYPE="${BENCH_DTYPE:-bf16}"
export BENCH_VOCAB="${BENCH_VOCAB:-32000}" BENCH_HIDDEN="${BENCH_HIDDEN:-1280}"
export BENCH_LAYERS="${BENCH_LAYERS:-24}" BENCH_HEADS="${BENCH_HEADS:-20}"
export BENCH_INTERMEDIATE="${BENCH_INTERMEDIATE:-3456}" BENCH_BATCH="${BENCH_BATCH:-8}"
export BENCH_SEQ="${BENCH_SEQ:-512}"
# LoRA with the dropout users get by default (training.lora.dropout 0.05) on both sides: on a GPU
# llamaduo draws the masks on the device, and this run shows what that costs.
export BENCH_LORA_DROPOUT="${BENCH_LORA_DROPOUT:-0.05}"
BIN="${BENCH_BIN:-target/cuda/train_bench}"
STEPS="${GPU_STEPS:-10}"
OUT="${BENCH_OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
[[ -x $BIN ]] || { echo "gpu.sh: no train_bench at $BIN (scripts/build-cuda.sh --bench makes it)" >&2; exit 1; }
if [[ $BENCH_DEVICE == cuda ]] && ! ldconfig -p | grep -q 'libcublas\.so\.13'; then
  libs=$(python3 -c 'import glob, os, nvidia
print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(d + "/**/lib*.so*", recursive=True)})))')
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
[[ $BENCH_DEVICE != cuda ]] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# run_one <label> <command...>: runs it under RUN_TIMEOUT, keeping its stdout and stderr in
# $OUT; on CUDA it samples the GPU's used memory meanwhile (nvidia-smi, every 100 ms: the same
# measure for both sides, CUDA context and caching allocators included) and appends
# "| label | max MiB |" to memory.md. A failed run is recorded in failures.md with the tail of
# its stderr and the script goes on: one device session must yield every number it can.
run_one() {
  local label=$1 sampler="" rc=0
  shift
  if [[ $BENCH_DEVICE == cuda ]]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/smi.$label" &
    sampler=$!
  fi
  timeout "${RUN_TIMEOUT:-240}" "$@" > "$OUT/$label.out" 2> "$OUT/$label.err" || rc=$?
  if [[ -n $sampler ]]; then
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
  fi
  if [[ $rc -eq 0 ]] && tail -n 1 "$OUT/$label.out" | grep -q '^{'; then
    tail -n 1 "$OUT/$label.out" | tee -a "$OUT/results.jsonl"
    [[ -z $sampler ]] || echo "| $label | $(sort -n "$OUT/smi.$label" | tail -n 1) |" >> "$OUT/memory.md"
    return 0
  fi
  echo "[gpu] $label FAILED (exit $rc); stderr tail:" >&2
  tail -n 15 "$OUT/$label.err" >&2
  echo "| $label | exit $rc | $(tail -n 1 "$OUT/$label.err" | tr '|' '/' | cut -c1-300) |" >> "$OUT/failures.md"
  return 1
}
# Preflight: llamaduo on a tiny model, 2 steps per mode (seconds), so a CUDA path that fails
# says so at once and the big llamaduo runs are skipped instead of failing slowly.
ours_ok=1
for mode in full lora; do
  echo "[gpu] preflight $mode: llamaduo, tiny model" >&2
  BENCH_VOCAB=1024 BENCH_HIDDEN=128 BENCH_LAYERS=2 BENCH_HEADS=4 BENCH_INTERMEDIATE=344 \
    BENCH_BATCH=2 BENCH_SEQ=64 run_one "preflight-$mode" "$BIN" "$mode" 2 > /dev/null || ours_ok=0
done
rm -f "$OUT/results.jsonl" "$OUT/memory.md"
for mode in full lora; do
  if [[ $ours_ok == 1 ]]; then
    echo "[gpu] $mode: llamaduo" >&2
    run_one "$mode-llamaduo" "$BIN" "$mode" "$STEPS" || true
  fi
  echo "[gpu] $mode: PyTorch" >&2
  run_one "$mode-pytorch" "${PYTHON:-python3}" bench/torch_train.py "$mode" "$STEPS" || true
done
if [[ -s $OUT/results.jsonl ]]; then
  python3 bench/mfu.py "$OUT/results.jsonl" "${PEAK_TFLOPS:-989}" | tee "$OUT/table.md"
fi
if [[ -f $OUT/memory.md ]]; then
  printf '\n| run | GPU memory used at most (nvidia-smi), MiB |\n|---|---|\n' | tee -a "$OUT/table.md"
  tee -a "$OUT/table.md" < "$OUT/memory.md"
fi
if [[ -f $OUT/failures.md ]]; then
  printf '\n| failed run | exit | last stderr line |\n|---|---|---|\n' | tee -a "$OUT/table.md"
  tee -a "$OUT/table.md" < "$OUT/failures.md"
fi
echo "[gpu] raw results in $OUT" >&2
[[ ! -f $OUT/failures.md ]]

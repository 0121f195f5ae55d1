#!/bin/sh
# A stand-in for `llamaduo-trainer` that honours the stage contract (docs/stage-contract.md)
# without doing real work, for the tests of `llamaduo run`: it reads LLAMADUO_STAGE_CONFIG,
# prints progress lines, writes artifacts under the config's file:// root and its result to
# LLAMADUO_RESULT_PATH. Knobs (environment):
#   FAKE_TRAINER_LOG   file that gets one line per invocation ("<stage> round=<n> attempt=<a>")
#   FAKE_SLEEP_STAGE   stage that sleeps FAKE_SLEEP seconds (in 0.1 s steps, printing progress)
#   FAKE_FAIL_STAGE    stage whose first attempt fails (with a result)
#   FAKE_CRASH_STAGE   stage whose first attempt exits 3 without a result
#   FAKE_SCORE_BASE, FAKE_SCORE_STEP   mean score = BASE + STEP * round (default 40 + 25 * round)
set -eu
stage="$1"
config="${LLAMADUO_STAGE_CONFIG:?LLAMADUO_STAGE_CONFIG is not set}"
result="${LLAMADUO_RESULT_PATH:?LLAMADUO_RESULT_PATH is not set}"
field() { printf '%s' "$config" | sed -n "s/.*\"$1\":\([0-9][0-9]*\).*/\1/p"; }
round=$(field round)
attempt=$(field attempt)
root=$(printf '%s' "$config" | sed -n 's/.*"artifacts":"file:\/\/\([^"]*\)".*/\1/p')
log="${FAKE_TRAINER_LOG:-/dev/null}"
echo "$stage round=$round attempt=$attempt" >> "$log"
trap 'echo "terminated $stage round=$round" >> "$log"; exit 143' TERM
echo "fake $stage starting round $round"

if [ "${FAKE_SLEEP_STAGE:-}" = "$stage" ]; then
  steps=$(( ${FAKE_SLEEP:-1} * 10 ))
  i=0
  while [ "$i" -lt "$steps" ]; do
    i=$((i + 1))
    printf '{"step":%d,"total_steps":%d,"loss":1.5,"tokens_per_s":1000}\n' "$i" "$steps"
    sleep 0.1
  done
fi
if [ "${FAKE_CRASH_STAGE:-}" = "$stage" ] && [ "$attempt" = 1 ]; then
  echo "fake $stage: simulated crash" >&2
  exit 3
fi
if [ "${FAKE_FAIL_STAGE:-}" = "$stage" ] && [ "$attempt" = 1 ]; then
  printf '{"stage":"%s","round":%d,"succeeded":false,"message":"simulated failure"}' "$stage" "$round" > "$result"
  exit 1
fi

mkdir -p "$root/round-$round"
case "$stage" in
  synthesize)
    samples=$(field samples)
    printf '{"progress":{"done":%d,"total":%d,"unit":"samples"}}\n' "$samples" "$samples"
    : > "$root/round-$round/synthetic.jsonl"
    body=$(printf '"synthesize":{"requested":%d,"produced":%d,"rejectedMalformed":0,"deduplicated":0,"decontaminated":0,"retries":0}' "$samples" "$samples")
    tokens=300
    ;;
  train)
    mkdir -p "$root/round-$round/model"
    echo '{}' > "$root/round-$round/model/config.json"
    body=$(printf '"train":{"steps":10,"trainingSamples":%d,"finalLoss":%s,"meanLoss":1.0,"tokensPerSecond":1000,"modelUri":"file://%s/round-%d/model"}' "$((round * 100))" "0.$((9 - round))" "$root" "$round")
    tokens=0
    ;;
  evaluate)
    mkdir -p "$root/round-$round/eval"
    score=$(( ${FAKE_SCORE_BASE:-40} + ${FAKE_SCORE_STEP:-25} * round ))
    echo "{\"mean\":$score}" > "$root/round-$round/eval/summary.json"
    body=$(printf '"evaluate":{"scores":{"mean":%d,"passRate":0.5},"prompts":6,"answers":6}' "$score")
    tokens=100
    ;;
  *)
    echo "fake trainer: unknown stage $stage" >&2
    exit 2
    ;;
esac
printf '{"stage":"%s","round":%d,"succeeded":true,"serviceTokens":{"input":%d,"output":%d},"durationSeconds":0.5,%s}' \
  "$stage" "$round" "$tokens" "$tokens" "$body" > "$result"
cp "$result" "$root/round-$round/$stage.result.json"
echo "fake $stage done"

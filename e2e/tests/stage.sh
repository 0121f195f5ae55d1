#!/usr/bin/env bash
# What the e2e runtime (podrunner) runs for a stage pod's `llamaduo-trainer <stage>`: the real
# trainer ($E2E_TRAINER) for the stages listed in $E2E_REAL_STAGES, else fake-stage.py, a
# stand-in that honours the same stage contract. The operator tests report which ran.
# A serving pod's `llamaduo-trainer serve` is always the real trainer (there is no stand-in
# server). podrunner gives processes no network namespace, so its `--listen 0.0.0.0:8000` would
# take that port on the host: with $E2E_SERVE_LISTEN set it listens there instead.
set -euo pipefail
stage="${1:-}"
trainer() { exec "${E2E_TRAINER:?E2E_TRAINER must name the llamaduo-trainer binary}" "$@"; }
if [[ "$stage" == serve ]]; then
  args=()
  for a in "$@"; do
    [[ "$a" == 0.0.0.0:8000 && -n "${E2E_SERVE_LISTEN:-}" ]] && a="$E2E_SERVE_LISTEN"
    args+=("$a")
  done
  trainer "${args[@]}"
fi
case " ${E2E_REAL_STAGES:-} " in
  *" $stage "*) trainer "$@" ;;
esac
exec python3 "$(dirname "${BASH_SOURCE[0]}")/fake-stage.py" "$@"

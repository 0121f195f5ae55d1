#!/usr/bin/env bash
# What the e2e runtime (podrunner) runs for a stage pod's `llamaduo-trainer <stage>`: the real
# trainer ($E2E_TRAINER) for the stages listed in $E2E_REAL_STAGES, else fake-stage.py, a
# stand-in that honours the same stage contract. The operator tests report which ran.
set -euo pipefail
stage="${1:-}"
case " ${E2E_REAL_STAGES:-} " in
  *" $stage "*) exec "${E2E_TRAINER:?E2E_TRAINER must name the llamaduo-trainer binary}" "$@" ;;
esac
exec python3 "$(dirname "${BASH_SOURCE[0]}")/fake-stage.py" "$@"

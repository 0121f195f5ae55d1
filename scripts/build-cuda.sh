#!/usr/bin/env bash
# Compiles the trainer with `--features cuda` on a machine with no GPU and no system CUDA
# toolkit, to prove the CUDA path builds (CI runs it after scripts/test.sh). The toolchain comes
# from PyPI's NVIDIA wheels (requirements-cuda.txt, CUDA 13.4) in .venv-cuda:
#   - nvcc, cicc, ptxas, fatbinary and the headers compile candle-kernels (PTX for every kernel,
#     plus the static MoE/GGUF kernel library, for CUDA_COMPUTE_CAP);
#   - cudarc links libcuda, libcublas, libcublasLt, libcurand and libnvrtc at build time
#     (candle-core enables its `dynamic-linking` feature) and candle-kernels links libcudart.
#     The wheels ship only versioned sonames, so unversioned links are made next to them, and
#     libcuda (the driver, never on PyPI) is replaced by a generated stub with soname
#     libcuda.so.1 that defines every driver entry point cudarc declares. The stub is only for
#     the linker: at run time the GPU machine's driver provides the real libcuda.so.1.
# The binary is copied to target/cuda/llamaduo-trainer; cargo's target/release/llamaduo-trainer
# is put back to the CPU build when one existed (a relink-free re-copy of cargo's cached
# artifact), because the quickstart and e2e tests run that one. docs/cuda.md lists what the
# CUDA binary needs at run time.
#
# Usage: scripts/build-cuda.sh            (CUDA_COMPUTE_CAP defaults to 80: A100; H100 is 90)
#        scripts/build-cuda.sh --check    CI's compile check: the dev profile, so the crates the
#                                         tests already built are reused; binary in target/cuda-dev/
#        scripts/build-cuda.sh --bench    also the training benchmark, target/cuda/train_bench, for
#                                         bench/gpu.sh on a GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
profile=release out=target/cuda bench=0
case "${1:-}" in
  "") ;;
  --check) profile=dev out=target/cuda-dev ;;
  --bench) bench=1 ;;
  *) echo "usage: scripts/build-cuda.sh [--check | --bench]" >&2; exit 2 ;;
esac
profile_dir=$([[ $profile == dev ]] && echo debug || echo release)

VENV=.venv-cuda
if [[ ! -x $VENV/bin/python ]] || ! cmp -s requirements-cuda.txt $VENV/requirements-cuda.txt; then
  echo "== CUDA toolchain from PyPI ($VENV)"
  python3 -m venv $VENV
  $VENV/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-cuda.txt
  cp requirements-cuda.txt $VENV/requirements-cuda.txt
fi

CUDA_HOME="$(pwd)/$(ls -d $VENV/lib/python3*/site-packages/nvidia/cu13 | head -n1)"
[[ -x $CUDA_HOME/bin/nvcc ]] || { echo "build-cuda.sh: no nvcc in $CUDA_HOME" >&2; exit 1; }

# Unversioned names for the linker (-lcudart, -lcublas, ...).
for so in "$CUDA_HOME"/lib/lib{cudart,cublas,cublasLt,curand,nvrtc}.so.*; do
  base=$(basename "$so")
  ln -sf "$base" "$CUDA_HOME/lib/${base%%.so.*}.so"
done

# The link-time stub of the driver library: one function per cu* entry point of cudarc's
# driver bindings (all CUDA versions it covers), each returning CUDA_ERROR_UNKNOWN.
stubs="$CUDA_HOME/lib/stubs"
if [[ ! -f $stubs/libcuda.so ]]; then
  mkdir -p "$stubs"
  cudarc_src=$(cargo metadata --format-version 1 --manifest-path trainer-image/Cargo.toml \
      --features cuda 2>/dev/null \
    | python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"))')
  names=$(grep -ohP '^\s*(pub )?(unsafe )?fn \Kcu[A-Za-z0-9_]+(?=\()' "$cudarc_src/src/driver/sys/mod.rs" | sort -u)
  [[ -n $names ]] || { echo "build-cuda.sh: no driver entry points found in $cudarc_src" >&2; exit 1; }
  for n in $names; do echo "int $n(void) { return 999; }"; done > "$stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
  echo "libcuda stub: $(echo "$names" | wc -l) entry points"
fi
# The name the loader looks for (the soname), for the load check at the end.
ln -sf libcuda.so "$stubs/libcuda.so.1"

export CUDA_HOME CUDA_PATH="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH"
# Never the build machine's GPU (it has none) and never target-cpu=native.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
# candle-kernels' build script (cudaforge) runs nvcc on half the cores unless told otherwise;
# its GGUF/MoE kernels are most of a cold build, so give it all of them.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
# At run time the GPU machine's own CUDA libraries are found through the loader's usual paths.
echo "== cargo build --profile $profile -p llamaduo-trainer --features cuda (compute cap $CUDA_COMPUTE_CAP, $(nvcc --version | grep -o 'release [0-9.]*'))"
bin=target/$profile_dir/llamaduo-trainer
had_cpu=0
if [[ -f $bin ]] && ! readelf -d "$bin" | grep -q 'libcuda\.so'; then had_cpu=1; fi
cargo build --profile "$profile" -p llamaduo-trainer --features cuda
mkdir -p "$out"
cp "$bin" "$out/llamaduo-trainer"
if [[ $bench == 1 ]]; then
  cargo build --profile "$profile" -p llamaduo-model --example train_bench --features llamaduo-model/cuda
  cp "target/$profile_dir/examples/train_bench" "$out/train_bench"
  # bench/run.sh runs the CPU build from the same place: put it back.
  cargo build --profile "$profile" -p llamaduo-model --example train_bench
  echo "== $out/train_bench (bench/gpu.sh runs it on a GPU machine)"
fi
if [[ $had_cpu == 1 ]]; then
  cargo build --profile "$profile" -p llamaduo-trainer
fi
bin=$out/llamaduo-trainer
echo "== $bin needs these shared libraries at run time:"
readelf -d "$bin" | grep NEEDED
# It loads and runs on this machine with the toolkit's libraries and the driver stub in place of a
# GPU machine's: with LD_BIND_NOW every symbol resolves at load (a run that touched the GPU would
# fail on the stub).
LD_BIND_NOW=1 LD_LIBRARY_PATH="$CUDA_HOME/lib:$stubs" "$bin" --help >/dev/null
echo "== $bin --help runs (loader resolves every CUDA symbol)"
echo "build-cuda.sh: done in $(( $(date +%s) - t0 ))s"

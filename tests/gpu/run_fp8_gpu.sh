#!/usr/bin/env bash
# FP8 CUDA checks on a GPU machine: CUDA vs CPU byte comparison (reference vectors + random
# cases) and the kernel bandwidth benchmark. Run from the repository root:
#   tests/gpu/run_fp8_gpu.sh [prebuilt-dir]
# Builds with nvcc when it is available; otherwise uses binaries prebuilt elsewhere with
#   nvcc -std=c++20 -O3 -arch=sm_90 --expt-relaxed-constexpr -Iinclude <src>.cu -o <dir>/<name>
# found in [prebuilt-dir] (default: gpubuild). CKB_USE_PREBUILT=1 skips the build even with nvcc.
set -u
dir="${1:-gpubuild}"
echo "nvcc: $(command -v nvcc || echo none), cmake: $(command -v cmake || echo none)"
if [ "${CKB_USE_PREBUILT:-0}" != 1 ] && command -v nvcc >/dev/null 2>&1; then
  mkdir -p "$dir"
  for src in tests/cuda/test_fp8_cuda.cu bench/bench_fp8_cuda.cu; do
    name=$(basename "$src" .cu)
    nvcc -std=c++20 -O3 -arch=sm_90 --expt-relaxed-constexpr -Iinclude "$src" -o "$dir/$name" || exit 1
  done
  echo "built with $(nvcc --version | tail -1)"
else
  echo "using prebuilt binaries in $dir"
fi
for b in test_fp8_cuda bench_fp8_cuda; do
  [ -x "$dir/$b" ] || { echo "missing $dir/$b"; exit 1; }
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
echo "== CUDA vs CPU bytes"
"$dir/test_fp8_cuda"; rc1=$?
echo "== bandwidth, 16384 x 7168"
"$dir/bench_fp8_cuda" 16384 7168 20; rc2=$?
echo "test rc=$rc1 bench rc=$rc2"
[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ]

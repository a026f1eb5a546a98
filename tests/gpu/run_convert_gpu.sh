#!/usr/bin/env bash
# End-to-end proof on a GPU machine: tiny transformers DeepSeek-V3 -> ckbridge (HF <-> MCore, FP8 and
# BF16, several layouts) -> torch.load / Megatron-Core GPTModel, compared with transformers; CUDA vs
# CPU quantization bytes. Prints a table of every check and exits non-zero if one fails.
#
#   tests/gpu/run_convert_gpu.sh [DIST]            run (default DIST: gpubuild-conv/dist)
#   tests/gpu/run_convert_gpu.sh --prepare [DIST]  on a build machine with the C++ dependencies and
#                                                  PyPI access: build the converter, collect what
#                                                  the GPU machine lacks into DIST
# DIST holds bin/ckbridge_convert_cuda (static libstdc++/libgcc/cudart), lib/ (yaml-cpp) and
# wheels/ (megatron-core, installed into a private --target directory when megatron.core is not
# importable). Without DIST the run builds the converter itself with CMake (needs Eigen, yaml-cpp,
# RapidJSON, CLI11, zlib). Needs python3 with torch >= 2.6, transformers 5.x, safetensors, pyyaml.
# Environment: PYTHON (default python3), CKB_BUILD_DIR (--prepare build tree, default next to DIST),
# CKB_GPU_WORK (scratch, default a temporary directory), CKB_ALLOW_NOT_RUN=1 (checks that cannot
# run here, e.g. the 2-GPU layouts on a one-GPU machine, do not fail the run).
set -u
cd "$(dirname "$0")/../.." || exit 1
PY=${PYTHON:-python3}
MEGATRON_CORE_VERSION=0.16.1

if [ "${1:-}" = "--prepare" ]; then
  DIST=${2:-gpubuild-conv/dist}
  BUILD=${CKB_BUILD_DIR:-$(dirname "$DIST")/build}
  set -e
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCKBRIDGE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCKBRIDGE_BUILD_TESTS=OFF -DCKBRIDGE_BUILD_BENCH=OFF "-DCMAKE_EXE_LINKER_FLAGS=-static-libstdc++ -static-libgcc"
  make -C "$BUILD" -j"$(nproc)" ckbridge_convert_cuda
  mkdir -p "$DIST/bin" "$DIST/lib" "$DIST/wheels"
  cp "$BUILD/examples/ckbridge_convert_cuda" "$DIST/bin/"
  # shared libraries a bare CUDA image may lack (yaml-cpp, xxhash); libc, libm, libz are assumed there
  ldd "$DIST/bin/ckbridge_convert_cuda" | awk '/yaml-cpp|xxhash/ {print $3}' | xargs -r -I{} cp -L {} "$DIST/lib/"
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "${CKB_TARGET_PY:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$DIST/wheels" "megatron-core==$MEGATRON_CORE_VERSION"
  du -sh "$DIST"
  exit 0
fi

DIST=${1:-gpubuild-conv/dist}
if [ ! -x "$DIST/bin/ckbridge_convert_cuda" ] && [ ! -x "$DIST/bin/ckbridge_convert" ]; then
  echo "no prebuilt converter in $DIST/bin: building with CMake"
  BUILD=${DIST%/}.build
  if command -v nvcc >/dev/null 2>&1; then cuda=ON; target=ckbridge_convert_cuda; else cuda=OFF; target=ckbridge_convert; fi
  if ! cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCKBRIDGE_CUDA=$cuda -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DCKBRIDGE_BUILD_TESTS=OFF -DCKBRIDGE_BUILD_BENCH=OFF >"$BUILD.log" 2>&1 ||
     ! make -C "$BUILD" -j"$(nproc)" "$target" >>"$BUILD.log" 2>&1; then
    tail -20 "$BUILD.log"
    echo "error: cannot build the converter here; run '$0 --prepare DIR' on a machine with the C++ dependencies and pass DIR"
    exit 2
  fi
  mkdir -p "$DIST/bin" && cp "$BUILD/examples/$target" "$DIST/bin/"
fi
[ -d "$DIST/lib" ] && export LD_LIBRARY_PATH="$PWD/$DIST/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if ! "$PY" -c 'import megatron.core' >/dev/null 2>&1; then
  site=$(mktemp -d /tmp/ckb_megatron_XXXXXX)
  if ls "$DIST"/wheels/megatron_core-*.whl >/dev/null 2>&1 &&
     "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$DIST"/wheels/*.whl; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "note: megatron-core not available (no wheel in $DIST/wheels): the Megatron checks will be NOT RUN"
  fi
fi

# never use NVLink multicast on shared hosts
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
WORK=${CKB_GPU_WORK:-$(mktemp -d /tmp/ckb_gpu_proof_XXXXXX)}
args=(--bin "$DIST/bin" --work "$WORK")
[ "${CKB_ALLOW_NOT_RUN:-0}" = 1 ] && args+=(--allow-not-run)
"$PY" tests/gpu/gpu_proof.py "${args[@]}"

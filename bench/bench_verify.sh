#!/usr/bin/env bash
# Verification benchmark on the DeepSeek-V3-shaped benchmark checkpoint (bench_convert.sh's,
# ~5.5 GB): `ckbridge_verify --manifest` (SHA-256 of every file and every tensor) and
# `ckbridge_verify HF MCORE` (every tensor produced from both sides and compared) against reading
# the same files with `cat > /dev/null`, measured in the same run, warm page cache for all.
# Goal: both at >= 0.8 of the read rate.
# Usage: bench/bench_verify.sh [build-dir] [work-dir]   (work-dir needs ~2.5x the checkpoint size)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-${TMPDIR:-/tmp}/ckbridge-bench-convert}
BIN=$BUILD/examples
CFG=configs/deepseek_v3/deepseek_v3_bench.yaml
CONV=configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml
cmake --build "$BUILD" --target deepseek_v3_convert make_tiny_checkpoint ckbridge_verify -j"$(nproc)" >/dev/null
mkdir -p "$WORK"
if [[ ! -f $WORK/hf/config.json ]]; then
  rm -rf "$WORK/hf"
  echo "generating the benchmark checkpoint..."
  "$BIN/deepseek_v3_make_tiny" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf" --dtype fp8 --max_shard_size 1GB
fi
if [[ ! -f $WORK/mcore/ckbridge-manifest.json ]]; then
  rm -rf "$WORK/mcore"
  "$BIN/deepseek_v3_convert" --load_platform huggingface --save_platform mcore --config_file "$CFG" --convert_file "$CONV" \
    --load_ckpt_path "$WORK/hf" --save_ckpt_path "$WORK/mcore" --tensor_model_parallel_size 8 --expert_parallel_size 8 \
    --expert_tensor_parallel_size 1 --moe-grouped-gemm --safetensors --max_workers "$(nproc)" -q >/dev/null
fi
HF_BYTES=$(du -sb "$WORK/hf" | cut -f1)
MC_BYTES=$(du -sb "$WORK/mcore" | cut -f1)

seconds() {  # seconds <command...>: wall time of the command (output discarded)
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>"$WORK/err.txt" || { cat "$WORK/err.txt"; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
catall() { find "$@" -type f -exec cat {} + >/dev/null; }

catall "$WORK/hf" "$WORK/mcore"  # warm the page cache for every contender alike
CAT_MC=$(seconds catall "$WORK/mcore")
CAT_BOTH=$(seconds catall "$WORK/hf" "$WORK/mcore")
MAN=$(seconds "$BIN/ckbridge_verify" --manifest "$WORK/mcore")
VER=$(seconds "$BIN/ckbridge_verify" --config_file "$CFG" --convert_file "$CONV" -q "$WORK/hf" "$WORK/mcore")
CAT_MC2=$(seconds catall "$WORK/mcore")
CAT_MC=$(echo "if ($CAT_MC2 < $CAT_MC) $CAT_MC2 else $CAT_MC" | bc -l)  # the faster of two reads

rate() { echo "$1 / $2 / 1000000000" | bc -l; }
echo
echo "MCore TP8 EP8 output $(echo "$MC_BYTES / 1000000000" | bc -l | cut -c1-5) GB, HF source $(echo "$HF_BYTES / 1000000000" | bc -l | cut -c1-5) GB, $(nproc) cores, warm page cache"
printf '%-44s %8s %8s %10s\n' "run" "seconds" "GB/s" "vs read"
printf '%-44s %8.2f %8.2f %10s\n' "cat > /dev/null (MCore output)" "$CAT_MC" "$(rate "$MC_BYTES" "$CAT_MC")" "1"
printf '%-44s %8.2f %8.2f %9.2fx\n' "ckbridge_verify --manifest (SHA-256 files+tensors)" "$MAN" "$(rate "$MC_BYTES" "$MAN")" \
  "$(echo "$CAT_MC / $MAN" | bc -l)"
printf '%-44s %8.2f %8.2f %10s\n' "cat > /dev/null (HF + MCore)" "$CAT_BOTH" "$(rate $((HF_BYTES + MC_BYTES)) "$CAT_BOTH")" "1"
printf '%-44s %8.2f %8.2f %9.2fx\n' "ckbridge_verify HF MCORE (every tensor)" "$VER" "$(rate $((HF_BYTES + MC_BYTES)) "$VER")" \
  "$(echo "$CAT_BOTH / $VER" | bc -l)"
echo "goal: >= 0.8x of the read rate"

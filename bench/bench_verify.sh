#!/usr/bin/env bash
# Verification benchmark on the DeepSeek-V3-shaped benchmark checkpoint (bench_convert.sh's,
# ~5.5 GB HF FP8 source, ~5 GB MCore TP8 EP8 output): `ckbridge_verify --manifest` (XXH3-128 of
# every file; with --sha256 its SHA-256) and `ckbridge_verify HF MCORE` (every tensor produced from both sides and compared)
# against reading the same files with `cat > /dev/null`, measured in the same run, each contender
# both with a warm page cache (every file read just before) and a cold one (the files evicted from
# the page cache just before each contender with `dd iflag=nocache count=0`, no root needed).
# Also measured in the same run: SHA-256 throughput of libcrypto (`openssl speed`) times the cores,
# the most any SHA-256 manifest check can reach on this machine.
# Goal: both at >= 0.8 of the read rate.
# Usage: bench/bench_verify.sh [build-dir] [work-dir] [runs]   (work-dir needs ~2.5x the checkpoint size)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-${TMPDIR:-/tmp}/ckbridge-bench-convert}
RUNS=${3:-3}
BIN=$BUILD/examples
CFG=configs/deepseek_v3/deepseek_v3_bench.yaml
CONV=configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml
cmake --build "$BUILD" --target ckbridge_convert make_tiny_checkpoint ckbridge_verify -j"$(nproc)" >/dev/null
mkdir -p "$WORK"
if [[ ! -f $WORK/hf/config.json ]]; then
  rm -rf "$WORK/hf"
  echo "generating the benchmark checkpoint..."
  "$BIN/deepseek_v3_make_tiny" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf" --dtype fp8 --max_shard_size 1GB
fi
if [[ ! -f $WORK/mcore/ckbridge-manifest.json ]] || ! grep -q xxh3_128 "$WORK/mcore/ckbridge-manifest.json"; then
  rm -rf "$WORK/mcore"
  "$BIN/ckbridge_convert" --load_platform huggingface --save_platform mcore --config_file "$CFG" --convert_file "$CONV" \
    --load_ckpt_path "$WORK/hf" --save_ckpt_path "$WORK/mcore" --tensor_model_parallel_size 8 --expert_parallel_size 8 \
    --expert_tensor_parallel_size 1 --moe-grouped-gemm --safetensors --max_workers "$(nproc)" -q >/dev/null
fi
HF_BYTES=$(du -sb "$WORK/hf" | cut -f1)
MC_BYTES=$(du -sb "$WORK/mcore" | cut -f1)

seconds() {  # seconds <command...>: wall time of the command (output discarded); its CPU seconds in $WORK/cpu.txt
  /usr/bin/time -f '%e %U %S' -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/err.txt" || { cat "$WORK/err.txt"; exit 1; }
  awk '{print $2 + $3}' "$WORK/time.txt" >"$WORK/cpu.txt"
  cut -d' ' -f1 "$WORK/time.txt"
}
catall() { find "$@" -type f -exec cat {} + >/dev/null; }
CAT=(sh -c 'find "$@" -type f -exec cat {} + >/dev/null' catall)  # catall as a command /usr/bin/time can run

evict() { find "$@" -type f -exec dd iflag=nocache count=0 status=none if={} \; ; }  # drop from the page cache
cached() { find "$@" -type f -exec fincore -nb -o RES {} + | awk '{s += $1} END {printf "%d\n", s}'; }  # bytes in the page cache
if command -v fincore >/dev/null; then  # the page cache must really drop the files, or the cold numbers are warm ones
  evict "$WORK/hf" "$WORK/mcore"
  LEFT=$(cached "$WORK/hf" "$WORK/mcore")
  if (( LEFT > (HF_BYTES + MC_BYTES) / 20 )); then
    echo "warning: $LEFT bytes stay in the page cache after evicting; the cold numbers are not cold"
  fi
fi
CORES=$(nproc)
SHA1=$(openssl speed -evp sha256 -bytes 8388608 -seconds 2 2>/dev/null | awk '/^sha256/ {sub(/k$/, "", $2); print $2 * 1000 / 1e9}')
SHA_ALL=$(echo "$SHA1 * $CORES" | bc -l)
rate() { echo "$1 / $2 / 1000000000" | bc -l; }

declare -a ROWS
for run in $(seq 1 "$RUNS"); do
  for cache in warm cold; do
    prep() {  # before each contender
      if [[ $cache == warm ]]; then catall "$WORK/hf" "$WORK/mcore"; else evict "$WORK/hf" "$WORK/mcore"; fi
    }
    row() {  # row <label> <seconds> <bytes> [<baseline seconds>]
      local vs=1
      [[ -n ${4:-} ]] && vs=$(printf '%.2fx' "$(echo "$4 / $2" | bc -l)")
      ROWS+=("$(printf '%-4s %-5s %-46s %7.2f %7.2f %7.2f %8s' "$run" "$cache" "$1" "$2" "$(cat "$WORK/cpu.txt")" "$(rate "$3" "$2")" "$vs")")
    }
    prep; CAT_MC=$(seconds "${CAT[@]}" "$WORK/mcore"); row "cat > /dev/null (MCore output)" "$CAT_MC" "$MC_BYTES"
    prep; MAN=$(seconds "$BIN/ckbridge_verify" --manifest "$WORK/mcore"); row "ckbridge_verify --manifest (XXH3-128 per file)" "$MAN" "$MC_BYTES" "$CAT_MC"
    prep; MANS=$(seconds "$BIN/ckbridge_verify" --manifest "$WORK/mcore" --sha256); row "ckbridge_verify --manifest --sha256" "$MANS" "$MC_BYTES" "$CAT_MC"
    prep; CAT_BOTH=$(seconds "${CAT[@]}" "$WORK/hf" "$WORK/mcore"); row "cat > /dev/null (HF + MCore)" "$CAT_BOTH" $((HF_BYTES + MC_BYTES))
    prep; VER=$(seconds "$BIN/ckbridge_verify" --config_file "$CFG" --convert_file "$CONV" -q "$WORK/hf" "$WORK/mcore")
    row "ckbridge_verify HF MCORE (every tensor)" "$VER" $((HF_BYTES + MC_BYTES)) "$CAT_BOTH"
  done
done

echo
echo "load average at the end: $(cut -d" " -f1-3 /proc/loadavg) (other work on this machine: wall times are noisy; CPU s is user + sys)"
echo "MCore TP8 EP8 output $(echo "$MC_BYTES / 1000000000" | bc -l | cut -c1-5) GB, HF source $(echo "$HF_BYTES / 1000000000" | bc -l | cut -c1-5) GB, $CORES cores"
printf '%-4s %-5s %-46s %7s %7s %7s %8s\n' "run" "cache" "contender" "seconds" "CPU s" "GB/s" "vs read"
printf '%s\n' "${ROWS[@]}"
printf 'SHA-256 (openssl speed, 8 MiB blocks): %.2f GB/s per core, %.2f GB/s on %d cores: the ceiling of any SHA-256 check here\n' \
  "$SHA1" "$SHA_ALL" "$CORES"
echo "goal: >= 0.8x of the read rate of the same cache state. A warm cat copies from the page cache at memory speed;"
echo "--sha256 cannot reach 0.8x of it when the SHA-256 ceiling above is below 0.8x of the warm cat rate."

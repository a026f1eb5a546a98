#!/usr/bin/env bash
# torch_dist benchmark: HF FP8 -> Megatron-Core torch_dist (--dequantize_fp8: torch_dist holds the
# high-precision weights, docs/torch-dist-format.md §6) on the generated DeepSeek-V3-shaped
# checkpoint of bench_convert.sh (configs/deepseek_v3/deepseek_v3_bench.yaml, ~5.5 GB), against
# `cp -r` of the same input and `cp -r` of the same output bytes, measured in the same run; then
# torch_dist -> HF (read through the single-rank legacy copy, §8) against `cp -r` of its input.
# Reports wall time, GB/s, peak RSS (VmHWM, includes mapped source pages) and peak RssAnon
# (anonymous memory, sampled every 0.1 s), and the load average before each run.
# Usage: bench/bench_torch_dist.sh [build-dir] [work-dir]   (work-dir needs ~6x the checkpoint size)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-${TMPDIR:-/tmp}/ckbridge-bench-convert}
BIN=$BUILD/examples
CFG=configs/deepseek_v3/deepseek_v3_bench.yaml
CONV=configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml
[[ ${BENCH_NO_BUILD:-0} == 1 ]] || cmake --build "$BUILD" --target ckbridge_convert make_tiny_checkpoint -j"$(nproc)" >/dev/null
mkdir -p "$WORK"
if [[ ! -f $WORK/hf/config.json ]]; then
  rm -rf "$WORK/hf"
  echo "generating the benchmark checkpoint..."
  "$BIN/deepseek_v3_make_tiny" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf" --dtype fp8 --max_shard_size 1GB
fi

measure() {  # measure <label> <command...>: prints "label seconds peak_rss_kb peak_rss_anon_mb load1"
  local label=$1
  shift
  sync
  local t0 t1 tpid cpid load
  load=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$WORK/rss.txt" "$@" >/dev/null 2>"$WORK/err.txt" &
  tpid=$!
  cpid=""
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    cpid=$(pgrep -P "$tpid" | head -1 || true)
    [[ -n $cpid ]] && break
    sleep 0.02
  done
  : > "$WORK/mem.txt"
  [[ -n $cpid ]] && bench/sample_memory.sh "$cpid" 0.1 > "$WORK/mem.txt" &
  wait "$tpid" || { cat "$WORK/err.txt"; exit 1; }
  wait
  sync
  t1=$(date +%s.%N)
  echo "$label $(echo "$t1 - $t0" | bc -l) $(cat "$WORK/rss.txt") $(awk 'BEGIN{m=0} {if ($2 > m) m = $2} END{print m}' "$WORK/mem.txt") $load"
}
row() {  # row <label> <seconds> <bytes> <baseline-seconds> <rss-kb> <anon-mb> <load>
  printf '%-34s %8.2f %8.2f %8.2fx %10.0f %10s %6s\n' "$1" "$2" "$(echo "$3 / $2 / 1000000000" | bc -l)" \
    "$(echo "$2 / $4" | bc -l)" "$(echo "$5 / 1024" | bc -l)" "$6" "$7"
}
C=("$BIN/ckbridge_convert" --model deepseek_v3 --config_file "$CFG" --convert_file "$CONV" -q)

rm -rf "$WORK/cp" "$WORK/td" "$WORK/td_hf" "$WORK/td_cp"
SRC_BYTES=$(du -sb "$WORK/hf" | cut -f1)
cat "$WORK"/hf/*.safetensors >/dev/null  # warm the page cache for every contender alike
read -r _ CP_S CP_RSS _ CP_LOAD < <(measure cp cp -r "$WORK/hf" "$WORK/cp")
rm -rf "$WORK/cp"
rows=()
# one run: the data files are written by one thread each (Megatron's 2 files; --max_workers N > 2
# writes N files), so --max_workers 1 and 2 are the same run
rm -rf "$WORK/td"
read -r _ S RSS ANON LOAD < <(measure td "${C[@]}" --load_platform huggingface --save_platform mcore \
  --load_ckpt_path "$WORK/hf" --save_ckpt_path "$WORK/td" --safetensors \
  --ckpt_format torch_dist --dequantize_fp8)
TD_BYTES=$(du -sb "$WORK/td" | cut -f1)
rows+=("$(row "HF FP8 -> torch_dist (2 files)" "$S" "$TD_BYTES" "$CP_S" "$RSS" "$ANON" "$LOAD")")
cat "$WORK"/td/release/*.distcp >/dev/null
read -r _ CPO_S CPO_RSS _ CPO_LOAD < <(measure cp_out cp -r "$WORK/td" "$WORK/td_cp")
rm -rf "$WORK/td_cp"
if [[ ${BENCH_TD_BACK:-1} == 1 ]]; then  # torch_dist -> HF, through the single-rank legacy copy
  read -r _ BS BRSS BANON BLOAD < <(measure back "${C[@]}" --load_platform mcore \
    --save_platform huggingface --load_ckpt_path "$WORK/td" --save_ckpt_path "$WORK/td_hf" --max_workers 2)
  BACK_BYTES=$(du -sb "$WORK/td_hf" | cut -f1)
  rm -rf "$WORK/td_hf"
fi
echo
echo "HF FP8 $(echo "$SRC_BYTES / 1000000000" | bc -l | cut -c1-5) GB -> torch_dist (bf16) $(echo "$TD_BYTES / 1000000000" | bc -l | cut -c1-5) GB; $(nproc) cores"
printf '%-34s %8s %8s %9s %10s %10s %6s\n' "run" "seconds" "GB/s" "vs cp" "peakRSS MB" "RssAnon MB" "load"
row "cp -r source (baseline)" "$CP_S" "$SRC_BYTES" "$CP_S" "$CP_RSS" "-" "$CP_LOAD"
printf '%s\n' "${rows[@]}"
row "cp -r torch_dist output" "$CPO_S" "$TD_BYTES" "$CP_S" "$CPO_RSS" "-" "$CPO_LOAD"
echo "(GB/s = bytes written / s; 'vs cp' = time / time of cp -r of the source)"
echo "vs cp of the same output bytes: $(for r in "${rows[@]}"; do echo "$r" | awk -v c="$CPO_S" '{printf "%.2fx ", $(NF-5)/c}'; done)"
[[ ${BENCH_TD_BACK:-1} == 1 ]] &&
  printf '%-34s %8.2f %8.2f %8.2fx %10.0f %10s %6s   (vs cp -r of its torch_dist input)\n' "torch_dist -> HF --max_workers 2" \
    "$BS" "$(echo "$BACK_BYTES / $BS / 1000000000" | bc -l)" "$(echo "$BS / $CPO_S" | bc -l)" "$(echo "$BRSS / 1024" | bc -l)" \
    "$BANON" "$BLOAD"
rm -rf "$WORK/td"

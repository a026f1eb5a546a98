#!/usr/bin/env bash
# Conversion benchmark against `cp -r` of the same input measured in the same run. Reports wall
# time, GB/s and peak RSS for --max_workers 1, 2 (and more if the machine has the cores), and the
# ratios to cp. Memory: peak RSS (VmHWM, includes mapped source pages) and peak RssAnon (anonymous
# memory, what the goal bounds).
#   CKB_BENCH_MODEL=deepseek_v3 (default): HF FP8 -> MCore TP8 EP8 ETP1 grouped on a generated
#     DeepSeek-V3-shaped checkpoint (configs/deepseek_v3/deepseek_v3_bench.yaml, ~5.5 GB).
#   CKB_BENCH_MODEL=qwen3_moe: HF BF16 -> MCore TP4 EP8 ETP1 grouped on a generated
#     Qwen3-MoE-shaped checkpoint (configs/qwen3/qwen3_moe_bench.yaml: Qwen3-30B-A3B's tensors,
#     128 experts, 3 layers, ~4.9 GB).
#   CKB_BENCH_CONVERTER=PATH: the converter binary to time (default <build-dir>/examples/ckbridge_convert),
#     e.g. one built from an older commit, to compare two versions on the same checkpoint.
# Usage: bench/bench_convert.sh [build-dir] [work-dir]   (work-dir needs ~3x the checkpoint size;
#   a work-dir holds one model's checkpoint: use one per CKB_BENCH_MODEL)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-${TMPDIR:-/tmp}/ckbridge-bench-convert}
BIN=$BUILD/examples
MODEL=${CKB_BENCH_MODEL:-deepseek_v3}
case $MODEL in
  deepseek_v3)
    CFG=configs/deepseek_v3/deepseek_v3_bench.yaml
    CONV=configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml
    DTYPE=fp8 TP=8 EP=8 TITLE="HF FP8 -> MCore TP8 EP8 ETP1 grouped (DeepSeek-V3-shaped)" ;;
  qwen3_moe)
    CFG=configs/qwen3/qwen3_moe_bench.yaml
    CONV=configs/qwen3/ckpt_convert/qwen3_moe_convert.yaml
    DTYPE=bf16 TP=4 EP=8 TITLE="HF BF16 -> MCore TP4 EP8 ETP1 grouped (Qwen3-MoE-shaped, 128 experts)" ;;
  *) echo "CKB_BENCH_MODEL: unknown model '$MODEL' (deepseek_v3 or qwen3_moe)" >&2; exit 2 ;;
esac
cmake --build "$BUILD" --target ckbridge_convert make_tiny_checkpoint -j"$(nproc)" >/dev/null
CONVERTER=${CKB_BENCH_CONVERTER:-$BIN/ckbridge_convert}
mkdir -p "$WORK"
if [[ ! -f $WORK/hf/config.json ]]; then
  rm -rf "$WORK/hf"
  echo "generating the benchmark checkpoint..."
  "$BIN/deepseek_v3_make_tiny" --model "$MODEL" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf" --dtype "$DTYPE" --max_shard_size 1GB
fi
SRC_BYTES=$(du -sb "$WORK/hf" | cut -f1)
LARGEST=$(python3 - "$WORK/hf" <<'PY'
import json, struct, sys, glob
m = 0
for f in glob.glob(sys.argv[1] + "/*.safetensors"):
    with open(f, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        h = json.loads(fh.read(n))
    for k, v in h.items():
        if k != "__metadata__":
            m = max(m, v["data_offsets"][1] - v["data_offsets"][0])
print(m)
PY
)

measure() {  # measure <label> <command...>: prints "label seconds peak_rss_kb peak_rss_anon_mb"
  local label=$1
  shift
  sync
  local t0 t1 tpid cpid
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$WORK/rss.txt" "$@" >/dev/null 2>"$WORK/err.txt" &
  tpid=$!
  # RssAnon (anonymous memory, what the goal bounds) apart from mapped file pages, sampled
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
  echo "$label $(echo "$t1 - $t0" | bc -l) $(cat "$WORK/rss.txt") $(awk 'BEGIN{m=0} {if ($2 > m) m = $2} END{print m}' "$WORK/mem.txt")"
}

rm -rf "$WORK/cp" "$WORK/out"
cat "$WORK"/hf/*.safetensors >/dev/null  # warm the page cache for every contender alike
read -r _ CP_S CP_RSS _ < <(measure cp cp -r "$WORK/hf" "$WORK/cp")
rm -rf "$WORK/cp"
rows=()
for w in 1 2 4; do
  [[ $w -gt $(($(nproc) * 2)) ]] && continue
  rm -rf "$WORK/out"
  read -r _ S RSS ANON < <(measure "w$w" "$CONVERTER" --load_platform huggingface --save_platform mcore \
    --config_file "$CFG" --convert_file "$CONV" --load_ckpt_path "$WORK/hf" --save_ckpt_path "$WORK/out" \
    --tensor_model_parallel_size "$TP" --expert_parallel_size "$EP" --expert_tensor_parallel_size 1 --moe-grouped-gemm \
    --safetensors --max_workers "$w" -q)
  OUT_BYTES=$(du -sb "$WORK/out" | cut -f1)
  rows+=("$(printf '%-26s %8.2f %8.2f %8.2fx %10.0f %10.0f %8s' "convert --max_workers $w" "$S" \
    "$(echo "$OUT_BYTES / $S / 1000000000" | bc -l)" "$(echo "$S / $CP_S" | bc -l)" "$(echo "$RSS / 1024" | bc -l)" \
    "$ANON" "$(echo "$ANON * 1000000 <= 1000000000 + 2 * $LARGEST" | bc -l | sed 's/1/yes/;s/0/NO/')")")
done
rm -rf "$WORK/out"
echo
echo "$TITLE, $(basename "$CONVERTER"); source $(echo "$SRC_BYTES / 1000000000" | bc -l | cut -c1-5) GB, largest tensor $(echo "$LARGEST / 1000000" | bc -l | cut -c1-6) MB, $(nproc) cores"
printf '%-26s %8s %8s %9s %10s %10s %8s\n' "run" "seconds" "GB/s" "vs cp" "peakRSS MB" "RssAnon MB" "mem goal"
printf '%-26s %8.2f %8.2f %8.2fx %10.0f %10s %8s\n' "cp -r (baseline)" "$CP_S" "$(echo "$SRC_BYTES / $CP_S / 1000000000" | bc -l)" 1 "$(echo "$CP_RSS / 1024" | bc -l)" "-" "-"
printf '%s\n' "${rows[@]}"
echo "goals: time <= 1.5x cp; anonymous memory (peak RssAnon, sampled every 0.1 s) <= 1 GB + 2 x largest tensor."
echo "peak RSS (VmHWM) also counts the memory-mapped source pages (page cache the kernel can drop)."

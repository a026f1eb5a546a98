#!/usr/bin/env bash
# A/B timing of two converter builds on one benchmark checkpoint, interleaved in the same run so
# both meet the same machine state (page cache, dirty-page write-back, other load): for each round,
# each build converts HF -> MCore with --max_workers W (the order alternating between rounds), the
# output removed and `sync`ed before each, and the time including a final `sync` (the bytes on
# disk, as bench_convert.sh counts them). Prints every run and the medians of wall, user and sys.
#   CKB_BENCH_MODEL=deepseek_v3 (default) | qwen3_moe: as bench_convert.sh (run it once first to
#   generate the checkpoint in WORK/hf).
# Usage: bench/ab_convert.sh A_CONVERTER B_CONVERTER WORK [rounds=5] [workers=2]
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 WORK=$3 ROUNDS=${4:-5} W=${5:-2}
case ${CKB_BENCH_MODEL:-deepseek_v3} in
  deepseek_v3) CFG=configs/deepseek_v3/deepseek_v3_bench.yaml CONV=configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml TP=8 ;;
  qwen3_moe) CFG=configs/qwen3/qwen3_moe_bench.yaml CONV=configs/qwen3/ckpt_convert/qwen3_moe_convert.yaml TP=4 ;;
  *) echo "CKB_BENCH_MODEL: deepseek_v3 or qwen3_moe" >&2; exit 2 ;;
esac
[[ -f $WORK/hf/config.json ]] || { echo "$WORK/hf: no benchmark checkpoint (run bench/bench_convert.sh with this work dir first)" >&2; exit 2; }
cat "$WORK"/hf/*.safetensors >/dev/null
one() {  # one <label> <converter>: prints "label wall user sys"
  rm -rf "$WORK/ab_out"
  sync
  sleep 1
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o "$WORK/ab_time.txt" "$2" --load_platform huggingface --save_platform mcore \
    --config_file "$CFG" --convert_file "$CONV" --load_ckpt_path "$WORK/hf" --save_ckpt_path "$WORK/ab_out" \
    --tensor_model_parallel_size "$TP" --expert_parallel_size 8 --expert_tensor_parallel_size 1 --moe-grouped-gemm \
    --safetensors --max_workers "$W" -q >/dev/null 2>"$WORK/ab_err.txt" || { cat "$WORK/ab_err.txt"; exit 1; }
  sync
  t1=$(date +%s.%N)
  echo "$1 $(echo "$t1 - $t0" | bc -l) $(cat "$WORK/ab_time.txt")"
}
rows=()
for r in $(seq 1 "$ROUNDS"); do
  if (( r % 2 )); then rows+=("$(one A "$A")" "$(one B "$B")"); else rows+=("$(one B "$B")" "$(one A "$A")"); fi
done
rm -rf "$WORK/ab_out"
printf '%s\n' "${rows[@]}" | awk '{printf "%s  wall %6.2f s  user %6.2f s  sys %6.2f s\n", $1, $2, $3, $4}'
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
for who in A B; do
  printf '%s median of %d: wall %.2f s, user %.2f s, sys %.2f s  (%s)\n' "$who" "$ROUNDS" \
    "$(printf '%s\n' "${rows[@]}" | awk -v w=$who '$1 == w {print $2}' | median)" \
    "$(printf '%s\n' "${rows[@]}" | awk -v w=$who '$1 == w {print $3}' | median)" \
    "$(printf '%s\n' "${rows[@]}" | awk -v w=$who '$1 == w {print $4}' | median)" "$( [[ $who == A ]] && echo "$A" || echo "$B")"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); --max_workers $W, $(nproc) cores"

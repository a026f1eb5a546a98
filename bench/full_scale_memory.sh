#!/usr/bin/env bash
# Memory of a real conversion at full scale: HF FP8 -> MCore (LoongForge's example layout, TP8 PP8
# EP32 ETP1, custom 8,7,8,8,8,8,8,6, grouped experts) of DeepSeek-V3 671B made of sparse files
# (tests/tools/make_sparse_checkpoint.py: exact headers, data as holes; 20 MB of disk). Samples the
# converter's RssAnon / RssFile / VmHWM every few seconds and compares the peak RssAnon with the
# anonymous-memory bound the plan prints (1 GB + 2 x largest tensor).
# The output is real data (holes are read as zeros and written as zeros, ~0.8 TB in all), so the
# run is stopped after SECONDS (default 60), or earlier when the output reaches MAX_OUT_GB
# (default 25) or the free disk space falls below MIN_FREE_GB (default 20); the output is removed.
# Usage: bench/full_scale_memory.sh [build-dir] [work-dir] [seconds] [max-out-GB] [workers]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-${TMPDIR:-/tmp}/ckbridge-full-scale}
SECS=${3:-60}
MAX_OUT_GB=${4:-25}
WORKERS=${5:-2}
MIN_FREE_GB=${MIN_FREE_GB:-20}
INTERVAL=${INTERVAL:-3}
BIN=$BUILD/examples/ckbridge_convert
[[ -x $BIN ]] || { echo "build ckbridge_convert first ($BIN)"; exit 1; }
mkdir -p "$WORK"
SRC=$WORK/dsv3-sparse
OUT=$WORK/out
if [[ ! -f $SRC/model.safetensors.index.json ]]; then
  rm -rf "$SRC"
  python3 tests/tools/make_sparse_checkpoint.py --model deepseek_v3 --out "$SRC"
fi
rm -rf "$OUT"
free_gb() { df -B1 --output=avail "$WORK" | tail -1 | awk '{printf "%.1f", $1 / 1e9}'; }
echo "source: $(du -sh "$SRC" | cut -f1) on disk; free disk $(free_gb) GB; stop after ${SECS}s, ${MAX_OUT_GB} GB of output or below ${MIN_FREE_GB} GB free"
ARGS=(--load_platform=huggingface --save_platform=mcore --config_file=configs/deepseek_v3/deepseek_v3.yaml
  --convert_file=configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml --load_ckpt_path="$SRC"
  --save_ckpt_path="$OUT" --safetensors --tensor_model_parallel_size=8 --pipeline_model_parallel_size=8
  --expert_parallel_size=32 --expert_tensor_parallel_size=1 --custom_pipeline_layers=8,7,8,8,8,8,8,6
  --moe-grouped-gemm --max_workers="$WORKERS")
"$BIN" "${ARGS[@]}" --dry-run > "$WORK/plan.out"
grep '^plan:\|^memory' "$WORK/plan.out"
BOUND=$(sed -n 's/^plan: anonymous memory bound \([0-9.]*\) MB.*/\1/p' "$WORK/plan.out")
"$BIN" "${ARGS[@]}" -q > "$WORK/convert.out" 2>&1 &
PID=$!
cleanup() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT
bench/sample_memory.sh "$PID" "$INTERVAL" > "$WORK/samples.txt" &
SAMPLER=$!
T0=$(date +%s)
why="ran ${SECS}s"
while kill -0 "$PID" 2>/dev/null; do
  sleep 1
  el=$(($(date +%s) - T0))
  out_gb=$(du -sB1 "$OUT" 2>/dev/null | awk '{printf "%.1f", $1 / 1e9}' || true)
  if ((el >= SECS)); then break; fi
  if (($(echo "${out_gb:-0} >= $MAX_OUT_GB" | bc -l))); then why="output reached ${out_gb} GB after ${el}s"; break; fi
  if (($(echo "$(free_gb) < $MIN_FREE_GB" | bc -l))); then why="free disk below ${MIN_FREE_GB} GB after ${el}s"; break; fi
done
out_gb=$(du -sB1 "$OUT" 2>/dev/null | awk '{printf "%.1f", $1 / 1e9}' || true)
kill "$PID" 2>/dev/null || true
wait "$PID" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
echo "stopped: $why; ${out_gb} GB written (removed)"
echo
printf '%8s %12s %12s %12s\n' seconds "RssAnon MB" "RssFile MB" "VmHWM MB"
awk '{printf "%8s %12s %12s %12s\n", $1, $2, $3, $4}' "$WORK/samples.txt"
PEAK=$(awk 'BEGIN{m=0} {if ($2 > m) m = $2} END{print m}' "$WORK/samples.txt")
echo
echo "peak RssAnon ${PEAK} MB; bound the plan prints ${BOUND} MB: $(echo "$PEAK <= $BOUND" | bc -l | sed 's/1/within/;s/0/EXCEEDED/')"

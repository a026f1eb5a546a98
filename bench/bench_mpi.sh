#!/usr/bin/env bash
# Conversion over an MPI job (--distributed_convert): HF FP8 -> MCore (TP8, EP8, ETP1, grouped
# experts) of the benchmark checkpoint (configs/deepseek_v3/deepseek_v3_bench.yaml, ~5.5 GB, as
# bench/bench_convert.sh) with `mpirun -np 1` and `-np 2` (one worker thread per process, and one
# process with two threads for comparison), against `cp -r` of the same input in the same run.
# Prints the wall time of each job, its GB/s and ratio to cp, and each rank's own rate (bytes it
# wrote / its own writing time), the figures docs/scaling.md models larger jobs with.
# Usage: bench/bench_mpi.sh [build-dir] [work-dir]   (work-dir needs ~3x the checkpoint size)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-${TMPDIR:-/tmp}/ckbridge-bench-convert}
BIN=$BUILD/examples
CFG=configs/deepseek_v3/deepseek_v3_bench.yaml
CONV=configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml
command -v mpirun >/dev/null || { echo "mpirun not found (scripts/setup.sh installs openmpi-bin)"; exit 1; }
cmake --build "$BUILD" --target ckbridge_convert make_tiny_checkpoint -j"$(nproc)" >/dev/null
grep -q "CKBRIDGE_HAVE_MPI:INTERNAL=ON" "$BUILD/CMakeCache.txt" || { echo "$BUILD was configured without MPI (CKBRIDGE_MPI)"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
mkdir -p "$WORK"
if [[ ! -f $WORK/hf/config.json ]]; then
  rm -rf "$WORK/hf"
  echo "generating the benchmark checkpoint..."
  "$BIN/deepseek_v3_make_tiny" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf" --dtype fp8 --max_shard_size 1GB
fi
SRC_BYTES=$(du -sb "$WORK/hf" | cut -f1)
ARGS=(--load_platform huggingface --save_platform mcore --config_file "$CFG" --convert_file "$CONV"
      --load_ckpt_path "$WORK/hf" --save_ckpt_path "$WORK/out" --tensor_model_parallel_size 8 --expert_parallel_size 8
      --expert_tensor_parallel_size 1 --moe-grouped-gemm --safetensors -q)
secs() {  # secs <command...>: wall seconds (output in $WORK/log.txt)
  sync
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$WORK/log.txt" 2>&1 || { cat "$WORK/log.txt"; exit 1; }
  sync
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
rm -rf "$WORK/cp" "$WORK/out"
cat "$WORK"/hf/*.safetensors >/dev/null  # warm the page cache for every contender alike
CP_S=$(secs cp -r "$WORK/hf" "$WORK/cp")
rm -rf "$WORK/cp"
rows=() ranks=()
for spec in "1 1" "1 2" "2 1"; do
  read -r n w <<<"$spec"
  rm -rf "$WORK/out"
  S=$(secs mpirun --oversubscribe -np "$n" "$BIN/ckbridge_convert" "${ARGS[@]}" --max_workers "$w" --distributed_convert)
  OUT_BYTES=$(du -sb "$WORK/out" | cut -f1)
  rows+=("$(printf '%-36s %8.2f %8.2f %8.2fx' "mpirun -np $n, --max_workers $w" "$S" \
    "$(echo "$OUT_BYTES / $S / 1000000000" | bc -l)" "$(echo "$S / $CP_S" | bc -l)")")
  while read -r line; do ranks+=("  np $n w $w  $line"); done < <(grep '^rank [0-9]*:' "$WORK/log.txt")
done
rm -rf "$WORK/out"
echo
echo "HF FP8 -> MCore TP8 EP8 ETP1 grouped; source $(echo "$SRC_BYTES / 1000000000" | bc -l | cut -c1-5) GB, $(nproc) cores, warm page cache"
printf '%-36s %8s %8s %9s\n' "run" "seconds" "GB/s" "vs cp"
printf '%-36s %8.2f %8.2f %8.2fx\n' "cp -r (baseline)" "$CP_S" "$(echo "$SRC_BYTES / $CP_S / 1000000000" | bc -l)" 1
printf '%s\n' "${rows[@]}"
echo "per rank (its own files and writing time):"
printf '%s\n' "${ranks[@]}"

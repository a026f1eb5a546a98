#!/usr/bin/env bash
# Runs prebuilt fuzz targets (the binaries run_fuzzers.sh builds, copied to another machine with
# the shared libraries they link) side by side: P processes per target sharing one corpus folder,
# for SECONDS each, then prints per-target totals (executions, coverage, corpus size, findings).
#
#   tests/fuzz/run_prebuilt.sh BIN_DIR LIB_DIR SEED_DIR OUT_DIR SECONDS [P]
#   BIN_DIR holds fuzz_<name>; SEED_DIR/<name>/ the seed corpora; OUT_DIR/<name>/ gets the corpus,
#   the logs and any artifacts. LIB_DIR (may be empty) goes first on LD_LIBRARY_PATH.
set -uo pipefail
bin=$1 lib=$2 seeds=$3 out=$4 secs=$5 procs=${6:-1}
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
pids=()
for b in "$bin"/fuzz_*; do
  n=$(basename "$b"); n=${n#fuzz_}
  mkdir -p "$out/$n/corpus" "$out/$n/artifacts"
  for ((k = 0; k < procs; ++k)); do
    "$b" -max_total_time="$secs" -timeout=30 -print_final_stats=1 -artifact_prefix="$out/$n/artifacts/" \
      "$out/$n/corpus" "$seeds/$n" >"$out/$n/log$k.txt" 2>&1 &
    pids+=($!)
  done
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for d in "$out"/*/; do
  n=$(basename "$d")
  execs=$(grep -ho 'stat::number_of_executed_units: *[0-9]*' "$d"/log*.txt | grep -o '[0-9]*$' | awk '{s += $1} END {print s + 0}')
  cov=$(for l in "$d"/log*.txt; do grep -o 'cov: [0-9]*' "$l" | tail -1 | grep -o '[0-9]*'; done | sort -n | tail -1)
  echo "fuzz_$n: $procs x ${secs}s, ${execs:-0} executions, max cov ${cov:-?}, corpus $(ls "$d/corpus" | wc -l)," \
       "findings $(ls "$d/artifacts" | wc -l) $(ls "$d/artifacts" | head -5 | tr '\n' ' ')"
done
exit $status

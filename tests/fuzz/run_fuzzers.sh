#!/usr/bin/env bash
# Builds every tests/fuzz/fuzz_<name>.cpp with clang + libFuzzer (ASan + UBSan) into build-fuzz/
# and runs each for N seconds from its seed corpus tests/fuzz/corpus/<name>/ (read only: new
# inputs go to build-fuzz/fuzz-work/<name>/corpus, crashes to .../artifacts).
#
#   tests/fuzz/run_fuzzers.sh [SECONDS] [NAME...]     SECONDS default 60; NAMEs default: all
#   env: CKB_FUZZ_BUILD_DIR (default <repo>/build-fuzz), JOBS (build parallelism, default 2),
#        CKB_FUZZ_PARALLEL=1 (run the targets side by side), CKB_FUZZ_TIMEOUT (seconds per input before
#        libFuzzer reports a hang, default 30; its clock is wall time, so raise it on a loaded machine)
# Exit status is non-zero if any target fails to build or finds a crash.
set -uo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-60}
[ $# -gt 0 ] && shift
build=${CKB_FUZZ_BUILD_DIR:-$src/build-fuzz}

mkdir -p "$build"
CC=clang CXX=clang++ cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCKBRIDGE_BUILD_FUZZ=ON -DCKBRIDGE_CUDA=OFF -DCKBRIDGE_BUILD_EXAMPLES=OFF -DCKBRIDGE_BUILD_BENCH=OFF \
  >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }

if [ $# -gt 0 ]; then
  names=("$@")
else
  names=()
  for f in "$src"/tests/fuzz/fuzz_*.cpp; do
    n=$(basename "$f" .cpp); names+=("${n#fuzz_}")
  done
fi

status=0
built=()
for n in "${names[@]}"; do
  echo "=== fuzz_$n: build"
  if ! cmake --build "$build" --target "fuzz_$n" -j "${JOBS:-2}" >"$build/fuzz_$n.build.log" 2>&1; then
    tail -30 "$build/fuzz_$n.build.log"; status=1; continue
  fi
  built+=("$n")
done

run_one() {  # run_one NAME: one target for $secs seconds; prints its result, returns non-zero on a finding
  local n=$1 work="$build/fuzz-work/$1" seeds=()
  mkdir -p "$work/corpus" "$work/artifacts"
  [ -d "$src/tests/fuzz/corpus/$n" ] && seeds=("$src/tests/fuzz/corpus/$n")
  if "$build/tests/fuzz/fuzz_$n" -max_total_time="$secs" -timeout="${CKB_FUZZ_TIMEOUT:-30}" -print_final_stats=1 \
       -artifact_prefix="$work/artifacts/" "$work/corpus" "${seeds[@]}" >"$work/log.txt" 2>&1; then
    echo "=== fuzz_$n: ok ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$work/log.txt" | grep -o '[0-9]*$') runs," \
         "$(grep -o 'cov: [0-9]*' "$work/log.txt" | tail -1), corpus $(ls "$work/corpus" | wc -l) inputs)"
  else
    echo "=== fuzz_$n: FAILED (log: $work/log.txt, inputs: $work/artifacts/)"
    tail -40 "$work/log.txt"; return 1
  fi
}

# CKB_FUZZ_PARALLEL=1 runs the targets side by side (a long run of every target, e.g. 1800 s each,
# then takes 1800 s of wall time instead of 1800 s per target).
if [ "${CKB_FUZZ_PARALLEL:-0}" = 1 ]; then
  echo "=== running ${#built[@]} targets side by side, ${secs}s each"
  pids=()
  for n in "${built[@]}"; do run_one "$n" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
else
  for n in "${built[@]}"; do
    echo "=== fuzz_$n: run ${secs}s"
    run_one "$n" || status=1
  done
fi
exit $status

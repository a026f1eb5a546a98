#!/usr/bin/env bash
# Conversion over an MPI job (--distributed_convert, issue 14): `mpirun -np N` for N = 1..4 over
# HF -> MCore, MCore -> HF and MCore -> MCore from FP8 and BF16 sources gives the bytes of the
# single-process run (every file, and every file's and tensor's hash in the manifest); a rank that
# fails makes every rank exit non-zero with that rank's message and leaves no tracker; a rank killed mid-run
# fails the job with no tracker, and a re-run with another N resumes (skipping the files any rank
# finished) to the same bytes. A finished output is "already complete"; --dry-run prints each rank's
# share; a job without --distributed_convert is refused.
# Usage: mpi_convert.sh <build-dir> <work-dir> <CKBRIDGE_MPI ON/OFF>. Exits 77 (skipped) when the
# converter was built without MPI or mpirun is missing.
set -uo pipefail
BUILD=$1
WORK=$2
if [[ ${3:-OFF} != ON ]]; then echo "SKIP: the converter was built without MPI (CKBRIDGE_MPI off)"; exit 77; fi
if ! command -v mpirun >/dev/null; then echo "SKIP: mpirun not found (scripts/setup.sh installs openmpi-bin)"; exit 77; fi
rm -rf "$WORK"
mkdir -p "$WORK"
BIN=$(cd "$BUILD" && pwd)/examples
WORK=$(cd "$WORK" && pwd)
CFG=$PWD/configs/deepseek_v3/deepseek_v3_tiny.yaml
CONV=$PWD/configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml
# Open MPI refuses root without these; shared memory between the ranks of this one machine.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
MPIRUN=(mpirun --oversubscribe)
pass=0 fail=0
check() {  # check <name> <condition-exit-status>
  if [[ $2 -eq 0 ]]; then pass=$((pass + 1)); echo "ok   $1"; else fail=$((fail + 1)); echo "FAIL $1"; fi
}
args() {  # args <from> <to> <src> <dst> [flags]: the converter's arguments
  local from=$1 to=$2 src=$3 dst=$4
  shift 4
  echo "--load_platform $from --save_platform $to --config_file $CFG --convert_file $CONV --load_ckpt_path $src"
  echo "--save_ckpt_path $dst --hf_max_shard_size 1MB --max_workers 2 -q $*"
}
run1() { "$BIN/ckbridge_convert" $(args "$@"); }                                  # one process
runN() { local n=$1; shift; "${MPIRUN[@]}" -np "$n" "$BIN/ckbridge_convert" $(args "$@") --distributed_convert; }
same() {  # same <ref> <out>: every file byte-identical, and the manifests list the same hashes
  diff -r -x ckbridge-manifest.json "$1" "$2" >/dev/null || return 1
  python3 - "$1/ckbridge-manifest.json" "$2/ckbridge-manifest.json" <<'PY' || return 1
import json, sys
a, b = (json.load(open(p))["files"] for p in sys.argv[1:])
sys.exit(0 if a == b and len(a) > 0 else 1)
PY
}

"$BIN/deepseek_v3_make_tiny" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf_fp8" --dtype fp8 >/dev/null || exit 1
"$BIN/deepseek_v3_make_tiny" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf_bf16" --dtype bf16 >/dev/null || exit 1
L=(--tensor_model_parallel_size 2 --pipeline_model_parallel_size 2 --expert_parallel_size 2 --moe-grouped-gemm)
# the single-process references: name, from, to, source, flags
cases=()
for d in fp8 bf16; do
  run1 huggingface mcore "$WORK/hf_$d" "$WORK/ref/${d}_hf_mcore" "${L[@]}" >/dev/null 2>&1 || { echo "FAIL reference HF->MCore $d"; exit 1; }
  run1 mcore huggingface "$WORK/ref/${d}_hf_mcore" "$WORK/ref/${d}_mcore_hf" >/dev/null 2>&1 || { echo "FAIL reference MCore->HF $d"; exit 1; }
  run1 mcore mcore "$WORK/ref/${d}_hf_mcore" "$WORK/ref/${d}_mcore_mcore" --expert_parallel_size 4 >/dev/null 2>&1 ||
    { echo "FAIL reference MCore->MCore $d"; exit 1; }
  cases+=("${d}_hf_mcore huggingface mcore $WORK/hf_$d ${L[*]}"
          "${d}_mcore_hf mcore huggingface $WORK/ref/${d}_hf_mcore"
          "${d}_mcore_mcore mcore mcore $WORK/ref/${d}_hf_mcore --expert_parallel_size 4")
done

for n in 1 2 3 4; do
  for c in "${cases[@]}"; do
    read -r name from to src flags <<<"$c"
    out=$WORK/n$n/$name
    msg=$(runN "$n" "$from" "$to" "$src" "$out" $flags 2>&1)
    rc=$?
    [[ $rc -eq 0 ]] && same "$WORK/ref/$name" "$out"; check "np $n $name: byte-identical to one process (exit $rc)" $?
    [[ $rc -eq 0 ]] || echo "$msg" | tail -5
  done
done
# the same job over its finished output: "already complete" (rank 0 checks the manifest), untouched
before=$(find "$WORK/n4/fp8_hf_mcore" -type f -printf '%T@ %s %p\n' | sort | md5sum)
msg=$(runN 2 huggingface mcore "$WORK/hf_fp8" "$WORK/n4/fp8_hf_mcore" "${L[@]}" 2>&1)
rc=$?
[[ $rc -eq 0 && $msg == *"already complete: "*" files verified"* &&
   $(find "$WORK/n4/fp8_hf_mcore" -type f -printf '%T@ %s %p\n' | sort | md5sum) == "$before" ]]
check "np 2 over a finished output: already complete, nothing rewritten (exit $rc)" $?
# each rank's share is reported (files, bytes) and the shares add up to the plan
msg=$("${MPIRUN[@]}" -np 3 "$BIN/ckbridge_convert" $(args huggingface mcore "$WORK/hf_fp8" "$WORK/dry" "${L[@]}") \
  --distributed_convert --dry-run 2>&1)
rc=$?
files=$(echo "$msg" | sed -n 's/^rank [0-9]*: \([0-9]*\) files, .*/\1/p' | paste -sd+ | bc)
planned=$(echo "$msg" | sed -n 's/^plan: \([0-9]*\) output files.*/\1/p')
[[ $rc -eq 0 && $(echo "$msg" | grep -c '^rank [0-2]: [0-9]* files, [0-9.]* [kMG]B$') -eq 3 && $files -eq $planned &&
   ! -e $WORK/dry ]]
check "np 3 --dry-run: one line per rank, $files files of $planned, nothing written (exit $rc)" $?
# a job without --distributed_convert: refused on every rank, nothing written
msg=$("${MPIRUN[@]}" -np 2 "$BIN/ckbridge_convert" $(args huggingface mcore "$WORK/hf_fp8" "$WORK/nodist" "${L[@]}") 2>&1)
rc=$?
[[ $rc -ne 0 && $(echo "$msg" | grep -c 'without --distributed_convert') -eq 2 && ! -e $WORK/nodist ]]
check "np 2 without --distributed_convert: refused on both ranks (exit $rc)" $?

# one rank fails (rank 1 may write only 64 KiB per file: EFBIG): every rank exits non-zero with its
# message, no tracker. (TCP between the ranks here: shared memory needs a larger file at MPI_Init.)
out=$WORK/fail
msg=$(OMPI_MCA_btl=self,tcp "${MPIRUN[@]}" -np 1 "$BIN/ckbridge_convert" $(args huggingface mcore "$WORK/hf_fp8" "$out" "${L[@]}") --distributed_convert : \
  -np 1 bash -c "trap '' XFSZ; ulimit -f 64; exec $BIN/ckbridge_convert $(args huggingface mcore "$WORK/hf_fp8" "$out" "${L[@]}" | tr '\n' ' ') --distributed_convert" : \
  -np 1 "$BIN/ckbridge_convert" $(args huggingface mcore "$WORK/hf_fp8" "$out" "${L[@]}") --distributed_convert 2>&1)
rc=$?
[[ $rc -ne 0 && $(echo "$msg" | grep -c 'error: rank 1: .*File too large') -eq 3 && ! -e $out/latest_checkpointed_iteration.txt &&
   ! -e $out/ckbridge-manifest.json ]]
check "np 3, rank 1 fails: all 3 ranks exit with rank 1's message, no tracker (exit $rc): $(echo "$msg" | grep -m1 'error: rank')" $?
msg=$(runN 2 huggingface mcore "$WORK/hf_fp8" "$out" "${L[@]}" 2>&1)
rc=$?
[[ $rc -eq 0 ]] && same "$WORK/ref/fp8_hf_mcore" "$out"; check "  re-run with np 2 completes, byte-identical (exit $rc)" $?

# one rank killed mid-run (SIGKILL after a third of its bytes): the job fails, no tracker / index;
# a re-run with another N resumes to the same bytes
kill_case() {  # kill_case <name> <n-killed-job> <n-rerun> <from> <to> <src> <finished-marker> [flags]
  local name=$1 n=$2 m=$3 from=$4 to=$5 src=$6 marker=$7
  shift 7
  local out=$WORK/kill_$name bytes
  bytes=$(du -sb "$WORK/ref/$name" | cut -f1)
  local a
  a=$(args "$from" "$to" "$src" "$out" "$@" | tr '\n' ' ')
  local apps=(-np 1 "$BIN/ckbridge_convert" $a --distributed_convert : -np 1 env CKBRIDGE_TEST_KILL_AFTER_BYTES=$((bytes / n / 3)) \
    "$BIN/ckbridge_convert" $a --distributed_convert)
  [[ $n -gt 2 ]] && apps+=(: -np $((n - 2)) "$BIN/ckbridge_convert" $a --distributed_convert)
  "${MPIRUN[@]}" "${apps[@]}" >/dev/null 2>&1
  local rc=$?
  [[ $rc -ne 0 && ! -e $out/$marker && ! -e $out/ckbridge-manifest.json && -d $out/.ckbridge-run ]]
  check "$name: np $n, rank 1 killed: the job fails, no $marker (exit $rc)" $?
  msg=$(runN "$m" "$from" "$to" "$src" "$out" "$@" 2>&1)
  rc=$?
  [[ $rc -eq 0 ]] && same "$WORK/ref/$name" "$out"; check "  re-run with np $m completes, byte-identical (exit $rc)" $?
  echo "$msg" | grep -q 'resuming an interrupted run .* ([1-9][0-9]* files already complete)'
  check "  ... resuming the files the killed job finished: $(echo "$msg" | grep -o '([0-9]* files already complete)')" $?
}
kill_case fp8_hf_mcore 3 2 huggingface mcore "$WORK/hf_fp8" latest_checkpointed_iteration.txt "${L[@]}"
kill_case bf16_mcore_hf 2 4 mcore huggingface "$WORK/ref/bf16_hf_mcore" model.safetensors.index.json

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]

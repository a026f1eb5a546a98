#!/usr/bin/env bash
# Kill-and-resume: a conversion killed with SIGKILL at several points (including twice in a row,
# and in both directions) and started again with the same arguments must produce output
# byte-identical to an uninterrupted run; different arguments over a partial output, and a
# directory holding other files, must be refused without touching them.
# Usage: kill_resume.sh <build-dir> <work-dir>
set -uo pipefail
BUILD=$1
WORK=$2
BIN=$BUILD/examples
CFG=configs/deepseek_v3/deepseek_v3_tiny.yaml
CONV=configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml
rm -rf "$WORK"
mkdir -p "$WORK"
pass=0 fail=0
check() {  # check <name> <condition-exit-status>
  if [[ $2 -eq 0 ]]; then pass=$((pass + 1)); echo "ok   $1"; else fail=$((fail + 1)); echo "FAIL $1"; fi
}
"$BIN/deepseek_v3_make_tiny" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf" --dtype fp8 >/dev/null || exit 1
run() {  # run <from> <to> <src> <dst> [flags]
  local from=$1 to=$2 src=$3 dst=$4
  shift 4
  "$BIN/deepseek_v3_convert" --load_platform "$from" --save_platform "$to" --config_file "$CFG" --convert_file "$CONV" \
    --load_ckpt_path "$src" --save_ckpt_path "$dst" --hf_max_shard_size 1MB -q "$@"
}
L=(--tensor_model_parallel_size 2 --pipeline_model_parallel_size 2 --expert_parallel_size 2 --moe-grouped-gemm)
run huggingface mcore "$WORK/hf" "$WORK/ref_mcore" "${L[@]}" >/dev/null 2>&1 || { echo "FAIL reference run HF->MCore"; exit 1; }
run mcore huggingface "$WORK/ref_mcore" "$WORK/ref_hf" >/dev/null 2>&1 || { echo "FAIL reference run MCore->HF"; exit 1; }
total=$(du -sb "$WORK/ref_mcore/release" | cut -f1)

for frac in 5 30 55 80 90; do
  kill_at=$((total * frac / 100))
  rm -rf "$WORK/k"
  CKBRIDGE_TEST_KILL_AFTER_BYTES=$kill_at run huggingface mcore "$WORK/hf" "$WORK/k" "${L[@]}" >/dev/null 2>&1
  rc=$?
  [[ $rc -eq 137 ]]; check "HF->MCore killed at ${frac}% (exit $rc)" $?
  [[ ! -e $WORK/k/latest_checkpointed_iteration.txt ]]; check "  no tracker file before all parts exist" $?
  run huggingface mcore "$WORK/hf" "$WORK/k" "${L[@]}" >/dev/null 2>&1
  rc=$?
  [[ $rc -eq 0 ]]; check "  resumed run completes (exit $rc)" $?
  diff -r -x ckbridge-manifest.json "$WORK/ref_mcore" "$WORK/k" >/dev/null; check "  resumed output byte-identical" $?
done

# killed twice, then resumed. The kill threshold counts the bytes written by that run; the second
# run resumes with at least 3/4 of the bytes left, so a threshold of 1/2 is always reached.
rm -rf "$WORK/k"
CKBRIDGE_TEST_KILL_AFTER_BYTES=$((total / 4)) run huggingface mcore "$WORK/hf" "$WORK/k" "${L[@]}" >/dev/null 2>&1
rc=$?
[[ $rc -eq 137 ]]; check "HF->MCore first kill at 25% (exit $rc)" $?
CKBRIDGE_TEST_KILL_AFTER_BYTES=$((total / 2)) run huggingface mcore "$WORK/hf" "$WORK/k" "${L[@]}" >/dev/null 2>&1
rc=$?
[[ $rc -eq 137 ]]; check "  second kill after a further 50% of its own bytes (exit $rc)" $?
[[ ! -e $WORK/k/latest_checkpointed_iteration.txt ]]; check "  no tracker file after two kills" $?
run huggingface mcore "$WORK/hf" "$WORK/k" "${L[@]}" >/dev/null 2>&1
rc=$?
[[ $rc -eq 0 ]]; check "  third run completes (exit $rc)" $?
diff -r -x ckbridge-manifest.json "$WORK/ref_mcore" "$WORK/k" >/dev/null; check "HF->MCore killed twice, resumed: byte-identical" $?

# MCore -> HF direction
hf_total=$(du -sb "$WORK/ref_hf" | cut -f1)
rm -rf "$WORK/kh"
CKBRIDGE_TEST_KILL_AFTER_BYTES=$((hf_total / 2)) run mcore huggingface "$WORK/ref_mcore" "$WORK/kh" >/dev/null 2>&1
rc=$?
[[ $rc -eq 137 ]]; check "MCore->HF killed at 50% (exit $rc)" $?
[[ ! -e $WORK/kh/model.safetensors.index.json ]]; check "MCore->HF killed: no index before all shards exist" $?
run mcore huggingface "$WORK/ref_mcore" "$WORK/kh" >/dev/null 2>&1
rc=$?
[[ $rc -eq 0 ]]; check "  resumed run completes (exit $rc)" $?
diff -r -x ckbridge-manifest.json "$WORK/ref_hf" "$WORK/kh" >/dev/null; check "MCore->HF resumed: byte-identical" $?
"$BIN/ckbridge_verify" --manifest "$WORK/kh" >/dev/null; check "MCore->HF resumed: output matches its manifest" $?
"$BIN/ckbridge_verify" --manifest "$WORK/k" >/dev/null; check "HF->MCore resumed: output matches its manifest" $?

# the same command over a finished output: "already complete", exit 0, nothing rewritten
before=$(find "$WORK/k" -type f -exec md5sum {} + | sort | md5sum)
mtimes=$(find "$WORK/k" -type f -printf '%T@ %p\n' | sort | md5sum)
out=$(run huggingface mcore "$WORK/hf" "$WORK/k" "${L[@]}" 2>&1)
rc=$?
[[ $rc -eq 0 && $out == *"already complete: "*" files verified"* ]]; check "re-run of a finished conversion: exit 0, already complete (exit $rc)" $?
[[ $(find "$WORK/k" -type f -exec md5sum {} + | sort | md5sum) == "$before" &&
   $(find "$WORK/k" -type f -printf '%T@ %p\n' | sort | md5sum) == "$mtimes" ]]; check "  finished output untouched" $?
# a finished output whose file changed: the same command refuses, naming the file; --overwrite rewrites it
printf 'x' | dd of="$WORK/k/release/mp_rank_01_001_001/model_optim_rng.pt" bs=1 seek=4096 conv=notrunc 2>/dev/null
out=$(run huggingface mcore "$WORK/hf" "$WORK/k" "${L[@]}" 2>&1)
[[ $? -ne 0 && $out == *"mp_rank_01_001_001/model_optim_rng.pt"* ]]; check "re-run over a damaged finished output: refused, file named" $?
run huggingface mcore "$WORK/hf" "$WORK/k" "${L[@]}" --overwrite >/dev/null 2>&1
rc=$?
diff -r -x ckbridge-manifest.json "$WORK/ref_mcore" "$WORK/k" >/dev/null
[[ $rc -eq 0 && $? -eq 0 ]]; check "  --overwrite: rewritten byte-identical" $?
# other arguments over a finished output: refused without --overwrite
out=$(run huggingface mcore "$WORK/hf" "$WORK/k" --expert_parallel_size 4 2>&1)
[[ $? -ne 0 && $out == *"finished conversion made with other arguments"* ]]; check "other arguments over a finished output: refused" $?

# different arguments over a partial output: refused, partial output untouched
rm -rf "$WORK/k"
CKBRIDGE_TEST_KILL_AFTER_BYTES=$((total / 2)) run huggingface mcore "$WORK/hf" "$WORK/k" "${L[@]}" >/dev/null 2>&1
rc=$?
[[ $rc -eq 137 ]]; check "partial output for the different-arguments case (killed, exit $rc)" $?
before=$(find "$WORK/k" -type f -exec md5sum {} + | sort | md5sum)
msg=$(run huggingface mcore "$WORK/hf" "$WORK/k" "${L[@]}" --amax_epsilon 1e-4 2>&1 >/dev/null)
rc=$?
[[ $rc -ne 0 && $msg == *"partial output of a different conversion"* ]]; check "different arguments refused: $msg" $?
after=$(find "$WORK/k" -type f -exec md5sum {} + | sort | md5sum)
[[ $before == "$after" ]]; check "  partial output untouched" $?

# a directory with other content: refused
mkdir -p "$WORK/other" && echo keep >"$WORK/other/notes.txt"
msg=$(run huggingface mcore "$WORK/hf" "$WORK/other" "${L[@]}" 2>&1 >/dev/null)
rc=$?
[[ $rc -ne 0 && $msg == *"not empty"* && $(cat "$WORK/other/notes.txt") == keep ]]; check "non-empty directory refused" $?

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]

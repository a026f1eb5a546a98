#!/usr/bin/env bash
# Kill-and-resume: a conversion killed with SIGKILL at several points (including twice in a row,
# and in both directions) and started again with the same arguments must produce output
# byte-identical to an uninterrupted run; different arguments over a partial output, and a
# directory holding other files, must be refused without touching them. Also (issue 13): an empty
# or flag-like --save_ckpt_path, a second run into a directory another run is writing, a source
# edited between kill and re-run, flags that change only the rank files' args, a kill while the
# fingerprint was written, and a rank directory replaced by a symlink.
# Usage: kill_resume.sh <build-dir> <work-dir>
set -uo pipefail
BUILD=$1
WORK=$2
rm -rf "$WORK"
mkdir -p "$WORK"
BIN=$(cd "$BUILD" && pwd)/examples
WORK=$(cd "$WORK" && pwd)
CFG=$PWD/configs/deepseek_v3/deepseek_v3_tiny.yaml
CONV=$PWD/configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml
pass=0 fail=0
check() {  # check <name> <condition-exit-status>
  if [[ $2 -eq 0 ]]; then pass=$((pass + 1)); echo "ok   $1"; else fail=$((fail + 1)); echo "FAIL $1"; fi
}
"$BIN/deepseek_v3_make_tiny" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf" --dtype fp8 >/dev/null || exit 1
run() {  # run <from> <to> <src> <dst> [flags]
  local from=$1 to=$2 src=$3 dst=$4
  shift 4
  ${EXEC:-} "$BIN/ckbridge_convert" --load_platform "$from" --save_platform "$to" --config_file "$CFG" --convert_file "$CONV" \
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

# ---- issue 13
tree_sum() { find "$1" -type f -exec md5sum {} + 2>/dev/null | sort | md5sum; }
kill_half() {  # kill_half <src> <dst> [flags]: a partial output killed at 50 %
  local src=$1 dst=$2
  shift 2
  rm -rf "$dst"
  CKBRIDGE_TEST_KILL_AFTER_BYTES=$((total / 2)) run huggingface mcore "$src" "$dst" "$@" >/dev/null 2>&1
}

# F3: an empty --save_ckpt_path (would be the current directory) and a flag taken as the value.
mkdir -p "$WORK/cwd"
msg=$(cd "$WORK/cwd" && run huggingface mcore "$WORK/hf" "" "${L[@]}" 2>&1 >/dev/null)
rc=$?
[[ $rc -ne 0 && $msg == *"--save_ckpt_path: empty path"* && -z $(ls -A "$WORK/cwd") ]]
check "F3 empty --save_ckpt_path refused, nothing written: $msg" $?
msg=$(cd "$WORK/cwd" && "$BIN/ckbridge_convert" --load_platform huggingface --save_platform mcore --config_file "$CFG" \
  --convert_file "$CONV" --load_ckpt_path "$WORK/hf" --save_ckpt_path= --safetensors -q 2>&1 >/dev/null)
rc=$?
[[ $rc -ne 0 && $msg == *"looks like a flag"* && -z $(ls -A "$WORK/cwd") ]]
check "F3 --save_ckpt_path= --safetensors refused, nothing written: $msg" $?

# F4: a second run into a directory that a first run is writing fails at once, touching nothing;
# the first run then completes with the reference bytes.
rm -rf "$WORK/c"
# (EXEC=exec: the background subshell becomes the converter, so $! is the converter's pid)
EXEC=exec CKBRIDGE_TEST_STOP_AFTER_BYTES=$((total / 2)) run huggingface mcore "$WORK/hf" "$WORK/c" "${L[@]}" >/dev/null 2>&1 &
apid=$!
for _ in $(seq 600); do [[ $(ps -o stat= -p $apid 2>/dev/null) == T* ]] && break; sleep 0.05; done
[[ $(ps -o stat= -p $apid 2>/dev/null) == T* ]]; check "F4 first run stopped half-way (holding the lock)" $?
before=$(tree_sum "$WORK/c")
msg=$(run huggingface mcore "$WORK/hf" "$WORK/c" "${L[@]}" 2>&1 >/dev/null)
rc=$?
[[ $rc -ne 0 && $msg == *"another conversion is writing to this directory"* && $msg == *"$WORK/c"* ]]
check "F4 concurrent run, same arguments, refused: $msg" $?
msg=$(run huggingface mcore "$WORK/hf" "$WORK/c" "${L[@]}" --custom_pipeline_layers 3,1 2>&1 >/dev/null)
rc=$?
[[ $rc -ne 0 && $msg == *"another conversion is writing to this directory"* ]]
check "F4 concurrent run, other layout, refused" $?
after=$(tree_sum "$WORK/c")
[[ $before == "$after" ]]; check "F4   the refused runs touched nothing" $?
kill -CONT $apid
wait $apid
rc=$?
[[ $rc -eq 0 ]] && diff -r -x ckbridge-manifest.json "$WORK/ref_mcore" "$WORK/c" >/dev/null; check "F4   first run completed byte-identical (exit $rc)" $?

# F5: a source edited between the kill and the re-run (even with its mtime put back) is refused.
rm -rf "$WORK/hf5" && cp -r "$WORK/hf" "$WORK/hf5"
kill_half "$WORK/hf5" "$WORK/k5" "${L[@]}"
shard=$(ls "$WORK"/hf5/*.safetensors | head -1)
size=$(stat -c %s "$shard")
touch -r "$shard" "$WORK/stamp"
printf '\x7f\x7f\x7f\x7f' | dd of="$shard" bs=1 seek=$((size - 100)) conv=notrunc status=none
touch -r "$WORK/stamp" "$shard"
before=$(tree_sum "$WORK/k5")
msg=$(run huggingface mcore "$WORK/hf5" "$WORK/k5" "${L[@]}" 2>&1 >/dev/null)
rc=$?
[[ $rc -ne 0 && $msg == *"partial output of a different conversion"* && $msg == *"was 'source "* ]]
check "F5 source edited (mtime restored) after the kill: resume refused: $msg" $?
[[ $before == "$(tree_sum "$WORK/k5")" ]]; check "F5   partial output untouched" $?
cp "$WORK/hf/$(basename "$shard")" "$WORK/hf5/" && touch "$WORK/hf5/$(basename "$shard")"
msg=$(run huggingface mcore "$WORK/hf5" "$WORK/k5" "${L[@]}" 2>&1 >/dev/null)
[[ $? -ne 0 && $msg == *"source "* ]]; check "F5 source replaced by an identical copy (new mtime): refused" $?

# F6: flags that only change the rank files' args (the default split spelled out, another
# divisor giving the same padded vocabulary) are not the same conversion.
kill_half "$WORK/hf" "$WORK/k6" "${L[@]}"
before=$(tree_sum "$WORK/k6")
msg=$(run huggingface mcore "$WORK/hf" "$WORK/k6" "${L[@]}" --custom_pipeline_layers=2,2 2>&1 >/dev/null)
rc=$?
[[ $rc -ne 0 && $msg == *"partial output of a different conversion"* ]]
check "F6 --custom_pipeline_layers=2,2 (= the default split) over a partial output refused: $msg" $?
msg=$(run huggingface mcore "$WORK/hf" "$WORK/k6" "${L[@]}" --make_vocab_size_divisible_by 64 2>&1 >/dev/null)
rc=$?
[[ $rc -ne 0 && $msg == *"partial output of a different conversion"* ]]
check "F6 --make_vocab_size_divisible_by 64 (same padded vocabulary) refused" $?
[[ $before == "$(tree_sum "$WORK/k6")" ]]; check "F6   partial output untouched" $?
run huggingface mcore "$WORK/hf" "$WORK/k6" "${L[@]}" >/dev/null 2>&1
diff -r -x ckbridge-manifest.json "$WORK/ref_mcore" "$WORK/k6" >/dev/null; check "F6   the original arguments still resume, byte-identical" $?

# F7: a run killed while writing its fingerprint left only .ckbridge-run/fingerprint.tmp-*: the
# identical re-run starts afresh.
rm -rf "$WORK/k7" && mkdir -p "$WORK/k7/.ckbridge-run"
printf 'ckbridge run v2\nhalf a finger' >"$WORK/k7/.ckbridge-run/fingerprint.tmp-a1b2c3d4"
run huggingface mcore "$WORK/hf" "$WORK/k7" "${L[@]}" >/dev/null 2>&1
rc=$?
[[ $rc -eq 0 ]] && diff -r -x ckbridge-manifest.json "$WORK/ref_mcore" "$WORK/k7" >/dev/null; check "F7 leftover fingerprint.tmp-* does not block the re-run (exit $rc)" $?

# A rank directory of a partial output replaced by a symlink: refused, nothing written through it.
kill_half "$WORK/hf" "$WORK/k8" "${L[@]}"
rank=$(find "$WORK/k8/release" -mindepth 1 -maxdepth 1 -type d | sort | head -1)
rm -rf "$WORK/outside" && mv "$rank" "$WORK/outside" && ln -s "$WORK/outside" "$rank"
before=$(tree_sum "$WORK/outside")
msg=$(run huggingface mcore "$WORK/hf" "$WORK/k8" "${L[@]}" 2>&1 >/dev/null)
rc=$?
[[ $rc -ne 0 && $msg == *"symbolic link"* && $msg == *"$rank"* ]]; check "symlinked rank directory refused on resume: $msg" $?
[[ $before == "$(tree_sum "$WORK/outside")" ]]; check "  nothing written through the link" $?

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]

#!/usr/bin/env bash
# The README's main job: generate the built-in small DeepSeek-V3-architecture checkpoint (FP8 and
# BF16), convert HF -> MCore -> HF in a few layouts, and verify every output file is byte-identical
# to its source. Usage: round_trip.sh <build-dir> <work-dir> [--all]
# --all adds the full layout matrix (virtual pipeline stages, DualPipeV, layout strings with an
# MTP stage, first/last stage sizes, ETP != TP, MCore -> MCore resharding); ctest runs it.
set -euo pipefail
BUILD=${1:-build}
WORK=${2:-$BUILD/demo}
ALL=${3:-}
BIN=$BUILD/examples
CFG=configs/deepseek_v3/deepseek_v3_tiny.yaml
CONV=configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml
rm -rf "$WORK"
mkdir -p "$WORK"

"$BIN/deepseek_v3_make_tiny" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf_fp8" --dtype fp8
"$BIN/deepseek_v3_make_tiny" --config_file "$CFG" --convert_file "$CONV" --out "$WORK/hf_bf16" --dtype bf16

convert() {  # convert <from> <to> <src> <dst> [flags...]
  local from=$1 to=$2 src=$3 dst=$4
  shift 4
  "$BIN/ckbridge_convert" --load_platform "$from" --save_platform "$to" --config_file "$CFG" --convert_file "$CONV" \
    --load_ckpt_path "$src" --save_ckpt_path "$dst" --safetensors --max_workers 2 --hf_max_shard_size 4MB -q "$@"
}

status=0
results=()
round_trip() {  # round_trip <name> <source-hf-dir> [layout flags...]
  local name=$1 src=$2
  shift 2
  echo "== $name: HF -> MCore ($*) -> HF"
  convert huggingface mcore "$src" "$WORK/$name/mcore" "$@"
  convert mcore huggingface "$WORK/$name/mcore/release" "$WORK/$name/hf" "$@"
  local files=0 same=0
  for f in "$src"/*.safetensors "$src"/model.safetensors.index.json "$src"/config.json; do
    [[ -e $f ]] || continue
    files=$((files + 1))
    if cmp -s "$f" "$WORK/$name/hf/$(basename "$f")"; then same=$((same + 1)); else echo "   DIFFERS: $(basename "$f")"; fi
  done
  local n_mcore
  n_mcore=$(find "$WORK/$name/mcore" -name model_optim_rng.pt | wc -l)
  results+=("$(printf '%-28s %3d MCore files  %2d/%2d HF files byte-identical' "$name" "$n_mcore" "$same" "$files")")
  [[ $same -eq $files ]] || status=1
}

round_trip fp8_tp2_pp2_ep2_grouped "$WORK/hf_fp8" --tensor_model_parallel_size 2 --pipeline_model_parallel_size 2 \
  --expert_parallel_size 2 --expert_tensor_parallel_size 1 --moe-grouped-gemm
round_trip bf16_tp2_pp2_ep2_grouped "$WORK/hf_bf16" --tensor_model_parallel_size 2 --pipeline_model_parallel_size 2 \
  --expert_parallel_size 2 --expert_tensor_parallel_size 1 --moe-grouped-gemm
round_trip fp8_tp1_ep4_sequential "$WORK/hf_fp8" --expert_parallel_size 4
round_trip fp8_pp2_custom_1_3 "$WORK/hf_fp8" --tensor_model_parallel_size 2 --pipeline_model_parallel_size 2 \
  --custom_pipeline_layers 1,3 --expert_parallel_size 2 --moe-grouped-gemm

if [[ $ALL == --all ]]; then
  round_trip fp8_vpp2 "$WORK/hf_fp8" --pipeline_model_parallel_size 2 --num-virtual-stages-per-pipeline-rank 2 \
    --expert_parallel_size 2 --moe-grouped-gemm
  round_trip fp8_vpp2_dualpipev "$WORK/hf_fp8" --pipeline_model_parallel_size 2 \
    --num-virtual-stages-per-pipeline-rank 2 --vpp-scheduler dualpipev --expert_parallel_size 2 --moe-grouped-gemm
  round_trip fp8_layout_mtp_stage "$WORK/hf_fp8" --pipeline_model_parallel_size 2 \
    --pipeline_model_parallel_layout 'Ett|t|t|mL' --expert_parallel_size 2 --moe-grouped-gemm
  round_trip fp8_first_last_dualpipev "$WORK/hf_fp8" --pipeline_model_parallel_size 2 \
    --num-virtual-stages-per-pipeline-rank 2 --vpp-scheduler dualpipev \
    --decoder-first-pipeline-num-layers 2 --decoder-last-pipeline-num-layers 2 --expert_parallel_size 2
  # TP 4 cuts the tiny model's FP8 blocks (re-quantization), so this layout round-trips BF16
  round_trip bf16_tp4_ep2_etp2 "$WORK/hf_bf16" --tensor_model_parallel_size 4 --expert_parallel_size 2 \
    --expert_tensor_parallel_size 2 --moe-grouped-gemm
  # MCore (TP2 PP2 EP2) -> MCore (TP1 PP1 EP4) -> HF, source layout read from the checkpoint
  echo "== mcore_reshard: MCore TP2 PP2 EP2 -> MCore TP1 PP1 EP4 -> HF"
  convert mcore mcore "$WORK/fp8_tp2_pp2_ep2_grouped/mcore" "$WORK/mcore_reshard/mcore" --expert_parallel_size 4
  convert mcore huggingface "$WORK/mcore_reshard/mcore" "$WORK/mcore_reshard/hf"
  same=0 files=0
  for f in "$WORK/hf_fp8"/*; do
    files=$((files + 1))
    if cmp -s "$f" "$WORK/mcore_reshard/hf/$(basename "$f")"; then same=$((same + 1)); else echo "   DIFFERS: $(basename "$f")"; fi
  done
  results+=("$(printf '%-28s %3d MCore files  %2d/%2d HF files byte-identical' mcore_tp2pp2ep2_to_ep4 \
    "$(find "$WORK/mcore_reshard/mcore" -name model_optim_rng.pt | wc -l)" "$same" "$files")")
  [[ $same -eq $files ]] || status=1
fi

echo
echo "round trips (HF -> MCore -> HF):"
printf '  %s\n' "${results[@]}"
if [[ $status -eq 0 ]]; then echo "ALL ROUND TRIPS BYTE-IDENTICAL"; else echo "ROUND TRIP MISMATCH"; fi
exit $status

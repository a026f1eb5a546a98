#!/usr/bin/env bash
# End-to-end interop proof with LoongForge's OWN checkpoint converter (tools/convert_checkpoint of
# baidu-baige/LoongForge), on the CPU, BF16 only. Never part of CI: it needs a LoongForge source tree
# and a Python with torch >= 2.1, transformers, safetensors, hydra-core, omegaconf and psutil.
#
#   tests/interop/loongforge_interop.sh LOONGFORGE_SRC PYTHON CKBRIDGE_BUILD [WORK]
#
# LOONGFORGE_SRC  a checkout of LoongForge (the run records its commit when it is a git checkout)
# PYTHON          the Python that runs LoongForge and the comparison helper (compare_mcore.py)
# CKBRIDGE_BUILD  a ckbridge build tree with examples/ckbridge_convert and deepseek_v3_make_tiny
# WORK            scratch directory: new, empty, or one this script made (then emptied first);
#                 default: a new temporary directory
# Environment: LAYOUTS="name ..." runs only the named layouts (names as in the table).
# Takes about 8 minutes on 2 CPU cores (mostly Python start-up of LoongForge's 18 runs).
# Setup, e.g.: git clone https://github.com/baidu-baige/LoongForge && git -C LoongForge checkout c6275661
#   python3 -m venv lfvenv && lfvenv/bin/pip install torch transformers safetensors hydra-core omegaconf psutil
#
# What it does:
#  1. ckbridge's generator writes the small DeepSeek-V3-architecture BF16 HF checkpoint
#     (configs/deepseek_v3/deepseek_v3_tiny.yaml: 4 layers, layer 0 dense, 8 experts, MTP 1).
#  2. A LoongForge config root is made in WORK: ckbridge's tiny model YAML as LoongForge's
#     configs/models/deepseek3/deepseek_v3_tiny.yaml, and LoongForge's own
#     configs/models/deepseek3/ckpt_convert/deepseek_v3_convert.yaml with exactly two entries changed:
#       - args.huggingface.mtp_layer_id: 61 -> 4 (LoongForge hard-codes the 61-layer model's MTP
#         layer index; the tiny model's MTP layer is HF layer 4);
#       - name_map.mcore.mtp_eh_proj.dtype: fp8 -> bf16 (LoongForge otherwise quantizes
#         mtp.layers.0.eh_proj.weight to FP8 through TransformerEngine even from a BF16 source,
#         which needs TE and a GPU; this run covers the BF16 paths only).
#     The run shows the diff of that file against LoongForge's.
#  3. Per layout: LoongForge HF -> MCore; ckbridge HF -> MCore with the same flags, compared with
#     LoongForge's output (rank file set; per file `cmp`, which is expected to differ: each converter
#     pickles its own `args` Namespace and orders keys its own way; model state dicts key by key,
#     dtype, shape and bytes through compare_mcore.py); ckbridge MCore -> HF on LoongForge's output twice, with
#     LoongForge's layout flags restated and with no layout flags at all; every HF output file
#     (shards, index, config.json) compared with the source by `cmp`.
#  4. Prints a table and exits 0 only when every layout passed every check.
set -u
if [ $# -lt 3 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
LF=$(cd "$1" && pwd) || exit 2
PY=$2
BUILD=$(cd "$3" && pwd) || exit 2
cd "$(dirname "$0")/../.." || exit 2
REPO=$PWD
WORK=${4:-$(mktemp -d)}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd) || exit 2
# emptied only when it is empty already or an earlier run of this script made it
if [ -n "$(ls -A "$WORK")" ] && [ ! -e "$WORK/.loongforge_interop" ]; then
  echo "WORK $WORK is not empty and was not made by this script; give a new or empty directory"
  exit 2
fi
rm -rf "${WORK:?}"/*
touch "$WORK/.loongforge_interop"
HERE=$REPO/tests/interop
CONV=$BUILD/examples/ckbridge_convert
MAKE_TINY=$BUILD/examples/deepseek_v3_make_tiny
CFG=$REPO/configs/deepseek_v3/deepseek_v3_tiny.yaml
CKB_CONV_YAML=$REPO/configs/deepseek_v3/ckpt_convert/deepseek_v3_convert.yaml
LF_CONV_YAML=$LF/configs/models/deepseek3/ckpt_convert/deepseek_v3_convert.yaml
for f in "$CONV" "$MAKE_TINY" "$LF/tools/convert_checkpoint/module_convertor/model.py" "$LF_CONV_YAML"; do
  [ -e "$f" ] || { echo "missing: $f"; exit 2; }
done

echo "LoongForge: $(git -C "$LF" rev-parse HEAD 2>/dev/null || echo "$LF (not a git checkout)")"
echo "ckbridge:   $(git -C "$REPO" rev-parse HEAD 2>/dev/null) $(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '(with local changes)')"
"$PY" -c 'import sys, torch, transformers, safetensors, hydra, omegaconf, psutil
print("python %s, torch %s, transformers %s, safetensors %s, hydra-core %s, omegaconf %s" % (sys.version.split()[0],
  torch.__version__, transformers.__version__, safetensors.__version__, hydra.__version__, omegaconf.__version__))' || exit 2
echo "work:       $WORK"

# 1. source checkpoint
SRC=$WORK/hf_bf16
"$MAKE_TINY" --config_file "$CFG" --convert_file "$CKB_CONV_YAML" --out "$SRC" --dtype bf16 || exit 1
NUM_LAYERS=$(awk '/^num_layers:/ {print $2}' "$CFG")

# 2. LoongForge config root
LFROOT=$WORK/lf_root
mkdir -p "$LFROOT/configs/models/deepseek3/ckpt_convert"
cp "$CFG" "$LFROOT/configs/models/deepseek3/deepseek_v3_tiny.yaml"
LF_YAML=$LFROOT/configs/models/deepseek3/ckpt_convert/deepseek_v3_convert.yaml
"$PY" - "$LF_CONV_YAML" "$LF_YAML" "$NUM_LAYERS" <<'EOF' || exit 1
import re, sys
src, dst, num_layers = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(src).read()
edits = [(r"(\n    mtp_layer_id: )61\n", r"\g<1>%s\n" % num_layers),
         (r"(\n    mtp_eh_proj:\n      name: eh_proj\n      dtype: )fp8\n", r"\g<1>bf16\n")]
for pattern, repl in edits:
    text, n = re.subn(pattern, repl, text)
    if n != 1:
        sys.exit(f"LoongForge's convert YAML changed: {pattern!r} matched {n} times, expected once")
open(dst, "w").write(text)
EOF
echo "LoongForge convert YAML used (diff against LoongForge's own):"
diff "$LF_CONV_YAML" "$LF_YAML" | sed 's/^/  /'

lf_convert() {  # lf_convert <from> <to> <src> <out> <log> [layout flags...]
  local from=$1 to=$2 src=$3 out=$4 log=$5
  shift 5
  (cd "$WORK" && LOONGFORGE_PATH=$LFROOT "$PY" "$LF/tools/convert_checkpoint/module_convertor/model.py" \
    --load_platform="$from" --save_platform="$to" \
    --config_file "$LFROOT/configs/models/deepseek3/deepseek_v3_tiny.yaml" --convert_file "$LF_YAML" \
    --load_ckpt_path="$src" --save_ckpt_path="$out" --safetensors --max_workers=2 "$@") >"$log" 2>&1
}
ck_convert() {  # ck_convert <from> <to> <src> <dst> <log> [flags...]
  local from=$1 to=$2 src=$3 dst=$4 log=$5
  shift 5
  "$CONV" --load_platform "$from" --save_platform "$to" --config_file "$CFG" --convert_file "$CKB_CONV_YAML" \
    --load_ckpt_path "$src" --save_ckpt_path "$dst" --safetensors --max_workers 2 --hf_max_shard_size 4MB -q "$@" \
    >"$log" 2>&1
}
# HF files identical: prints "same/total" and lists differing files in the log
hf_same() {  # hf_same <dir> <log>
  local dir=$1 log=$2 files=0 same=0 f
  for f in "$SRC"/*; do
    files=$((files + 1))
    if cmp -s "$f" "$dir/$(basename "$f")"; then same=$((same + 1)); else echo "DIFFERS: $(basename "$f")" >>"$log"; fi
  done
  if [ -d "$dir" ]; then
    for f in "$dir"/*; do [ -e "$SRC/$(basename "$f")" ] || [ "$(basename "$f")" = ckbridge-manifest.json ] || echo "EXTRA: $(basename "$f")" >>"$log"; done
  fi
  echo "$same/$files"
}
last_error() {  # first line of a log that reads like an error, else its last line
  local l
  l=$(grep -m1 -E 'error|Error|ERROR|contradict|imply|Traceback' "$1" 2>/dev/null)
  [ -n "$l" ] || l=$(tail -n1 "$1" 2>/dev/null)
  printf '%s' "${l:0:300}"
}

declare -a NAMES FLAGS
add() { NAMES+=("$1"); FLAGS+=("$2"); }
add tp2_pp2_ep2_etp1_grouped "--tensor_model_parallel_size=2 --pipeline_model_parallel_size=2 --expert_parallel_size=2 --expert_tensor_parallel_size=1 --moe-grouped-gemm"
add tp1_pp2_ep4_custom31_seq "--tensor_model_parallel_size=1 --pipeline_model_parallel_size=2 --expert_parallel_size=4 --custom_pipeline_layers=3,1"
add tp2_ep2_etp2_grouped "--tensor_model_parallel_size=2 --expert_parallel_size=2 --expert_tensor_parallel_size=2 --moe-grouped-gemm"
add tp1_pp2_vpp2_ep2_grouped "--tensor_model_parallel_size=1 --pipeline_model_parallel_size=2 --num-virtual-stages-per-pipeline-rank=2 --expert_parallel_size=2 --moe-grouped-gemm"
add tp4_ep4_etp1_grouped "--tensor_model_parallel_size=4 --expert_parallel_size=4 --expert_tensor_parallel_size=1 --moe-grouped-gemm"
# cases that stress layout inference: mp_rank_TT_NNN counting PP stages (EP 1), not EP ranks as in
# tp2_ep2_etp2; DualPipeV order; a Megatron layout string (LoongForge records it in args together
# with the custom_pipeline_layers it derives); uneven first or last stage under DualPipeV.
# Not here, because LoongForge c6275661 itself cannot write them: a split whose last virtual
# partition holds only the MTP block (layout 'Ett|t|t|mL', or DualPipeV with
# --decoder-first-pipeline-num-layers=1): LoongForge writes no decoder.final_layernorm at all, so no
# reader can rebuild model.norm.weight (ckbridge refuses naming the missing tensor); and first and
# last stage sizes together at PP 2 (ZeroDivisionError in LoongForge's uneven_vpp_partition).
add tp2_pp2_ep1_seq "--tensor_model_parallel_size=2 --pipeline_model_parallel_size=2 --expert_parallel_size=1"
add pp2_vpp2_dualpipev_ep2 "--pipeline_model_parallel_size=2 --num-virtual-stages-per-pipeline-rank=2 --vpp-scheduler=dualpipev --expert_parallel_size=2 --moe-grouped-gemm"
add pp2_layout_Et_t_t_tmL_ep2 "--pipeline_model_parallel_size=2 --pipeline_model_parallel_layout=Et|t|t|tmL --expert_parallel_size=2 --moe-grouped-gemm"
add pp2_vpp2_dpv_last1_ep2 "--pipeline_model_parallel_size=2 --num-virtual-stages-per-pipeline-rank=2 --vpp-scheduler=dualpipev --decoder-last-pipeline-num-layers=1 --expert_parallel_size=2"

status=0
rows=()
details=()
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]}
  if [ -n "${LAYOUTS:-}" ] && ! [[ " $LAYOUTS " == *" $name "* ]]; then continue; fi
  read -r -a flags <<<"${FLAGS[$i]}"
  # ckbridge's "no layout flags" run keeps --moe-grouped-gemm out too: expert naming is a layout fact
  D=$WORK/$name
  mkdir -p "$D"
  echo "== $name: ${FLAGS[$i]}"
  lf_convert huggingface mcore "$SRC" "$D/lf_mcore" "$D/lf.log" "${flags[@]}"
  lf_rc=$?
  n_lf=$(find "$D/lf_mcore" -name model_optim_rng.pt 2>/dev/null | wc -l)
  ok=1
  [ $lf_rc -eq 0 ] && [ "$n_lf" -gt 0 ] || { ok=0; details+=("$name: LoongForge rc $lf_rc: $(last_error "$D/lf.log")"); }

  # ckbridge HF -> MCore, same layout, compared with LoongForge's files
  ck_convert huggingface mcore "$SRC" "$D/ck_mcore" "$D/ck_h2m.log" "${flags[@]}"
  ck_h2m_rc=$?
  vs="ckbridge HF->MCore rc $ck_h2m_rc"
  if [ $ck_h2m_rc -eq 0 ] && [ $lf_rc -eq 0 ]; then
    ranks_lf=$(cd "$D/lf_mcore/release" && ls -d mp_rank_* | tr '\n' ' ')
    ranks_ck=$(cd "$D/ck_mcore/release" && ls -d mp_rank_* | tr '\n' ' ')
    cmp_same=0
    for r in $ranks_lf; do
      cmp -s "$D/lf_mcore/release/$r/model_optim_rng.pt" "$D/ck_mcore/release/$r/model_optim_rng.pt" && cmp_same=$((cmp_same + 1))
    done
    "$PY" "$HERE/compare_mcore.py" "$D/lf_mcore" "$D/ck_mcore" >"$D/compare.log" 2>&1
    cmp_rc=$?
    if [ "$ranks_lf" = "$ranks_ck" ]; then files_eq=same; else files_eq=DIFFER; ok=0; fi
    [ $cmp_rc -eq 0 ] && states=identical || { states=DIFFER; ok=0; }
    vs="files $files_eq ($n_lf), cmp $cmp_same/$n_lf, states $states"
    details+=("$name: LoongForge rank dirs: $ranks_lf")
    details+=("$name: $(head -n1 "$D/compare.log")")
    "$PY" "$HERE/compare_mcore.py" --args "$D/lf_mcore" >"$D/lf_args.log" 2>&1 && details+=("$name: LoongForge $(cat "$D/lf_args.log")")
  fi
  # and the other way: LoongForge MCore -> HF reads ckbridge's MCore files (tensors compared, since
  # LoongForge shards its HF output its own way and writes no config.json)
  lf_reads="-"
  if [ $ck_h2m_rc -eq 0 ]; then
    lf_convert mcore huggingface "$D/ck_mcore/release" "$D/lf_hf_from_ck" "$D/lf_m2h.log" "${flags[@]}"
    rc=$?
    if [ $rc -eq 0 ] && "$PY" "$HERE/compare_hf.py" "$SRC" "$D/lf_hf_from_ck" >"$D/compare_hf.log" 2>&1; then
      lf_reads="same"
    else
      lf_reads="rc $rc"; [ $rc -eq 0 ] && lf_reads="DIFFER"
      ok=0
      details+=("$name: LoongForge MCore->HF on ckbridge's files: $( [ $rc -eq 0 ] && head -n2 "$D/compare_hf.log" | tr '\n' ' ' || last_error "$D/lf_m2h.log")")
    fi
  fi
  if [ $ck_h2m_rc -ne 0 ] || [ $lf_rc -ne 0 ]; then
    ok=0
    [ $ck_h2m_rc -ne 0 ] && details+=("$name: ckbridge HF->MCore rc $ck_h2m_rc: $(last_error "$D/ck_h2m.log")")
  fi

  # ckbridge MCore -> HF on LoongForge's output, with and without layout flags
  with="-" without="-" same_with="-" same_without="-"
  if [ $lf_rc -eq 0 ]; then
    ck_convert mcore huggingface "$D/lf_mcore/release" "$D/hf_flags" "$D/ck_m2h_flags.log" "${flags[@]}"
    rc=$?
    with="rc $rc"
    if [ $rc -eq 0 ]; then same_with=$(hf_same "$D/hf_flags" "$D/ck_m2h_flags.log"); else details+=("$name: ckbridge with flags: $(last_error "$D/ck_m2h_flags.log")"); fi
    ck_convert mcore huggingface "$D/lf_mcore/release" "$D/hf_noflags" "$D/ck_m2h_noflags.log"
    rc=$?
    without="rc $rc"
    if [ $rc -eq 0 ]; then same_without=$(hf_same "$D/hf_noflags" "$D/ck_m2h_noflags.log"); else details+=("$name: ckbridge without flags: $(last_error "$D/ck_m2h_noflags.log")"); fi
    for s in "$same_with" "$same_without"; do
      [[ $s =~ ^([0-9]+)/([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] || ok=0
    done
    grep -h -E '^(DIFFERS|EXTRA):' "$D/ck_m2h_flags.log" "$D/ck_m2h_noflags.log" 2>/dev/null | sort -u | sed "s/^/$name: /" | while read -r l; do echo "   $l"; done
  else
    ok=0
  fi
  [ $ok -eq 1 ] || status=1
  rows+=("$(printf '| %-25s | %-14s | %-44s | %-9s | %-8s | %-8s | %-10s | %-10s | %-4s |' "$name" "rc $lf_rc ($n_lf files)" "$vs" \
    "$lf_reads" "$with" "$without" "$same_with" "$same_without" "$([ $ok -eq 1 ] && echo PASS || echo FAIL)")")
done

echo
echo "Details:"
printf '  %s\n' "${details[@]}"
echo
echo "LoongForge HF -> MCore; ckbridge HF -> MCore compared with it; LoongForge MCore -> HF on ckbridge's files"
echo "(tensors compared with the source); ckbridge MCore -> HF on LoongForge's files with the layout flags (w)"
echo "and without any (wo): HF files identical = cmp with the source, every shard + index + config.json"
printf '| %-25s | %-14s | %-44s | %-9s | %-8s | %-8s | %-10s | %-10s | %-4s |\n' layout "LoongForge" \
  "ckbridge HF->MCore vs LoongForge's MCore" "LF reads" "ck w" "ck wo" "HF same w" "HF same wo" ""
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..27})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..46})" \
  "$(printf -- '-%.0s' {1..11})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..12})" \
  "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..6})"
printf '%s\n' "${rows[@]}"
if [ $status -eq 0 ]; then echo "ALL LAYOUTS PASS"; else echo "SOME LAYOUTS FAIL"; fi
exit $status

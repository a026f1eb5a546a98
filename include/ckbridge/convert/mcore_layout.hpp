#pragma once
// The parallel layout of an existing MCore legacy checkpoint, read from the checkpoint itself:
// the `args` Namespace its writer stored (Megatron's and LoongForge's field names) and the tensor
// names (grouped vs sequential experts). Used so MCore -> HF / MCore -> MCore need no restated
// source layout, and to refuse flags that contradict the checkpoint.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "ckbridge/convert/pipeline_layout.hpp"
#include "ckbridge/format/megatron_reader.hpp"

namespace ckbridge::convert {

struct McoreLayout {
  int tp = 1, pp = 1, ep = 1;
  std::optional<int> etp;
  int vpp = 1;
  bool grouped_gemm = false;
  bool dualpipev = false;
  std::optional<std::vector<int>> custom;
  std::optional<std::string> layout;
  std::optional<int> first, last;
  std::optional<int> num_layers, mtp_num_layers;
  std::optional<std::int64_t> padded_vocab_size;  // args.padded_vocab_size (--pad_vocab_size_to etc.)
  std::vector<std::string> missing;  // args fields that were absent (defaults assumed)
};

namespace mcore_layout_detail {
inline std::optional<std::int64_t> arg_int(const format::MegatronRankFile& f, const char* k) { return f.arg_int(k); }
inline std::optional<std::string> arg_str(const format::MegatronRankFile& f, const char* k) {
  auto v = f.arg(k);
  if (!v || v->kind != pickle::Kind::Str) return std::nullopt;
  return v->s;
}
inline std::optional<bool> arg_bool(const format::MegatronRankFile& f, const char* k) {
  auto v = f.arg(k);
  if (!v || v->kind != pickle::Kind::Bool) return std::nullopt;
  return v->b;
}
}  // namespace mcore_layout_detail

// `root`: the checkpoint root (with latest_checkpointed_iteration.txt) or its iteration directory.
inline McoreLayout read_mcore_layout(const std::filesystem::path& root) {
  using namespace mcore_layout_detail;
  const format::MegatronCheckpointDir dir = format::open_megatron_checkpoint(root);
  const format::MegatronRankFile f = format::load_megatron_rank_file(dir.ranks.front().model_file());
  McoreLayout l;
  auto get = [&](const char* k, int def) {
    if (auto v = arg_int(f, k)) return static_cast<int>(*v);
    l.missing.push_back(k);
    return def;
  };
  l.tp = get("tensor_model_parallel_size", 1);
  l.pp = get("pipeline_model_parallel_size", 1);
  l.ep = get("expert_model_parallel_size", 1);
  if (auto v = arg_int(f, "expert_tensor_parallel_size")) l.etp = static_cast<int>(*v);
  if (auto v = arg_int(f, "num_virtual_stages_per_pipeline_rank")) l.vpp = static_cast<int>(*v);
  if (auto v = arg_int(f, "num_layers")) l.num_layers = static_cast<int>(*v);
  if (auto v = arg_int(f, "mtp_num_layers")) l.mtp_num_layers = static_cast<int>(*v);
  if (auto v = arg_int(f, "padded_vocab_size")) l.padded_vocab_size = *v;
  if (auto v = arg_str(f, "custom_pipeline_layers"); v && !v->empty()) l.custom = parse_custom_pipeline_layers(*v);
  if (auto v = arg_str(f, "pipeline_model_parallel_layout"); v && !v->empty()) l.layout = *v;
  if (auto v = arg_str(f, "vpp_scheduler")) l.dualpipev = *v == "dualpipev";
  if (auto v = arg_int(f, "decoder_first_pipeline_num_layers")) l.first = static_cast<int>(*v);
  if (auto v = arg_int(f, "decoder_last_pipeline_num_layers")) l.last = static_cast<int>(*v);
  // Expert naming from the tensors themselves (works for checkpoints of any writer).
  bool grouped = false, sequential = false;
  for (const auto& m : f.models)
    for (const auto& e : m.entries) {
      if (e.name.find(".local_experts.") != std::string::npos) sequential = true;
      if (e.name.find("mlp.experts.linear_fc1.weight") != std::string::npos) grouped = true;
    }
  if (grouped && sequential) fail(f.file_name(), ": has both grouped (weight<i>) and sequential (local_experts) expert tensors");
  l.grouped_gemm = grouped || (!sequential && arg_bool(f, "moe_grouped_gemm").value_or(false));
  return l;
}

}  // namespace ckbridge::convert

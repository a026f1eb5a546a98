#pragma once
// Tensor names on both sides, from the convert YAML's name_map (LoongForge's schema): a common
// name maps to an HF fragment and an MCore fragment plus flags; these helpers compose full keys
// for one parameter instance (layer, MTP block, expert). Nothing here is model-specific beyond
// the composition rules of model::Where.
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/core/error.hpp"
#include "ckbridge/model/spec.hpp"

namespace ckbridge::convert {

struct HfEntry {
  std::vector<std::string> names;  // one fragment, or several concatenated along dim 0 ([gate, up])
  bool direct = false;             // full tensor key (no ".weight" suffix)
  std::string dtype;               // "", "bf16" or "fp8"
};

struct McoreEntry {
  std::string name;
  bool extra = false;          // also emit <module>._extra_state = None
  bool is_layernorm = false;   // suffix .layer_norm_weight (norm folded into a TE LayerNormLinear)
  bool fp8 = false;            // FP8 in FP8 training
  bool fp8_ignore_tp = false;  // replicated instead of split when FP8
  bool ignore_tp = false;      // always replicated
  bool direct = false;         // full key, no suffix
  std::string dtype;           // "", "bf16" or "fp8"
};

struct NameMap {
  std::map<std::string, HfEntry, std::less<>> hf;
  std::map<std::string, McoreEntry, std::less<>> mcore;
  std::string hf_transformer = "model";
  std::string hf_layer_prefix = "layers";
  std::string weight_scale_key = "weight_scale_inv";
  int hf_mtp_layer_id = -1;  // HF layer index of MTP block 0 (DeepSeek V3: num_hidden_layers)
  std::string hf_mtp_layer_prefix = "layers";  // HF prefix of MTP blocks (DeepSeek: layers; MiMo: mtp_layers)
  std::string mcore_layer_prefix = "decoder.layers";
  std::string mcore_mtp_layer_prefix = "mtp.layers";
  std::string mtp_inner = "transformer_layer";  // mtp_name_prefix_for_layer
  std::string grouped_expert_key = "moe.groupedgemm.expert";

  const HfEntry& hf_entry(std::string_view key) const {
    auto it = hf.find(key);
    if (it == hf.end() || it->second.names.empty())
      fail("convert config: name_map.huggingface has no entry '", key, "'");
    return it->second;
  }
  const McoreEntry& mcore_entry(std::string_view key) const {
    auto it = mcore.find(key);
    if (it == mcore.end() || it->second.name.empty()) fail("convert config: name_map.mcore has no entry '", key, "'");
    return it->second;
  }
  // The YAML's `dtype: bf16` on the HF side and `dtype: fp8` on the MCore side of `key` (LoongForge's
  // QUANT_HF_BF16_AND_MCORE_FP8, Kimi K2's FP8-training YAML): BF16 in HF, FP8 in MCore.
  bool hf_bf16_mcore_fp8(std::string_view key) const {
    auto h = hf.find(key);
    auto m = mcore.find(key);
    return h != hf.end() && m != mcore.end() && h->second.dtype == "bf16" && m->second.dtype == "fp8";
  }
};

// One instance of a parameter kind.
struct Instance {
  model::ParamKind kind;
  int layer = -1;   // global layer id: 0..N-1 decoder, N+i = MTP block i; -1 for globals
  int mtp = -1;     // MTP block index, or -1
  int expert = -1;  // global expert id, or -1

  std::string label() const {
    std::string s(kind.common);
    if (mtp >= 0) s = "mtp " + std::to_string(mtp) + " " + s;
    else if (layer >= 0) s = "layer " + std::to_string(layer) + " " + s;
    if (expert >= 0) s += " expert " + std::to_string(expert);
    return s;
  }
};

namespace names_detail {
inline std::vector<std::string_view> split_keys(std::string_view common) {
  std::vector<std::string_view> out;
  std::size_t b = 0;
  for (std::size_t i = 0; i <= common.size(); ++i)
    if (i == common.size() || common[i] == '/') {
      out.push_back(common.substr(b, i - b));
      b = i + 1;
    }
  return out;
}
inline std::string join(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (auto p : parts) {
    if (p.empty()) continue;
    if (!s.empty()) s += '.';
    s += p;
  }
  return s;
}
}  // namespace names_detail

// HF keys of the tensors that make up an instance (several for [gate, up] lists).
inline std::vector<std::string> hf_keys(const NameMap& nm, const Instance& in) {
  using model::Where;
  const auto keys = names_detail::split_keys(in.kind.common);
  // a tied kind has no HF tensor of its own: it reads its FirstStage kind's (the embedding)
  const HfEntry& leaf = nm.hf_entry(in.kind.tied_to.empty() ? keys.back() : in.kind.tied_to);
  std::string prefix;
  if (in.kind.where != Where::FirstStage && in.kind.where != Where::LastStage) {
    const int hf_layer = in.mtp >= 0 ? nm.hf_mtp_layer_id + in.mtp : in.layer;
    if (in.mtp >= 0 && nm.hf_mtp_layer_id < 0) fail("convert config: args.huggingface.mtp_layer_id is not set");
    prefix = names_detail::join({nm.hf_transformer, in.mtp >= 0 ? nm.hf_mtp_layer_prefix : nm.hf_layer_prefix,
                                 std::to_string(hf_layer)});
  }
  if (keys.size() == 2) {
    prefix = names_detail::join({prefix, nm.hf_entry(keys[0]).names.front()});
    if (in.kind.where == Where::Expert) prefix = names_detail::join({prefix, std::to_string(in.expert)});
  }
  std::vector<std::string> out;
  for (const auto& n : leaf.names) out.push_back(names_detail::join({prefix, n}) + (leaf.direct ? "" : ".weight"));
  return out;
}

// HF key of the FP8 scale that goes with an HF weight key ("x.weight" -> "x.weight_scale_inv").
inline std::string hf_scale_key(const NameMap& nm, std::string_view weight_key) {
  constexpr std::string_view suffix = "weight";
  if (weight_key.size() < suffix.size() || weight_key.substr(weight_key.size() - suffix.size()) != suffix)
    fail("FP8 tensor '", weight_key, "' does not end in 'weight': cannot name its scale");
  return std::string(weight_key.substr(0, weight_key.size() - suffix.size())) + nm.weight_scale_key;
}

// Where an instance sits in the MCore model (from the pipeline plan).
struct McoreSlot {
  int local_layer = -1;   // decoder.layers.<l> (stage-local), or -1
  int mtp = -1;           // mtp.layers.<i>, or -1
  int local_expert = -1;  // index inside the EP rank
  bool grouped_gemm = false;
};

struct McoreKey {
  std::string key;     // state-dict key of the tensor
  std::string module;  // its module path (for _extra_state), empty if no extra state
};

inline McoreKey mcore_key(const NameMap& nm, const Instance& in, const McoreSlot& slot) {
  using model::Where;
  const auto keys = names_detail::split_keys(in.kind.common);
  const McoreEntry& leaf = nm.mcore_entry(keys.back());
  std::string prefix;
  if (in.kind.where == Where::MtpBlock) {
    prefix = names_detail::join({nm.mcore_mtp_layer_prefix, std::to_string(slot.mtp)});
  } else if (in.kind.where != Where::FirstStage && in.kind.where != Where::LastStage) {
    if (slot.mtp >= 0)
      prefix = names_detail::join({nm.mcore_mtp_layer_prefix, std::to_string(slot.mtp), nm.mtp_inner});
    else
      prefix = names_detail::join({nm.mcore_layer_prefix, std::to_string(slot.local_layer)});
  }
  std::string module;
  std::string key;
  if (in.kind.where == Where::Expert) {
    if (slot.grouped_gemm) {
      module = names_detail::join({prefix, nm.mcore_entry(nm.grouped_expert_key).name, leaf.name});
      key = module + ".weight" + std::to_string(slot.local_expert);
    } else {
      module = names_detail::join(
          {prefix, nm.mcore_entry(keys[0]).name, std::to_string(slot.local_expert), leaf.name});
      key = module + ".weight";
    }
  } else {
    if (keys.size() == 2) prefix = names_detail::join({prefix, nm.mcore_entry(keys[0]).name});
    module = names_detail::join({prefix, leaf.name});
    key = leaf.direct ? module : module + (leaf.is_layernorm ? ".layer_norm_weight" : ".weight");
  }
  return {key, leaf.extra ? module : std::string()};
}

}  // namespace ckbridge::convert

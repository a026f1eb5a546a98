#pragma once
// Megatron-Core `torch_dist` keys for GPTModel with the LOCAL layer spec, derived from the keys of
// a single-rank legacy (tp1 pp1 ep1) MCore state dict. Kept apart from the model definitions so it
// can follow them when they change: it only needs the legacy key, the tensor's shape and whether
// the model's MLP is gated (SwiGLU). docs/torch-dist-format.md §5 lists where each rule comes from
// (Megatron-Core 0.16.1 sharded_state_dict):
//   * keys are the module paths of the whole model (global layer numbers; no `model.` prefix);
//   * decoder layers of a homogeneous model (Megatron's non_homogeneous_layers false: moe_layer_freq
//     not a list nor an int > 1) are stacked: `decoder.layers.<l>.<rest>` [r, c] becomes chunk
//     (l, 0, 0) of `decoder.layers.<rest>` [L, r, c]; otherwise layers keep their own keys;
//   * sequential experts are stacked: `...experts.local_experts.<e>.<linear>.weight` [r, c] becomes
//     chunk (e, 0, 0) of `...experts.experts.<linear>.weight` [E, r, c] (prepended expert axis:
//     TensorProperties.strides None);
//   * a gated `linear_fc1.weight` [2f, c] (dense, shared expert or routed expert) is saved in two
//     chunks, gate rows then up rows (Megatron's SwiGLU sharded factory); the dense / shared ones
//     carry MetadataIndex.index 0 and 1;
//   * every local-spec linear (`linear_*`, `eh_proj`) has an `_extra_state` ShardedObject (data
//     None) with unique key `<module>._extra_state/shard_<offsets>_<sizes>` over the prepended axes
//     (layer, then expert; '.'-joined), `/shard_0_1` with none;
//   * entries come in module registration order (the order of model.sharded_state_dict()), which
//     `torch_dist_order` reproduces; with it the data files match Megatron-Core's byte for byte.
#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"

namespace ckbridge::convert {

// Where one legacy tensor goes in the torch_dist checkpoint.
struct TorchDistPiece {
  std::string key;                  // torch_dist key
  Shape offsets, sizes;             // chunk in the global tensor
  Shape source_offsets;             // where the chunk starts in the legacy tensor (same rank)
  std::optional<std::int64_t> index;
};

struct TorchDistTarget {
  std::string key;
  Shape global;                     // global shape of `key`
  bool stacked = false;             // prepended axes (layer, expert)
  std::size_t prepended = 0;        // how many
  std::vector<TorchDistPiece> pieces;
  std::optional<std::string> extra_state;  // unique key of the module's _extra_state object
};

namespace td_keys_detail {

inline std::vector<std::string> split(std::string_view k) {
  std::vector<std::string> out;
  std::size_t p = 0;
  while (true) {
    const std::size_t q = k.find('.', p);
    out.emplace_back(k.substr(p, q == std::string_view::npos ? std::string_view::npos : q - p));
    if (q == std::string_view::npos) break;
    p = q + 1;
  }
  return out;
}

inline bool is_number(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Registration order of the submodules / tensors of Megatron-Core's GPTModel (local spec).
inline int rank_of(const std::string& c) {
  static const std::map<std::string, int> r = {
      // GPTModel
      {"embedding", 0}, {"decoder", 1}, {"mtp", 2}, {"output_layer", 3},
      {"word_embeddings", 0}, {"position_embeddings", 1},
      // TransformerBlock
      {"layers", 0}, {"final_layernorm", 50},
      // TransformerLayer
      {"input_layernorm", 0}, {"self_attention", 1}, {"pre_mlp_layernorm", 2}, {"mlp", 3},
      // Attention / SelfAttention / MLASelfAttention
      {"core_attention", 0}, {"linear_proj", 1}, {"linear_qkv", 2}, {"linear_q_proj", 3}, {"linear_q_down_proj", 3},
      {"linear_q_up_proj", 4}, {"linear_kv_down_proj", 5}, {"linear_kv_up_proj", 6}, {"q_layernorm", 7},
      {"kv_layernorm", 8}, {"k_layernorm", 9},
      // MLP / MoELayer
      {"linear_fc1", 0}, {"linear_fc2", 1}, {"router", 0}, {"experts", 1}, {"shared_experts", 2},
      {"local_experts", 0},
      // MultiTokenPredictionLayer
      {"enorm", 0}, {"hnorm", 1}, {"eh_proj", 2}, {"transformer_layer", 3},
      // leaves
      {"weight", 0}, {"bias", 1}, {"expert_bias", 2}, {"_extra_state", 3},
  };
  auto it = r.find(c);
  return it == r.end() ? 1000 : it->second;
}

inline bool is_linear(const std::string& m) { return m.rfind("linear_", 0) == 0 || m == "eh_proj"; }

// A TransformerEngine fused-norm name as the local-spec module it is saved for (Megatron's
// sharded_state_dict_keys_map: the local norm module is saved under the TE name, in its own place
// in the module order).
inline std::string local_module_name(const std::string& k) {
  static const std::pair<std::string_view, std::string_view> te[] = {
      {"self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"},
      {"mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight"},
      {"self_attention.linear_q_up_proj.layer_norm_weight", "self_attention.q_layernorm.weight"},
      {"self_attention.linear_kv_up_proj.layer_norm_weight", "self_attention.kv_layernorm.weight"}};
  for (const auto& [t, l] : te)
    if (k.size() >= t.size() && k.compare(k.size() - t.size(), t.size(), t) == 0)
      return k.substr(0, k.size() - t.size()) + std::string(l);
  return k;
}

}  // namespace td_keys_detail

// Strict weak order of legacy keys in Megatron-Core's module order.
inline bool torch_dist_order(const std::string& a, const std::string& b) {
  using namespace td_keys_detail;
  const auto x = split(local_module_name(a)), y = split(local_module_name(b));
  for (std::size_t i = 0; i < x.size() && i < y.size(); ++i) {
    if (x[i] == y[i]) continue;
    if (is_number(x[i]) && is_number(y[i])) return std::stoll(x[i]) < std::stoll(y[i]);
    const int rx = rank_of(x[i]), ry = rank_of(y[i]);
    if (rx != ry) return rx < ry;
    return x[i] < y[i];
  }
  return x.size() < y.size();
}

// The torch_dist target of legacy tensor `key` of shape `shape`. `num_experts`: routed experts per
// MoE layer; `gated`: the MLPs are gated (SwiGLU), so linear_fc1 weights are saved in two chunks;
// `stacked_layers`: the model's layer count when its decoder layers are stacked (0: they are not).
inline TorchDistTarget torch_dist_target(const std::string& key, const Shape& shape, std::int64_t num_experts, bool gated,
                                         std::int64_t stacked_layers = 0) {
  using namespace td_keys_detail;
  auto parts = split(key);
  TorchDistTarget t;
  std::vector<std::pair<std::int64_t, std::int64_t>> axes;  // prepended (offset, size), outermost first
  if (stacked_layers > 0 && parts.size() > 3 && parts[0] == "decoder" && parts[1] == "layers" && is_number(parts[2])) {
    const std::int64_t l = std::stoll(parts[2]);
    if (l >= stacked_layers) fail("torch_dist: ", key, ": layer ", l, " but the model has ", stacked_layers, " layers");
    axes.emplace_back(l, stacked_layers);
    parts.erase(parts.begin() + 2);
  }
  std::optional<std::int64_t> expert;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i)
    if (parts[i] == "local_experts" && is_number(parts[i + 1])) {
      expert = std::stoll(parts[i + 1]);
      parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(i), parts.begin() + static_cast<std::ptrdiff_t>(i) + 2);
      parts.insert(parts.begin() + static_cast<std::ptrdiff_t>(i), "experts");
      break;
    }
  for (std::size_t i = 0; i < parts.size(); ++i) t.key += (i ? "." : "") + parts[i];
  if (expert && (num_experts <= 0 || *expert >= num_experts))
    fail("torch_dist: ", key, ": expert ", *expert, " but the model has ", num_experts, " experts");
  if (expert) axes.emplace_back(*expert, num_experts);
  const std::string leaf = parts.back();
  const std::string module = parts.size() >= 2 ? parts[parts.size() - 2] : std::string();
  if (leaf == "weight" && is_linear(module)) {
    std::string m, off, size;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) m += (i ? "." : "") + parts[i];
    for (const auto& [o, n] : axes) {
      off += (off.empty() ? "" : ".") + std::to_string(o);
      size += (size.empty() ? "" : ".") + std::to_string(n);
    }
    t.extra_state = m + "._extra_state/shard_" + (axes.empty() ? "0" : off) + "_" + (axes.empty() ? "1" : size);
  }
  const bool swiglu = gated && module == "linear_fc1" && leaf == "weight";
  if (swiglu && (shape.size() != 2 || shape[0] % 2))
    fail("torch_dist: ", key, ": gated linear_fc1 weight of shape ", shape_str(shape), " has no even row count");
  const std::size_t r = shape.size();
  t.prepended = axes.size();
  t.stacked = !axes.empty();
  t.global = shape;
  for (auto it = axes.rbegin(); it != axes.rend(); ++it) t.global.insert(t.global.begin(), it->second);
  const std::int64_t halves = swiglu ? 2 : 1;
  for (std::int64_t h = 0; h < halves; ++h) {
    TorchDistPiece p;
    p.key = t.key;
    p.source_offsets = Shape(r, 0);
    p.sizes = shape;
    if (swiglu) {
      p.sizes[0] = shape[0] / 2;
      p.source_offsets[0] = h * p.sizes[0];
    }
    p.offsets = p.source_offsets;
    if (t.stacked) {
      for (auto it = axes.rbegin(); it != axes.rend(); ++it) {
        p.offsets.insert(p.offsets.begin(), it->first);
        p.sizes.insert(p.sizes.begin(), 1);
      }
    } else if (swiglu) {
      p.index = h;
    }
    t.pieces.push_back(std::move(p));
  }
  return t;
}

}  // namespace ckbridge::convert

#pragma once
// Bridges the LoongForge-schema configs (config/) to the conversion's inputs: the name map the
// planners compose keys from, and the model shape of a model spec.
#include "ckbridge/config/convert_config.hpp"
#include "ckbridge/config/model_config.hpp"
#include "ckbridge/convert/instances.hpp"
#include "ckbridge/convert/names.hpp"
#include "ckbridge/model/spec.hpp"

namespace ckbridge::convert {

inline NameMap name_map_from(const config::ConvertConfig& cc) {
  NameMap nm;
  for (const auto& [k, e] : cc.hf.entries()) {
    nm.hf[k] = HfEntry{e.names, e.is_direct_name, e.dtype.value_or("")};
    if (e.bias) nm.hf[k + ".bias"] = HfEntry{{*e.bias}, true, ""};
  }
  for (const auto& [k, e] : cc.mcore.entries()) {
    McoreEntry m;
    m.name = e.names.empty() ? std::string() : e.names.front();
    m.extra = e.extra;
    m.is_layernorm = e.is_layernorm;
    m.fp8 = e.fp8;
    m.fp8_ignore_tp = e.fp8_ignore_tp;
    m.ignore_tp = e.ignore_tp;
    m.direct = e.is_direct_name;
    m.dtype = e.dtype.value_or("");
    nm.mcore[k] = m;
    if (e.bias) {
      McoreEntry b;
      b.name = *e.bias;
      b.direct = true;
      nm.mcore[k + ".bias"] = b;
    }
  }
  // LoongForge reads `<name>.bias` next to every weight it converts (QKV biases of Qwen2 / MiMo):
  // `<common>.bias` names that bias on both sides where the YAML gives no explicit bias entry
  // (HF: each listed tensor's `.bias`; MCore: the module's `.bias`, or `.layer_norm_bias` for a
  // folded norm). No extra state of its own: the module's weight entry carries it.
  for (const auto& [k, e] : cc.hf.entries()) {
    if (e.bias || e.is_direct_name || nm.hf.count(k + ".bias")) continue;
    HfEntry b{{}, true, ""};
    for (const auto& n : e.names) b.names.push_back(n + ".bias");
    nm.hf[k + ".bias"] = std::move(b);
  }
  for (const auto& [k, e] : cc.mcore.entries()) {
    if (e.bias || e.is_direct_name || e.names.empty() || nm.mcore.count(k + ".bias")) continue;
    McoreEntry b;
    b.name = e.names.front() + (e.is_layernorm ? ".layer_norm_bias" : ".bias");
    b.direct = true;
    b.ignore_tp = e.ignore_tp;
    nm.mcore[k + ".bias"] = b;
  }
  // Group prefixes are "special" keys in the config's parser; the composition rules look them up
  // as entries.
  for (const char* k : {"moe.expert", "moe.shared_expert"})
    if (auto v = cc.hf.special(k)) nm.hf[k] = HfEntry{{*v}, false, ""};
  for (const char* k : {"moe.expert", "moe.shared_expert", "moe.groupedgemm.expert"})
    if (auto v = cc.mcore.special(k)) {
      McoreEntry m;
      m.name = *v;
      nm.mcore[k] = m;
    }
  nm.hf_transformer = cc.hf.special_or("transformer", "model");
  nm.hf_layer_prefix = cc.hf.special_or("layer_prefix", "layers");
  nm.hf_mtp_layer_prefix = cc.hf.special_or("mtp_layer_prefix", nm.hf_layer_prefix);
  nm.weight_scale_key = cc.hf.special_or("weight_scale_key", "weight_scale_inv");
  nm.hf_mtp_layer_id = cc.mtp_layer_id ? static_cast<int>(*cc.mtp_layer_id) : -1;
  nm.mcore_layer_prefix = cc.mcore.special_or("layer_prefix", "decoder.layers");
  nm.mcore_mtp_layer_prefix = cc.mcore.special_or("mtp_layer_prefix", "mtp.layers");
  nm.mtp_inner = cc.mcore.special_or("mtp_name_prefix_for_layer", "");
  return nm;
}

inline constexpr std::int64_t kMaxModelCount = 1'000'000;  // layers, MTP layers, experts

// The model shape of a model spec for a config: counts, the MoE pattern, the spec's MCore args and
// the dims its kinds' rules read (after the spec's own config checks, where it has them).
inline ModelShape model_shape_of(const model::ModelSpec& spec, const config::ModelConfig& mc) {
  if (spec.check) spec.check(mc);
  ModelShape s;
  // The planners count layers and experts in int: larger values are refused here, by name,
  // instead of wrapping into a different (or negative) count.
  auto small = [](const char* key, std::int64_t v) {
    if (v > kMaxModelCount)
      fail("model config: key '", key, "': ", v, " is too large (at most ", kMaxModelCount, ")");
    return static_cast<int>(v);
  };
  s.num_layers = small("num_layers", mc.num_layers);
  s.mtp_num_layers = small("mtp_num_layers", mc.mtp_num_layers);
  s.num_experts = small("num_experts", mc.num_experts);
  for (std::int64_t l = 0; l < mc.num_layers; ++l) s.moe_layer.push_back(mc.num_experts > 0 && mc.is_moe_layer(l));
  s.mtp_moe = mc.num_experts > 0;
  s.vocab_size = mc.vocab_size;
  if (!mc.multi_latent_attention) {  // GQA: the TP checks need the head and group counts
    s.num_attention_heads = mc.num_attention_heads;
    s.num_query_groups = mc.num_query_groups;
    s.head_dim = mc.head_dim();
  }
  s.args = spec.mcore_args(mc);
  s.dims.model = mc;
  return s;
}

}  // namespace ckbridge::convert

#pragma once
// Bridges the LoongForge-schema configs (config/) to the conversion's inputs: the name map the
// planners compose keys from, and the model shape the model policy is instantiated for.
#include "ckbridge/config/convert_config.hpp"
#include "ckbridge/config/model_config.hpp"
#include "ckbridge/convert/instances.hpp"
#include "ckbridge/convert/names.hpp"

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
  nm.weight_scale_key = cc.hf.special_or("weight_scale_key", "weight_scale_inv");
  nm.hf_mtp_layer_id = cc.mtp_layer_id ? static_cast<int>(*cc.mtp_layer_id) : -1;
  nm.mcore_layer_prefix = cc.mcore.special_or("layer_prefix", "decoder.layers");
  nm.mcore_mtp_layer_prefix = cc.mcore.special_or("mtp_layer_prefix", "mtp.layers");
  nm.mtp_inner = cc.mcore.special_or("mtp_name_prefix_for_layer", "");
  return nm;
}

inline constexpr std::int64_t kMaxModelCount = 1'000'000;  // layers, MTP layers, experts

inline ModelShape model_shape_from(const config::ModelConfig& mc, std::optional<int> mtp_override = std::nullopt,
                                   std::optional<std::int64_t> vocab_override = std::nullopt) {
  ModelShape s;
  // The planners count layers and experts in int: larger values are refused here, by name,
  // instead of wrapping into a different (or negative) count.
  auto small = [](const char* key, std::int64_t v) {
    if (v > kMaxModelCount)
      fail("model config: key '", key, "': ", v, " is too large (at most ", kMaxModelCount, ")");
    return static_cast<int>(v);
  };
  s.num_layers = small("num_layers", mc.num_layers);
  s.mtp_num_layers = mtp_override ? *mtp_override : small("mtp_num_layers", mc.mtp_num_layers);
  s.num_experts = small("num_experts", mc.num_experts);
  for (std::int64_t l = 0; l < mc.num_layers; ++l) s.moe_layer.push_back(mc.num_experts > 0 && mc.is_moe_layer(l));
  s.mtp_moe = mc.num_experts > 0;
  s.vocab_size = vocab_override.value_or(mc.vocab_size);
  using V = ArgValue;
  if (!mc.multi_latent_attention) {  // standard attention (GQA): the grouped QKV rule needs its dims
    s.num_attention_heads = mc.num_attention_heads;
    s.num_query_groups = mc.num_query_groups;
    s.head_dim = mc.head_dim();
    s.args = {{"hidden_size", V{mc.hidden_size}},
              {"ffn_hidden_size", V{mc.ffn_hidden_size}},
              {"num_attention_heads", V{mc.num_attention_heads}},
              {"num_query_groups", V{mc.num_query_groups}},
              {"group_query_attention", V{mc.num_query_groups != mc.num_attention_heads}},
              {"kv_channels", V{mc.head_dim()}},
              {"multi_latent_attention", V{false}},
              {"swiglu", V{true}},
              {"max_position_embeddings", V{mc.max_position_embeddings}},
              {"rotary_base", V{mc.rotary_base}},
              {"norm_epsilon", V{mc.norm_epsilon}},
              {"untie_embeddings_and_output_weights", V{mc.untie_embeddings_and_output_weights}},
              {"qk_layernorm", V{mc.qk_layernorm}}};
    return s;
  }
  s.args = {{"hidden_size", V{mc.hidden_size}},
            {"ffn_hidden_size", V{mc.ffn_hidden_size}},
            {"num_attention_heads", V{mc.num_attention_heads}},
            {"num_query_groups", V{mc.num_query_groups}},
            {"multi_latent_attention", V{true}},
            {"q_lora_rank", V{mc.q_lora_rank}},
            {"kv_lora_rank", V{mc.kv_lora_rank}},
            {"qk_head_dim", V{mc.qk_head_dim}},
            {"qk_pos_emb_head_dim", V{mc.qk_pos_emb_head_dim}},
            {"v_head_dim", V{mc.v_head_dim}},
            {"moe_ffn_hidden_size", V{mc.moe_ffn_hidden_size}},
            {"moe_shared_expert_intermediate_size", V{mc.moe_shared_expert_intermediate_size}},
            {"max_position_embeddings", V{mc.max_position_embeddings}},
            {"norm_epsilon", V{mc.norm_epsilon}},
            {"untie_embeddings_and_output_weights", V{mc.untie_embeddings_and_output_weights}},
            {"qk_layernorm", V{mc.qk_layernorm}}};
  return s;
}

// The model shape of a model policy for a config: model_shape_from plus the policy's shape rule
// (and its own config checks, where it has them).
template <class Model>
ModelShape model_shape_of(const config::ModelConfig& mc) {
  if constexpr (requires { Model::check(mc); }) Model::check(mc);
  ModelShape s = model_shape_from(mc);
  s.expected_shape = [mc](std::string_view c) { return Model::full_shape(c, mc); };
  return s;
}

}  // namespace ckbridge::convert

#pragma once
// Multi-latent attention (DeepSeek V2 / V2-Lite / V3, Kimi K2): its parameter kinds, the MCore args
// of an MLA + MoE decoder, and the DeepSeek config.json schema those families write (each family
// calls it with its own identity and router settings; nothing is inherited silently).
// Layouts follow LoongForge's TENSOR_PARALLEL_DIM table: the down projections split by rows under
// BF16 and stay whole under FP8 (`fp8_ignore_tp` in the YAML replicates them), the up projections
// split by heads, the output projection by columns.
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <string>
#include <string_view>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/common.hpp"

namespace ckbridge::model::kinds {

inline std::int64_t mla_q_rows(const Dims& d) {
  return d.model.num_attention_heads * (d.model.qk_head_dim + d.model.qk_pos_emb_head_dim);
}

// q with a LoRA (V2, V3, Kimi): q_down -> q_up (its norm folded into q_up).
struct QDown : Param<"attention.q_down", Where::Layer, Fp8::BlockwiseNoTp> {
  static layout::SplitDim layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {d.model.q_lora_rank, d.model.hidden_size}; }
};
struct QUpNorm : Param<"attention.q_up_layernorm", Where::Layer> {
  static layout::Replicated layout(const Dims&) { return {}; }
  static Shape shape(const Dims& d) { return {d.model.q_lora_rank}; }
};
struct QUp : Param<"attention.q_up", Where::Layer, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {mla_q_rows(d), d.model.q_lora_rank}; }
};
// q without a LoRA (V2-Lite): one projection, split by heads.
struct QProj : Param<"attention.q", Where::Layer, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {mla_q_rows(d), d.model.hidden_size}; }
};
struct KvDown : Param<"attention.kv_down", Where::Layer, Fp8::BlockwiseNoTp> {
  static layout::SplitDim layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {d.model.kv_lora_rank + d.model.qk_pos_emb_head_dim, d.model.hidden_size}; }
};
struct KvUpNorm : Param<"attention.kv_up_layernorm", Where::Layer> {
  static layout::Replicated layout(const Dims&) { return {}; }
  static Shape shape(const Dims& d) { return {d.model.kv_lora_rank}; }
};
struct KvUp : Param<"attention.kv_up", Where::Layer, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) {
    return {d.model.num_attention_heads * (d.model.qk_head_dim + d.model.v_head_dim), d.model.kv_lora_rank};
  }
};
struct MlaDense : Param<"attention.dense", Where::Layer, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {1}; }
  static Shape shape(const Dims& d) { return {d.model.hidden_size, d.model.num_attention_heads * d.model.v_head_dim}; }
};

// The family checks every MLA family shares: MLA attention, and a q LoRA exactly when `q_lora`.
inline void check_mla(std::string_view family, const config::ModelConfig& c, bool q_lora) {
  if (!c.multi_latent_attention)
    fail(family, ": the model config describes grouped-query attention (multi_latent_attention: false); ", family,
         " uses multi-latent attention");
  if (q_lora && c.q_lora_rank <= 0)
    fail(family, ": key 'q_lora_rank' is unset; ", family, " has a q LoRA (deepseek_v2_lite has none)");
  if (!q_lora && c.q_lora_rank > 0)
    fail(family, ": key 'q_lora_rank' is ", c.q_lora_rank, "; ", family, " has no q LoRA");
}

// The model fields of MCore's `args` for an MLA + MoE decoder.
inline ArgList mla_mcore_args(const config::ModelConfig& mc) {
  using V = ArgValue;
  return {{"hidden_size", V{mc.hidden_size}},
          {"ffn_hidden_size", V{mc.ffn_hidden_size}},
          {"num_attention_heads", V{mc.num_attention_heads}},
          {"num_query_groups", V{mc.num_query_groups}},
          {"multi_latent_attention", V{true}},
          {"q_lora_rank", mc.q_lora_rank > 0 ? V{mc.q_lora_rank} : V{}},
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
}

// What differs between the DeepSeek-schema config.json files of the MLA families.
struct DeepSeekJson {
  std::string_view architecture, model_type;
  std::string_view auto_map_config, auto_map_model, auto_map_causal_lm;  // remote code (Kimi); empty: none
  std::string_view topk_method;
  std::int64_t n_group = 1, topk_group = 1;
  bool norm_topk_prob = true;
  bool v2_aux = false;  // DeepSeek V2's aux_loss_alpha / seq_aux
  bool mtp = true;      // writes num_nextn_predict_layers
};

// HF config.json in the DeepSeek schema (keys sorted as transformers writes them). The HF layout
// needs the MoE pattern "first k dense, then all MoE"; anything else is refused.
inline std::string deepseek_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o,
                                        const DeepSeekJson& j) {
  c.validate("model config");
  const std::int64_t k = c.first_k_dense();
  for (std::int64_t i = k; i < c.num_layers; ++i)
    if (c.moe_layer_freq[static_cast<std::size_t>(i)] != 1)
      fail("model config: key 'moe_layer_freq': layer ", i, " is dense after MoE layers; the HF ", j.architecture,
           " config (first_k_dense_replace) cannot express it");
  if (c.moe_shared_expert_intermediate_size % (c.moe_ffn_hidden_size ? c.moe_ffn_hidden_size : 1) != 0)
    fail("model config: key 'moe_shared_expert_intermediate_size': ", c.moe_shared_expert_intermediate_size,
         " is not a multiple of moe_ffn_hidden_size ", c.moe_ffn_hidden_size, " (HF n_shared_experts)");
  rapidjson::StringBuffer sb;
  rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
  w.SetIndent(' ', 2);
  auto str = [&](std::string_view s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); };
  w.StartObject();
  w.Key("architectures"); w.StartArray(); str(j.architecture); w.EndArray();
  w.Key("attention_bias"); w.Bool(false);
  w.Key("attention_dropout"); w.Double(0.0);
  if (!j.auto_map_config.empty()) {
    w.Key("auto_map"); w.StartObject();
    w.Key("AutoConfig"); str(j.auto_map_config);
    w.Key("AutoModel"); str(j.auto_map_model);
    w.Key("AutoModelForCausalLM"); str(j.auto_map_causal_lm);
    w.EndObject();
  }
  if (j.v2_aux) { w.Key("aux_loss_alpha"); w.Double(0.001); }
  w.Key("bos_token_id"); w.Int(0);
  w.Key("eos_token_id"); w.Int(1);
  w.Key("first_k_dense_replace"); w.Int64(k);
  w.Key("hidden_act"); w.String("silu");
  w.Key("hidden_size"); w.Int64(c.hidden_size);
  w.Key("initializer_range"); w.Double(0.02);
  w.Key("intermediate_size"); w.Int64(c.ffn_hidden_size);
  w.Key("kv_lora_rank"); w.Int64(c.kv_lora_rank);
  w.Key("max_position_embeddings"); w.Int64(c.max_position_embeddings);
  w.Key("model_type"); str(j.model_type);
  w.Key("moe_intermediate_size"); w.Int64(c.moe_ffn_hidden_size);
  w.Key("moe_layer_freq"); w.Int(1);
  w.Key("n_group"); w.Int64(j.n_group);
  w.Key("n_routed_experts"); w.Int64(c.num_experts);
  w.Key("n_shared_experts"); w.Int64(c.moe_ffn_hidden_size ? c.moe_shared_expert_intermediate_size / c.moe_ffn_hidden_size : 0);
  w.Key("norm_topk_prob"); w.Bool(j.norm_topk_prob);
  w.Key("num_attention_heads"); w.Int64(c.num_attention_heads);
  w.Key("num_experts_per_tok"); w.Int64(c.moe_router_topk);
  w.Key("num_hidden_layers"); w.Int64(c.num_layers);
  w.Key("num_key_value_heads"); w.Int64(c.num_query_groups);
  if (j.mtp) { w.Key("num_nextn_predict_layers"); w.Int64(c.mtp_num_layers); }
  w.Key("q_lora_rank");
  if (c.q_lora_rank > 0) w.Int64(c.q_lora_rank); else w.Null();
  w.Key("qk_nope_head_dim"); w.Int64(c.qk_head_dim);
  w.Key("qk_rope_head_dim"); w.Int64(c.qk_pos_emb_head_dim);
  if (o.fp8_quantization_config) config::write_fp8_quantization_config(w, o);
  w.Key("rms_norm_eps"); w.Double(c.norm_epsilon);
  w.Key("rope_scaling");
  if (c.rope_scaling) {
    const auto& r = *c.rope_scaling;
    w.StartObject();
    w.Key("beta_fast"); w.Double(r.beta_fast);
    w.Key("beta_slow"); w.Double(r.beta_slow);
    w.Key("factor"); w.Double(r.factor);
    w.Key("mscale"); w.Double(r.mscale);
    w.Key("mscale_all_dim"); w.Double(r.mscale_all_dim);
    w.Key("original_max_position_embeddings"); w.Int64(r.original_max_position_embeddings);
    w.Key("type"); w.String("yarn");
    w.EndObject();
  } else {
    w.Null();
  }
  w.Key("rope_theta"); w.Double(c.rotary_base);
  w.Key("routed_scaling_factor"); w.Double(c.moe_router_topk_scaling_factor);
  w.Key("scoring_func"); w.String(c.moe_router_score_function.c_str());
  if (j.v2_aux) { w.Key("seq_aux"); w.Bool(true); }
  w.Key("tie_word_embeddings"); w.Bool(!c.untie_embeddings_and_output_weights);
  w.Key("topk_group"); w.Int64(j.topk_group);
  w.Key("topk_method"); str(j.topk_method);
  w.Key("torch_dtype"); w.String(o.dtype.c_str());
  w.Key("transformers_version"); w.String(o.transformers_version.c_str());
  w.Key("use_cache"); w.Bool(true);
  w.Key("v_head_dim"); w.Int64(c.v_head_dim);
  w.Key("vocab_size"); w.Int64(c.vocab_size);
  w.EndObject();
  return std::string(sb.GetString(), sb.GetSize()) + "\n";
}

}  // namespace ckbridge::model::kinds

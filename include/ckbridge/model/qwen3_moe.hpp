#pragma once
// Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3's attention (grouped QKV with the input norm folded into
// linear_qkv, q/k norms), then in every layer a separate pre_mlp_layernorm and a routed-experts MLP:
// a softmax router without bias, no shared expert. Names come from LoongForge's own
// qwen3_moe_convert.yaml, copied unchanged into configs/qwen3/ckpt_convert/.
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/common.hpp"
#include "ckbridge/model/moe.hpp"

namespace ckbridge::model {

struct Qwen3Moe {
  static constexpr std::string_view name = "qwen3_moe";
  static constexpr std::string_view hf_architecture = "Qwen3MoeForCausalLM";
  using params = std::tuple<kinds::WordEmbeddings, kinds::FinalNorm, kinds::OutputLayer,  //
                            kinds::InputNorm, kinds::Qkv, kinds::HeadNorm<"attention.q_a_layernorm">,
                            kinds::HeadNorm<"attention.kv_a_layernorm">, kinds::AttentionDense,  // attention
                            kinds::PostAttentionNorm, kinds::Router, kinds::ExpertFc1, kinds::ExpertFc2>;  // MoE

  static void check(const config::ModelConfig& c) {
    if (c.multi_latent_attention)
      fail("qwen3_moe: the model config describes multi-latent attention; Qwen3-MoE uses grouped-query attention");
    if (c.num_experts <= 0) fail("qwen3_moe: key 'num_experts' is unset; this policy is Qwen3-MoE (dense: --model qwen3)");
    for (std::size_t l = 0; l < c.moe_layer_freq.size(); ++l)
      if (c.moe_layer_freq[l] != 1)
        fail("qwen3_moe: key 'moe_layer_freq': layer ", l, " is dense; every Qwen3-MoE layer is MoE");
    if (c.moe_shared_expert_intermediate_size != 0)
      fail("qwen3_moe: key 'moe_shared_expert_intermediate_size' is set; Qwen3-MoE has no shared expert");
    if (c.moe_router_enable_expert_bias && !c.is_default("moe_router_enable_expert_bias"))
      fail("qwen3_moe: key 'moe_router_enable_expert_bias' is true; Qwen3-MoE's router has no expert bias");
    if (c.mtp_num_layers != 0) fail("qwen3_moe: the model config has mtp_num_layers ", c.mtp_num_layers, "; Qwen3-MoE has none");
    if (!c.qk_layernorm) fail("qwen3_moe: key 'qk_layernorm' is false; Qwen3-MoE has q/k norms");
    if (!c.untie_embeddings_and_output_weights)
      fail("qwen3_moe: tied embeddings (untie_embeddings_and_output_weights: false) are not supported");
  }
  static ArgList mcore_args(const config::ModelConfig& c) {
    ArgList a = kinds::gqa_mcore_args(c);
    a.insert(a.end(), {{"moe_ffn_hidden_size", ArgValue{c.moe_ffn_hidden_size}}, {"moe_router_topk", ArgValue{c.moe_router_topk}}});
    return a;
  }

  // HF config.json in the Qwen3MoeForCausalLM schema, keys sorted as transformers writes them.
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    c.validate("model config");
    check(c);
    if (c.rope_scaling) fail("model config: YaRN rope scaling is not written for Qwen3-MoE (set rope_type: rope)");
    rapidjson::StringBuffer sb;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
    w.SetIndent(' ', 2);
    w.StartObject();
    w.Key("architectures"); w.StartArray(); w.String(hf_architecture.data(), static_cast<rapidjson::SizeType>(hf_architecture.size())); w.EndArray();
    w.Key("attention_bias"); w.Bool(false);
    w.Key("attention_dropout"); w.Double(0.0);
    w.Key("bos_token_id"); w.Int(0);
    w.Key("decoder_sparse_step"); w.Int(1);
    w.Key("eos_token_id"); w.Int(1);
    w.Key("head_dim"); w.Int64(c.head_dim());
    w.Key("hidden_act"); w.String("silu");
    w.Key("hidden_size"); w.Int64(c.hidden_size);
    w.Key("initializer_range"); w.Double(0.02);
    w.Key("intermediate_size"); w.Int64(c.ffn_hidden_size);
    w.Key("max_position_embeddings"); w.Int64(c.max_position_embeddings);
    w.Key("max_window_layers"); w.Int64(c.num_layers);
    w.Key("mlp_only_layers"); w.StartArray(); w.EndArray();
    w.Key("model_type"); w.String("qwen3_moe");
    w.Key("moe_intermediate_size"); w.Int64(c.moe_ffn_hidden_size);
    w.Key("norm_topk_prob"); w.Bool(true);
    w.Key("num_attention_heads"); w.Int64(c.num_attention_heads);
    w.Key("num_experts"); w.Int64(c.num_experts);
    w.Key("num_experts_per_tok"); w.Int64(c.moe_router_topk);
    w.Key("num_hidden_layers"); w.Int64(c.num_layers);
    w.Key("num_key_value_heads"); w.Int64(c.num_query_groups);
    w.Key("output_router_logits"); w.Bool(false);
    if (o.fp8_quantization_config) config::write_fp8_quantization_config(w, o);
    w.Key("rms_norm_eps"); w.Double(c.norm_epsilon);
    w.Key("rope_scaling"); w.Null();
    w.Key("rope_theta"); w.Double(c.rotary_base);
    w.Key("router_aux_loss_coef"); w.Double(0.001);
    w.Key("sliding_window"); w.Null();
    w.Key("tie_word_embeddings"); w.Bool(!c.untie_embeddings_and_output_weights);
    w.Key("torch_dtype"); w.String(o.dtype.c_str());
    w.Key("transformers_version"); w.String(o.transformers_version.c_str());
    w.Key("use_cache"); w.Bool(true);
    w.Key("use_sliding_window"); w.Bool(false);
    w.Key("vocab_size"); w.Int64(c.vocab_size);
    w.EndObject();
    return std::string(sb.GetString(), sb.GetSize()) + "\n";
  }
};

}  // namespace ckbridge::model

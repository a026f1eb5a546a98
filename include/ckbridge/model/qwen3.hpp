#pragma once
// Qwen3 dense (Qwen3ForCausalLM): Llama's layout plus a per-head RMSNorm on queries and keys
// (HF self_attn.q_norm / k_norm, MCore self_attention.q_layernorm / k_layernorm; LoongForge's
// qwen3_convert.yaml names them attention.q_a_layernorm / attention.kv_a_layernorm). Names come
// from LoongForge's own convert YAML, copied unchanged into configs/qwen3/ckpt_convert/.
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/common.hpp"

namespace ckbridge::model {

struct Qwen3 {
  static constexpr std::string_view name = "qwen3";
  static constexpr std::string_view hf_architecture = "Qwen3ForCausalLM";
  using params = std::tuple<kinds::WordEmbeddings, kinds::FinalNorm, kinds::OutputLayer,  //
                            kinds::InputNorm, kinds::Qkv, kinds::HeadNorm<"attention.q_a_layernorm">,
                            kinds::HeadNorm<"attention.kv_a_layernorm">, kinds::AttentionDense,  // attention
                            kinds::PostAttentionNorm, kinds::MlpFc1<>, kinds::MlpFc2<>>;          // MLP

  static void check(const config::ModelConfig& c) {
    if (c.multi_latent_attention)
      fail("qwen3: the model config describes multi-latent attention; Qwen3 uses grouped-query attention");
    if (c.num_experts != 0)
      fail("qwen3: the model config has num_experts ", c.num_experts, "; this policy is Qwen3 dense (not Qwen3-MoE)");
    if (c.mtp_num_layers != 0) fail("qwen3: the model config has mtp_num_layers ", c.mtp_num_layers, "; Qwen3 has none");
    if (!c.qk_layernorm) fail("qwen3: key 'qk_layernorm' is false; Qwen3 has q/k norms");
    if (!c.untie_embeddings_and_output_weights)
      fail("qwen3: tied embeddings (untie_embeddings_and_output_weights: false) are not supported yet");
  }
  static ArgList mcore_args(const config::ModelConfig& c) { return kinds::gqa_mcore_args(c); }

  // HF config.json in the Qwen3ForCausalLM schema, keys sorted as transformers writes them.
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    c.validate("model config");
    check(c);
    if (c.rope_scaling) fail("model config: YaRN rope scaling is not written for Qwen3 (set rope_type: rope)");
    rapidjson::StringBuffer sb;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
    w.SetIndent(' ', 2);
    w.StartObject();
    w.Key("architectures"); w.StartArray(); w.String(hf_architecture.data(), static_cast<rapidjson::SizeType>(hf_architecture.size())); w.EndArray();
    w.Key("attention_bias"); w.Bool(false);
    w.Key("attention_dropout"); w.Double(0.0);
    w.Key("bos_token_id"); w.Int(0);
    w.Key("eos_token_id"); w.Int(1);
    w.Key("head_dim"); w.Int64(c.head_dim());
    w.Key("hidden_act"); w.String("silu");
    w.Key("hidden_size"); w.Int64(c.hidden_size);
    w.Key("initializer_range"); w.Double(0.02);
    w.Key("intermediate_size"); w.Int64(c.ffn_hidden_size);
    w.Key("max_position_embeddings"); w.Int64(c.max_position_embeddings);
    w.Key("max_window_layers"); w.Int64(c.num_layers);
    w.Key("model_type"); w.String("qwen3");
    w.Key("num_attention_heads"); w.Int64(c.num_attention_heads);
    w.Key("num_hidden_layers"); w.Int64(c.num_layers);
    w.Key("num_key_value_heads"); w.Int64(c.num_query_groups);
    if (o.fp8_quantization_config) config::write_fp8_quantization_config(w, o);
    w.Key("rms_norm_eps"); w.Double(c.norm_epsilon);
    w.Key("rope_scaling"); w.Null();
    w.Key("rope_theta"); w.Double(c.rotary_base);
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

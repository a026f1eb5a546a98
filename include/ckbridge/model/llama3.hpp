#pragma once
// Llama 3 / 3.1 (dense decoder, GQA attention, SwiGLU MLP, RMSNorm, untied output layer) as a
// model policy: shared kinds only (model/common.hpp), its MCore args and its config.json writer.
// As for every model, names are not here: configs/llama3/ckpt_convert/llama3_convert.yaml maps
// each common name to its HF and MCore names (LoongForge's TE naming: the input norm is
// `self_attention.linear_qkv.layer_norm_weight`, the post-attention norm
// `mlp.linear_fc1.layer_norm_weight`). HF's q_proj, k_proj and v_proj are one instance
// ("attention.query_key_value", a three-name list in the YAML) laid out by kinds::Qkv.
// docs/adding-a-model.md walks through this file as the worked example.
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/common.hpp"

namespace ckbridge::model {

struct Llama3 {
  static constexpr std::string_view name = "llama3";
  static constexpr std::string_view hf_architecture = "LlamaForCausalLM";
  using params = std::tuple<kinds::WordEmbeddings, kinds::FinalNorm, kinds::OutputLayer,  //
                            kinds::InputNorm, kinds::Qkv, kinds::AttentionDense,          // attention
                            kinds::PostAttentionNorm, kinds::MlpFc1<>, kinds::MlpFc2<>>;  // MLP

  // Refuses what the kinds above cannot describe (the config reader checks the rest).
  static void check(const config::ModelConfig& c) {
    if (c.multi_latent_attention)
      fail("llama3: the model config describes multi-latent attention (kv_lora_rank, multi_latent_attention); "
           "Llama 3 uses grouped-query attention");
    if (c.num_experts != 0) fail("llama3: the model config has num_experts ", c.num_experts, "; Llama 3 is dense");
    if (c.mtp_num_layers != 0)
      fail("llama3: the model config has mtp_num_layers ", c.mtp_num_layers, "; Llama 3 has none");
    if (c.qk_layernorm) fail("llama3: key 'qk_layernorm' is true; Llama has no q/k norms (Qwen3 has)");
    if (!c.untie_embeddings_and_output_weights)
      fail("llama3: tied embeddings (untie_embeddings_and_output_weights: false) are not supported");
  }
  static ArgList mcore_args(const config::ModelConfig& c) { return kinds::gqa_mcore_args(c); }

  // HF config.json of a Llama 3 (LlamaForCausalLM) model: dense SwiGLU MLP, GQA attention, RMSNorm,
  // keys in a stable (sorted) order like transformers writes them. YaRN rope scaling and MoE do not
  // exist in this schema and are refused.
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    c.validate("model config");
    if (c.multi_latent_attention) fail("model config: multi-latent attention has no Llama config.json form");
    if (c.num_experts != 0) fail("model config: key 'num_experts': ", c.num_experts, " experts; a Llama model is dense");
    if (c.mtp_num_layers != 0) fail("model config: key 'mtp_num_layers': a Llama config.json has no MTP layers");
    if (c.rope_scaling) fail("model config: YaRN rope scaling has no Llama config.json form (set rope_type: rope)");
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
    w.Key("mlp_bias"); w.Bool(false);
    w.Key("model_type"); w.String("llama");
    w.Key("num_attention_heads"); w.Int64(c.num_attention_heads);
    w.Key("num_hidden_layers"); w.Int64(c.num_layers);
    w.Key("num_key_value_heads"); w.Int64(c.num_query_groups);
    w.Key("pretraining_tp"); w.Int(1);
    if (o.fp8_quantization_config) config::write_fp8_quantization_config(w, o);
    w.Key("rms_norm_eps"); w.Double(c.norm_epsilon);
    w.Key("rope_scaling"); w.Null();
    w.Key("rope_theta"); w.Double(c.rotary_base);
    w.Key("tie_word_embeddings"); w.Bool(!c.untie_embeddings_and_output_weights);
    w.Key("torch_dtype"); w.String(o.dtype.c_str());
    w.Key("transformers_version"); w.String(o.transformers_version.c_str());
    w.Key("use_cache"); w.Bool(true);
    w.Key("vocab_size"); w.Int64(c.vocab_size);
    w.EndObject();
    return std::string(sb.GetString(), sb.GetSize()) + "\n";
  }
};

}  // namespace ckbridge::model

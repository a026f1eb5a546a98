#pragma once
// Llama 2 / 3 / 3.1 (LlamaForCausalLM: dense decoder, GQA or multi-head attention, SwiGLU MLP,
// RMSNorm, untied output layer) as one model policy: shared kinds only (model/common.hpp), its
// MCore args and its config.json writer. What tells the versions apart is configuration, not
// tensors: Llama 2 is multi-head (query groups = heads) and float16 (the weights keep their dtype,
// and config.json's torch_dtype follows them), Llama 3.1 has rope scaling of type "llama3". So
// `--model llama2` and `--model llama3_1` name this policy too.
// As for every model, names are not here: configs/llama3/ckpt_convert/llama3_convert.yaml (and
// LoongForge's llama3_1_convert.yaml, llama2_convert.yaml) map each common name to its HF and
// MCore names (LoongForge's TE naming: the input norm is `self_attention.linear_qkv.layer_norm_weight`,
// the post-attention norm `mlp.linear_fc1.layer_norm_weight`). HF's q_proj, k_proj and v_proj are
// one instance ("attention.query_key_value", a three-name list in the YAML) laid out by kinds::Qkv.
// docs/adding-a-model.md walks through this file as the worked example.
#include <array>
#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/common.hpp"

namespace ckbridge::model {

struct Llama3 {
  static constexpr std::string_view name = "llama3";
  static constexpr std::array<std::string_view, 2> aliases{"llama2", "llama3_1"};
  static constexpr std::string_view hf_architecture = "LlamaForCausalLM";
  using params = std::tuple<kinds::WordEmbeddings, kinds::FinalNorm, kinds::OutputLayer,  //
                            kinds::InputNorm, kinds::Qkv, kinds::AttentionDense,          // attention
                            kinds::PostAttentionNorm, kinds::MlpFc1<>, kinds::MlpFc2<>>;  // MLP

  // Refuses what the kinds above cannot describe (the config reader checks the rest), and so the
  // configs of the other GQA families (Qwen2's q/k/v biases, Qwen3's q/k norms).
  static void check(const config::ModelConfig& c) {
    if (c.multi_latent_attention)
      fail("llama3: the model config describes multi-latent attention (kv_lora_rank, multi_latent_attention); "
           "Llama 3 uses grouped-query attention");
    if (c.num_experts != 0) fail("llama3: the model config has num_experts ", c.num_experts, "; Llama 3 is dense");
    if (c.mtp_num_layers != 0)
      fail("llama3: the model config has mtp_num_layers ", c.mtp_num_layers, "; Llama 3 has none");
    if (c.qk_layernorm) fail("llama3: key 'qk_layernorm' is true; Llama has no q/k norms (Qwen3 has)");
    if (c.add_qkv_bias) fail("llama3: key 'add_qkv_bias' is true; Llama has no q/k/v biases (Qwen2 has)");
    if (!c.untie_embeddings_and_output_weights)
      fail("llama3: tied embeddings (untie_embeddings_and_output_weights: false) are not supported");
  }
  static ArgList mcore_args(const config::ModelConfig& c) {
    ArgList a = kinds::gqa_mcore_args(c);
    if (c.llama3_rope_scaling) {  // Megatron-LM's --use-rope-scaling (Llama 3.1's frequency scaling)
      a.emplace_back("use_rope_scaling", ArgValue{true});
      a.emplace_back("rope_scaling_factor", ArgValue{c.llama3_rope_scaling->factor});
    }
    return a;
  }

  // HF config.json of a LlamaForCausalLM model: the dense GQA block plus Llama's keys; Llama 3.1's
  // rope scaling as rope_type "llama3". YaRN rope scaling and MoE do not exist in this schema and
  // are refused.
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    c.validate("model config");
    if (c.multi_latent_attention) fail("model config: multi-latent attention has no Llama config.json form");
    if (c.num_experts != 0) fail("model config: key 'num_experts': ", c.num_experts, " experts; a Llama model is dense");
    if (c.mtp_num_layers != 0) fail("model config: key 'mtp_num_layers': a Llama config.json has no MTP layers");
    if (c.rope_scaling) fail("model config: YaRN rope scaling has no Llama config.json form (set rope_type: rope)");
    kinds::HfConfigJson j = kinds::dense_gqa_config_json(c, o, hf_architecture, "llama");
    j.flag("attention_bias", false).integer("head_dim", c.head_dim()).flag("mlp_bias", false).integer("pretraining_tp", 1);
    if (const auto& r = c.llama3_rope_scaling)
      j.value("rope_scaling", [r = *r](kinds::HfConfigJson::Writer& w) {
        w.StartObject();
        w.Key("factor"); w.Double(r.factor);
        w.Key("high_freq_factor"); w.Double(r.high_freq_factor);
        w.Key("low_freq_factor"); w.Double(r.low_freq_factor);
        w.Key("original_max_position_embeddings"); w.Int64(r.original_max_position_embeddings);
        w.Key("rope_type"); w.String("llama3");
        w.EndObject();
      });
    return j.str();
  }
};

}  // namespace ckbridge::model

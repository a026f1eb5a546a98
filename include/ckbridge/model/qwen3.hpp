#pragma once
// Qwen3 dense (Qwen3ForCausalLM): Llama's layout plus a per-head RMSNorm on queries and keys
// (HF self_attn.q_norm / k_norm, MCore self_attention.q_layernorm / k_layernorm; LoongForge's
// qwen3_convert.yaml names them attention.q_a_layernorm / attention.kv_a_layernorm). Names come
// from LoongForge's own convert YAML, copied unchanged into configs/qwen3/ckpt_convert/.
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
    if (c.add_qkv_bias) fail("qwen3: key 'add_qkv_bias' is true; Qwen3 has no q/k/v biases (Qwen2 has)");
    if (!c.untie_embeddings_and_output_weights)
      fail("qwen3: tied embeddings (untie_embeddings_and_output_weights: false) are not supported yet");
  }
  static ArgList mcore_args(const config::ModelConfig& c) { return kinds::gqa_mcore_args(c); }

  // HF config.json in the Qwen3ForCausalLM schema: the dense GQA block plus Qwen3's keys.
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    c.validate("model config");
    check(c);
    if (c.rope_scaling) fail("model config: YaRN rope scaling is not written for Qwen3 (set rope_type: rope)");
    kinds::HfConfigJson j = kinds::dense_gqa_config_json(c, o, hf_architecture, "qwen3");
    j.flag("attention_bias", false).integer("head_dim", c.head_dim()).integer("max_window_layers", c.num_layers);
    j.null("sliding_window").flag("use_sliding_window", false);
    return j.str();
  }
};

}  // namespace ckbridge::model

#pragma once
// Qwen2 and Qwen2.5 (Qwen2ForCausalLM): Llama's layout plus biases on q, k and v (kinds::QkvBias,
// the weight's grouped-QKV layout on one axis), and tied input/output embeddings where the model
// says so (the 0.5B / 1.5B sizes: no HF lm_head; MCore output_layer only in a last stage without
// the embedding, kinds::TiedOutputLayer). `--model qwen2_5` names this policy too. Names come from
// LoongForge's own convert YAMLs, copied unchanged (configs/qwen2/, configs/qwen2.5/).
#include <array>
#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/common.hpp"

namespace ckbridge::model {

struct Qwen2 {
  static constexpr std::string_view name = "qwen2";
  static constexpr std::array<std::string_view, 1> aliases{"qwen2_5"};
  static constexpr std::string_view hf_architecture = "Qwen2ForCausalLM";
  using params = std::tuple<kinds::WordEmbeddings, kinds::FinalNorm, kinds::UntiedOutputLayer,     //
                            kinds::TiedOutputLayer, kinds::InputNorm, kinds::Qkv, kinds::QkvBias,  // attention
                            kinds::AttentionDense, kinds::PostAttentionNorm, kinds::MlpFc1<>, kinds::MlpFc2<>>;

  static void check(const config::ModelConfig& c) {
    if (c.multi_latent_attention)
      fail("qwen2: the model config describes multi-latent attention; Qwen2 uses grouped-query attention");
    if (c.num_experts != 0) fail("qwen2: the model config has num_experts ", c.num_experts, "; Qwen2 is dense");
    if (c.mtp_num_layers != 0)
      fail("qwen2: the model config has mtp_num_layers ", c.mtp_num_layers, "; Qwen2 has none (MiMo has)");
    if (c.qk_layernorm) fail("qwen2: key 'qk_layernorm' is true; Qwen2 has no q/k norms (Qwen3 has)");
    if (!c.add_qkv_bias) fail("qwen2: key 'add_qkv_bias' is false; Qwen2 has q/k/v biases (Llama has none)");
  }
  static ArgList mcore_args(const config::ModelConfig& c) {
    ArgList a = kinds::gqa_mcore_args(c);
    a.emplace_back("add_qkv_bias", ArgValue{true});
    return a;
  }

  // HF config.json in the Qwen2ForCausalLM schema: the dense GQA block plus Qwen2's sliding-window keys.
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    c.validate("model config");
    check(c);
    if (c.rope_scaling) fail("model config: YaRN rope scaling is not written for Qwen2 (set rope_type: rope)");
    kinds::HfConfigJson j = kinds::dense_gqa_config_json(c, o, hf_architecture, "qwen2");
    j.integer("max_window_layers", c.num_layers).integer("sliding_window", c.max_position_embeddings);
    j.flag("use_sliding_window", false);
    return j.str();
  }
};

}  // namespace ckbridge::model

#pragma once
// MiMo (MiMoForCausalLM, remote code): a Qwen2 decoder (q/k/v biases, GQA, untied output layer)
// plus multi-token-prediction blocks, HF `model.mtp_layers.<i>.` (the convert YAML's HF
// mtp_layer_prefix; LoongForge's names: token_layernorm -> enorm, hidden_layernorm -> hnorm,
// input_proj -> eh_proj, final_layernorm -> final_layernorm, and a whole decoder layer ->
// mtp.layers.<i>.transformer_layer). eh_proj is copied as is: its input is [hidden; embedding] in
// LoongForge's MiMo MTP layer (docs/loongforge-deviations.md). The MTP stage also holds the padded
// embedding (the YAML's HF mtp_word_embeddings is null: HF stores no copy).
#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/common.hpp"

namespace ckbridge::model {

struct MiMo {
  static constexpr std::string_view name = "mimo";
  static constexpr std::string_view hf_architecture = "MiMoForCausalLM";
  using params = std::tuple<kinds::WordEmbeddings, kinds::FinalNorm, kinds::OutputLayer,  //
                            kinds::InputNorm, kinds::Qkv, kinds::QkvBias, kinds::AttentionDense,
                            kinds::PostAttentionNorm, kinds::MlpFc1<>, kinds::MlpFc2<>,  // decoder layer
                            kinds::MtpEnorm, kinds::MtpHnorm, kinds::MtpEhProj, kinds::MtpFinalNorm>;

  static void check(const config::ModelConfig& c) {
    if (c.multi_latent_attention)
      fail("mimo: the model config describes multi-latent attention; MiMo uses grouped-query attention");
    if (c.num_experts != 0) fail("mimo: the model config has num_experts ", c.num_experts, "; MiMo is dense");
    if (c.mtp_num_layers == 0)
      fail("mimo: key 'mtp_num_layers' is 0; MiMo has multi-token-prediction layers (without them: Qwen2)");
    if (c.qk_layernorm) fail("mimo: key 'qk_layernorm' is true; MiMo has no q/k norms (Qwen3 has)");
    if (!c.add_qkv_bias) fail("mimo: key 'add_qkv_bias' is false; MiMo has q/k/v biases");
    if (!c.untie_embeddings_and_output_weights)
      fail("mimo: tied embeddings (untie_embeddings_and_output_weights: false) are not supported");
  }
  static ArgList mcore_args(const config::ModelConfig& c) {
    ArgList a = kinds::gqa_mcore_args(c);
    a.emplace_back("add_qkv_bias", ArgValue{true});
    return a;
  }

  // HF config.json of MiMo's remote-code schema (Qwen2's keys plus attention_bias, the MTP layer
  // count and the auto_map that names the remote classes).
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    c.validate("model config");
    check(c);
    if (c.rope_scaling) fail("model config: YaRN rope scaling is not written for MiMo (set rope_type: rope)");
    kinds::HfConfigJson j = kinds::dense_gqa_config_json(c, o, hf_architecture, "mimo");
    j.flag("attention_bias", true).integer("max_window_layers", c.num_layers);
    j.integer("num_nextn_predict_layers", c.mtp_num_layers);
    j.integer("sliding_window", c.max_position_embeddings).flag("use_sliding_window", false);
    j.value("auto_map", [](kinds::HfConfigJson::Writer& w) {
      w.StartObject();
      w.Key("AutoConfig"); w.String("configuration_mimo.MiMoConfig");
      w.Key("AutoModel"); w.String("modeling_mimo.MiMoModel");
      w.Key("AutoModelForCausalLM"); w.String("modeling_mimo.MiMoForCausalLM");
      w.EndObject();
    });
    return j.str();
  }
};

}  // namespace ckbridge::model

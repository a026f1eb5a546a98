#pragma once
// Kimi K2 (Moonshot's DeepSeek-V3 architecture: HF DeepseekV3ForCausalLM with model_type "kimi_k2"):
// DeepSeek V3's parameter kinds without the MTP block (LoongForge's kimi_k2 YAMLs put every name
// under `language_model.`; names are configuration). Its vocabulary pads to a multiple of the model
// YAML's make_vocab_size_divisible_by (1280) unless the flag says otherwise (the drivers' rule).
#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/deepseek_v3.hpp"

namespace ckbridge::model {

struct KimiK2 {
  static constexpr std::string_view name = "kimi_k2";
  static constexpr std::string_view hf_architecture = "DeepseekV3ForCausalLM";
  static constexpr std::string_view hf_model_type = "kimi_k2";
  using params = std::tuple<
      kinds::WordEmbeddings, kinds::FinalNorm, kinds::OutputLayer,  //
      kinds::InputNorm, kinds::QDown, kinds::QUpNorm, kinds::QUp, kinds::KvDown, kinds::KvUpNorm, kinds::KvUp,
      kinds::MlaDense, kinds::PostAttentionNorm,  // attention
      kinds::MlpFc1<Where::DenseLayer>, kinds::MlpFc2<Where::DenseLayer>, kinds::Router, kinds::RouterBias,
      kinds::SharedFc1, kinds::SharedFc2, kinds::ExpertFc1, kinds::ExpertFc2>;  // dense, then MoE

  static void check(const config::ModelConfig& c) {
    kinds::check_mla(name, c, true);
    if (c.num_experts > 0 && !c.moe_router_enable_expert_bias)
      fail("kimi_k2: key 'moe_router_enable_expert_bias' is false; Kimi K2 routes with the expert bias");
    if (c.mtp_num_layers != 0)
      fail("kimi_k2: the model config has mtp_num_layers ", c.mtp_num_layers, "; Kimi K2 has no MTP layers");
    if (!c.loongforge_model_type.empty() && c.loongforge_model_type != "kimi")
      fail("kimi_k2: the model config says model_type '", c.loongforge_model_type, "'; Kimi K2's says 'kimi'");
  }
  static ArgList mcore_args(const config::ModelConfig& c) { return kinds::mla_mcore_args(c); }

  // The published Kimi K2 config.json: DeepSeek-V3's schema, model_type kimi_k2, remote code
  // (configuration_deepseek / modeling_deepseek), no MTP layers.
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    check(c);
    kinds::DeepSeekJson j;
    j.architecture = hf_architecture;
    j.model_type = hf_model_type;
    j.auto_map_config = "configuration_deepseek.DeepseekV3Config";
    j.auto_map_model = "modeling_deepseek.DeepseekV3Model";
    j.auto_map_causal_lm = "modeling_deepseek.DeepseekV3ForCausalLM";
    j.topk_method = "noaux_tc";
    j.n_group = c.moe_router_num_groups;
    j.topk_group = c.moe_router_group_topk;
    return kinds::deepseek_config_json(c, o, j);
  }
};

}  // namespace ckbridge::model

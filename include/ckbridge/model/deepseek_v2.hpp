#pragma once
// DeepSeek V2 and V2-Lite (DeepseekV2ForCausalLM): MLA (V2 with a q LoRA, V2-Lite with one q
// projection) and dense-then-MoE layers with shared experts and a softmax router WITHOUT the expert
// bias; no MTP. Kinds shared with DeepSeek V3 (model/mla.hpp, model/moe.hpp). Names come from
// LoongForge's own deepseek_v2_convert.yaml / deepseek_v2_lite_convert.yaml (configs/deepseek2/).
#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/common.hpp"
#include "ckbridge/model/mla.hpp"
#include "ckbridge/model/moe.hpp"

namespace ckbridge::model {

namespace deepseek_v2 {
// Everything after the q projection(s): kv compression, output, dense MLP then MoE.
template <class... Q>
using params = std::tuple<kinds::WordEmbeddings, kinds::FinalNorm, kinds::OutputLayer, kinds::InputNorm, Q...,
                          kinds::KvDown, kinds::KvUpNorm, kinds::KvUp, kinds::MlaDense, kinds::PostAttentionNorm,
                          kinds::MlpFc1<Where::DenseLayer>, kinds::MlpFc2<Where::DenseLayer>, kinds::Router,
                          kinds::SharedFc1, kinds::SharedFc2, kinds::ExpertFc1, kinds::ExpertFc2>;

// V2's router: no expert bias (a YAML that leaves the key out means none), no MTP.
inline void check_router(std::string_view family, const config::ModelConfig& c, bool q_lora) {
  kinds::check_mla(family, c, q_lora);
  if (c.moe_router_enable_expert_bias && !c.is_default("moe_router_enable_expert_bias"))
    fail(family, ": key 'moe_router_enable_expert_bias' is true; DeepSeek V2 has no router expert bias "
         "(DeepSeek V3: --model deepseek_v3)");
  if (c.mtp_num_layers != 0)
    fail(family, ": the model config has mtp_num_layers ", c.mtp_num_layers, "; DeepSeek V2 has no MTP layers");
}

// config.json: V2 routes group-limited greedy when the model YAML sets router groups (DeepSeek-V2),
// else plain greedy (V2-Lite); softmax scores, no top-k renormalisation.
inline std::string config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
  const bool grouped = !c.is_default("moe_router_num_groups") && c.moe_router_num_groups > 1;
  kinds::DeepSeekJson j;
  j.architecture = "DeepseekV2ForCausalLM";
  j.model_type = "deepseek_v2";
  j.topk_method = grouped ? "group_limited_greedy" : "greedy";
  j.n_group = grouped ? c.moe_router_num_groups : 1;
  j.topk_group = grouped ? c.moe_router_group_topk : 1;
  j.norm_topk_prob = false;
  j.v2_aux = true;
  j.mtp = false;
  return kinds::deepseek_config_json(c, o, j);
}
}  // namespace deepseek_v2

struct DeepSeekV2 {
  static constexpr std::string_view name = "deepseek_v2";
  static constexpr std::string_view hf_architecture = "DeepseekV2ForCausalLM";
  using params = deepseek_v2::params<kinds::QDown, kinds::QUpNorm, kinds::QUp>;
  static void check(const config::ModelConfig& c) { deepseek_v2::check_router(name, c, true); }
  static ArgList mcore_args(const config::ModelConfig& c) { return kinds::mla_mcore_args(c); }
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    check(c);
    return deepseek_v2::config_json(c, o);
  }
};

struct DeepSeekV2Lite {
  static constexpr std::string_view name = "deepseek_v2_lite";
  static constexpr std::string_view hf_architecture = "DeepseekV2ForCausalLM";
  using params = deepseek_v2::params<kinds::QProj>;
  static void check(const config::ModelConfig& c) { deepseek_v2::check_router(name, c, false); }
  static ArgList mcore_args(const config::ModelConfig& c) { return kinds::mla_mcore_args(c); }
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    check(c);
    return deepseek_v2::config_json(c, o);
  }
};

}  // namespace ckbridge::model

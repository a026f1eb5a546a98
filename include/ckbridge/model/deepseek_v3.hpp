#pragma once
// DeepSeek V3 / V3.1 (MLA + MoE + MTP) as a model policy: its parameter kinds (shared with the other
// MLA families in model/mla.hpp and model/moe.hpp), its MCore args and its HF config.json writer.
// Names are not here: they come from the convert YAML's name_map (common name -> HF / MCore names),
// so LoongForge's naming variants and the local (no-TE) layer spec need no recompile.
#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/common.hpp"
#include "ckbridge/model/mla.hpp"
#include "ckbridge/model/moe.hpp"

namespace ckbridge::model {

namespace deepseek_v3 {
// The MTP block's projection of [embedding; hidden] (its inner layer uses the per-layer kinds).
using MtpEhProj = kinds::MtpEhProj;
// The DeepSeek V3 / Kimi K2 parameter list (MLA with a q LoRA, dense then MoE with shared experts and
// a router bias, optional MTP blocks).
using params = std::tuple<
    kinds::WordEmbeddings, kinds::FinalNorm, kinds::OutputLayer,
    // attention, every layer
    kinds::InputNorm, kinds::QDown, kinds::QUpNorm, kinds::QUp, kinds::KvDown, kinds::KvUpNorm, kinds::KvUp,
    kinds::MlaDense, kinds::PostAttentionNorm,
    // dense MLP (the first k layers), then MoE
    kinds::MlpFc1<Where::DenseLayer>, kinds::MlpFc2<Where::DenseLayer>, kinds::Router, kinds::RouterBias,
    kinds::SharedFc1, kinds::SharedFc2, kinds::ExpertFc1, kinds::ExpertFc2,
    // MTP block
    kinds::Norm<"mtp_enorm", Where::MtpBlock>, kinds::Norm<"mtp_hnorm", Where::MtpBlock>, MtpEhProj,
    kinds::Norm<"mtp_shared_head_norm", Where::MtpBlock>>;
// HF stores these in every MTP block; they equal the main embedding and output layer.
using mtp_copies = std::tuple<MtpCopy<"mtp_word_embeddings", "word_embeddings">,
                              MtpCopy<"mtp_shared_head_head", "word_embeddings_for_head">>;
}  // namespace deepseek_v3

struct DeepSeekV3 {
  static constexpr std::string_view name = "deepseek_v3";
  static constexpr std::string_view hf_architecture = "DeepseekV3ForCausalLM";
  static constexpr std::string_view hf_model_type = "deepseek_v3";  // Kimi K2 shares the architecture
  using params = deepseek_v3::params;
  using mtp_copies = deepseek_v3::mtp_copies;

  // V3 has a q LoRA and the router's expert bias (V2 has neither bias nor MTP); a model YAML of
  // LoongForge's Kimi schema (model_type "kimi") is Kimi K2's.
  static void check(const config::ModelConfig& c) {
    kinds::check_mla(name, c, true);
    if (c.num_experts > 0 && !c.moe_router_enable_expert_bias)
      fail("deepseek_v3: key 'moe_router_enable_expert_bias' is false; DeepSeek V3 routes with the expert bias "
           "(e_score_correction_bias; a model without it is DeepSeek V2: --model deepseek_v2)");
    if (c.num_experts > 0 && c.is_default("moe_router_enable_expert_bias") && c.mtp_num_layers == 0)
      fail("deepseek_v3: the model config sets neither 'moe_router_enable_expert_bias' nor MTP layers, as DeepSeek V2's "
           "do (set moe_router_enable_expert_bias: true for V3, or --model deepseek_v2)");
    if (c.loongforge_model_type == "kimi")
      fail("deepseek_v3: the model config says model_type 'kimi' (Kimi K2: --model kimi_k2)");
  }
  static ArgList mcore_args(const config::ModelConfig& c) { return kinds::mla_mcore_args(c); }

  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    kinds::DeepSeekJson j;
    j.architecture = hf_architecture;
    j.model_type = hf_model_type;
    j.topk_method = c.moe_router_enable_expert_bias ? "noaux_tc" : "greedy";
    j.n_group = c.moe_router_num_groups;
    j.topk_group = c.moe_router_group_topk;
    return kinds::deepseek_config_json(c, o, j);
  }
};

}  // namespace ckbridge::model

#pragma once
// DeepSeek V3 / V3.1 (MLA + MoE + MTP): the parameter kinds, each bound to its TP rule, placement
// and FP8 treatment. Names are not here: they come from the convert YAML's name_map (common name
// -> HF / MCore names), so LoongForge's naming variants and the local (no-TE) layer spec need no
// recompile. Rules follow LoongForge's TENSOR_PARALLEL_DIM table and the MCore layer specs.
// A common name "a/b" is composed from two name_map keys: the module prefix `a` (shared or routed
// experts) and the leaf `b` (fc1 / fc2); routed experts insert the expert index after `a`.
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/model/param.hpp"

namespace ckbridge::model {

struct DeepSeekV3 {
  static constexpr std::string_view name = "deepseek_v3";
  using params = std::tuple<
      // ---- globals
      Param<"word_embeddings", TpRule::VocabRows, Where::FirstStage>,
      Param<"final_layernorm", TpRule::Replicate, Where::LastStage>,
      Param<"word_embeddings_for_head", TpRule::VocabRows, Where::LastStage>,
      // ---- attention (MLA), every layer
      Param<"input_layernorm", TpRule::Replicate, Where::Layer>,
      Param<"attention.q_down", TpRule::Rows, Where::Layer, Fp8::BlockwiseNoTp>,
      Param<"attention.q_up_layernorm", TpRule::Replicate, Where::Layer>,
      Param<"attention.q_up", TpRule::Rows, Where::Layer, Fp8::Blockwise>,
      Param<"attention.kv_down", TpRule::Rows, Where::Layer, Fp8::BlockwiseNoTp>,
      Param<"attention.kv_up_layernorm", TpRule::Replicate, Where::Layer>,
      Param<"attention.kv_up", TpRule::Rows, Where::Layer, Fp8::Blockwise>,
      Param<"attention.dense", TpRule::Cols, Where::Layer, Fp8::Blockwise>,
      Param<"post_attention_layernorm", TpRule::Replicate, Where::Layer>,
      // ---- dense MLP (the first k layers)
      Param<"mlp.dense_h_to_4h", TpRule::GateUp, Where::DenseLayer, Fp8::Blockwise>,
      Param<"mlp.dense_4h_to_h", TpRule::Cols, Where::DenseLayer, Fp8::Blockwise>,
      // ---- MoE: router, shared experts, routed experts
      Param<"moe.gate", TpRule::Replicate, Where::MoeLayer>,
      Param<"moe.gate.bias", TpRule::Replicate, Where::MoeLayer>,
      Param<"moe.shared_expert/moe.expert_h_to_4h", TpRule::GateUp, Where::MoeLayer, Fp8::Blockwise>,
      Param<"moe.shared_expert/moe.expert_4h_to_h", TpRule::Cols, Where::MoeLayer, Fp8::Blockwise>,
      Param<"moe.expert/moe.expert_h_to_4h", TpRule::GateUp, Where::Expert, Fp8::Blockwise, TpGroup::Expert>,
      Param<"moe.expert/moe.expert_4h_to_h", TpRule::Cols, Where::Expert, Fp8::Blockwise, TpGroup::Expert>,
      // ---- multi-token prediction block (its inner layer uses the per-layer kinds above)
      Param<"mtp_enorm", TpRule::Replicate, Where::MtpBlock>,
      Param<"mtp_hnorm", TpRule::Replicate, Where::MtpBlock>,
      Param<"mtp_eh_proj", TpRule::Rows, Where::MtpBlock, Fp8::MtpProjection>,
      Param<"mtp_shared_head_norm", TpRule::Replicate, Where::MtpBlock>>;
  // HF stores these in every MTP block; they equal the main embedding and output layer.
  using mtp_copies = std::tuple<MtpCopy<"mtp_word_embeddings", "word_embeddings">,
                                MtpCopy<"mtp_shared_head_head", "word_embeddings_for_head">>;

  // The full (HF-side, unsharded) shape of a parameter kind; [gate; up] kinds are the concatenation.
  static Shape full_shape(std::string_view common, const config::ModelConfig& c) {
    const std::int64_t H = c.hidden_size, heads = c.num_attention_heads;
    if (common == "word_embeddings" || common == "word_embeddings_for_head") return {c.vocab_size, H};
    if (common == "final_layernorm" || common == "input_layernorm" || common == "post_attention_layernorm" ||
        common == "mtp_enorm" || common == "mtp_hnorm" || common == "mtp_shared_head_norm")
      return {H};
    if (common == "attention.q_down") return {c.q_lora_rank, H};
    if (common == "attention.q_up_layernorm") return {c.q_lora_rank};
    if (common == "attention.q_up") return {heads * (c.qk_head_dim + c.qk_pos_emb_head_dim), c.q_lora_rank};
    if (common == "attention.kv_down") return {c.kv_lora_rank + c.qk_pos_emb_head_dim, H};
    if (common == "attention.kv_up_layernorm") return {c.kv_lora_rank};
    if (common == "attention.kv_up") return {heads * (c.qk_head_dim + c.v_head_dim), c.kv_lora_rank};
    if (common == "attention.dense") return {H, heads * c.v_head_dim};
    if (common == "mlp.dense_h_to_4h") return {2 * c.ffn_hidden_size, H};
    if (common == "mlp.dense_4h_to_h") return {H, c.ffn_hidden_size};
    if (common == "moe.gate") return {c.num_experts, H};
    if (common == "moe.gate.bias") return {c.num_experts};
    if (common == "moe.shared_expert/moe.expert_h_to_4h") return {2 * c.moe_shared_expert_intermediate_size, H};
    if (common == "moe.shared_expert/moe.expert_4h_to_h") return {H, c.moe_shared_expert_intermediate_size};
    if (common == "moe.expert/moe.expert_h_to_4h") return {2 * c.moe_ffn_hidden_size, H};
    if (common == "moe.expert/moe.expert_4h_to_h") return {H, c.moe_ffn_hidden_size};
    if (common == "mtp_eh_proj") return {H, 2 * H};
    fail("deepseek_v3: no shape rule for parameter '", common, "'");
  }
  // HF checkpoints keep the router bias in float32 (DeepSeek's e_score_correction_bias).
  static bool hf_float32(std::string_view common) { return common == "moe.gate.bias"; }
};

}  // namespace ckbridge::model

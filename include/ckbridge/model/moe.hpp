#pragma once
// Parameter kinds of a mixture-of-experts MLP that several families share (DeepSeek V2 / V3, Kimi
// K2, Qwen3-MoE): the router (replicated), its optional expert bias, DeepSeek's shared experts
// (SwiGLU, split by TP) and the routed experts (SwiGLU, placed on their EP rank by convert/ through
// layout::ExpertSlice, then split by expert TP). A common name "a/b" is composed from two name_map
// keys: the module prefix `a` (shared or routed experts) and the leaf `b` (fc1 / fc2); routed
// experts insert the expert index after `a`.
#include "ckbridge/model/common.hpp"

namespace ckbridge::model::kinds {

struct Router : Param<"moe.gate", Where::MoeLayer> {
  static layout::Replicated layout(const Dims&) { return {}; }
  static Shape shape(const Dims& d) { return {d.model.num_experts, d.model.hidden_size}; }
};
// DeepSeek V3's e_score_correction_bias (MCore mlp.router.expert_bias), float32 in HF.
struct RouterBias : Param<"moe.gate.bias", Where::MoeLayer> {
  static constexpr bool hf_float32 = true;
  static layout::Replicated layout(const Dims&) { return {}; }
  static Shape shape(const Dims& d) { return {d.model.num_experts}; }
};
struct SharedFc1 : Param<"moe.shared_expert/moe.expert_h_to_4h", Where::MoeLayer, Fp8::Blockwise> {
  static layout::SwiGLUInterleave layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {2 * d.model.moe_shared_expert_intermediate_size, d.model.hidden_size}; }
};
struct SharedFc2 : Param<"moe.shared_expert/moe.expert_4h_to_h", Where::MoeLayer, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {1}; }
  static Shape shape(const Dims& d) { return {d.model.hidden_size, d.model.moe_shared_expert_intermediate_size}; }
};
// One routed expert; convert/ places it on its EP rank (layout::ExpertSlice), this is its ETP split.
struct ExpertFc1 : Param<"moe.expert/moe.expert_h_to_4h", Where::Expert, Fp8::Blockwise, TpGroup::Expert> {
  static layout::SwiGLUInterleave layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {2 * d.model.moe_ffn_hidden_size, d.model.hidden_size}; }
};
struct ExpertFc2 : Param<"moe.expert/moe.expert_4h_to_h", Where::Expert, Fp8::Blockwise, TpGroup::Expert> {
  static layout::SplitDim layout(const Dims&) { return {1}; }
  static Shape shape(const Dims& d) { return {d.model.hidden_size, d.model.moe_ffn_hidden_size}; }
};

}  // namespace ckbridge::model::kinds

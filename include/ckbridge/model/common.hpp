#pragma once
// Parameter kinds that several families share: embedding and output layer (vocabulary padded,
// then split), norms (replicated), the SwiGLU MLP ([gate; up] interleaved per rank, then the
// row-parallel fc2) and GQA attention (grouped QKV, then split; row-parallel output). A family
// header lists these with its own kinds; a kind that differs in one family is that family's own.
#include <cstdint>
#include <vector>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/layout/grouped_qkv.hpp"
#include "ckbridge/layout/replicated.hpp"
#include "ckbridge/layout/split_dim.hpp"
#include "ckbridge/layout/swiglu.hpp"
#include "ckbridge/layout/vocab_pad.hpp"
#include "ckbridge/model/param.hpp"
#include "ckbridge/model/spec.hpp"

namespace ckbridge::model::kinds {

// Rows padded to the padded vocabulary (copies of the last row), then split over TP.
inline layout::VocabParallel vocab_rows(const Dims& d) {
  return {d.model.vocab_size, d.make_vocab_size_divisible_by, d.pad_vocab_size_to};
}
inline Shape vocab_by_hidden(const Dims& d) { return {d.model.vocab_size, d.model.hidden_size}; }
inline Shape hidden(const Dims& d) { return {d.model.hidden_size}; }

// A norm weight of `hidden_size` entries, the same on every rank.
template <fixed_string Name, Where W>
struct Norm : Param<Name, W> {
  static layout::Replicated layout(const Dims&) { return {}; }
  static Shape shape(const Dims& d) { return hidden(d); }
};

// A per-head norm (Qwen3's q_norm / k_norm): one weight of head_dim entries shared by every head,
// the same on every rank.
template <fixed_string Name>
struct HeadNorm : Param<Name, Where::Layer> {
  static layout::Replicated layout(const Dims&) { return {}; }
  static Shape shape(const Dims& d) { return {d.model.head_dim()}; }
};

// ---- globals
struct WordEmbeddings : Param<"word_embeddings", Where::FirstStage> {
  static layout::VocabParallel layout(const Dims& d) { return vocab_rows(d); }
  static Shape shape(const Dims& d) { return vocab_by_hidden(d); }
};
struct OutputLayer : Param<"word_embeddings_for_head", Where::LastStage> {
  static layout::VocabParallel layout(const Dims& d) { return vocab_rows(d); }
  static Shape shape(const Dims& d) { return vocab_by_hidden(d); }
};
using FinalNorm = Norm<"final_layernorm", Where::LastStage>;

// ---- per layer
using InputNorm = Norm<"input_layernorm", Where::Layer>;
using PostAttentionNorm = Norm<"post_attention_layernorm", Where::Layer>;

// SwiGLU fc1 [gate; up] of `ffn_hidden_size` rows each: rank r holds [gate_r; up_r].
template <Where W = Where::Layer>
struct MlpFc1 : Param<"mlp.dense_h_to_4h", W, Fp8::Blockwise> {
  static layout::SwiGLUInterleave layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {2 * d.model.ffn_hidden_size, d.model.hidden_size}; }
};
// fc2, row-parallel: split along its input dim.
template <Where W = Where::Layer>
struct MlpFc2 : Param<"mlp.dense_4h_to_h", W, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {1}; }
  static Shape shape(const Dims& d) { return {d.model.hidden_size, d.model.ffn_hidden_size}; }
};

// GQA: HF's q_proj, k_proj, v_proj (three names in the YAML), regrouped by query group, then
// split over TP by whole groups.
struct Qkv : Param<"attention.query_key_value", Where::Layer, Fp8::Blockwise> {
  static layout::GroupedQkv layout(const Dims& d) {
    return {d.model.num_attention_heads, d.model.num_query_groups, d.model.head_dim()};
  }
  static Shape shape(const Dims& d) {
    return {(d.model.num_attention_heads + 2 * d.model.num_query_groups) * d.model.head_dim(), d.model.hidden_size};
  }
  static std::vector<std::int64_t> hf_parts(const Dims& d) {
    const std::int64_t q = d.model.num_attention_heads * d.model.head_dim(),
                       kv = d.model.num_query_groups * d.model.head_dim();
    return {q, kv, kv};
  }
};
// Attention output projection of GQA attention, row-parallel.
struct AttentionDense : Param<"attention.dense", Where::Layer, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {1}; }
  static Shape shape(const Dims& d) {
    return {d.model.hidden_size, d.model.num_attention_heads * d.model.head_dim()};
  }
};

// The model fields of MCore's `args` for a dense GQA decoder (SwiGLU MLP, rotary positions).
inline ArgList gqa_mcore_args(const config::ModelConfig& mc) {
  using V = ArgValue;
  return {{"hidden_size", V{mc.hidden_size}},
          {"ffn_hidden_size", V{mc.ffn_hidden_size}},
          {"num_attention_heads", V{mc.num_attention_heads}},
          {"num_query_groups", V{mc.num_query_groups}},
          {"group_query_attention", V{mc.num_query_groups != mc.num_attention_heads}},
          {"kv_channels", V{mc.head_dim()}},
          {"multi_latent_attention", V{false}},
          {"swiglu", V{true}},
          {"max_position_embeddings", V{mc.max_position_embeddings}},
          {"rotary_base", V{mc.rotary_base}},
          {"norm_epsilon", V{mc.norm_epsilon}},
          {"untie_embeddings_and_output_weights", V{mc.untie_embeddings_and_output_weights}},
          {"qk_layernorm", V{mc.qk_layernorm}}};
}

}  // namespace ckbridge::model::kinds

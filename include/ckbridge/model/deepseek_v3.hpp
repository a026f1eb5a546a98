#pragma once
// DeepSeek V3 / V3.1 (MLA + MoE + MTP) as a model policy: its parameter kinds, each carrying its
// layout and shape, its MCore args and its HF config.json writer. Names are not here: they come
// from the convert YAML's name_map (common name -> HF / MCore names), so LoongForge's naming
// variants and the local (no-TE) layer spec need no recompile. Layouts follow LoongForge's
// TENSOR_PARALLEL_DIM table and the MCore layer specs. A common name "a/b" is composed from two
// name_map keys: the module prefix `a` (shared or routed experts) and the leaf `b` (fc1 / fc2);
// routed experts insert the expert index after `a`.
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/common.hpp"

namespace ckbridge::model {

namespace deepseek_v3 {
using namespace kinds;
inline std::int64_t heads(const Dims& d) { return d.model.num_attention_heads; }

// ---- attention (MLA): low-rank q and kv projections; q_down / kv_down stay whole under FP8
// (`fp8_ignore_tp` in the YAML replicates them), the up projections split by heads.
struct QDown : Param<"attention.q_down", Where::Layer, Fp8::BlockwiseNoTp> {
  static layout::SplitDim layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {d.model.q_lora_rank, d.model.hidden_size}; }
};
struct QUpNorm : Param<"attention.q_up_layernorm", Where::Layer> {
  static layout::Replicated layout(const Dims&) { return {}; }
  static Shape shape(const Dims& d) { return {d.model.q_lora_rank}; }
};
struct QUp : Param<"attention.q_up", Where::Layer, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) {
    return {heads(d) * (d.model.qk_head_dim + d.model.qk_pos_emb_head_dim), d.model.q_lora_rank};
  }
};
struct KvDown : Param<"attention.kv_down", Where::Layer, Fp8::BlockwiseNoTp> {
  static layout::SplitDim layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {d.model.kv_lora_rank + d.model.qk_pos_emb_head_dim, d.model.hidden_size}; }
};
struct KvUpNorm : Param<"attention.kv_up_layernorm", Where::Layer> {
  static layout::Replicated layout(const Dims&) { return {}; }
  static Shape shape(const Dims& d) { return {d.model.kv_lora_rank}; }
};
struct KvUp : Param<"attention.kv_up", Where::Layer, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {heads(d) * (d.model.qk_head_dim + d.model.v_head_dim), d.model.kv_lora_rank}; }
};
struct MlaDense : Param<"attention.dense", Where::Layer, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {1}; }
  static Shape shape(const Dims& d) { return {d.model.hidden_size, heads(d) * d.model.v_head_dim}; }
};

// ---- MoE: router (replicated), shared experts and routed experts (SwiGLU, split by expert TP)
struct Router : Param<"moe.gate", Where::MoeLayer> {
  static layout::Replicated layout(const Dims&) { return {}; }
  static Shape shape(const Dims& d) { return {d.model.num_experts, d.model.hidden_size}; }
};
struct RouterBias : Param<"moe.gate.bias", Where::MoeLayer> {
  static constexpr bool hf_float32 = true;  // DeepSeek's e_score_correction_bias
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

// ---- multi-token prediction block (its inner layer uses the per-layer kinds above)
using MtpEhProj = kinds::MtpEhProj;
}  // namespace deepseek_v3

struct DeepSeekV3 {
  static constexpr std::string_view name = "deepseek_v3";
  static constexpr std::string_view hf_architecture = "DeepseekV3ForCausalLM";

  static void check(const config::ModelConfig& c) {
    if (!c.multi_latent_attention)
      fail("deepseek_v3: the model config describes grouped-query attention (multi_latent_attention: false); "
           "DeepSeek V3 uses multi-latent attention");
  }
  using params = std::tuple<
      kinds::WordEmbeddings, kinds::FinalNorm, kinds::OutputLayer,
      // attention, every layer
      kinds::InputNorm, deepseek_v3::QDown, deepseek_v3::QUpNorm, deepseek_v3::QUp, deepseek_v3::KvDown,
      deepseek_v3::KvUpNorm, deepseek_v3::KvUp, deepseek_v3::MlaDense, kinds::PostAttentionNorm,
      // dense MLP (the first k layers), then MoE
      kinds::MlpFc1<Where::DenseLayer>, kinds::MlpFc2<Where::DenseLayer>,
      deepseek_v3::Router, deepseek_v3::RouterBias, deepseek_v3::SharedFc1, deepseek_v3::SharedFc2,
      deepseek_v3::ExpertFc1, deepseek_v3::ExpertFc2,
      // MTP block
      kinds::Norm<"mtp_enorm", Where::MtpBlock>, kinds::Norm<"mtp_hnorm", Where::MtpBlock>, deepseek_v3::MtpEhProj,
      kinds::Norm<"mtp_shared_head_norm", Where::MtpBlock>>;
  // HF stores these in every MTP block; they equal the main embedding and output layer.
  using mtp_copies = std::tuple<MtpCopy<"mtp_word_embeddings", "word_embeddings">,
                                MtpCopy<"mtp_shared_head_head", "word_embeddings_for_head">>;

  static ArgList mcore_args(const config::ModelConfig& mc) {
    using V = ArgValue;
    return {{"hidden_size", V{mc.hidden_size}},
            {"ffn_hidden_size", V{mc.ffn_hidden_size}},
            {"num_attention_heads", V{mc.num_attention_heads}},
            {"num_query_groups", V{mc.num_query_groups}},
            {"multi_latent_attention", V{true}},
            {"q_lora_rank", V{mc.q_lora_rank}},
            {"kv_lora_rank", V{mc.kv_lora_rank}},
            {"qk_head_dim", V{mc.qk_head_dim}},
            {"qk_pos_emb_head_dim", V{mc.qk_pos_emb_head_dim}},
            {"v_head_dim", V{mc.v_head_dim}},
            {"moe_ffn_hidden_size", V{mc.moe_ffn_hidden_size}},
            {"moe_shared_expert_intermediate_size", V{mc.moe_shared_expert_intermediate_size}},
            {"max_position_embeddings", V{mc.max_position_embeddings}},
            {"norm_epsilon", V{mc.norm_epsilon}},
            {"untie_embeddings_and_output_weights", V{mc.untie_embeddings_and_output_weights}},
            {"qk_layernorm", V{mc.qk_layernorm}}};
  }

  // HF config.json for the model (DeepSeek-V3 schema, keys in a stable order). The HF layout needs
  // the MoE pattern to be "first k dense, then all MoE"; anything else is refused.
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    c.validate("model config");
    const std::int64_t k = c.first_k_dense();
    for (std::int64_t i = k; i < c.num_layers; ++i)
      if (c.moe_layer_freq[static_cast<std::size_t>(i)] != 1)
        fail("model config: key 'moe_layer_freq': layer ", i, " is dense after MoE layers; the HF DeepSeek-V3 config "
             "(first_k_dense_replace) cannot express it");
    if (c.moe_shared_expert_intermediate_size % (c.moe_ffn_hidden_size ? c.moe_ffn_hidden_size : 1) != 0)
      fail("model config: key 'moe_shared_expert_intermediate_size': ", c.moe_shared_expert_intermediate_size,
           " is not a multiple of moe_ffn_hidden_size ", c.moe_ffn_hidden_size, " (HF n_shared_experts)");
    rapidjson::StringBuffer sb;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
    w.SetIndent(' ', 2);
    w.StartObject();
    w.Key("architectures"); w.StartArray(); w.String(hf_architecture.data(), static_cast<rapidjson::SizeType>(hf_architecture.size())); w.EndArray();
    w.Key("attention_bias"); w.Bool(false);
    w.Key("attention_dropout"); w.Double(0.0);
    w.Key("bos_token_id"); w.Int(0);
    w.Key("eos_token_id"); w.Int(1);
    w.Key("first_k_dense_replace"); w.Int64(k);
    w.Key("hidden_act"); w.String("silu");
    w.Key("hidden_size"); w.Int64(c.hidden_size);
    w.Key("initializer_range"); w.Double(0.02);
    w.Key("intermediate_size"); w.Int64(c.ffn_hidden_size);
    w.Key("kv_lora_rank"); w.Int64(c.kv_lora_rank);
    w.Key("max_position_embeddings"); w.Int64(c.max_position_embeddings);
    w.Key("model_type"); w.String("deepseek_v3");
    w.Key("moe_intermediate_size"); w.Int64(c.moe_ffn_hidden_size);
    w.Key("moe_layer_freq"); w.Int(1);
    w.Key("n_group"); w.Int64(c.moe_router_num_groups);
    w.Key("n_routed_experts"); w.Int64(c.num_experts);
    w.Key("n_shared_experts"); w.Int64(c.moe_ffn_hidden_size ? c.moe_shared_expert_intermediate_size / c.moe_ffn_hidden_size : 0);
    w.Key("norm_topk_prob"); w.Bool(true);
    w.Key("num_attention_heads"); w.Int64(c.num_attention_heads);
    w.Key("num_experts_per_tok"); w.Int64(c.moe_router_topk);
    w.Key("num_hidden_layers"); w.Int64(c.num_layers);
    w.Key("num_key_value_heads"); w.Int64(c.num_query_groups);
    w.Key("num_nextn_predict_layers"); w.Int64(c.mtp_num_layers);
    w.Key("q_lora_rank");
    if (c.q_lora_rank > 0) w.Int64(c.q_lora_rank); else w.Null();
    w.Key("qk_nope_head_dim"); w.Int64(c.qk_head_dim);
    w.Key("qk_rope_head_dim"); w.Int64(c.qk_pos_emb_head_dim);
    if (o.fp8_quantization_config) config::write_fp8_quantization_config(w, o);
    w.Key("rms_norm_eps"); w.Double(c.norm_epsilon);
    w.Key("rope_scaling");
    if (c.rope_scaling) {
      const auto& r = *c.rope_scaling;
      w.StartObject();
      w.Key("beta_fast"); w.Double(r.beta_fast);
      w.Key("beta_slow"); w.Double(r.beta_slow);
      w.Key("factor"); w.Double(r.factor);
      w.Key("mscale"); w.Double(r.mscale);
      w.Key("mscale_all_dim"); w.Double(r.mscale_all_dim);
      w.Key("original_max_position_embeddings"); w.Int64(r.original_max_position_embeddings);
      w.Key("type"); w.String("yarn");
      w.EndObject();
    } else {
      w.Null();
    }
    w.Key("rope_theta"); w.Double(c.rotary_base);
    w.Key("routed_scaling_factor"); w.Double(c.moe_router_topk_scaling_factor);
    w.Key("scoring_func"); w.String(c.moe_router_score_function.c_str());
    w.Key("tie_word_embeddings"); w.Bool(!c.untie_embeddings_and_output_weights);
    w.Key("topk_group"); w.Int64(c.moe_router_group_topk);
    w.Key("topk_method"); w.String(c.moe_router_enable_expert_bias ? "noaux_tc" : "greedy");
    w.Key("torch_dtype"); w.String(o.dtype.c_str());
    w.Key("transformers_version"); w.String(o.transformers_version.c_str());
    w.Key("use_cache"); w.Bool(true);
    w.Key("v_head_dim"); w.Int64(c.v_head_dim);
    w.Key("vocab_size"); w.Int64(c.vocab_size);
    w.EndObject();
    return std::string(sb.GetString(), sb.GetSize()) + "\n";
  }
};

}  // namespace ckbridge::model

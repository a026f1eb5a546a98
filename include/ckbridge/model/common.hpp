#pragma once
// Parameter kinds that several families share: embedding and output layer (vocabulary padded,
// then split), norms (replicated), the SwiGLU MLP ([gate; up] interleaved per rank, then the
// row-parallel fc2) and GQA attention (grouped QKV, then split; row-parallel output). A family
// header lists these with its own kinds; a kind that differs in one family is that family's own.
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
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
// For families whose embeddings may be tied (untie_embeddings_and_output_weights: false, Qwen2's
// small sizes): the output layer when untied, and when tied a TiedOutputLayer instead. Tied, HF
// has no lm_head; MCore keeps output_layer.weight (the padded embedding's TP shard) only in a last
// stage that does not hold the embedding (Megatron's copy; LoongForge writes it at PP > 1).
struct UntiedOutputLayer : OutputLayer {
  static bool present(const config::ModelConfig& c) { return c.untie_embeddings_and_output_weights; }
};
struct TiedOutputLayer : Param<"word_embeddings_for_head", Where::LastStage> {
  static constexpr std::string_view tied_to = WordEmbeddings::common;
  static bool present(const config::ModelConfig& c) { return !c.untie_embeddings_and_output_weights; }
  static layout::VocabParallel layout(const Dims& d) { return vocab_rows(d); }
  static Shape shape(const Dims& d) { return vocab_by_hidden(d); }
};

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
// The q/k/v biases (Qwen2, Qwen2.5, MiMo: HF q_proj.bias, k_proj.bias, v_proj.bias; MCore
// linear_qkv.bias): the weight's grouped-QKV layout on their single axis, whole groups per rank.
struct QkvBias : Param<"attention.query_key_value.bias", Where::Layer> {
  static layout::GroupedQkv layout(const Dims& d) { return Qkv::layout(d); }
  static Shape shape(const Dims& d) { return {Qkv::shape(d)[0]}; }
  static std::vector<std::int64_t> hf_parts(const Dims& d) { return Qkv::hf_parts(d); }
};
// Attention output projection of GQA attention, row-parallel.
struct AttentionDense : Param<"attention.dense", Where::Layer, Fp8::Blockwise> {
  static layout::SplitDim layout(const Dims&) { return {1}; }
  static Shape shape(const Dims& d) {
    return {d.model.hidden_size, d.model.num_attention_heads * d.model.head_dim()};
  }
};

// ---- multi-token prediction block (DeepSeek V3, MiMo; its inner layer uses the per-layer kinds):
// eh_proj [hidden, 2 hidden] column-parallel (rows over TP); BF16 unless FP8 is asked for.
struct MtpEhProj : Param<"mtp_eh_proj", Where::MtpBlock, Fp8::MtpProjection> {
  static layout::SplitDim layout(const Dims&) { return {0}; }
  static Shape shape(const Dims& d) { return {d.model.hidden_size, 2 * d.model.hidden_size}; }
};
using MtpEnorm = Norm<"mtp_enorm", Where::MtpBlock>;
using MtpHnorm = Norm<"mtp_hnorm", Where::MtpBlock>;
using MtpFinalNorm = Norm<"mtp_shared_head_norm", Where::MtpBlock>;

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

// ---- HF config.json
// A config.json object under construction: each key with the code that writes it. str() writes
// the keys sorted, indented by two spaces, as transformers does; a family's writer starts from a
// shared block (dense_gqa_config_json) and sets or replaces its own keys.
class HfConfigJson {
public:
  using Writer = rapidjson::PrettyWriter<rapidjson::StringBuffer>;
  // `entry` writes the key and its value (for writers that emit both, e.g. quantization_config)
  HfConfigJson& entry(const std::string& key, std::function<void(Writer&)> entry) {
    entries_[key] = std::move(entry);
    return *this;
  }
  HfConfigJson& value(const std::string& key, std::function<void(Writer&)> value) {
    return entry(key, [key, v = std::move(value)](Writer& w) {
      w.Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
      v(w);
    });
  }
  HfConfigJson& flag(const std::string& key, bool v) { return value(key, [v](Writer& w) { w.Bool(v); }); }
  HfConfigJson& integer(const std::string& key, std::int64_t v) { return value(key, [v](Writer& w) { w.Int64(v); }); }
  HfConfigJson& number(const std::string& key, double v) { return value(key, [v](Writer& w) { w.Double(v); }); }
  HfConfigJson& null(const std::string& key) { return value(key, [](Writer& w) { w.Null(); }); }
  HfConfigJson& text(const std::string& key, std::string_view v) {
    return value(key, [s = std::string(v)](Writer& w) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); });
  }
  HfConfigJson& texts(const std::string& key, std::vector<std::string> v) {
    return value(key, [v = std::move(v)](Writer& w) {
      w.StartArray();
      for (const auto& s : v) w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
      w.EndArray();
    });
  }
  std::string str() const {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.SetIndent(' ', 2);
    w.StartObject();
    for (const auto& [k, e] : entries_) e(w);
    w.EndObject();
    return std::string(sb.GetString(), sb.GetSize()) + "\n";
  }

private:
  std::map<std::string, std::function<void(Writer&)>> entries_;
};

// The config.json keys a dense GQA decoder's HF config shares (Llama, Qwen2 / 2.5, Qwen3, MiMo):
// architecture, dims, norm epsilon, rope base (no rope scaling: a family sets its own), tie flag,
// dtype and FP8 quantization_config from the output options.
inline HfConfigJson dense_gqa_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o,
                                          std::string_view architecture, std::string_view model_type) {
  c.validate("model config");
  HfConfigJson j;
  j.texts("architectures", {std::string(architecture)})
      .number("attention_dropout", 0.0)
      .integer("bos_token_id", 0)
      .integer("eos_token_id", 1)
      .text("hidden_act", "silu")
      .integer("hidden_size", c.hidden_size)
      .number("initializer_range", 0.02)
      .integer("intermediate_size", c.ffn_hidden_size)
      .integer("max_position_embeddings", c.max_position_embeddings)
      .text("model_type", model_type)
      .integer("num_attention_heads", c.num_attention_heads)
      .integer("num_hidden_layers", c.num_layers)
      .integer("num_key_value_heads", c.num_query_groups)
      .number("rms_norm_eps", c.norm_epsilon)
      .null("rope_scaling")
      .number("rope_theta", c.rotary_base)
      .flag("tie_word_embeddings", !c.untie_embeddings_and_output_weights)
      .text("torch_dtype", o.dtype)
      .text("transformers_version", o.transformers_version)
      .flag("use_cache", true)
      .integer("vocab_size", c.vocab_size);
  if (o.fp8_quantization_config)
    j.entry("quantization_config", [o](HfConfigJson::Writer& w) { config::write_fp8_quantization_config(w, o); });
  return j;
}

}  // namespace ckbridge::model::kinds

#pragma once
// Architecture description of a DeepSeek-V3-style model (MLA attention, routed + shared experts,
// MTP), filled from LoongForge's model YAML (Megatron-Core TransformerConfig names) or from a
// HuggingFace config.json, validated with errors that name the source and the key. Each family
// writes its own HF config.json for MCore -> HF exports (model/<family>.hpp; LoongForge writes
// none, bug B23).
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <algorithm>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ckbridge/config/yaml_loader.hpp"
#include "ckbridge/core/error.hpp"

namespace ckbridge::config {

// YaRN rope scaling (HF rope_scaling / MCore rotary_scaling_factor, mscale...).
struct RopeScaling {
  double factor = 40;
  std::int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32;
  double beta_slow = 1;
  double mscale = 1.0;
  double mscale_all_dim = 1.0;
};

// Llama 3.1's rope scaling (HF rope_scaling with rope_type "llama3"; model YAML rope_type: llama3
// with rotary_scaling_factor, low_freq_factor, high_freq_factor, original_max_position_embeddings).
struct Llama3RopeScaling {
  double factor = 8;
  double low_freq_factor = 1;
  double high_freq_factor = 4;
  std::int64_t original_max_position_embeddings = 8192;
};

// Field names follow Megatron-Core (what LoongForge's model YAML uses); defaults are DeepSeek-V3's
// values for the fields its YAML does not carry (router, rope).
struct ModelConfig {
  std::int64_t num_layers = 0;
  std::int64_t hidden_size = 0;
  std::int64_t ffn_hidden_size = 0;                       // dense MLP intermediate size
  std::int64_t moe_ffn_hidden_size = 0;                   // per routed expert
  std::int64_t moe_shared_expert_intermediate_size = 0;   // 0: no shared expert
  std::int64_t num_experts = 0;                           // 0: dense model
  std::vector<int> moe_layer_freq;                        // per layer: 1 = MoE, 0 = dense
  // Megatron-Core's `non_homogeneous_layers` is false: moe_layer_freq was not given as a list nor
  // as an int > 1. Its torch_dist checkpoints then stack the decoder layers along a prepended axis.
  bool homogeneous_layers = true;
  std::int64_t q_lora_rank = 0;                           // 0: no q compression (V2-Lite style)
  std::int64_t kv_lora_rank = 0;
  std::int64_t qk_head_dim = 0;                           // HF qk_nope_head_dim
  std::int64_t qk_pos_emb_head_dim = 0;                   // HF qk_rope_head_dim
  std::int64_t v_head_dim = 0;
  bool multi_latent_attention = true;                     // false: standard (GQA) attention, e.g. Llama
  std::int64_t kv_channels = 0;                           // head_dim of standard attention (0: hidden / heads)
  std::int64_t num_attention_heads = 0;
  std::int64_t num_query_groups = 0;                      // HF num_key_value_heads
  std::int64_t vocab_size = 0;                            // unpadded (LoongForge vocab_size_in_config_file)
  std::int64_t mtp_num_layers = 0;                        // HF num_nextn_predict_layers
  double norm_epsilon = 1e-6;
  bool untie_embeddings_and_output_weights = true;
  bool qk_layernorm = true;
  std::string loongforge_model_type;               // the model YAML's `model_type` ("deepseek", "kimi", "qwen"; "" unset)
  std::int64_t make_vocab_size_divisible_by = 0;   // the model YAML's vocabulary padding per TP rank (0: unset)
  bool add_qkv_bias = false;                              // biases on q/k/v (Qwen2, MiMo; HF attention_bias)
  std::int64_t moe_router_topk = 8;
  std::int64_t moe_router_num_groups = 8;
  std::int64_t moe_router_group_topk = 4;
  double moe_router_topk_scaling_factor = 2.5;
  std::string moe_router_score_function = "sigmoid";
  bool moe_router_enable_expert_bias = true;
  double rotary_base = 10000;
  std::int64_t max_position_embeddings = 163840;
  std::optional<RopeScaling> rope_scaling = RopeScaling{};
  std::optional<Llama3RopeScaling> llama3_rope_scaling;   // Llama 3.1 (origin: "rope_scaling")
  // Where each field's value came from, by field name: the file it was read from, a flag, or
  // "default" (ckbridge's documented default, never validated as if the user had written it).
  // Empty for a config built in code (then every value counts as written).
  std::map<std::string, std::string> origin;

  bool is_default(const std::string& field) const {
    auto it = origin.find(field);
    return it != origin.end() && it->second == "default";
  }
  std::string origin_of(const std::string& field) const {
    auto it = origin.find(field);
    return it == origin.end() ? std::string("the program") : it->second;
  }
  // Router defaults that fit the model (DeepSeek-V3's values where they can): top-k min(8, E),
  // 8 groups when they divide E (else 1), group top-k min(4, groups). Only fields still at their
  // default are changed.
  void resolve_router_defaults() {
    if (num_experts <= 0) return;
    if (is_default("moe_router_topk")) moe_router_topk = std::min<std::int64_t>(8, num_experts);
    if (is_default("moe_router_num_groups")) moe_router_num_groups = num_experts % 8 == 0 ? 8 : 1;
    if (is_default("moe_router_group_topk"))
      moe_router_group_topk = std::min<std::int64_t>(4, moe_router_num_groups);
  }

  // Number of leading dense layers (HF first_k_dense_replace).
  std::int64_t first_k_dense() const {
    std::int64_t k = 0;
    while (k < static_cast<std::int64_t>(moe_layer_freq.size()) && moe_layer_freq[static_cast<std::size_t>(k)] == 0) ++k;
    return k;
  }
  // Layer l (0-based; MTP layers l >= num_layers follow the last decoder layer's kind, MoE for DSv3).
  bool is_moe_layer(std::int64_t l) const {
    if (num_experts == 0) return false;
    if (l >= num_layers) return !moe_layer_freq.empty() && moe_layer_freq.back() == 1;
    if (l < 0) fail("layer ", l, " out of range");
    return moe_layer_freq[static_cast<std::size_t>(l)] == 1;
  }
  std::int64_t q_head_dim() const { return qk_head_dim + qk_pos_emb_head_dim; }
  // Head dim of standard attention (MCore kv_channels, HF head_dim).
  std::int64_t head_dim() const {
    return kv_channels > 0 ? kv_channels : num_attention_heads > 0 ? hidden_size / num_attention_heads : 0;
  }

  // Checks internal consistency; `source` names the file in messages.
  void validate(std::string_view source) const {
    auto pos = [&](const char* key, std::int64_t v) {
      if (v <= 0) fail(source, ": key '", key, "': must be > 0, got ", v);
    };
    pos("num_layers", num_layers);
    pos("hidden_size", hidden_size);
    pos("num_attention_heads", num_attention_heads);
    pos("vocab_size", vocab_size);
    if (multi_latent_attention) {
      pos("kv_lora_rank", kv_lora_rank);
      pos("qk_head_dim", qk_head_dim);
      pos("qk_pos_emb_head_dim", qk_pos_emb_head_dim);
      pos("v_head_dim", v_head_dim);
    } else {
      if (kv_channels < 0) fail(source, ": key 'kv_channels': must be >= 0, got ", kv_channels);
      if (kv_channels == 0 && hidden_size % num_attention_heads != 0)
        fail(source, ": key 'kv_channels' is not set and hidden_size ", hidden_size,
             " is not divisible by num_attention_heads ", num_attention_heads);
    }
    if (q_lora_rank < 0) fail(source, ": key 'q_lora_rank': must be >= 0, got ", q_lora_rank);
    if (mtp_num_layers < 0) fail(source, ": key 'mtp_num_layers': must be >= 0, got ", mtp_num_layers);
    if (num_query_groups <= 0 || num_attention_heads % num_query_groups != 0)
      fail(source, ": key 'num_query_groups': ", num_query_groups, " must be > 0 and divide num_attention_heads ",
           num_attention_heads);
    if (static_cast<std::int64_t>(moe_layer_freq.size()) != num_layers)
      fail(source, ": key 'moe_layer_freq': has ", moe_layer_freq.size(), " entries, num_layers is ", num_layers);
    bool any_moe = false, any_dense = false;
    for (std::size_t i = 0; i < moe_layer_freq.size(); ++i) {
      if (moe_layer_freq[i] != 0 && moe_layer_freq[i] != 1)
        fail(source, ": key 'moe_layer_freq': entry ", i, " is ", moe_layer_freq[i], ", expected 0 or 1");
      (moe_layer_freq[i] ? any_moe : any_dense) = true;
    }
    if (any_moe) {
      pos("num_experts", num_experts);
      pos("moe_ffn_hidden_size", moe_ffn_hidden_size);
      if (moe_shared_expert_intermediate_size < 0)
        fail(source, ": key 'moe_shared_expert_intermediate_size': must be >= 0");
      if (moe_router_topk <= 0 || moe_router_topk > num_experts)
        fail(source, ": key 'moe_router_topk': ", moe_router_topk, " must be in [1, num_experts = ", num_experts, "]");
      if (moe_router_num_groups > 0 && num_experts % moe_router_num_groups != 0)
        fail(source, ": key 'moe_router_num_groups': ", moe_router_num_groups, " does not divide num_experts ", num_experts);
    } else if (num_experts != 0) {
      fail(source, ": key 'moe_layer_freq': no MoE layer although num_experts is ", num_experts);
    }
    if (any_dense) pos("ffn_hidden_size", ffn_hidden_size);
    if (!(norm_epsilon > 0) || !std::isfinite(norm_epsilon))
      fail(source, ": key 'norm_epsilon': must be a positive number");
  }
};

namespace detail {

inline std::optional<YAML::Node> yget(const YAML::Node& m, const char* key) {
  if (!m.IsMap()) return std::nullopt;
  auto c = child(m, key);
  if (!c || c->IsNull()) return std::nullopt;
  return *c;
}

template <class T>
T yas(const YAML::Node& n, std::string_view source, const char* key) {
  if (!n.IsScalar()) fail(source, ": key '", key, "': expected a scalar");
  if (n.Scalar().find("${") != std::string::npos)
    fail(source, ": key '", key, "': unresolved interpolation '", n.Scalar(), "'");
  try {
    return n.as<T>();
  } catch (const YAML::Exception&) {
    fail(source, ": key '", key, "': cannot read '", n.Scalar(), "' as ",
         std::is_same_v<T, bool> ? "a boolean" : std::is_floating_point_v<T> ? "a number" : "an integer");
  }
}

template <class T>
void yread(const YAML::Node& m, const char* key, T& out, std::string_view source, bool required) {
  if (auto n = yget(m, key)) out = yas<T>(*n, source, key);
  else if (required) fail(source, ": key '", key, "' is missing");
}
// yread that also records where the field's value came from (the file, or "default").
template <class T>
void yread_o(const YAML::Node& m, const char* key, T& out, std::string_view source, bool required,
             std::map<std::string, std::string>& origin, const char* field = nullptr) {
  const bool have = yget(m, key).has_value();
  yread(m, key, out, source, required);
  const std::string f = field ? field : key;
  if (have) origin[f] = std::string(source);
  else if (!origin.count(f)) origin[f] = "default";
}

inline std::vector<int> expand_moe_layer_freq(const YAML::Node& n, std::int64_t num_layers, std::string_view source) {
  std::vector<int> out;
  if (n.IsSequence()) {
    for (std::size_t i = 0; i < n.size(); ++i) out.push_back(yas<int>(n[i], source, "moe_layer_freq"));
    return out;
  }
  const std::string s = n.Scalar();
  if (s.find("${") != std::string::npos)
    fail(source, ": key 'moe_layer_freq': unresolved interpolation '", s, "'");
  if (s.find('[') != std::string::npos) {  // unresolved list expression as plain string
    for (long long v : eval_list_expression(s, std::string(source) + ": key 'moe_layer_freq'"))
      out.push_back(static_cast<int>(v));
    return out;
  }
  const auto k = yas<std::int64_t>(n, source, "moe_layer_freq");
  if (k <= 0) fail(source, ": key 'moe_layer_freq': must be > 0 or a list, got ", k);
  for (std::int64_t i = 0; i < num_layers; ++i) out.push_back(i % k == 0 ? 1 : 0);  // Megatron: every k-th layer
  return out;
}

}  // namespace detail

// From LoongForge's model YAML (the node mounted at `module`, or the model file itself).
inline ModelConfig model_config_from_yaml(const YAML::Node& m, std::string_view source) {
  using detail::yread;
  if (!m.IsMap()) fail(source, ": model config must be a map");
  ModelConfig c;
  yread(m, "num_layers", c.num_layers, source, true);
  yread(m, "hidden_size", c.hidden_size, source, true);
  yread(m, "ffn_hidden_size", c.ffn_hidden_size, source, false);
  yread(m, "num_attention_heads", c.num_attention_heads, source, true);
  c.num_query_groups = c.num_attention_heads;
  yread(m, "num_query_groups", c.num_query_groups, source, false);
  yread(m, "num_experts", c.num_experts, source, false);
  yread(m, "moe_ffn_hidden_size", c.moe_ffn_hidden_size, source, false);
  yread(m, "moe_shared_expert_intermediate_size", c.moe_shared_expert_intermediate_size, source, false);
  // MLA unless the YAML says otherwise; a YAML without MLA ranks (Llama's) is standard attention.
  c.multi_latent_attention = detail::yget(m, "kv_lora_rank").has_value();
  yread(m, "multi_latent_attention", c.multi_latent_attention, source, false);
  const bool mla = c.multi_latent_attention;
  yread(m, "q_lora_rank", c.q_lora_rank, source, false);
  yread(m, "kv_lora_rank", c.kv_lora_rank, source, mla);
  yread(m, "qk_head_dim", c.qk_head_dim, source, mla);
  yread(m, "qk_pos_emb_head_dim", c.qk_pos_emb_head_dim, source, mla);
  yread(m, "v_head_dim", c.v_head_dim, source, mla);
  yread(m, "kv_channels", c.kv_channels, source, false);
  yread(m, "mtp_num_layers", c.mtp_num_layers, source, false);
  if (detail::yget(m, "vocab_size_in_config_file")) yread(m, "vocab_size_in_config_file", c.vocab_size, source, true);
  else yread(m, "vocab_size", c.vocab_size, source, true);
  if (detail::yget(m, "norm_epsilon")) yread(m, "norm_epsilon", c.norm_epsilon, source, true);
  else yread(m, "layernorm_epsilon", c.norm_epsilon, source, false);
  yread(m, "untie_embeddings_and_output_weights", c.untie_embeddings_and_output_weights, source, false);
  yread(m, "qk_layernorm", c.qk_layernorm, source, false);
  yread(m, "model_type", c.loongforge_model_type, source, false);
  yread(m, "make_vocab_size_divisible_by", c.make_vocab_size_divisible_by, source, false);
  if (c.make_vocab_size_divisible_by < 0)
    fail(source, ": key 'make_vocab_size_divisible_by': must be >= 1, got ", c.make_vocab_size_divisible_by);
  yread(m, "add_qkv_bias", c.add_qkv_bias, source, false);
  auto& og = c.origin;
  for (const char* k : {"num_layers", "hidden_size", "num_attention_heads", "vocab_size", "moe_layer_freq"})
    og[k] = std::string(source);
  for (const char* k : {"ffn_hidden_size", "num_query_groups", "num_experts", "moe_ffn_hidden_size",
                        "moe_shared_expert_intermediate_size", "q_lora_rank", "kv_lora_rank", "qk_head_dim",
                        "qk_pos_emb_head_dim", "v_head_dim", "kv_channels", "mtp_num_layers",
                        "untie_embeddings_and_output_weights", "qk_layernorm", "add_qkv_bias"})
    og[k] = detail::yget(m, k) ? std::string(source) : std::string("default");
  if (detail::yget(m, "num_query_groups") == std::nullopt) og["num_query_groups"] = std::string(source) + " (num_attention_heads)";
  og["norm_epsilon"] = detail::yget(m, "norm_epsilon") || detail::yget(m, "layernorm_epsilon") ? std::string(source) : "default";
  using detail::yread_o;
  yread_o(m, "moe_router_topk", c.moe_router_topk, source, false, og);
  yread_o(m, "moe_router_num_groups", c.moe_router_num_groups, source, false, og);
  yread_o(m, "moe_router_group_topk", c.moe_router_group_topk, source, false, og);
  yread_o(m, "moe_router_topk_scaling_factor", c.moe_router_topk_scaling_factor, source, false, og);
  yread_o(m, "moe_router_score_function", c.moe_router_score_function, source, false, og);
  yread_o(m, "moe_router_enable_expert_bias", c.moe_router_enable_expert_bias, source, false, og);
  yread_o(m, "rotary_base", c.rotary_base, source, false, og);
  yread_o(m, "max_position_embeddings", c.max_position_embeddings, source, false, og);
  og["rope_scaling"] = detail::yget(m, "rope_type") || detail::yget(m, "rotary_scaling_factor") ? std::string(source) : "default";
  if (auto rt = detail::yget(m, "rope_type"); (!rt && !mla) ||
                                              (rt && detail::yas<std::string>(*rt, source, "rope_type") != "yarn")) {
    c.rope_scaling.reset();  // YaRN is DeepSeek's default only
    if (rt && detail::yas<std::string>(*rt, source, "rope_type") == "llama3") {
      Llama3RopeScaling r;
      yread(m, "rotary_scaling_factor", r.factor, source, false);
      yread(m, "low_freq_factor", r.low_freq_factor, source, false);
      yread(m, "high_freq_factor", r.high_freq_factor, source, false);
      yread(m, "original_max_position_embeddings", r.original_max_position_embeddings, source, false);
      c.llama3_rope_scaling = r;
    }
  } else {
    RopeScaling& r = *c.rope_scaling;
    yread(m, "rotary_scaling_factor", r.factor, source, false);
    yread(m, "original_max_position_embeddings", r.original_max_position_embeddings, source, false);
    yread(m, "beta_fast", r.beta_fast, source, false);
    yread(m, "beta_slow", r.beta_slow, source, false);
    yread(m, "mscale", r.mscale, source, false);
    yread(m, "mscale_all_dim", r.mscale_all_dim, source, false);
  }
  if (auto f = detail::yget(m, "moe_layer_freq")) {
    c.moe_layer_freq = detail::expand_moe_layer_freq(*f, c.num_layers, source);
    // a list (or list expression), or every k-th layer with k > 1
    c.homogeneous_layers = !f->IsSequence() && f->Scalar().find('[') == std::string::npos &&
                           std::all_of(c.moe_layer_freq.begin(), c.moe_layer_freq.end(),
                                       [&](int v) { return v == c.moe_layer_freq.front(); });
  } else {
    std::int64_t k = 0;
    detail::yread(m, "first_k_dense_replace", k, source, false);
    c.homogeneous_layers = k == 0 || c.num_experts == 0;  // LoongForge turns first_k_dense_replace into a list
    for (std::int64_t i = 0; i < c.num_layers; ++i) c.moe_layer_freq.push_back(c.num_experts > 0 && i >= k ? 1 : 0);
  }
  c.resolve_router_defaults();
  c.validate(source);
  return c;
}

namespace detail {
inline rapidjson::Document parse_json(std::string_view json, std::string_view source) {
  rapidjson::Document doc;
  doc.Parse(json.data(), json.size());
  if (doc.HasParseError())
    fail(source, ": invalid JSON at offset ", doc.GetErrorOffset(), ": ", rapidjson::GetParseError_En(doc.GetParseError()));
  if (!doc.IsObject()) fail(source, ": config.json must be an object");
  return doc;
}
inline const rapidjson::Value* jget(const rapidjson::Value& o, const char* key) {
  auto it = o.FindMember(key);
  if (it == o.MemberEnd() || it->value.IsNull()) return nullptr;
  return &it->value;
}
inline std::int64_t jint(const rapidjson::Value& o, const char* key, std::string_view src, std::optional<std::int64_t> def = std::nullopt) {
  const auto* v = jget(o, key);
  if (!v) {
    if (def) return *def;
    fail(src, ": key '", key, "' is missing");
  }
  if (!v->IsInt64()) fail(src, ": key '", key, "': expected an integer");
  return v->GetInt64();
}
inline double jnum(const rapidjson::Value& o, const char* key, std::string_view src, double def) {
  const auto* v = jget(o, key);
  if (!v) return def;
  if (!v->IsNumber()) fail(src, ": key '", key, "': expected a number");
  return v->GetDouble();
}
inline bool jbool(const rapidjson::Value& o, const char* key, std::string_view src, bool def) {
  const auto* v = jget(o, key);
  if (!v) return def;
  if (!v->IsBool()) fail(src, ": key '", key, "': expected true or false");
  return v->GetBool();
}
inline std::string jstr(const rapidjson::Value& o, const char* key, std::string_view src, std::string def) {
  const auto* v = jget(o, key);
  if (!v) return def;
  if (!v->IsString()) fail(src, ": key '", key, "': expected a string");
  return v->GetString();
}
}  // namespace detail

// From an HF config.json text (DeepSeek-V3 schema; `text_config` is used when present).
inline ModelConfig model_config_from_hf_json(std::string_view json, std::string_view source) {
  using namespace detail;
  const rapidjson::Document doc = parse_json(json, source);
  const rapidjson::Value* o = &doc;
  if (const auto* tc = jget(doc, "text_config"); tc && tc->IsObject()) o = tc;
  ModelConfig c;
  c.num_layers = jint(*o, "num_hidden_layers", source);
  c.hidden_size = jint(*o, "hidden_size", source);
  c.ffn_hidden_size = jint(*o, "intermediate_size", source);
  c.moe_ffn_hidden_size = jint(*o, "moe_intermediate_size", source, 0);
  c.num_experts = jint(*o, "n_routed_experts", source, 0);
  c.moe_shared_expert_intermediate_size = jint(*o, "n_shared_experts", source, 0) * c.moe_ffn_hidden_size;
  c.multi_latent_attention = jget(*o, "kv_lora_rank") != nullptr;  // else standard attention (Llama schema)
  const std::optional<std::int64_t> opt = c.multi_latent_attention ? std::nullopt : std::optional<std::int64_t>(0);
  c.q_lora_rank = jint(*o, "q_lora_rank", source, 0);
  c.kv_lora_rank = jint(*o, "kv_lora_rank", source, opt);
  c.qk_head_dim = jint(*o, "qk_nope_head_dim", source, opt);
  c.qk_pos_emb_head_dim = jint(*o, "qk_rope_head_dim", source, opt);
  c.v_head_dim = jint(*o, "v_head_dim", source, opt);
  if (!c.multi_latent_attention) c.kv_channels = jint(*o, "head_dim", source, 0);
  c.num_attention_heads = jint(*o, "num_attention_heads", source);
  c.num_query_groups = jint(*o, "num_key_value_heads", source, c.num_attention_heads);
  c.vocab_size = jint(*o, "vocab_size", source);
  c.mtp_num_layers = jint(*o, "num_nextn_predict_layers", source, 0);
  c.norm_epsilon = jnum(*o, "rms_norm_eps", source, 1e-6);
  c.untie_embeddings_and_output_weights = !jbool(*o, "tie_word_embeddings", source, false);
  c.add_qkv_bias = jbool(*o, "attention_bias", source, false);
  {
    const std::string src(source);
    auto mark = [&](const char* field, const char* key) { c.origin[field] = jget(*o, key) ? src : "default"; };
    for (const char* f : {"num_layers", "hidden_size", "vocab_size", "num_attention_heads"}) c.origin[f] = src;
    mark("ffn_hidden_size", "intermediate_size");
    mark("moe_ffn_hidden_size", "moe_intermediate_size");
    mark("num_experts", "n_routed_experts");
    mark("moe_shared_expert_intermediate_size", "n_shared_experts");
    mark("num_query_groups", "num_key_value_heads");
    mark("mtp_num_layers", "num_nextn_predict_layers");
    mark("norm_epsilon", "rms_norm_eps");
    mark("untie_embeddings_and_output_weights", "tie_word_embeddings");
    mark("moe_router_topk", "num_experts_per_tok");
    mark("moe_router_num_groups", "n_group");
    mark("moe_router_group_topk", "topk_group");
    mark("moe_router_topk_scaling_factor", "routed_scaling_factor");
    mark("moe_router_score_function", "scoring_func");
    mark("moe_router_enable_expert_bias", "topk_method");
    mark("rotary_base", "rope_theta");
    mark("max_position_embeddings", "max_position_embeddings");
    mark("rope_scaling", "rope_scaling");
    mark("moe_layer_freq", "first_k_dense_replace");
    for (const char* f : {"q_lora_rank", "kv_lora_rank", "qk_head_dim", "qk_pos_emb_head_dim", "v_head_dim", "kv_channels"})
      c.origin[f] = src;
  }
  c.moe_router_topk = jint(*o, "num_experts_per_tok", source, c.moe_router_topk);
  c.moe_router_num_groups = jint(*o, "n_group", source, c.moe_router_num_groups);
  c.moe_router_group_topk = jint(*o, "topk_group", source, c.moe_router_group_topk);
  c.moe_router_topk_scaling_factor = jnum(*o, "routed_scaling_factor", source, c.moe_router_topk_scaling_factor);
  c.moe_router_score_function = jstr(*o, "scoring_func", source, c.moe_router_score_function);
  c.moe_router_enable_expert_bias = jstr(*o, "topk_method", source, "noaux_tc") == "noaux_tc";
  c.rotary_base = jnum(*o, "rope_theta", source, c.rotary_base);
  c.max_position_embeddings = jint(*o, "max_position_embeddings", source, c.max_position_embeddings);
  c.rope_scaling.reset();
  if (const auto* rs = jget(*o, "rope_scaling"); rs && rs->IsObject()) {
    std::string type = jstr(*rs, "rope_type", source, jstr(*rs, "type", source, ""));
    if (type != "yarn" && type != "llama3")
      fail(source, ": key 'rope_scaling.type': only 'yarn' and 'llama3' are supported, got '", type, "'");
    if (type == "llama3") {
      Llama3RopeScaling l;
      l.factor = jnum(*rs, "factor", source, l.factor);
      l.low_freq_factor = jnum(*rs, "low_freq_factor", source, l.low_freq_factor);
      l.high_freq_factor = jnum(*rs, "high_freq_factor", source, l.high_freq_factor);
      l.original_max_position_embeddings =
          jint(*rs, "original_max_position_embeddings", source, l.original_max_position_embeddings);
      c.llama3_rope_scaling = l;
    }
  }
  if (const auto* rs = jget(*o, "rope_scaling"); rs && rs->IsObject() && !c.llama3_rope_scaling) {
    RopeScaling r;
    r.factor = jnum(*rs, "factor", source, r.factor);
    r.original_max_position_embeddings = jint(*rs, "original_max_position_embeddings", source, r.original_max_position_embeddings);
    r.beta_fast = jnum(*rs, "beta_fast", source, r.beta_fast);
    r.beta_slow = jnum(*rs, "beta_slow", source, r.beta_slow);
    r.mscale = jnum(*rs, "mscale", source, r.mscale);
    r.mscale_all_dim = jnum(*rs, "mscale_all_dim", source, r.mscale_all_dim);
    c.rope_scaling = r;
  }
  const std::int64_t k = jint(*o, "first_k_dense_replace", source, 0);
  const std::int64_t freq = jint(*o, "moe_layer_freq", source, 1);
  if (freq <= 0) fail(source, ": key 'moe_layer_freq': must be > 0, got ", freq);
  for (std::int64_t i = 0; i < c.num_layers; ++i)
    c.moe_layer_freq.push_back(c.num_experts > 0 && i >= k && i % freq == 0 ? 1 : 0);
  c.homogeneous_layers = c.num_experts == 0 || (k == 0 && freq == 1);
  c.resolve_router_defaults();
  c.validate(source);
  return c;
}

// The values of an official HF config.json that only go into a written config.json (router,
// rope, positions, norm epsilon) replace the model YAML's; architecture values must agree.
inline void take_output_values(ModelConfig& c, const ModelConfig& hf) {
  auto take = [&](const char* field, auto& dst, const auto& src) {
    if (hf.is_default(field)) return;
    dst = src;
    c.origin[field] = hf.origin_of(field);
  };
  take("moe_router_topk", c.moe_router_topk, hf.moe_router_topk);
  take("moe_router_num_groups", c.moe_router_num_groups, hf.moe_router_num_groups);
  take("moe_router_group_topk", c.moe_router_group_topk, hf.moe_router_group_topk);
  take("moe_router_topk_scaling_factor", c.moe_router_topk_scaling_factor, hf.moe_router_topk_scaling_factor);
  take("moe_router_score_function", c.moe_router_score_function, hf.moe_router_score_function);
  take("moe_router_enable_expert_bias", c.moe_router_enable_expert_bias, hf.moe_router_enable_expert_bias);
  take("rotary_base", c.rotary_base, hf.rotary_base);
  take("max_position_embeddings", c.max_position_embeddings, hf.max_position_embeddings);
  take("rope_scaling", c.rope_scaling, hf.rope_scaling);
  take("rope_scaling", c.llama3_rope_scaling, hf.llama3_rope_scaling);
  take("norm_epsilon", c.norm_epsilon, hf.norm_epsilon);
  c.resolve_router_defaults();
}

// For --dry-run: where each top-level value of a written config.json came from.
inline std::vector<std::pair<std::string, std::string>> config_json_origins(std::string_view json,
                                                                           const ModelConfig& c) {
  static const std::map<std::string, std::string> field_of{
      {"hidden_size", "hidden_size"}, {"num_hidden_layers", "num_layers"}, {"intermediate_size", "ffn_hidden_size"},
      {"moe_intermediate_size", "moe_ffn_hidden_size"}, {"n_routed_experts", "num_experts"},
      {"n_shared_experts", "moe_shared_expert_intermediate_size"}, {"first_k_dense_replace", "moe_layer_freq"},
      {"kv_lora_rank", "kv_lora_rank"}, {"q_lora_rank", "q_lora_rank"}, {"qk_nope_head_dim", "qk_head_dim"},
      {"qk_rope_head_dim", "qk_pos_emb_head_dim"}, {"v_head_dim", "v_head_dim"}, {"head_dim", "kv_channels"},
      {"num_attention_heads", "num_attention_heads"}, {"num_key_value_heads", "num_query_groups"},
      {"num_nextn_predict_layers", "mtp_num_layers"}, {"vocab_size", "vocab_size"},
      {"tie_word_embeddings", "untie_embeddings_and_output_weights"}, {"num_experts_per_tok", "moe_router_topk"},
      {"n_group", "moe_router_num_groups"}, {"topk_group", "moe_router_group_topk"},
      {"routed_scaling_factor", "moe_router_topk_scaling_factor"}, {"scoring_func", "moe_router_score_function"},
      {"topk_method", "moe_router_enable_expert_bias"}, {"rope_theta", "rotary_base"},
      {"max_position_embeddings", "max_position_embeddings"}, {"rope_scaling", "rope_scaling"},
      {"rms_norm_eps", "norm_epsilon"}};
  const rapidjson::Document doc = detail::parse_json(json, "config.json");
  std::vector<std::pair<std::string, std::string>> out;
  for (auto it = doc.MemberBegin(); it != doc.MemberEnd(); ++it) {
    const std::string key = it->name.GetString();
    std::string from;
    if (auto f = field_of.find(key); f != field_of.end()) {
      from = c.origin_of(f->second);
      if (from == "default") from = "ckbridge's default for " + f->second;
    } else if (key == "torch_dtype" || key == "quantization_config") {
      from = "the conversion (output dtype / FP8 flags)";
    } else {
      from = "fixed by the model's config.json writer";
    }
    out.emplace_back(key, from);
  }
  return out;
}


// HF output dtype as LoongForge picks it from --hf-official-config-file / --hf-quant-config-file:
// text_config.dtype, text_config.torch_dtype, dtype, torch_dtype (first present).
inline std::optional<std::string> hf_dtype_from_json(std::string_view json, std::string_view source) {
  const auto doc = detail::parse_json(json, source);
  if (const auto* tc = detail::jget(doc, "text_config"); tc && tc->IsObject()) {
    for (const char* k : {"dtype", "torch_dtype"})
      if (detail::jget(*tc, k)) return detail::jstr(*tc, k, source, "");
  }
  for (const char* k : {"dtype", "torch_dtype"})
    if (detail::jget(doc, k)) return detail::jstr(doc, k, source, "");
  return std::nullopt;
}

// DeepSeek-style block FP8 weights declared by config.json `quantization_config`.
struct HfQuantization {
  bool fp8_block = false;                // quant_method fp8, e4m3, 128x128 blocks
  std::optional<std::string> scale_fmt;  // "ue8m0": power-of-two scales (V3.1)
};

inline HfQuantization hf_quantization_from_json(std::string_view json, std::string_view source) {
  const auto doc = detail::parse_json(json, source);
  const rapidjson::Value* o = &doc;
  if (const auto* tc = detail::jget(doc, "text_config"); tc && tc->IsObject() && detail::jget(*tc, "quantization_config"))
    o = tc;
  HfQuantization q;
  const auto* qc = detail::jget(*o, "quantization_config");
  if (!qc) return q;
  if (!qc->IsObject()) fail(source, ": key 'quantization_config' must be an object");
  const std::string method = detail::jstr(*qc, "quant_method", source, "");
  if (method != "fp8")
    fail(source, ": key 'quantization_config.quant_method': '", method, "' is not supported (only block 'fp8')");
  const std::string fmt = detail::jstr(*qc, "fmt", source, "e4m3");
  if (fmt != "e4m3") fail(source, ": key 'quantization_config.fmt': '", fmt, "' is not supported (only e4m3)");
  const auto* bs = detail::jget(*qc, "weight_block_size");
  if (!bs || !bs->IsArray() || bs->Size() != 2 || !(*bs)[0].IsInt() || !(*bs)[1].IsInt() || (*bs)[0].GetInt() != 128 ||
      (*bs)[1].GetInt() != 128)
    fail(source, ": key 'quantization_config.weight_block_size': only [128, 128] is supported");
  q.fp8_block = true;
  if (detail::jget(*qc, "scale_fmt")) q.scale_fmt = detail::jstr(*qc, "scale_fmt", source, "");
  return q;
}

inline ModelConfig load_hf_config_json(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file.string(), ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return model_config_from_hf_json(ss.str(), file.string());
}

struct HfJsonOptions {
  std::string dtype = "bfloat16";              // torch_dtype of the written weights
  bool fp8_quantization_config = false;        // add DeepSeek's block-FP8 quantization_config
  std::optional<std::string> scale_fmt;        // "ue8m0" for V3.1-style power-of-two scales
  std::string transformers_version = "4.46.3";
};

// DeepSeek's 128x128 block-FP8 `quantization_config` (also read by transformers for other models);
// the families' config.json writers (model/) share it.
inline void write_fp8_quantization_config(rapidjson::PrettyWriter<rapidjson::StringBuffer>& w, const HfJsonOptions& o) {
  w.Key("quantization_config");
  w.StartObject();
  w.Key("activation_scheme"); w.String("dynamic");
  w.Key("fmt"); w.String("e4m3");
  w.Key("quant_method"); w.String("fp8");
  if (o.scale_fmt) { w.Key("scale_fmt"); w.String(o.scale_fmt->c_str()); }
  w.Key("weight_block_size"); w.StartArray(); w.Int(128); w.Int(128); w.EndArray();
  w.EndObject();
}

// Compares the architecture fields that decide tensor shapes and layer kinds; the error names the
// first differing key and both sources.
inline void check_same_architecture(const ModelConfig& a, std::string_view src_a, const ModelConfig& b,
                                    std::string_view src_b) {
  auto eq = [&](const char* key, auto x, auto y) {
    if (x != y) fail("config mismatch: key '", key, "' is ", x, " in ", src_a, " but ", y, " in ", src_b);
  };
  eq("num_layers", a.num_layers, b.num_layers);
  eq("hidden_size", a.hidden_size, b.hidden_size);
  eq("num_attention_heads", a.num_attention_heads, b.num_attention_heads);
  eq("vocab_size", a.vocab_size, b.vocab_size);
  eq("q_lora_rank", a.q_lora_rank, b.q_lora_rank);
  eq("kv_lora_rank", a.kv_lora_rank, b.kv_lora_rank);
  eq("qk_head_dim", a.qk_head_dim, b.qk_head_dim);
  eq("qk_pos_emb_head_dim", a.qk_pos_emb_head_dim, b.qk_pos_emb_head_dim);
  eq("v_head_dim", a.v_head_dim, b.v_head_dim);
  eq("multi_latent_attention", a.multi_latent_attention, b.multi_latent_attention);
  eq("kv_channels", a.head_dim(), b.head_dim());
  eq("num_query_groups", a.num_query_groups, b.num_query_groups);
  eq("num_experts", a.num_experts, b.num_experts);
  if (a.num_experts) {
    eq("moe_ffn_hidden_size", a.moe_ffn_hidden_size, b.moe_ffn_hidden_size);
    eq("moe_shared_expert_intermediate_size", a.moe_shared_expert_intermediate_size, b.moe_shared_expert_intermediate_size);
  }
  if (a.first_k_dense() > 0) eq("ffn_hidden_size", a.ffn_hidden_size, b.ffn_hidden_size);
  for (std::size_t i = 0; i < a.moe_layer_freq.size(); ++i)
    if (a.moe_layer_freq[i] != b.moe_layer_freq[i])
      fail("config mismatch: key 'moe_layer_freq': layer ", i, " is ", a.moe_layer_freq[i] ? "MoE" : "dense", " in ",
           src_a, " but ", b.moe_layer_freq[i] ? "MoE" : "dense", " in ", src_b);
  eq("mtp_num_layers", a.mtp_num_layers, b.mtp_num_layers);
  eq("untie_embeddings_and_output_weights", a.untie_embeddings_and_output_weights, b.untie_embeddings_and_output_weights);
}

}  // namespace ckbridge::config

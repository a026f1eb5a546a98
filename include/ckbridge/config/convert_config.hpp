#pragma once
// LoongForge's convert YAML (args + name_map + torch_dtype) as a typed table: for every common
// (framework-neutral) parameter name, its HF and MCore path templates and flags, the TP split
// rule (hard-coded TENSOR_PARALLEL_DIM table + YAML `tensor_parallel_dim`), and builders for the
// full tensor keys of layer-, MTP- and expert-indexed parameters.
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/config/yaml_loader.hpp"
#include "ckbridge/core/error.hpp"

namespace ckbridge::config {

// One `name_map.<side>.<common>` value: (a) string, (b) list (concatenated along dim 0 in order;
// [gate, up] for *_h_to_4h), (c) map with `name` + flags. A null value means "absent".
struct NameEntry {
  std::string common;
  std::vector<std::string> names;
  bool extra = false;               // mcore: also emit <path>._extra_state = None
  bool is_layernorm = false;        // mcore: suffix layer_norm_weight/bias (norm fused into a linear)
  bool fp8 = false;                 // mcore: FP8 parameter in FP8 training
  bool fp8_ignore_tp = false;       // mcore: replicate instead of TP-split when FP8
  bool ignore_tp = false;           // mcore: always replicate
  bool is_direct_name = false;      // path is the whole key (no .weight suffix)
  bool no_layer_id = false;         // hf: key not under <transformer>.<layer_prefix>.N
  bool is_dict_for_expert = false;  // hf: experts stacked in one 3-D tensor
  bool need_transpose = false;      // hf: transpose 2-D weight between HF and common
  std::optional<std::string> dtype; // "bf16" / "fp8"
  std::optional<std::string> depend_on_key;
  std::optional<std::string> bias;  // explicit bias path (`<common>.bias` entry)

  bool is_list() const { return names.size() > 1; }
};

enum class Side { HuggingFace, Mcore };

inline const char* side_name(Side s) { return s == Side::HuggingFace ? "huggingface" : "mcore"; }

// Names that are not parameters but path pieces (strings), per LoongForge's special keys.
inline bool is_special_name_key(std::string_view k) {
  static const std::set<std::string_view> s = {"transformer", "transformer_tpl", "layer_prefix", "mtp_layer_prefix",
                                               "mtp_transformer", "mtp_name_prefix_for_layer", "weight_scale_key",
                                               "moe.expert", "moe.groupedgemm.expert", "moe.shared_expert"};
  return s.count(k) > 0;
}

class NameMap {
public:
  NameMap() = default;
  NameMap(Side side, std::string source) : side_(side), source_(std::move(source)) {}

  const NameEntry* find(std::string_view common) const {
    auto it = entries_.find(std::string(common));
    return it == entries_.end() ? nullptr : &it->second;
  }
  const NameEntry& at(std::string_view common) const {
    if (const auto* e = find(common)) return *e;
    fail(source_, ": key 'name_map.", side_name(side_), ".", common, "' is missing");
  }
  bool has(std::string_view common) const { return find(common) != nullptr; }
  // A special string key (transformer, layer_prefix, ...), or `def` when absent.
  std::optional<std::string> special(std::string_view key) const {
    auto it = special_.find(std::string(key));
    if (it == special_.end()) return std::nullopt;
    return it->second;
  }
  std::string special_or(std::string_view key, std::string def) const { return special(key).value_or(std::move(def)); }
  std::string special_at(std::string_view key) const {
    if (auto v = special(key)) return *v;
    fail(source_, ": key 'name_map.", side_name(side_), ".", key, "' is missing");
  }
  const std::map<std::string, NameEntry>& entries() const { return entries_; }
  Side side() const { return side_; }
  const std::string& source() const { return source_; }

  // Parses one side of name_map.
  static NameMap parse(const YAML::Node& m, Side side, const std::string& source) {
    NameMap out(side, source);
    if (!m.IsDefined() || m.IsNull()) return out;
    const std::string base = std::string("name_map.") + side_name(side);
    if (!m.IsMap()) fail(source, ": key '", base, "' must be a map");
    std::map<std::string, std::string> biases;
    for (auto it = m.begin(); it != m.end(); ++it) {
      const std::string key = detail::key_str(it->first, source, base);
      const YAML::Node v = it->second;  // a copy: it-> yields a temporary proxy
      const std::string where = base + "." + key;
      auto str = [&](const YAML::Node& n, const std::string& w) {
        if (!n.IsScalar()) fail(source, ": key '", w, "': expected a string");
        if (n.Scalar().find("${") != std::string::npos) fail(source, ": key '", w, "': unresolved interpolation");
        return n.Scalar();
      };
      if (v.IsNull()) continue;  // absent
      if (is_special_name_key(key)) {
        out.special_[key] = str(v, where);
        continue;
      }
      // `<common>.bias` with a plain string gives the bias path of `<common>`.
      if (key.size() > 5 && key.compare(key.size() - 5, 5, ".bias") == 0 && v.IsScalar()) {
        biases[key.substr(0, key.size() - 5)] = str(v, where);
        continue;
      }
      NameEntry e;
      e.common = key;
      if (v.IsScalar()) {
        e.names.push_back(str(v, where));
      } else if (v.IsSequence()) {
        if (v.size() == 0) fail(source, ": key '", where, "': empty list");
        for (std::size_t i = 0; i < v.size(); ++i) e.names.push_back(str(v[i], where + "[" + std::to_string(i) + "]"));
      } else if (v.IsMap()) {
        for (auto f = v.begin(); f != v.end(); ++f) {
          const std::string flag = detail::key_str(f->first, source, where);
          const YAML::Node fv = f->second;
          const std::string fw = where + "." + flag;
          auto boolean = [&] {
            if (!fv.IsScalar()) fail(source, ": key '", fw, "': expected true or false");
            try {
              return fv.as<bool>();
            } catch (const YAML::Exception&) {
              fail(source, ": key '", fw, "': expected true or false, got '", fv.Scalar(), "'");
            }
          };
          if (flag == "name") {
            if (fv.IsSequence()) for (std::size_t i = 0; i < fv.size(); ++i) e.names.push_back(str(fv[i], fw));
            else e.names.push_back(str(fv, fw));
          } else if (flag == "extra") e.extra = boolean();
          else if (flag == "is_layernorm") e.is_layernorm = boolean();
          else if (flag == "fp8") e.fp8 = boolean();
          else if (flag == "fp8_ignore_tp") e.fp8_ignore_tp = boolean();
          else if (flag == "ignore_tp") e.ignore_tp = boolean();
          else if (flag == "is_direct_name") e.is_direct_name = boolean();
          else if (flag == "no_layer_id") e.no_layer_id = boolean();
          else if (flag == "is_dict_for_expert") e.is_dict_for_expert = boolean();
          else if (flag == "need_transpose") e.need_transpose = boolean();
          else if (flag == "depend_on_key") e.depend_on_key = str(fv, fw);
          else if (flag == "dtype") {
            const std::string d = str(fv, fw);
            if (d != "bf16" && d != "fp8") fail(source, ": key '", fw, "': expected 'bf16' or 'fp8', got '", d, "'");
            e.dtype = d;
          } else {
            fail(source, ": key '", fw, "': unknown flag (known: name, extra, is_layernorm, fp8, fp8_ignore_tp, "
                 "ignore_tp, is_direct_name, no_layer_id, is_dict_for_expert, need_transpose, depend_on_key, dtype)");
          }
        }
        if (e.names.empty()) fail(source, ": key '", where, "': missing 'name'");
      } else {
        fail(source, ": key '", where, "': expected a string, a list or a map");
      }
      out.entries_[key] = std::move(e);
    }
    for (auto& [common, path] : biases) {
      auto it = out.entries_.find(common);
      if (it == out.entries_.end())
        fail(source, ": key '", base, ".", common, ".bias': no entry '", common, "' to attach the bias to");
      it->second.bias = path;
    }
    return out;
  }

private:
  Side side_ = Side::HuggingFace;
  std::string source_;
  std::map<std::string, NameEntry> entries_;
  std::map<std::string, std::string> special_;
};

// LoongForge's TENSOR_PARALLEL_DIM (mcore_base.py), keyed "<common>.weight|bias"; absent means
// replicated.
inline std::map<std::string, int> default_tensor_parallel_dim() {
  std::map<std::string, int> t;
  for (const char* k : {"word_embeddings.weight", "attention.query_key_value.weight", "attention.query_key_value.bias",
                        "attention.q_down.weight", "attention.q_up.weight", "attention.kv_down.weight",
                        "attention.kv_up.weight", "attention.q.weight", "attention.query_gate_key_value.weight",
                        "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias", "moe.expert_h_to_4h.weight",
                        "moe.expert_h_to_4h.bias", "word_embeddings_for_head.weight", "mtp_word_embeddings.weight",
                        "mtp_shared_head_head.weight", "mtp_eh_proj.weight", "vision_word_embeddings.weight"})
    t[k] = 0;
  for (const char* k : {"attention.dense.weight", "mixer_att.out_proj.weight", "mlp.dense_4h_to_h.weight",
                        "moe.expert_4h_to_h.weight"})
    t[k] = 1;
  return t;
}

// How a tensor is laid out over TP ranks.
enum class TpSplit {
  Replicate,   // same tensor in every shard
  Dim0,        // contiguous row chunks
  Dim1,        // contiguous column chunks
  Dim0GateUp,  // SwiGLU fc1 [G; U]: shard t = [G_t; U_t] (transpose_mlp_dense)
};

// Where a tensor sits in the MCore state dict.
struct McoreWhere {
  enum Kind { Global, Decoder, MtpBlock, MtpLayer } kind = Global;
  std::int64_t index = 0;  // Decoder: local layer index; MtpBlock/MtpLayer: MTP index
};

struct ConvertConfig {
  std::string source;
  YAML::Node args;  // args.common / args.huggingface / args.mcore as given
  NameMap hf, mcore;
  std::string torch_dtype = "bfloat16";
  std::map<std::string, int> tensor_parallel_dim = default_tensor_parallel_dim();

  // Typed view of args (LoongForge names).
  bool transpose_mlp_dense = false;
  bool untie_embeddings_and_output_weights = false;
  bool add_embedding_padding = false;
  std::optional<std::int64_t> mtp_layer_id;  // args.huggingface.mtp_layer_id (HF index of MTP layer 0)

  // args.<section>.<key> as an integer (errors name the key).
  std::int64_t arg_int(std::string_view section, std::string_view key) const {
    auto sec = detail::child(args, std::string(section));
    std::optional<YAML::Node> v;
    if (sec) v = detail::child(*sec, std::string(key));
    const std::string k = "args." + std::string(section) + "." + std::string(key);
    if (!v || v->IsNull()) fail(source, ": key '", k, "' is missing");
    return detail::yas<std::int64_t>(*v, source, k.c_str());
  }

  std::optional<int> tp_dim(std::string_view common, std::string_view suffix = "weight") const {
    auto it = tensor_parallel_dim.find(std::string(common) + "." + std::string(suffix));
    if (it == tensor_parallel_dim.end() || it->second < 0) return std::nullopt;
    return it->second;
  }

  // TP rule of a parameter; `fp8` says whether the tensor is FP8 in the MCore checkpoint.
  TpSplit tp_split(std::string_view common, bool fp8, std::string_view suffix = "weight") const {
    if (const auto* e = mcore.find(common)) {
      if (e->ignore_tp) return TpSplit::Replicate;
      if (fp8 && e->fp8_ignore_tp) return TpSplit::Replicate;
    }
    const auto d = tp_dim(common, suffix);
    if (!d) return TpSplit::Replicate;
    if (*d == 0 && transpose_mlp_dense && (common == "mlp.dense_h_to_4h" || common == "moe.expert_h_to_4h"))
      return TpSplit::Dim0GateUp;
    return *d == 0 ? TpSplit::Dim0 : TpSplit::Dim1;
  }

  // QUANT_HF_BF16_AND_MCORE_FP8: quantize on HF -> MCore, dequantize on MCore -> HF.
  bool hf_bf16_mcore_fp8(std::string_view common) const {
    const auto* h = hf.find(common);
    const auto* m = mcore.find(common);
    return h && m && h->dtype == std::optional<std::string>("bf16") && m->dtype == std::optional<std::string>("fp8");
  }

  // ---- HF keys --------------------------------------------------------------------------
  // `layer`: HF layer index (nullopt for model-level tensors); `part`: list element (gate 0,
  // up 1); `expert`: routed expert id; `shared`: shared expert. `suffix`: weight, bias, or
  // weight_scale_inv (mapped through weight_scale_key).
  std::string hf_key(std::string_view common, std::optional<std::int64_t> layer = std::nullopt,
                     std::string_view suffix = "weight", std::size_t part = 0,
                     std::optional<std::int64_t> expert = std::nullopt, bool shared = false) const {
    const NameEntry& e = hf.at(common);
    std::string path;
    if (suffix == "bias" && e.bias) {
      path = *e.bias;
    } else {
      if (part >= e.names.size())
        fail(source, ": key 'name_map.huggingface.", common, "' has ", e.names.size(), " names, part ", part, " requested");
      path = e.names[part];
    }
    if (expert || shared) {
      if (expert && shared) fail("hf_key: '", common, "': expert and shared are exclusive");
      const std::string grp = expert ? hf.special_at("moe.expert") + "." + std::to_string(*expert)
                                     : hf.special_at("moe.shared_expert");
      path = grp + "." + path;
    }
    if (layer && !e.no_layer_id) {
      path = hf.special_at("transformer") + "." + hf.special_at("layer_prefix") + "." + std::to_string(*layer) + "." + path;
    }
    if (suffix == "bias" && e.bias) return path;
    if (e.is_direct_name) return path;
    if (suffix == "weight_scale_inv") return path + "." + hf.special_or("weight_scale_key", "weight_scale_inv");
    return path + "." + std::string(suffix);
  }

  // ---- MCore keys -----------------------------------------------------------------------
  // `expert_local`: local expert index (grouped GEMM: weight<i>; sequential: local_experts.<i>).
  std::string mcore_module(std::string_view common, McoreWhere w, std::optional<std::int64_t> expert_local = std::nullopt,
                           bool shared = false, bool grouped_gemm = true) const {
    const NameEntry& e = mcore.at(common);
    std::string path = e.names.front();
    if (expert_local && !grouped_gemm) path = mcore.special_at("moe.expert") + "." + std::to_string(*expert_local) + "." + path;
    else if (expert_local) path = mcore.special_at("moe.groupedgemm.expert") + "." + path;
    else if (shared) path = mcore.special_at("moe.shared_expert") + "." + path;
    switch (w.kind) {
      case McoreWhere::Global: return path;
      case McoreWhere::Decoder: return mcore.special_at("layer_prefix") + "." + std::to_string(w.index) + "." + path;
      case McoreWhere::MtpBlock: return mcore.special_at("mtp_layer_prefix") + "." + std::to_string(w.index) + "." + path;
      case McoreWhere::MtpLayer: {
        std::string pre = mcore.special_at("mtp_layer_prefix") + "." + std::to_string(w.index) + ".";
        if (auto inner = mcore.special("mtp_name_prefix_for_layer")) pre += *inner + ".";
        return pre + path;
      }
    }
    return path;
  }

  std::string mcore_key(std::string_view common, McoreWhere w, std::string_view suffix = "weight",
                        std::optional<std::int64_t> expert_local = std::nullopt, bool shared = false,
                        bool grouped_gemm = true) const {
    const NameEntry& e = mcore.at(common);
    if (suffix == "bias" && e.bias) {
      const std::string pre = mcore_module(common, w, expert_local, shared, grouped_gemm);
      // the bias entry is a full path fragment relative to the same prefix as the weight
      const std::string& name = e.names.front();
      return pre.substr(0, pre.size() - name.size()) + *e.bias;
    }
    const std::string module = mcore_module(common, w, expert_local, shared, grouped_gemm);
    if (e.is_direct_name) return module;
    std::string s = e.is_layernorm ? "layer_norm_" + std::string(suffix) : std::string(suffix);
    if (expert_local && grouped_gemm) return module + "." + s + std::to_string(*expert_local);
    return module + "." + s;
  }

  // `<module>._extra_state` for entries flagged `extra` (nullopt otherwise).
  std::optional<std::string> mcore_extra_state_key(std::string_view common, McoreWhere w,
                                                   std::optional<std::int64_t> expert_local = std::nullopt,
                                                   bool shared = false, bool grouped_gemm = true) const {
    const NameEntry& e = mcore.at(common);
    if (!e.extra) return std::nullopt;
    return mcore_module(common, w, expert_local, shared, grouped_gemm) + "._extra_state";
  }
};

namespace detail {
inline bool opt_bool(const YAML::Node& sec, const char* key, const std::string& src, const std::string& where) {
  auto v = child(sec, key);
  if (!v || v->IsNull()) return false;
  return yas<bool>(*v, src, (where + "." + key).c_str());
}
}  // namespace detail

// From a composed and resolved convert YAML (or LoongForge's legacy pre-resolved JSON).
inline ConvertConfig convert_config_from_yaml(const YAML::Node& root, const std::string& source) {
  if (!root.IsMap()) fail(source, ": convert config must be a map");
  ConvertConfig c;
  c.source = source;
  auto args = detail::child(root, "args");
  c.args = args ? YAML::Clone(*args) : YAML::Node(YAML::NodeType::Map);
  if (!c.args.IsMap()) fail(source, ": key 'args' must be a map");
  auto nm = detail::child(root, "name_map");
  if (!nm || !nm->IsMap()) fail(source, ": key 'name_map' is missing or not a map");
  auto h = detail::child(*nm, "huggingface");
  auto m = detail::child(*nm, "mcore");
  if (!h) fail(source, ": key 'name_map.huggingface' is missing");
  if (!m) fail(source, ": key 'name_map.mcore' is missing");
  c.hf = NameMap::parse(*h, Side::HuggingFace, source);
  c.mcore = NameMap::parse(*m, Side::Mcore, source);
  if (auto td = detail::child(root, "torch_dtype"); td && !td->IsNull()) {
    c.torch_dtype = detail::yas<std::string>(*td, source, "torch_dtype");
    if (c.torch_dtype != "bfloat16" && c.torch_dtype != "float16" && c.torch_dtype != "float32")
      fail(source, ": key 'torch_dtype': expected bfloat16, float16 or float32, got '", c.torch_dtype, "'");
  }
  if (auto tpd = detail::child(root, "tensor_parallel_dim"); tpd && !tpd->IsNull()) {
    if (!tpd->IsMap()) fail(source, ": key 'tensor_parallel_dim' must be a map");
    for (auto it = tpd->begin(); it != tpd->end(); ++it) {
      const std::string k = detail::key_str(it->first, source, "tensor_parallel_dim");
      const std::string w = "tensor_parallel_dim." + k;
      int d = -1;
      if (!it->second.IsNull()) d = detail::yas<int>(it->second, source, w.c_str());
      if (d < -1 || d > 1) fail(source, ": key '", w, "': expected 0, 1, or null/-1 (replicated), got ", d);
      c.tensor_parallel_dim[k] = d;
    }
  }
  if (auto mc = detail::child(c.args, "mcore"); mc && mc->IsMap()) {
    c.transpose_mlp_dense = detail::opt_bool(*mc, "transpose_mlp_dense", source, "args.mcore");
    c.untie_embeddings_and_output_weights = detail::opt_bool(*mc, "untie_embeddings_and_output_weights", source, "args.mcore");
    c.add_embedding_padding = detail::opt_bool(*mc, "add_embedding_padding", source, "args.mcore");
  }
  if (auto hs = detail::child(c.args, "huggingface"); hs && hs->IsMap())
    if (auto id = detail::child(*hs, "mtp_layer_id"); id && !id->IsNull())
      c.mtp_layer_id = detail::yas<std::int64_t>(*id, source, "args.huggingface.mtp_layer_id");
  return c;
}

// LoongForge's two-file setup, composed like its Hydra call: the convert YAML with the model
// YAML mounted at `module` (group = the convert file's grand-parent directory name). The model
// file is passed by path, so names like qwen2.5_7b work (B27).
struct LoadedConfigs {
  YAML::Node root;      // composed + resolved convert config (with `module`)
  ConvertConfig convert;
  ModelConfig model;
  std::vector<std::string> notes;  // decisions the caller should tell the user (a vocab_size taken from the model)
};

inline LoadedConfigs load_loongforge_configs(const std::filesystem::path& config_file,
                                             const std::filesystem::path& convert_file, LoadOptions opt = {}) {
  if (!std::filesystem::is_regular_file(config_file)) fail(config_file.string(), ": model config file not found");
  if (!std::filesystem::is_regular_file(convert_file)) fail(convert_file.string(), ": convert config file not found");
  const std::string group = std::filesystem::absolute(convert_file).parent_path().parent_path().filename().string();
  opt.overrides.insert(opt.overrides.begin(), group + "@module=" + std::filesystem::absolute(config_file).string());
  LoadedConfigs out;
  out.root = load_yaml(convert_file, opt);
  out.convert = convert_config_from_yaml(out.root, convert_file.string());
  auto module = detail::child(out.root, "module");
  if (!module || !module->IsMap())
    fail(convert_file.string(), ": key 'module': the model config was not mounted (defaults list needs '", group,
         "@module: ?\?\?')");
  // args.common repeats model values through ${module.*}; they are checked against the model below.
  auto common = [&](const char* key) -> std::optional<std::int64_t> {
    auto sec = detail::child(out.convert.args, "common");
    if (!sec) return std::nullopt;
    auto v = detail::child(*sec, key);
    if (!v || v->IsNull()) return std::nullopt;
    const std::string k = std::string("args.common.") + key;
    return detail::yas<std::int64_t>(*v, convert_file.string(), k.c_str());
  };
  // The vocabulary: the model YAML's (vocab_size_in_config_file or vocab_size). LoongForge's Llama 2 /
  // 3 / 3.1 model YAMLs carry none and their convert YAMLs hard-code the real models' 32000 / 128256:
  // that value is used when the model YAML has none; when both are given and differ, the model's
  // wins and a note names both (LoongForge pads to the convert YAML's size, docs/loongforge-deviations.md).
  const std::optional<std::int64_t> common_vocab = common("vocab_size");
  const bool model_vocab = detail::yget(*module, "vocab_size_in_config_file") || detail::yget(*module, "vocab_size");
  if (!model_vocab && common_vocab) {
    YAML::Node m = YAML::Clone(*module);
    m["vocab_size"] = *common_vocab;
    out.model = model_config_from_yaml(m, config_file.string());
    out.model.origin["vocab_size"] = convert_file.string() + " (args.common.vocab_size)";
  } else {
    out.model = model_config_from_yaml(*module, config_file.string());
  }
  if (common_vocab && *common_vocab != out.model.vocab_size)
    out.notes.push_back(ckbridge::detail::concat(
        convert_file.string(), ": key 'args.common.vocab_size' is ", *common_vocab, " but the model config ",
        config_file.string(), " says ", out.model.vocab_size, "; using the model's ", out.model.vocab_size,
        " (LoongForge would pad the embedding and output layer to ", *common_vocab, " rows)"));
  auto check = [&](const char* key, std::int64_t want) {
    const auto got = common(key);
    if (got && *got != want)
      fail(convert_file.string(), ": key 'args.common.", key, "' is ", *got, " but the model config ",
           config_file.string(), " says ", want);
  };
  check("num_layers", out.model.num_layers);
  check("hidden_size", out.model.hidden_size);
  check("num_attention_heads", out.model.num_attention_heads);
  check("num_experts", out.model.num_experts);
  check("mtp_num_layers", out.model.mtp_num_layers);
  return out;
}

}  // namespace ckbridge::config

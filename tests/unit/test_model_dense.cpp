// The dense GQA families besides Llama 3 / Qwen3: Qwen2 / Qwen2.5 (q/k/v biases, tied embeddings),
// Llama 2 / 3.1 (one policy with Llama 3, told apart by config) and MiMo (MTP blocks under
// model.mtp_layers). Expectations are restated from the tiny YAMLs' numbers and LoongForge's rules
// (docs/families.md), not read back from the code: the bias kind's grouped layout on one axis, which
// output-layer kind a tied / untied model has, the `.bias` names LoongForge implies for every
// name_map entry, the vocabulary taken from the model when a convert YAML hard-codes another, the
// Llama 3.1 rope scaling in config.json, and that every family's check refuses the others' configs
// (so the converter's automatic choice is unique).
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ckbridge/config/convert_config.hpp"
#include "ckbridge/convert/from_config.hpp"
#include "ckbridge/convert/hf_layout.hpp"
#include "ckbridge/convert/kind_maps.hpp"
#include "ckbridge/model/deepseek_v3.hpp"
#include "ckbridge/model/llama3.hpp"
#include "ckbridge/model/mimo.hpp"
#include "ckbridge/model/qwen2.hpp"
#include "ckbridge/model/qwen3.hpp"

using namespace ckbridge;
namespace fs = std::filesystem;

namespace {
const fs::path kConfigs = fs::path(CKB_SOURCE_DIR) / "configs";

config::LoadedConfigs load(const std::string& group, const std::string& model, const std::string& convert) {
  return config::load_loongforge_configs(kConfigs / group / model, kConfigs / group / "ckpt_convert" / convert);
}

template <class F>
void expect_error(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
    BOOST_ERROR("no error");
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const auto& n : needles) BOOST_TEST(m.find(n) != std::string::npos, "'" << n << "' not in: " << m);
  }
}

std::vector<std::string> keys_of(const model::ModelSpec& spec, const config::LoadedConfigs& cfg, int layer) {
  const convert::NameMap nm = convert::name_map_from(cfg.convert);
  const convert::ModelShape shape = convert::model_shape_of(spec, cfg.model);
  std::vector<std::string> out;
  for (const auto& in : convert::enumerate_instances(spec, shape))
    if (in.layer == layer)
      for (const auto& k : convert::hf_keys(nm, in)) out.push_back(k);
  return out;
}
bool has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}
}  // namespace

BOOST_AUTO_TEST_SUITE(model_dense)

BOOST_AUTO_TEST_CASE(qwen2_bias_and_tied_output) {
  const model::ModelSpec& spec = model::spec<model::Qwen2>();
  BOOST_TEST((spec.aliases == std::vector<std::string_view>{"qwen2_5"}));
  const auto q2 = load("qwen2", "qwen2_tiny.yaml", "qwen2_convert.yaml");  // LoongForge's YAML, tied
  BOOST_TEST(q2.model.add_qkv_bias);
  BOOST_TEST(!q2.model.untie_embeddings_and_output_weights);
  const convert::ModelShape shape = convert::model_shape_of(spec, q2.model);
  // 4 heads in 2 groups of head_dim 64: bias rows (4 + 2 x 2) x 64
  const model::ParamKind& bias = spec.param("attention.query_key_value.bias");
  BOOST_TEST(bias.shape(shape.dims) == (Shape{512}));
  BOOST_TEST((bias.part_rows(shape.dims, 3) == std::vector<std::int64_t>{256, 128, 128}));
  // TP 2: rank 1 holds group 1 = [q heads 2, 3 (rows 128..255); k_1 (rows 320..383); v_1 (448..511)]
  const auto maps = convert::kind_maps(bias, shape.dims, false, "qkv.bias", {512}, 2);
  BOOST_TEST(maps[1].shard_shape == (Shape{256}));
  BOOST_TEST(maps[1].pieces.size() == 3u);
  BOOST_TEST(maps[1].pieces[0].src.begin[0] == 128);
  BOOST_TEST(maps[1].pieces[1].src.begin[0] == 320);
  BOOST_TEST(maps[1].pieces[2].src.begin[0] == 448);
  BOOST_TEST(maps[1].pieces[2].at[0] == 192);
  expect_error([&] { convert::kind_maps(bias, shape.dims, false, "qkv.bias", {512}, 4); }, {"'qkv.bias'", "query groups"});
  // LoongForge's implied `.bias` names: every listed HF tensor's `.bias`, the MCore module's `.bias`
  const convert::NameMap nm = convert::name_map_from(q2.convert);
  const auto layer1 = keys_of(spec, q2, 1);
  for (const char* k : {"model.layers.1.self_attn.q_proj.bias", "model.layers.1.self_attn.k_proj.bias",
                        "model.layers.1.self_attn.v_proj.bias", "model.layers.1.self_attn.q_proj.weight"})
    BOOST_TEST(has(layer1, k), k);
  BOOST_TEST(nm.mcore_entry("attention.query_key_value.bias").name == "self_attention.linear_qkv.bias");
  BOOST_TEST(nm.mcore_entry("input_layernorm.bias").name == "self_attention.linear_qkv.layer_norm_bias");
  BOOST_TEST(!nm.mcore_entry("attention.query_key_value.bias").extra);  // the weight's module carries it
  // tied: the tied output layer (no HF tensor: the HF layout has no lm_head), not the untied one
  int tied = 0, untied = 0;
  for (const auto& in : convert::enumerate_instances(spec, shape))
    if (in.kind.common == "word_embeddings_for_head") (in.kind.tied_to.empty() ? untied : tied)++;
  BOOST_TEST(tied == 1);
  BOOST_TEST(untied == 0);
  for (const auto& t : convert::hf_layout(spec, nm, shape, {}))
    BOOST_TEST(t.key.find("lm_head") == std::string::npos, t.key);
  // Qwen2.5 (untied): lm_head, and no tied kind
  const auto q25 = load("qwen2.5", "qwen2_5_tiny.yaml", "qwen2_5_convert_llm.yaml");
  const convert::ModelShape s25 = convert::model_shape_of(spec, q25.model);
  tied = untied = 0;
  for (const auto& in : convert::enumerate_instances(spec, s25))
    if (in.kind.common == "word_embeddings_for_head") (in.kind.tied_to.empty() ? untied : tied)++;
  BOOST_TEST(tied == 0);
  BOOST_TEST(untied == 1);
  // config.json: tie flag and the Qwen2 schema
  const std::string json = spec.hf_config_json(q2.model, {});
  BOOST_TEST(json.find("\"Qwen2ForCausalLM\"") != std::string::npos);
  BOOST_TEST(json.find("\"tie_word_embeddings\": true") != std::string::npos);
  BOOST_TEST(json.find("\"model_type\": \"qwen2\"") != std::string::npos);
  // no biases: not Qwen2
  config::ModelConfig nob = q2.model;
  nob.add_qkv_bias = false;
  expect_error([&] { convert::model_shape_of(spec, nob); }, {"qwen2", "'add_qkv_bias'"});
}

BOOST_AUTO_TEST_CASE(llama_versions_and_vocab_from_the_model) {
  const model::ModelSpec& spec = model::spec<model::Llama3>();
  BOOST_TEST((spec.aliases == std::vector<std::string_view>{"llama2", "llama3_1"}));
  // LoongForge's llama2_convert.yaml hard-codes vocab_size 32000; the tiny model says 1000: the
  // model's value, with a note naming both
  const auto l2 = load("llama2", "llama2_tiny.yaml", "llama2_convert.yaml");
  BOOST_TEST(l2.model.vocab_size == 1000);
  BOOST_TEST(l2.model.num_query_groups == 4);  // num_query_groups: null = one group per head
  BOOST_REQUIRE(l2.notes.size() == 1u);
  for (const char* n : {"args.common.vocab_size", "32000", "1000", "llama2_tiny.yaml"})
    BOOST_TEST(l2.notes[0].find(n) != std::string::npos, n << " not in " << l2.notes[0]);
  const auto l31 = load("llama3", "llama3_1_tiny.yaml", "llama3_1_convert.yaml");
  BOOST_TEST(l31.model.vocab_size == 1000);
  BOOST_REQUIRE(l31.notes.size() == 1u);
  BOOST_TEST(l31.notes[0].find("128256") != std::string::npos);
  // a model YAML without a vocabulary (LoongForge's own llama2_7b.yaml has none): the convert YAML's
  const fs::path dir = fs::temp_directory_path() / ("ckb_dense_" + std::to_string(::getpid()));
  fs::create_directories(dir / "llama2" / "ckpt_convert");
  fs::copy_file(kConfigs / "llama2" / "ckpt_convert" / "llama2_convert.yaml",
                dir / "llama2" / "ckpt_convert" / "llama2_convert.yaml");
  {
    std::ofstream m(dir / "llama2" / "llama2_novocab.yaml");
    m << "num_layers: 2\nhidden_size: 256\nffn_hidden_size: 512\nnum_attention_heads: 4\nnum_query_groups: null\n";
  }
  const auto nv = config::load_loongforge_configs(dir / "llama2" / "llama2_novocab.yaml",
                                                  dir / "llama2" / "ckpt_convert" / "llama2_convert.yaml");
  fs::remove_all(dir);
  BOOST_TEST(nv.model.vocab_size == 32000);
  BOOST_TEST(nv.notes.empty());
  BOOST_TEST(nv.model.origin_of("vocab_size").find("args.common.vocab_size") != std::string::npos);
  // Llama 3.1: rope scaling of type llama3 in config.json, read back; Llama 3: none
  BOOST_REQUIRE(l31.model.llama3_rope_scaling.has_value());
  const std::string json = spec.hf_config_json(l31.model, {});
  BOOST_TEST(json.find("\"rope_type\": \"llama3\"") != std::string::npos);
  const config::ModelConfig back = config::model_config_from_hf_json(json, "config.json");
  BOOST_REQUIRE(back.llama3_rope_scaling.has_value());
  BOOST_TEST(back.llama3_rope_scaling->factor == 8.0);
  BOOST_TEST(back.llama3_rope_scaling->low_freq_factor == 1.0);
  BOOST_TEST(back.llama3_rope_scaling->high_freq_factor == 4.0);
  BOOST_TEST(back.llama3_rope_scaling->original_max_position_embeddings == 8192);
  BOOST_TEST(!back.rope_scaling.has_value());
  const auto l3 = load("llama3", "llama3_tiny.yaml", "llama3_convert.yaml");
  BOOST_TEST(!l3.model.llama3_rope_scaling.has_value());
  BOOST_TEST(spec.hf_config_json(l3.model, {}).find("\"rope_scaling\": null") != std::string::npos);
  // the dtype the writer is given (the converter passes the weights' own: float16 for Llama 2)
  config::HfJsonOptions f16;
  f16.dtype = "float16";
  BOOST_TEST(spec.hf_config_json(l2.model, f16).find("\"torch_dtype\": \"float16\"") != std::string::npos);
  // Llama refuses Qwen2's biases
  config::ModelConfig bias = l3.model;
  bias.add_qkv_bias = true;
  expect_error([&] { convert::model_shape_of(spec, bias); }, {"llama3", "'add_qkv_bias'"});
}

BOOST_AUTO_TEST_CASE(mimo_mtp_names) {
  const model::ModelSpec& spec = model::spec<model::MiMo>();
  const auto mi = load("mimo", "mimo_tiny.yaml", "mimo_convert.yaml");
  BOOST_TEST(mi.model.mtp_num_layers == 1);
  // MTP block 0 = HF model.mtp_layers.0 (the YAML's mtp_layer_prefix, mtp_layer_id 0), its inner
  // layer's tensors under the same prefix
  const auto mtp = keys_of(spec, mi, 4);
  for (const char* k : {"model.mtp_layers.0.token_layernorm.weight", "model.mtp_layers.0.hidden_layernorm.weight",
                        "model.mtp_layers.0.input_proj.weight", "model.mtp_layers.0.final_layernorm.weight",
                        "model.mtp_layers.0.self_attn.k_proj.bias", "model.mtp_layers.0.mlp.down_proj.weight"})
    BOOST_TEST(has(mtp, k), k);
  BOOST_TEST(spec.param("mtp_eh_proj").shape(model::Dims{mi.model}) == (Shape{256, 512}));
  const std::string json = spec.hf_config_json(mi.model, {});
  BOOST_TEST(json.find("\"num_nextn_predict_layers\": 1") != std::string::npos);
  BOOST_TEST(json.find("\"attention_bias\": true") != std::string::npos);
  config::ModelConfig none = mi.model;
  none.mtp_num_layers = 0;
  expect_error([&] { convert::model_shape_of(spec, none); }, {"mimo", "'mtp_num_layers'"});
}

// The converter picks the first family whose check accepts the model config when no config.json
// names the architecture (an MCore source): every family's check must refuse the others' configs.
BOOST_AUTO_TEST_CASE(checks_tell_the_families_apart) {
  struct F {
    const model::ModelSpec* spec;
    config::ModelConfig mc;
  };
  const std::vector<F> fams{
      {&model::spec<model::DeepSeekV3>(), load("deepseek_v3", "deepseek_v3_tiny.yaml", "deepseek_v3_convert.yaml").model},
      {&model::spec<model::Llama3>(), load("llama3", "llama3_tiny.yaml", "llama3_convert.yaml").model},
      {&model::spec<model::Llama3>(), load("llama3", "llama3_1_tiny.yaml", "llama3_1_convert.yaml").model},
      {&model::spec<model::Llama3>(), load("llama2", "llama2_tiny.yaml", "llama2_convert.yaml").model},
      {&model::spec<model::Qwen3>(), load("qwen3", "qwen3_tiny.yaml", "qwen3_convert.yaml").model},
      {&model::spec<model::Qwen2>(), load("qwen2", "qwen2_tiny.yaml", "qwen2_convert.yaml").model},
      {&model::spec<model::Qwen2>(), load("qwen2.5", "qwen2_5_tiny.yaml", "qwen2_5_convert_llm.yaml").model},
      {&model::spec<model::MiMo>(), load("mimo", "mimo_tiny.yaml", "mimo_convert.yaml").model},
  };
  const std::vector<const model::ModelSpec*> specs{&model::spec<model::DeepSeekV3>(), &model::spec<model::Llama3>(),
                                                   &model::spec<model::Qwen3>(), &model::spec<model::Qwen2>(),
                                                   &model::spec<model::MiMo>()};
  for (const auto& f : fams)
    for (const auto* s : specs) {
      bool ok = true;
      try {
        s->check(f.mc);
      } catch (const Error&) {
        ok = false;
      }
      BOOST_TEST(ok == (s == f.spec), s->name << " on " << f.spec->name << "'s config: " << (ok ? "accepted" : "refused"));
    }
}

BOOST_AUTO_TEST_SUITE_END()

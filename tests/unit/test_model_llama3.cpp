// The Llama 3 policy and the standard-attention config paths it needs: the repository's Llama
// YAMLs load as GQA (not MLA), the policy's kinds carry shapes and layouts that follow from the
// config alone,
// the HF layout splits [q; k; v] by heads and groups, the LlamaForCausalLM config.json reads back
// to the same architecture, and configs that are not Llama 3 are refused with the key named.
#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <string>

#include <yaml-cpp/yaml.h>

#include "ckbridge/config/convert_config.hpp"
#include "ckbridge/config/model_config.hpp"
#include "ckbridge/convert/from_config.hpp"
#include "ckbridge/convert/hf_layout.hpp"
#include "ckbridge/convert/kind_maps.hpp"
#include "ckbridge/model/llama3.hpp"

using namespace ckbridge;
namespace fs = std::filesystem;

namespace {

const fs::path kConfigs = fs::path(CKB_TEST_DATA_DIR) / ".." / ".." / "configs";

config::LoadedConfigs tiny() {
  return config::load_loongforge_configs(kConfigs / "llama3" / "llama3_tiny.yaml",
                                         kConfigs / "llama3" / "ckpt_convert" / "llama3_convert.yaml");
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

const char* kLlamaYaml = R"(
num_layers: 2
hidden_size: 256
ffn_hidden_size: 512
num_attention_heads: 8
num_query_groups: 2
vocab_size: 300
)";

}  // namespace

BOOST_AUTO_TEST_SUITE(model_llama3)

BOOST_AUTO_TEST_CASE(tiny_yaml_is_gqa) {
  const auto cfg = tiny();
  const config::ModelConfig& c = cfg.model;
  BOOST_TEST(!c.multi_latent_attention);
  BOOST_TEST(c.head_dim() == 128);  // kv_channels, not hidden / heads = 64
  BOOST_TEST(c.num_query_groups == 2);
  BOOST_TEST(!c.rope_scaling.has_value());
  BOOST_TEST(c.num_experts == 0);
  // without kv_channels the head dim is hidden / heads
  const auto plain = config::model_config_from_yaml(YAML::Load(kLlamaYaml), "m.yaml");
  BOOST_TEST(!plain.multi_latent_attention);
  BOOST_TEST(plain.head_dim() == 32);
}

BOOST_AUTO_TEST_CASE(shapes_instances_and_hf_parts) {
  const auto cfg = tiny();
  const convert::NameMap nm = convert::name_map_from(cfg.convert);
  const model::ModelSpec& spec = model::spec<model::Llama3>();
  const convert::ModelShape shape = convert::model_shape_of(spec, cfg.model);
  BOOST_TEST(shape.num_attention_heads == 6);
  BOOST_TEST(shape.num_query_groups == 2);
  BOOST_TEST(shape.head_dim == 128);
  BOOST_TEST(spec.param("attention.query_key_value").shape(shape.dims) == (Shape{(6 + 2 * 2) * 128, 384}));
  BOOST_TEST(spec.param("attention.dense").shape(shape.dims) == (Shape{384, 768}));
  BOOST_TEST(spec.param("mlp.dense_h_to_4h").shape(shape.dims) == (Shape{2048, 384}));
  BOOST_TEST(spec.param("attention.query_key_value").part_rows(shape.dims, 3) ==
             (std::vector<std::int64_t>{768, 256, 256}));
  const auto inst = convert::enumerate_instances(spec, shape);
  BOOST_TEST(inst.size() == 3u + 6u * 4u);  // 3 globals + 6 kinds per layer
  // HF layout: q/k/v of unequal rows, at their offsets in the concatenation
  const auto layout = convert::hf_layout(spec, nm, shape, {true, DType::BF16});
  int parts = 0;
  for (const auto& t : layout) {
    if (t.key == "model.layers.3.self_attn.q_proj.weight") {
      BOOST_TEST(t.shape == (Shape{768, 384}));
      BOOST_TEST(t.row0 == 0);
      BOOST_TEST(t.dtype == DType::F8_E4M3);
      ++parts;
    }
    if (t.key == "model.layers.3.self_attn.k_proj.weight") {
      BOOST_TEST(t.shape == (Shape{256, 384}));
      BOOST_TEST(t.row0 == 768);
      ++parts;
    }
    if (t.key == "model.layers.3.self_attn.v_proj.weight") {
      BOOST_TEST(t.shape == (Shape{256, 384}));
      BOOST_TEST(t.row0 == 1024);
      ++parts;
    }
    if (t.key == "model.layers.3.self_attn.v_proj.weight_scale_inv") BOOST_TEST(t.shape == (Shape{2, 3}));
  }
  BOOST_TEST(parts == 3);
  // MCore names: LoongForge's TE naming (norms folded into the following linear)
  convert::McoreSlot slot;
  slot.local_layer = 1;
  for (const auto& in : inst) {
    if (in.layer != 1) continue;
    const std::string k = convert::mcore_key(nm, in, slot).key;
    const std::string_view c = in.kind.common;
    if (c == "input_layernorm") BOOST_TEST(k == "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight");
    if (c == "post_attention_layernorm") BOOST_TEST(k == "decoder.layers.1.mlp.linear_fc1.layer_norm_weight");
    if (c == "attention.query_key_value") BOOST_TEST(k == "decoder.layers.1.self_attention.linear_qkv.weight");
  }
  // TP maps of the kind's own layout: one group per rank at TP 2, refused at TP 4
  const model::ParamKind& qkv = spec.param("attention.query_key_value");
  const model::Dims dims = convert::run_dims(shape, convert::ConvertOptions{});
  const auto maps = convert::kind_maps(qkv, dims, false, "qkv", {1280, 384}, 2);
  BOOST_TEST(maps.size() == 2u);
  BOOST_TEST(maps[1].shard_shape == (Shape{640, 384}));
  BOOST_TEST(maps[1].pieces.front().src.begin[0] == 384);  // group 1's first query head (head 3)
  expect_error([&] { convert::kind_maps(qkv, dims, false, "qkv", {1280, 384}, 4); },
               {"'qkv'", "parallel size 4", "query groups"});
  // replicated (ignore_tp): every rank gets the TP-1 order
  const auto rep = convert::kind_maps(qkv, dims, true, "qkv", {1280, 384}, 2);
  BOOST_TEST(rep[1].shard_shape == (Shape{1280, 384}));
  BOOST_TEST(rep[1].pieces.size() == 6u);  // [q_g; k_g; v_g] for both groups
  // the vocabulary: padded (then split) even when TP is 1
  const auto emb = convert::kind_maps(spec.param("word_embeddings"), dims, false, "emb", {shape.vocab_size, 384}, 1);
  BOOST_TEST(emb[0].shard_shape[0] % 128 == 0);
  BOOST_TEST(emb[0].shard_shape[0] >= shape.vocab_size);
}

BOOST_AUTO_TEST_CASE(hf_config_json_round_trip) {
  const config::ModelConfig c = tiny().model;
  config::HfJsonOptions jo;
  jo.fp8_quantization_config = true;
  const std::string json = convert::hf_config_json(model::spec<model::Llama3>(), c, jo);
  BOOST_TEST(json.find("\"LlamaForCausalLM\"") != std::string::npos);
  BOOST_TEST(json.find("\"head_dim\": 128") != std::string::npos);
  BOOST_TEST(json.find("\"weight_block_size\"") != std::string::npos);
  const config::ModelConfig back = config::model_config_from_hf_json(json, "config.json");
  config::check_same_architecture(c, "yaml", back, "config.json");
  BOOST_TEST(!back.multi_latent_attention);
  BOOST_TEST(back.kv_channels == 128);
  BOOST_TEST(back.rotary_base == 500000.0);
  BOOST_TEST(back.norm_epsilon == 1e-5);
}

BOOST_AUTO_TEST_CASE(refusals_name_the_key) {
  // multi_latent_attention: true without its ranks
  YAML::Node n = YAML::Load(kLlamaYaml);
  n["multi_latent_attention"] = true;
  expect_error([&] { config::model_config_from_yaml(n, "m.yaml"); }, {"m.yaml", "'kv_lora_rank' is missing"});
  // head dim from hidden / heads must divide
  n = YAML::Load(kLlamaYaml);
  n["num_attention_heads"] = 6;
  n["num_query_groups"] = 3;
  expect_error([&] { config::model_config_from_yaml(n, "m.yaml"); }, {"m.yaml", "'kv_channels'", "256", "6"});
  // the Llama policy on a DeepSeek config, and Llama's config.json writer on a MoE or MTP config
  const config::ModelConfig ds = config::load_loongforge_configs(
      kConfigs / "deepseek_v3" / "deepseek_v3_tiny.yaml",
      kConfigs / "deepseek_v3" / "ckpt_convert" / "deepseek_v3_convert.yaml").model;
  BOOST_TEST(ds.multi_latent_attention);
  const model::ModelSpec& spec = model::spec<model::Llama3>();
  expect_error([&] { convert::model_shape_of(spec, ds); }, {"llama3", "multi-latent attention"});
  config::ModelConfig moe = tiny().model;
  moe.num_experts = 8;
  moe.moe_layer_freq.assign(4, 1);
  moe.moe_ffn_hidden_size = 64;
  moe.moe_router_num_groups = 1;
  moe.moe_router_topk = 2;
  expect_error([&] { model::Llama3::hf_config_json(moe, {}); }, {"'num_experts'", "dense"});
  expect_error([&] { convert::model_shape_of(spec, moe); }, {"llama3", "num_experts 8"});
  config::ModelConfig mtp = tiny().model;
  mtp.mtp_num_layers = 1;
  expect_error([&] { model::Llama3::hf_config_json(mtp, {}); }, {"'mtp_num_layers'"});
  BOOST_TEST(spec.param("mlp.dense_4h_to_h").shape(model::Dims{tiny().model}) == (Shape{384, 1024}));
  expect_error([&] { spec.param("moe.gate"); }, {"llama3", "'moe.gate'"});
}

BOOST_AUTO_TEST_SUITE_END()

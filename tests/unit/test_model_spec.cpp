// Model policies as type lists of parameter kinds, turned into run-time ModelSpecs: the DeepSeek V3
// and Qwen3 specs list their kinds in the canonical order with their placement, FP8 treatment and
// HF dtype; each kind's shape follows from the tiny YAMLs' numbers (restated here, not read back
// from the code); each kind's own layout, evaluated by convert::kind_maps, pads and splits the
// vocabulary and replicates norms; the families' own refusals and config.json writers; the MoE
// families' checks accept exactly their own tiny model YAML (the converter's automatic choice).
#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "ckbridge/config/convert_config.hpp"
#include "ckbridge/convert/from_config.hpp"
#include "ckbridge/convert/kind_maps.hpp"
#include "ckbridge/model/deepseek_v2.hpp"
#include "ckbridge/model/deepseek_v3.hpp"
#include "ckbridge/model/kimi_k2.hpp"
#include "ckbridge/model/qwen3.hpp"
#include "ckbridge/model/qwen3_moe.hpp"

using namespace ckbridge;
namespace fs = std::filesystem;

namespace {
const fs::path kConfigs = fs::path(CKB_SOURCE_DIR) / "configs";

config::ModelConfig load(const std::string& family, const std::string& model, const std::string& convert) {
  return config::load_loongforge_configs(kConfigs / family / model, kConfigs / family / "ckpt_convert" / convert).model;
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
}  // namespace

BOOST_AUTO_TEST_SUITE(model_spec)

BOOST_AUTO_TEST_CASE(deepseek_v3_kinds) {
  const model::ModelSpec& spec = model::spec<model::DeepSeekV3>();
  BOOST_TEST(spec.name == "deepseek_v3");
  const std::vector<std::string> order{
      "word_embeddings", "final_layernorm", "word_embeddings_for_head", "input_layernorm", "attention.q_down",
      "attention.q_up_layernorm", "attention.q_up", "attention.kv_down", "attention.kv_up_layernorm",
      "attention.kv_up", "attention.dense", "post_attention_layernorm", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h",
      "moe.gate", "moe.gate.bias", "moe.shared_expert/moe.expert_h_to_4h", "moe.shared_expert/moe.expert_4h_to_h",
      "moe.expert/moe.expert_h_to_4h", "moe.expert/moe.expert_4h_to_h", "mtp_enorm", "mtp_hnorm", "mtp_eh_proj",
      "mtp_shared_head_norm"};
  BOOST_REQUIRE_EQUAL(spec.params.size(), order.size());
  for (std::size_t i = 0; i < order.size(); ++i) BOOST_TEST(std::string(spec.params[i].common) == order[i]);
  for (const auto& k : spec.params) BOOST_TEST(k.hf_float32 == (k.common == "moe.gate.bias"), k.common);
  BOOST_TEST((spec.param("attention.q_down").fp8 == model::Fp8::BlockwiseNoTp));
  BOOST_TEST((spec.param("moe.expert/moe.expert_h_to_4h").tp_group == model::TpGroup::Expert));
  BOOST_TEST((spec.param("mlp.dense_h_to_4h").where == model::Where::DenseLayer));
  BOOST_TEST(spec.mtp_copies.size() == 2u);

  // shapes from configs/deepseek_v3/deepseek_v3_tiny.yaml: hidden 320, 4 heads, q_lora 192,
  // kv_lora 256, qk 64 + rope 64, v 64, ffn 512, 8 experts of 256, shared 256, vocab 1000
  const config::ModelConfig mc = load("deepseek_v3", "deepseek_v3_tiny.yaml", "deepseek_v3_convert.yaml");
  const convert::ModelShape shape = convert::model_shape_of(spec, mc);
  auto shape_of = [&](const char* c) { return spec.param(c).shape(shape.dims); };
  BOOST_TEST(shape_of("word_embeddings") == (Shape{1000, 320}));
  BOOST_TEST(shape_of("attention.q_up") == (Shape{4 * (64 + 64), 192}));
  BOOST_TEST(shape_of("attention.kv_down") == (Shape{256 + 64, 320}));
  BOOST_TEST(shape_of("attention.kv_up") == (Shape{4 * (64 + 64), 256}));
  BOOST_TEST(shape_of("attention.dense") == (Shape{320, 4 * 64}));
  BOOST_TEST(shape_of("mlp.dense_h_to_4h") == (Shape{2 * 512, 320}));
  BOOST_TEST(shape_of("moe.gate.bias") == (Shape{8}));
  BOOST_TEST(shape_of("moe.expert/moe.expert_4h_to_h") == (Shape{320, 256}));
  BOOST_TEST(shape_of("mtp_eh_proj") == (Shape{320, 640}));
  // the MLA args of MCore's Namespace come from the family
  bool mla = false;
  for (const auto& [k, v] : shape.args)
    if (k == "multi_latent_attention") mla = std::get<bool>(v);
  BOOST_TEST(mla);

  // each kind's own layout: vocabulary padded to a multiple of 128 x TP, then split (Then<VocabPad,
  // SplitDim>); q_up split by rows, dense by columns, norms replicated
  const model::Dims d = convert::run_dims(shape, convert::ConvertOptions{});
  const auto emb = convert::kind_maps(spec.param("word_embeddings"), d, false, "emb", {1000, 320}, 2);
  BOOST_TEST(emb[1].shard_shape == (Shape{512, 320}));      // 1024 padded rows / 2
  BOOST_TEST(emb[1].pieces.back().pad_rows == 24);          // rows 1000..1023 copy row 999
  BOOST_TEST(emb[1].pieces.back().src.begin[0] == 999);
  const auto rep = convert::kind_maps(spec.param("word_embeddings"), d, true, "emb", {1000, 320}, 2);
  BOOST_TEST(rep[1].shard_shape == (Shape{1024, 320}));     // ignore_tp: padded for one rank
  const auto up = convert::kind_maps(spec.param("attention.q_up"), d, false, "q_up", {512, 192}, 2);
  BOOST_TEST(up[1].pieces.front().src.begin[0] == 256);
  const auto dense = convert::kind_maps(spec.param("attention.dense"), d, false, "dense", {320, 256}, 2);
  BOOST_TEST(dense[1].pieces.front().src.begin[1] == 128);
  const auto norm = convert::kind_maps(spec.param("input_layernorm"), d, false, "norm", {320}, 2);
  BOOST_TEST(norm[1].shard_shape == (Shape{320}));
  expect_error([&] { convert::kind_maps(spec.param("attention.q_up"), d, false, "q_up", {512, 192}, 3); },
               {"'q_up'", "not divisible by 3"});
}

BOOST_AUTO_TEST_CASE(qwen3_kinds_and_refusals) {
  const model::ModelSpec& spec = model::spec<model::Qwen3>();
  const config::ModelConfig mc = load("qwen3", "qwen3_tiny.yaml", "qwen3_convert.yaml");  // LoongForge's YAML
  const convert::ModelShape shape = convert::model_shape_of(spec, mc);
  BOOST_TEST(spec.params.size() == 11u);
  BOOST_TEST(spec.param("attention.q_a_layernorm").shape(shape.dims) == (Shape{128}));  // kv_channels
  BOOST_TEST(spec.param("attention.kv_a_layernorm").shape(shape.dims) == (Shape{128}));
  BOOST_TEST(spec.param("attention.query_key_value").shape(shape.dims) == (Shape{(4 + 2 * 2) * 128, 320}));
  BOOST_TEST(convert::enumerate_instances(spec, shape).size() == 3u + 4u * 8u);
  const std::string json = spec.hf_config_json(mc, {});
  BOOST_TEST(json.find("\"Qwen3ForCausalLM\"") != std::string::npos);
  BOOST_TEST(json.find("\"head_dim\": 128") != std::string::npos);
  BOOST_TEST(json.find("\"tie_word_embeddings\": false") != std::string::npos);
  config::ModelConfig moe = mc;
  moe.num_experts = 8;
  expect_error([&] { convert::model_shape_of(spec, moe); }, {"qwen3", "num_experts 8"});
  config::ModelConfig no_norms = mc;
  no_norms.qk_layernorm = false;
  expect_error([&] { convert::model_shape_of(spec, no_norms); }, {"qwen3", "'qk_layernorm'"});
  config::ModelConfig tied = mc;
  tied.untie_embeddings_and_output_weights = false;
  expect_error([&] { convert::model_shape_of(spec, tied); }, {"qwen3", "tied embeddings"});
}

// Each MoE / MLA family's check accepts its own tiny YAML and refuses every other family's, so the
// converter's choice (first family in registry order whose architecture and check fit) is unique
// even without an HF config.json.
BOOST_AUTO_TEST_CASE(moe_family_checks_are_exclusive) {
  struct Y {
    std::string family, dir, model, convert;
  };
  const std::vector<Y> ys{{"deepseek_v3", "deepseek_v3", "deepseek_v3_tiny.yaml", "deepseek_v3_convert.yaml"},
                          {"kimi_k2", "kimi_k2", "kimi_k2_tiny.yaml", "kimi_k2_convert_bf16.yaml"},
                          {"deepseek_v2", "deepseek2", "deepseek_v2_tiny.yaml", "deepseek_v2_convert.yaml"},
                          {"deepseek_v2_lite", "deepseek2", "deepseek_v2_lite_tiny.yaml", "deepseek_v2_lite_convert.yaml"},
                          {"qwen3", "qwen3", "qwen3_tiny.yaml", "qwen3_convert.yaml"},
                          {"qwen3_moe", "qwen3", "qwen3_moe_tiny.yaml", "qwen3_moe_convert.yaml"}};
  const std::vector<const model::ModelSpec*> specs{
      &model::spec<model::DeepSeekV3>(), &model::spec<model::KimiK2>(),    &model::spec<model::DeepSeekV2>(),
      &model::spec<model::DeepSeekV2Lite>(), &model::spec<model::Qwen3>(), &model::spec<model::Qwen3Moe>()};
  for (const auto& y : ys) {
    const config::ModelConfig mc = load(y.dir, y.model, y.convert);
    for (const auto* s : specs) {
      bool ok = true;
      try {
        s->check(mc);
      } catch (const Error&) {
        ok = false;
      }
      BOOST_TEST(ok == (s->name == y.family), s->name << " on " << y.model << (ok ? " accepted" : " refused"));
    }
  }
  // Kimi's model YAML: LoongForge's model_type and vocabulary padding are read
  const config::ModelConfig kimi = load("kimi_k2", "kimi_k2_tiny.yaml", "kimi_k2_convert_bf16.yaml");
  BOOST_TEST(kimi.loongforge_model_type == "kimi");
  BOOST_TEST(kimi.make_vocab_size_divisible_by == 1280);
  BOOST_TEST(load("qwen3", "qwen3_moe_tiny.yaml", "qwen3_moe_convert.yaml").make_vocab_size_divisible_by == 128);
}

// The new families' kinds and config.json writers, values restated from the tiny YAMLs.
BOOST_AUTO_TEST_CASE(moe_family_kinds_and_config_json) {
  // V2-Lite: hidden 256, 4 heads, nope 64 + rope 32, no q LoRA: one q projection [4 * 96, 256]
  const model::ModelSpec& lite = model::spec<model::DeepSeekV2Lite>();
  const config::ModelConfig lc = load("deepseek2", "deepseek_v2_lite_tiny.yaml", "deepseek_v2_lite_convert.yaml");
  model::Dims d;
  d.model = lc;
  BOOST_TEST((lite.param("attention.q").shape(d) == Shape{384, 256}));
  for (const auto& k : lite.params) BOOST_TEST(k.common.find("q_down") == std::string_view::npos, k.common);
  for (const auto& k : lite.params) BOOST_TEST(k.common != "moe.gate.bias");
  const std::string lj = lite.hf_config_json(lc, {});
  for (const char* want : {"\"DeepseekV2ForCausalLM\"", "\"q_lora_rank\": null", "\"topk_method\": \"greedy\"",
                           "\"n_group\": 1", "\"norm_topk_prob\": false", "\"model_type\": \"deepseek_v2\""})
    BOOST_TEST(lj.find(want) != std::string::npos, want << " not in " << lj);
  BOOST_TEST(lj.find("num_nextn_predict_layers") == std::string::npos);
  // V2: router groups 2, group top-k 1 in its YAML
  const config::ModelConfig vc = load("deepseek2", "deepseek_v2_tiny.yaml", "deepseek_v2_convert.yaml");
  const std::string vj = model::spec<model::DeepSeekV2>().hf_config_json(vc, {});
  for (const char* want : {"\"q_lora_rank\": 192", "\"topk_method\": \"group_limited_greedy\"", "\"n_group\": 2",
                           "\"topk_group\": 1", "\"scoring_func\": \"softmax\""})
    BOOST_TEST(vj.find(want) != std::string::npos, want << " not in " << vj);
  // Kimi K2: DeepSeek V3's architecture, its own model_type, no MTP
  const config::ModelConfig kc = load("kimi_k2", "kimi_k2_tiny.yaml", "kimi_k2_convert_bf16.yaml");
  const std::string kj = model::spec<model::KimiK2>().hf_config_json(kc, {});
  for (const char* want : {"\"DeepseekV3ForCausalLM\"", "\"model_type\": \"kimi_k2\"", "\"topk_method\": \"noaux_tc\"",
                           "\"num_nextn_predict_layers\": 0", "\"routed_scaling_factor\": 2.827"})
    BOOST_TEST(kj.find(want) != std::string::npos, want << " not in " << kj);
  BOOST_TEST(model::spec<model::KimiK2>().hf_model_type == "kimi_k2");
  BOOST_TEST(model::spec<model::DeepSeekV3>().hf_model_type == "deepseek_v3");
  // Qwen3-MoE: all layers MoE, 8 experts of 256, no shared expert / router bias kinds
  const model::ModelSpec& qm = model::spec<model::Qwen3Moe>();
  const config::ModelConfig qc = load("qwen3", "qwen3_moe_tiny.yaml", "qwen3_moe_convert.yaml");
  model::Dims q;
  q.model = qc;
  BOOST_TEST((qm.param("moe.gate").shape(q) == Shape{8, 320}));
  BOOST_TEST((qm.param("moe.expert/moe.expert_h_to_4h").shape(q) == Shape{512, 320}));
  BOOST_TEST((qm.param("attention.query_key_value").shape(q) == Shape{(4 + 2 * 2) * 128, 320}));
  for (const auto& k : qm.params)
    BOOST_TEST((k.common.find("shared_expert") == std::string_view::npos && k.common != "moe.gate.bias"), k.common);
  const std::string qj = qm.hf_config_json(qc, {});
  for (const char* want : {"\"Qwen3MoeForCausalLM\"", "\"num_experts\": 8", "\"moe_intermediate_size\": 256",
                           "\"mlp_only_layers\": []", "\"decoder_sparse_step\": 1", "\"head_dim\": 128"})
    BOOST_TEST(qj.find(want) != std::string::npos, want << " not in " << qj);
}

BOOST_AUTO_TEST_SUITE_END()

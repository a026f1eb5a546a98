// YAML loading (Hydra defaults lists, OmegaConf interpolation), model and convert configs.
// Expected values come from the fixture files and LoongForge's documented semantics, written out
// by hand here.
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ckbridge/config/convert_config.hpp"
#include "ckbridge/config/model_config.hpp"
#include "ckbridge/config/yaml_loader.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/deepseek_v3.hpp"

using namespace ckbridge;
using namespace ckbridge::config;
namespace fs = std::filesystem;

namespace {
const fs::path kData = fs::path(CKB_TEST_DATA_DIR) / "loongforge_configs";
const fs::path kFeat = kData / "features";
const fs::path kLfModels = kData / "configs" / "models" / "deepseek3";
const fs::path kOurs = fs::path(CKB_SOURCE_DIR) / "configs" / "deepseek_v3";

LoadOptions env_opts(std::map<std::string, std::string> env) {
  LoadOptions o;
  o.env = [env](const std::string& k) -> std::optional<std::string> {
    auto it = env.find(k);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  return o;
}
template <class F>
void expect_error(F&& f, std::vector<std::string> needles) {
  try {
    f();
    BOOST_ERROR("expected ckbridge::Error");
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const auto& n : needles) BOOST_TEST(m.find(n) != std::string::npos, "'" << n << "' not in: " << m);
  }
}
std::string S(const YAML::Node& n) { return n.as<std::string>(); }
int I(const YAML::Node& n) { return n.as<int>(); }

const char* kDsv3HfConfig = R"({
  "architectures": ["DeepseekV3ForCausalLM"],
  "attention_bias": false, "attention_dropout": 0.0,
  "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
  "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1,
  "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
  "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
  "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
  "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
  "norm_topk_prob": true, "num_attention_heads": 128, "num_experts_per_tok": 8,
  "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1,
  "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
  "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16", "transformers_version": "4.46.3", "use_cache": true,
  "v_head_dim": 128, "vocab_size": 129280
})";
}  // namespace

BOOST_AUTO_TEST_SUITE(config)

// ---------------------------------------------------------------------------------------------
// Defaults lists

BOOST_AUTO_TEST_CASE(defaults_list_and_self_last) {
  const auto n = load_yaml(kFeat / "app.yaml");
  BOOST_TEST(S(n["name"]) == "app");       // _self_ last: own key wins over base
  BOOST_TEST(I(n["port"]) == 1);           // from base
  BOOST_TEST(S(n["db"]["host"]) == "localhost");
  BOOST_TEST(I(n["db"]["port"]) == 3306);  // group content under its package `db`
  BOOST_TEST(I(n["srv"]["threads"]) == 2); // group@package
  BOOST_TEST(!n["cache"].IsDefined());     // optional + missing option: skipped
  BOOST_TEST(!n["unused"].IsDefined());    // group: null
  BOOST_TEST(!n["defaults"].IsDefined());
  BOOST_TEST(I(n["nested"]["x"]) == 1);    // maps merge key by key
  BOOST_TEST(I(n["nested"]["y"]) == 20);
  BOOST_TEST(I(n["nested"]["z"]) == 30);
  BOOST_TEST(n["tags"].size() == 1u);      // lists are replaced, not merged
  BOOST_TEST(S(n["tags"][0]) == "c");
}

BOOST_AUTO_TEST_CASE(self_ordering) {
  const auto a = load_yaml(kFeat / "self_first.yaml");
  BOOST_TEST(S(a["name"]) == "base");  // _self_ first: the included config wins
  BOOST_TEST(I(a["only_here"]) == 1);
  const auto r = load_yaml(kFeat / "sub" / "rel_parent.yaml");
  BOOST_TEST(S(r["name"]) == "base");  // ../base relative to sub/
  BOOST_TEST(I(r["own"]) == 1);
  BOOST_TEST(I(r["port"]) == 2);
  const auto b = load_yaml(kFeat / "implicit_self.yaml");
  BOOST_TEST(S(b["name"]) == "implicit");
}

BOOST_AUTO_TEST_CASE(mandatory_option_and_overrides) {
  expect_error([] { load_yaml(kFeat / "mandatory.yaml"); }, {"mandatory.yaml", "db: ???", "db=<option>"});
  LoadOptions o;
  o.overrides = {"db=postgres"};
  BOOST_TEST(S(load_yaml(kFeat / "mandatory.yaml", o)["db"]["host"]) == "pg");
  o.overrides = {"db=postgres", "server@srv=big", "nested.x=100", "extra.new=[1, 2]"};
  const auto n = load_yaml(kFeat / "app.yaml", o);
  BOOST_TEST(S(n["db"]["host"]) == "pg");
  BOOST_TEST(I(n["srv"]["threads"]) == 64);
  BOOST_TEST(I(n["nested"]["x"]) == 100);
  BOOST_TEST(I(n["extra"]["new"][1]) == 2);
  o.overrides = {"db=oracle"};
  expect_error([&] { load_yaml(kFeat / "app.yaml", o); }, {"app.yaml", "oracle", "db"});
  o.overrides = {"nosuch@pkg=x"};
  expect_error([&] { load_yaml(kFeat / "app.yaml", o); }, {"nosuch@pkg"});
}

BOOST_AUTO_TEST_CASE(multi_select_package_header_and_nested_override) {
  const auto m = load_yaml(kFeat / "multi.yaml");
  BOOST_TEST(S(m["db"]["host"]) == "pg");  // [mysql, postgres] merged in order
  BOOST_TEST(I(m["db"]["port"]) == 5432);
  BOOST_TEST(m["global_flag"].as<bool>());  // `# @package _global_`
  BOOST_TEST(!m["server"].IsDefined());
  const auto w = load_yaml(kFeat / "with_override.yaml");
  BOOST_TEST(I(w["sub"]["from_sub"]) == 1);        // plain config entry sub/uses_db -> package sub
  BOOST_TEST(S(w["sub"]["db"]["host"]) == "pg");   // `override db: postgres` reaches the nested list
}

// ---------------------------------------------------------------------------------------------
// Interpolation

BOOST_AUTO_TEST_CASE(interpolation_forms) {
  const auto n = load_yaml(kFeat / "interp.yaml", env_opts({{"CKB_TEST_VAR", "/opt/lf"}}));
  BOOST_TEST(I(n["copy"]) == 61);
  BOOST_TEST(S(n["text"]) == "L=61, H=7168");
  BOOST_TEST(n["whole_map"].IsMap());
  BOOST_TEST(I(n["whole_map"]["hidden"]) == 7168);
  BOOST_TEST(n["whole_map"]["dims"].size() == 3u);
  BOOST_TEST(I(n["from_list"]) == 2);
  BOOST_TEST(I(n["from_list_dot"]) == 3);
  BOOST_TEST(I(n["bracket_key"]) == 5);
  BOOST_TEST(S(n["nested_ref"]) == "dsv3");
  BOOST_TEST(I(n["rel"]["b"]) == 1);
  BOOST_TEST(I(n["rel"]["deeper"]["c"]) == 1);
  BOOST_TEST(I(n["chain1"]) == 7168);
  BOOST_TEST(S(n["env_set"]) == "/opt/lf");
  BOOST_TEST(S(n["env_default"]) == "fallback");
  BOOST_TEST(S(n["env_default_ref"]) == "dsv3");
  BOOST_TEST(n["env_default_null"].IsNull());
  BOOST_TEST(S(n["escaped"]) == "${model.layers}");
  BOOST_TEST(I(n["select"]) == 7);
  BOOST_TEST(S(n["url"]) == "file:///opt/lf/configs/");
  BOOST_TEST(I(n["via_ref_to_interp"]) == 61);
  const std::vector<int> freq = {0, 0, 0, 1, 1};
  BOOST_TEST(n["freq"].IsSequence());
  BOOST_TEST(n["freq"].as<std::vector<int>>() == freq, boost::test_tools::per_element());
  BOOST_TEST(I(n["freq_int"]) == 2);
}

BOOST_AUTO_TEST_CASE(interpolation_errors) {
  expect_error([] { load_yaml(kFeat / "cycle.yaml"); }, {"cycle.yaml", "interpolation cycle", "a -> b -> c.d"});
  expect_error([] { load_yaml(kFeat / "self_cycle.yaml"); }, {"interpolation cycle", "a.b"});
  expect_error([] { load_yaml(kFeat / "bad_ref.yaml"); }, {"bad_ref.yaml", "key 'section.bad'", "model.nope", "not found"});
  expect_error([] { load_yaml(kFeat / "bad_env.yaml", env_opts({})); },
               {"bad_env.yaml", "key 'path'", "CKB_TEST_DEFINITELY_UNSET", "not set"});
  expect_error([] { load_yaml(kFeat / "bad_resolver.yaml"); }, {"unknown resolver 'oc.decode'", "key 'x'"});
  expect_error([] { load_yaml(kFeat / "bad_syntax.yaml"); }, {"bad_syntax.yaml", "YAML syntax error", "line"});
  expect_error([] { load_yaml(kFeat / "does_not_exist.yaml"); }, {"does_not_exist.yaml", "not found"});
  expect_error([] { load_yaml(kFeat / "complex_key.yaml"); }, {"complex_key.yaml", "not a scalar"});
  expect_error([] { load_yaml(kFeat / "laughs.yaml"); }, {"laughs.yaml", "20000 nodes"});
  expect_error([] { load_yaml(kFeat / "deep_chain.yaml"); }, {"deep_chain.yaml", "512 deep"});
  // Non-strict: broken keys stay as text and are reported; the rest resolves.
  std::vector<std::string> unresolved;
  LoadOptions o = env_opts({});
  o.strict = false;
  o.unresolved = &unresolved;
  const auto n = load_yaml(kFeat / "bad_env.yaml", o);
  BOOST_TEST(I(n["other"]) == 2);
  BOOST_TEST(S(n["path"]) == "${oc.env:CKB_TEST_DEFINITELY_UNSET}/x");
  BOOST_REQUIRE(unresolved.size() == 1u);
  BOOST_TEST(unresolved[0].find("key 'path'") != std::string::npos);
  // in-memory resolution
  const auto r = resolve_interpolations(YAML::Load("a: 3\nb: x${a}y\n"));
  BOOST_TEST(S(r["b"]) == "x3y");
}

BOOST_AUTO_TEST_CASE(list_expressions) {
  using L = std::vector<long long>;
  auto ev = [](const char* s) { return eval_list_expression(s); };
  L dsv3(61, 1);
  dsv3[0] = dsv3[1] = dsv3[2] = 0;
  BOOST_TEST(ev("[0]*3+[1]*58") == dsv3, boost::test_tools::per_element());
  BOOST_TEST(ev(" [1, 0] * 2 ") == (L{1, 0, 1, 0}), boost::test_tools::per_element());
  BOOST_TEST(ev("2*[1]+[0,1,]") == (L{1, 1, 0, 1}), boost::test_tools::per_element());
  BOOST_TEST(ev("[]") == L{}, boost::test_tools::per_element());
  expect_error([] { eval_list_expression("[0]*"); }, {"expected a number"});
  expect_error([] { eval_list_expression("[0]-[1]"); }, {"expected '+'"});
  expect_error([] { eval_list_expression("[0,1"); }, {"expected ',' or ']'"});
  expect_error([] { eval_list_expression("3"); }, {"bare number"});
}

// ---------------------------------------------------------------------------------------------
// LoongForge-style tree (hydra.searchpath with ${oc.env:LOONGFORGE_PATH}, group@module: ???)

BOOST_AUTO_TEST_CASE(loongforge_tree) {
  const auto model_file = kLfModels / "deepseek_v3.yaml";
  const auto convert_file = kLfModels / "ckpt_convert" / "deepseek_v3_convert.yaml";
  auto o = env_opts({{"LOONGFORGE_PATH", kData.string()}});
  o.search_ancestors = false;  // groups must come from hydra.searchpath
  o.overrides = {"deepseek3@module=deepseek_v3"};
  const auto root = load_yaml(convert_file, o);
  BOOST_TEST(I(root["module"]["num_layers"]) == 61);
  BOOST_TEST(I(root["args"]["common"]["num_layers"]) == 61);
  BOOST_TEST(I(root["args"]["common"]["vocab_size"]) == 129280);
  BOOST_TEST(I(root["args"]["common"]["num_key_value_heads"]) == 128);
  BOOST_TEST(root["module"]["moe_layer_freq"].size() == 61u);
  BOOST_TEST(S(root["module"]["convert_file"]) ==
             kData.string() + "/configs/models/deepseek3/ckpt_convert/deepseek_v3_convert.yaml");
  BOOST_TEST(!root["hydra"].IsDefined());
  BOOST_TEST(S(root["name_map"]["mcore"]["attention.q_down"]["name"]) == "self_attention.linear_q_down_proj");

  // Without the env var the searchpath entry is dropped; the ancestor search finds the group,
  // and module.convert_file (never read by the converter) is the only unresolved key.
  std::vector<std::string> unresolved;
  LoadOptions lazy = env_opts({});
  lazy.strict = false;
  lazy.unresolved = &unresolved;
  const auto lf = load_loongforge_configs(model_file, convert_file, lazy);
  BOOST_TEST(lf.model.num_layers == 61);
  BOOST_TEST(unresolved.size() == 2u);  // hydra.searchpath[0] and module.convert_file
  // Strict without the env var: the error names the variable and the key.
  expect_error([&] { load_loongforge_configs(model_file, convert_file, env_opts({})); },
               {"LOONGFORGE_PATH", "module.convert_file"});
  // ...and without any way to find the group:
  auto none = env_opts({});
  none.search_ancestors = false;
  none.overrides = {"deepseek3@module=deepseek_v3"};
  expect_error([&] { load_yaml(convert_file, none); }, {"LOONGFORGE_PATH", "hydra.searchpath"});
}

BOOST_AUTO_TEST_CASE(loongforge_dotted_model_name_b27) {
  // "deepseek_v3.1_small" would be cut to "deepseek_v3" by LoongForge; we pass the file itself.
  auto o = env_opts({{"LOONGFORGE_PATH", kData.string()}});
  const auto lf = load_loongforge_configs(kLfModels / "deepseek_v3.1_small.yaml",
                                          kLfModels / "ckpt_convert" / "deepseek_v3_convert.yaml", o);
  BOOST_TEST(lf.model.num_layers == 4);
  BOOST_TEST(lf.model.hidden_size == 7168);  // from deepseek_v3.yaml via the relative defaults entry
  BOOST_TEST(lf.model.num_experts == 8);
  BOOST_TEST(lf.model.vocab_size == 1000);
  BOOST_TEST(lf.model.moe_layer_freq == (std::vector<int>{0, 1, 1, 1}), boost::test_tools::per_element());
  BOOST_TEST(lf.convert.arg_int("common", "num_layers") == 4);  // interpolation sees the merged module
  BOOST_TEST(lf.convert.arg_int("common", "num_experts") == 8);
}

// ---------------------------------------------------------------------------------------------
// ckbridge's own configs/deepseek_v3

BOOST_AUTO_TEST_CASE(our_dsv3_configs) {
  const auto convert_file = kOurs / "ckpt_convert" / "deepseek_v3_convert.yaml";
  const auto lf = load_loongforge_configs(kOurs / "deepseek_v3.yaml", convert_file);
  const ModelConfig& m = lf.model;
  BOOST_TEST(m.num_layers == 61);
  BOOST_TEST(m.first_k_dense() == 3);
  BOOST_TEST(!m.is_moe_layer(2));
  BOOST_TEST(m.is_moe_layer(3));
  BOOST_TEST(m.is_moe_layer(61));  // MTP layer
  BOOST_TEST(m.q_head_dim() == 192);
  BOOST_TEST(m.norm_epsilon == 1e-6);
  const ConvertConfig& c = lf.convert;
  BOOST_TEST(c.mtp_layer_id.value() == 61);
  BOOST_TEST(c.transpose_mlp_dense);
  BOOST_TEST(c.untie_embeddings_and_output_weights);
  BOOST_TEST(c.add_embedding_padding);
  BOOST_TEST(c.torch_dtype == "bfloat16");
  BOOST_TEST(c.arg_int("common", "vocab_size") == 129280);

  // HF names (reference tables; layer 5, MTP layer 61)
  BOOST_TEST(c.hf_key("word_embeddings") == "model.embed_tokens.weight");
  BOOST_TEST(c.hf_key("word_embeddings_for_head") == "lm_head.weight");
  BOOST_TEST(c.hf_key("final_layernorm") == "model.norm.weight");
  BOOST_TEST(c.hf_key("attention.q_down", 5) == "model.layers.5.self_attn.q_a_proj.weight");
  BOOST_TEST(c.hf_key("attention.q_down", 5, "weight_scale_inv") == "model.layers.5.self_attn.q_a_proj.weight_scale_inv");
  BOOST_TEST(c.hf_key("attention.kv_up_layernorm", 5) == "model.layers.5.self_attn.kv_a_layernorm.weight");
  BOOST_TEST(c.hf_key("mlp.dense_h_to_4h", 0, "weight", 0) == "model.layers.0.mlp.gate_proj.weight");
  BOOST_TEST(c.hf_key("mlp.dense_h_to_4h", 0, "weight", 1) == "model.layers.0.mlp.up_proj.weight");
  BOOST_TEST(c.hf_key("moe.gate", 3, "bias") == "model.layers.3.mlp.gate.e_score_correction_bias");
  BOOST_TEST(c.hf_key("moe.expert_h_to_4h", 3, "weight", 1, 17) == "model.layers.3.mlp.experts.17.up_proj.weight");
  BOOST_TEST(c.hf_key("moe.expert_4h_to_h", 3, "weight", 0, std::nullopt, true) ==
             "model.layers.3.mlp.shared_experts.down_proj.weight");
  BOOST_TEST(c.hf_key("mtp_eh_proj", 61) == "model.layers.61.eh_proj.weight");
  BOOST_TEST(c.hf_key("mtp_shared_head_norm", 61) == "model.layers.61.shared_head.norm.weight");
  BOOST_TEST(c.hf_key("mtp_word_embeddings", 61) == "model.layers.61.embed_tokens.weight");
  expect_error([&] { c.hf_key("mlp.dense_h_to_4h", 0, "weight", 2); }, {"part 2"});
  expect_error([&] { c.hf_key("nosuch", 0); }, {"name_map.huggingface.nosuch"});

  // MCore names
  using W = McoreWhere;
  const W d2{W::Decoder, 2}, mtp0{W::MtpBlock, 0}, mtpl0{W::MtpLayer, 0}, g{W::Global, 0};
  BOOST_TEST(c.mcore_key("attention.q_down", d2) == "decoder.layers.2.self_attention.linear_q_down_proj.weight");
  BOOST_TEST(c.mcore_key("attention.q_up_layernorm", d2) ==
             "decoder.layers.2.self_attention.linear_q_up_proj.layer_norm_weight");
  BOOST_TEST(c.mcore_extra_state_key("attention.q_down", d2).value() ==
             "decoder.layers.2.self_attention.linear_q_down_proj._extra_state");
  BOOST_TEST(!c.mcore_extra_state_key("input_layernorm", d2));
  BOOST_TEST(c.mcore_key("post_attention_layernorm", d2) == "decoder.layers.2.pre_mlp_layernorm.weight");
  BOOST_TEST(c.mcore_key("moe.gate", d2, "bias") == "decoder.layers.2.mlp.router.expert_bias");
  BOOST_TEST(c.mcore_key("moe.expert_h_to_4h", d2, "weight", 3) == "decoder.layers.2.mlp.experts.linear_fc1.weight3");
  BOOST_TEST(c.mcore_extra_state_key("moe.expert_h_to_4h", d2, 3).value() ==
             "decoder.layers.2.mlp.experts.linear_fc1._extra_state");
  BOOST_TEST(c.mcore_key("moe.expert_4h_to_h", d2, "weight", 3, false, false) ==
             "decoder.layers.2.mlp.experts.local_experts.3.linear_fc2.weight");
  BOOST_TEST(c.mcore_key("moe.expert_h_to_4h", d2, "weight", std::nullopt, true) ==
             "decoder.layers.2.mlp.shared_experts.linear_fc1.weight");
  BOOST_TEST(c.mcore_key("mlp.dense_h_to_4h", d2) == "decoder.layers.2.mlp.linear_fc1.weight");
  BOOST_TEST(c.mcore_key("moe.expert_h_to_4h", mtpl0, "weight", 5) ==
             "mtp.layers.0.transformer_layer.mlp.experts.linear_fc1.weight5");
  BOOST_TEST(c.mcore_key("moe.gate", mtpl0, "bias") == "mtp.layers.0.transformer_layer.mlp.router.expert_bias");
  BOOST_TEST(c.mcore_key("mtp_enorm", mtp0) == "mtp.layers.0.enorm.weight");
  BOOST_TEST(c.mcore_key("mtp_eh_proj", mtp0) == "mtp.layers.0.eh_proj.weight");
  BOOST_TEST(c.mcore_key("mtp_shared_head_norm", mtp0) == "mtp.layers.0.final_layernorm.weight");
  BOOST_TEST(c.mcore_extra_state_key("mtp_shared_head_norm", mtp0).value() == "mtp.layers.0.final_layernorm._extra_state");
  BOOST_TEST(c.mcore_key("mtp_word_embeddings", g) == "embedding.word_embeddings.weight");
  BOOST_TEST(c.mcore_key("final_layernorm", g) == "decoder.final_layernorm.weight");
  BOOST_TEST(c.mcore_key("word_embeddings_for_head", g) == "output_layer.weight");
  BOOST_TEST(c.mcore.special_at("transformer_tpl") == "model%d");

  // Flags and TP rules (reference §4.3)
  const auto& qd = c.mcore.at("attention.q_down");
  BOOST_TEST((qd.extra && qd.fp8 && qd.fp8_ignore_tp && !qd.ignore_tp));
  BOOST_TEST(c.hf.at("moe.expert_h_to_4h").is_list());
  BOOST_TEST(c.hf.at("moe.expert_h_to_4h").names == (std::vector<std::string>{"gate_proj", "up_proj"}),
             boost::test_tools::per_element());
  BOOST_TEST((c.tp_split("attention.q_down", true) == TpSplit::Replicate));
  BOOST_TEST((c.tp_split("attention.q_down", false) == TpSplit::Dim0));
  BOOST_TEST((c.tp_split("attention.kv_down", true) == TpSplit::Replicate));
  BOOST_TEST((c.tp_split("attention.q_up", true) == TpSplit::Dim0));
  BOOST_TEST((c.tp_split("attention.kv_up", true) == TpSplit::Dim0));
  BOOST_TEST((c.tp_split("attention.dense", true) == TpSplit::Dim1));
  BOOST_TEST((c.tp_split("mlp.dense_h_to_4h", true) == TpSplit::Dim0GateUp));
  BOOST_TEST((c.tp_split("moe.expert_h_to_4h", false) == TpSplit::Dim0GateUp));
  BOOST_TEST((c.tp_split("mlp.dense_4h_to_h", true) == TpSplit::Dim1));
  BOOST_TEST((c.tp_split("moe.expert_4h_to_h", true) == TpSplit::Dim1));
  BOOST_TEST((c.tp_split("input_layernorm", false) == TpSplit::Replicate));
  BOOST_TEST((c.tp_split("attention.q_up_layernorm", false) == TpSplit::Replicate));
  BOOST_TEST((c.tp_split("moe.gate", false) == TpSplit::Replicate));
  BOOST_TEST((c.tp_split("moe.gate", false, "bias") == TpSplit::Replicate));
  BOOST_TEST((c.tp_split("word_embeddings", false) == TpSplit::Dim0));
  BOOST_TEST((c.tp_split("word_embeddings_for_head", false) == TpSplit::Dim0));
  BOOST_TEST((c.tp_split("mtp_eh_proj", true) == TpSplit::Dim0));
  BOOST_TEST((c.tp_split("mtp_enorm", false) == TpSplit::Replicate));
  BOOST_TEST(c.hf_bf16_mcore_fp8("mtp_eh_proj"));
  BOOST_TEST(!c.hf_bf16_mcore_fp8("attention.q_up"));

  // HF config.json agrees with the model YAML, and round-trips through our writer.
  const auto hf = model_config_from_hf_json(kDsv3HfConfig, "config.json");
  check_same_architecture(m, "deepseek_v3.yaml", hf, "config.json");
  BOOST_TEST(hf.moe_router_topk == m.moe_router_topk);
  BOOST_TEST(hf.rope_scaling->mscale_all_dim == 1.0);
  const auto again = model_config_from_hf_json(ckbridge::model::DeepSeekV3::hf_config_json(m, {"bfloat16", true, std::nullopt, "4.46.3"}), "written");
  check_same_architecture(hf, "config.json", again, "written");
  BOOST_TEST(again.moe_router_group_topk == 4);
  BOOST_TEST(again.moe_router_topk_scaling_factor == 2.5);
  BOOST_TEST(again.rope_scaling->factor == 40);
  BOOST_TEST(again.max_position_embeddings == 163840);
  const std::string json = ckbridge::model::DeepSeekV3::hf_config_json(m, {"bfloat16", true, std::string("ue8m0"), "4.46.3"});
  BOOST_TEST(json.find("\"scale_fmt\": \"ue8m0\"") != std::string::npos);
  BOOST_TEST(json.find("\"first_k_dense_replace\": 3") != std::string::npos);
  BOOST_TEST(json.find("\"n_shared_experts\": 1") != std::string::npos);
  ModelConfig other = hf;
  other.kv_lora_rank = 256;
  expect_error([&] { check_same_architecture(m, "a.yaml", other, "b.json"); }, {"kv_lora_rank", "a.yaml", "b.json"});
  other = hf;
  other.moe_layer_freq[3] = 0;
  expect_error([&] { check_same_architecture(m, "a.yaml", other, "b.json"); }, {"moe_layer_freq", "layer 3"});
}

BOOST_AUTO_TEST_CASE(our_tiny_config) {
  const auto lf = load_loongforge_configs(kOurs / "deepseek_v3_tiny.yaml", kOurs / "ckpt_convert" / "deepseek_v3_convert.yaml");
  const ModelConfig& m = lf.model;
  BOOST_TEST(m.num_layers == 4);
  BOOST_TEST(m.first_k_dense() == 1);
  BOOST_TEST(m.mtp_num_layers == 1);
  BOOST_TEST(lf.convert.mtp_layer_id.value() == 4);
  BOOST_TEST(m.vocab_size % 128 != 0);
  // Unsplit widths span several 128 blocks and leave a partial edge block...
  for (auto w : {m.hidden_size, m.q_lora_rank, m.kv_lora_rank + m.qk_pos_emb_head_dim})
    BOOST_TEST((w > 128 && w % 128 != 0), "width " << w << " should span blocks and leave a partial one");
  // ...while every TP 2 cut falls on a 128 block (FP8 moves without re-quantization).
  const auto H = m.num_attention_heads;
  for (auto w : {H * m.q_head_dim(), H * (m.qk_head_dim + m.v_head_dim), H * m.v_head_dim, m.ffn_hidden_size,
                 m.moe_ffn_hidden_size, m.moe_shared_expert_intermediate_size})
    BOOST_TEST(w / 2 % 128 == 0, "TP2 shard of width " << w << " is not block aligned");
  BOOST_TEST(m.num_experts % 4 == 0);
  BOOST_TEST(m.num_attention_heads % 4 == 0);
  // A tiny HF config.json derived from it reads back identically.
  const auto back = model_config_from_hf_json(ckbridge::model::DeepSeekV3::hf_config_json(m, {}), "tiny config.json");
  check_same_architecture(m, "tiny.yaml", back, "tiny config.json");
}

BOOST_AUTO_TEST_CASE(model_config_validation) {
  const char* good = R"(
num_layers: 2
hidden_size: 64
ffn_hidden_size: 96
num_attention_heads: 2
num_experts: 4
moe_ffn_hidden_size: 32
moe_shared_expert_intermediate_size: 32
q_lora_rank: 48
kv_lora_rank: 32
qk_head_dim: 16
qk_pos_emb_head_dim: 8
v_head_dim: 16
moe_layer_freq: [0, 1]
vocab_size: 100
moe_router_topk: 2
moe_router_num_groups: 2
)";
  const auto ok = model_config_from_yaml(YAML::Load(good), "m.yaml");
  BOOST_TEST(ok.num_query_groups == 2);
  BOOST_TEST(ok.first_k_dense() == 1);
  auto with = [&](const std::string& key, const std::string& value) {
    YAML::Node n = YAML::Load(good);
    if (value.empty()) n.remove(key);
    else n[key] = YAML::Load(value);
    return n;
  };
  expect_error([&] { model_config_from_yaml(with("num_layers", ""), "m.yaml"); }, {"m.yaml", "'num_layers' is missing"});
  expect_error([&] { model_config_from_yaml(with("hidden_size", "abc"), "m.yaml"); }, {"'hidden_size'", "abc"});
  expect_error([&] { model_config_from_yaml(with("hidden_size", "-4"), "m.yaml"); }, {"'hidden_size'", "> 0"});
  expect_error([&] { model_config_from_yaml(with("moe_layer_freq", "[0, 1, 1]"), "m.yaml"); }, {"'moe_layer_freq'", "3 entries"});
  expect_error([&] { model_config_from_yaml(with("moe_layer_freq", "[0, 2]"), "m.yaml"); }, {"'moe_layer_freq'", "entry 1"});
  expect_error([&] { model_config_from_yaml(with("num_query_groups", "3"), "m.yaml"); }, {"'num_query_groups'"});
  expect_error([&] { model_config_from_yaml(with("moe_router_topk", "5"), "m.yaml"); }, {"'moe_router_topk'"});
  expect_error([&] { model_config_from_yaml(with("moe_layer_freq", "'${moe_freq:\"[0]*2\"}'"), "m.yaml"); },
               {"'moe_layer_freq'", "unresolved interpolation"});
  // moe_layer_freq as an int (every k-th layer) and as a plain list expression string
  BOOST_TEST(model_config_from_yaml(with("moe_layer_freq", "1"), "m.yaml").first_k_dense() == 0);
  BOOST_TEST(model_config_from_yaml(with("moe_layer_freq", "'[0]*1+[1]*1'"), "m.yaml").first_k_dense() == 1);
  // router values the user did not write are defaults that fit the model, not validated as written
  // (4 experts: top-k min(8, 4) = 4; 8 groups do not divide 4 -> 1; group top-k min(4, 1) = 1)
  {
    YAML::Node n = with("moe_router_topk", "");
    n.remove("moe_router_num_groups");
    const auto d = model_config_from_yaml(n, "m.yaml");
    BOOST_TEST(d.moe_router_topk == 4);
    BOOST_TEST(d.moe_router_num_groups == 1);
    BOOST_TEST(d.moe_router_group_topk == 1);
    BOOST_TEST(d.is_default("moe_router_topk"));
    BOOST_TEST(d.origin_of("moe_router_topk") == "default");
    BOOST_TEST(d.origin_of("hidden_size") == "m.yaml");
    BOOST_TEST(!ok.is_default("moe_router_topk"));
    BOOST_TEST(ok.moe_router_topk == 2);
    YAML::Node g = YAML::Load(good);
    g["num_experts"] = 16;
    g.remove("moe_router_topk");
    g.remove("moe_router_num_groups");
    const auto d16 = model_config_from_yaml(g, "m.yaml");  // DeepSeek's own defaults fit 16 experts
    BOOST_TEST(d16.moe_router_topk == 8);
    BOOST_TEST(d16.moe_router_num_groups == 8);
    BOOST_TEST(d16.moe_router_group_topk == 4);
  }
  expect_error([] { model_config_from_hf_json("{\"hidden_size\": 1", "c.json"); }, {"c.json", "invalid JSON"});
  expect_error([] { model_config_from_hf_json("[1]", "c.json"); }, {"c.json", "must be an object"});
  expect_error([] { model_config_from_hf_json("{\"num_hidden_layers\": \"x\"}", "c.json"); },
               {"c.json", "'num_hidden_layers'", "integer"});
}

BOOST_AUTO_TEST_CASE(hf_dtype_and_quantization) {
  BOOST_TEST(hf_dtype_from_json(kDsv3HfConfig, "c.json").value() == "bfloat16");
  BOOST_TEST(hf_dtype_from_json(R"({"torch_dtype": "float16", "text_config": {"dtype": "float32"}})", "c.json").value() ==
             "float32");
  BOOST_TEST(hf_dtype_from_json(R"({"torch_dtype": "float16", "dtype": "bfloat16"})", "c.json").value() == "bfloat16");
  BOOST_TEST(!hf_dtype_from_json("{}", "c.json"));
  const auto q = hf_quantization_from_json(kDsv3HfConfig, "c.json");
  BOOST_TEST(q.fp8_block);
  BOOST_TEST(!q.scale_fmt);
  const auto q31 = hf_quantization_from_json(
      R"({"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}})",
      "v31.json");
  BOOST_TEST(q31.scale_fmt.value() == "ue8m0");
  BOOST_TEST(!hf_quantization_from_json("{}", "c.json").fp8_block);
  expect_error([] { hf_quantization_from_json(R"({"quantization_config": {"quant_method": "fp8", "weight_block_size": [64, 64]}})", "q.json"); },
               {"q.json", "weight_block_size"});
  expect_error([] { hf_quantization_from_json(R"({"quantization_config": {"quant_method": "compressed-tensors"}})", "q.json"); },
               {"q.json", "quant_method", "compressed-tensors"});
}

BOOST_AUTO_TEST_CASE(legacy_json_common_config) {
  // LoongForge's --common_config_path: the same schema, pre-resolved, as JSON.
  const auto f = kFeat / "legacy_common_config.json";
  const auto c = convert_config_from_yaml(load_yaml(f), f.string());
  BOOST_TEST(c.arg_int("common", "num_layers") == 2);
  BOOST_TEST(c.transpose_mlp_dense);
  BOOST_TEST(c.hf_key("mlp.dense_h_to_4h", 1, "weight", 1) == "model.layers.1.mlp.up_proj.weight");
  BOOST_TEST(c.mcore_key("mlp.dense_h_to_4h", McoreWhere{McoreWhere::Decoder, 0}) == "decoder.layers.0.mlp.linear_fc1.weight");
  BOOST_TEST((c.tp_split("mlp.dense_h_to_4h", false) == TpSplit::Dim0GateUp));
  expect_error([&] { c.arg_int("common", "hidden_size"); }, {"legacy_common_config.json", "args.common.hidden_size"});
}

BOOST_AUTO_TEST_CASE(name_map_parsing_errors) {
  auto parse = [](const std::string& mcore) {
    return convert_config_from_yaml(YAML::Load("name_map:\n  huggingface: {transformer: model}\n  mcore:\n" + mcore), "c.yaml");
  };
  BOOST_TEST(parse("    a: {name: x, extra: true}\n").mcore.at("a").extra);
  expect_error([&] { parse("    a: {name: x, bogus: true}\n"); }, {"c.yaml", "name_map.mcore.a.bogus", "unknown flag"});
  expect_error([&] { parse("    a: {name: x, dtype: int4}\n"); }, {"name_map.mcore.a.dtype", "int4"});
  expect_error([&] { parse("    a: {extra: true}\n"); }, {"name_map.mcore.a", "missing 'name'"});
  expect_error([&] { parse("    a: {name: x, fp8: maybe}\n"); }, {"name_map.mcore.a.fp8", "true or false"});
  expect_error([&] { parse("    a: []\n"); }, {"name_map.mcore.a", "empty list"});
  expect_error([&] { parse("    b.bias: y\n"); }, {"name_map.mcore.b.bias", "no entry 'b'"});
  BOOST_TEST(!parse("    a: null\n").mcore.has("a"));
  expect_error([] { convert_config_from_yaml(YAML::Load("args: {}\n"), "c.yaml"); }, {"c.yaml", "name_map"});
  const auto c = convert_config_from_yaml(
      YAML::Load("name_map: {huggingface: {}, mcore: {}}\ntensor_parallel_dim: {attention.dense.weight: 0, "
                 "mlp.dense_4h_to_h.weight: null, new.weight: 1}\n"),
      "c.yaml");
  BOOST_TEST(c.tp_dim("attention.dense").value() == 0);
  BOOST_TEST(!c.tp_dim("mlp.dense_4h_to_h"));
  BOOST_TEST(c.tp_dim("new").value() == 1);
  expect_error([] { convert_config_from_yaml(YAML::Load("name_map: {huggingface: {}, mcore: {}}\ntorch_dtype: int8\n"), "c.yaml"); },
               {"torch_dtype", "int8"});
}

// Regressions found by tests/fuzz/fuzz_config.cpp.
BOOST_AUTO_TEST_CASE(fuzz_findings) {
  // A broken reference deep in a chain is reported where it is, not as "the first link is missing".
  expect_error([] { resolve_interpolations(YAML::Load("a: ${b}\nb: ${c}\nc: x${missing.key}\n")); },
               {"key 'c'", "${missing.key}", "'missing.key' not found"});
  // The sum of list-expression terms is bounded, not only each term.
  expect_error([] { eval_list_expression("[1]*600000+[0]*600000"); }, {"expansion too large"});
  // Non-strict mode on a chain deeper than 512: each broken key fails once (the fuzzer timed out
  // on re-walking the chain from every key); keys of the too-deep chain stay unresolved, the
  // tail that is within reach resolves.
  std::vector<std::string> unresolved;
  LoadOptions o;
  o.strict = false;
  o.unresolved = &unresolved;
  const auto n = load_yaml(kFeat / "deep_chain.yaml", o);
  BOOST_REQUIRE(unresolved.size() == 1u);  // one message (load_yaml drops repeats)
  BOOST_TEST(unresolved[0].find("512 deep") != std::string::npos);
  BOOST_TEST(S(n["k0"]) == "${k1}");
  BOOST_TEST(S(n["k511"]) == "${k512}");
  BOOST_TEST(I(n["k512"]) == 1);
  BOOST_TEST(I(n["k600"]) == 1);
  // A cycle reached through a long lead-in: every key is reported, once.
  std::string doc;
  for (int k = 0; k < 300; ++k) {
    doc.append("k").append(std::to_string(k)).append(": ${k");
    doc.append(std::to_string(k == 299 ? 50 : k + 1)).append("}\n");
  }
  unresolved.clear();
  const auto c = resolve_interpolations(YAML::Load(doc), o);
  BOOST_TEST(unresolved.size() == 300u);
  BOOST_TEST(S(c["k0"]) == "${k1}");
  // name_map flag maps (their iterator values were read through a dangling reference; ASan).
  const auto cc = convert_config_from_yaml(
      YAML::Load("name_map:\n  huggingface: {a: {name: x.y, need_transpose: true}}\n"
                 "  mcore: {a: {name: [p, q], extra: true, fp8_ignore_tp: true}}\n"),
      "inline.yaml");
  BOOST_TEST(cc.hf.at("a").need_transpose);
  BOOST_TEST(cc.hf.at("a").names == (std::vector<std::string>{"x.y"}), boost::test_tools::per_element());
  BOOST_TEST(cc.mcore.at("a").extra);
  BOOST_TEST(cc.mcore.at("a").fp8_ignore_tp);
  BOOST_TEST(cc.mcore.at("a").names == (std::vector<std::string>{"p", "q"}), boost::test_tools::per_element());
}

// Hostile YAML (issue 13, F1/F2 and duplicate keys): bounded work and memory, clear errors that
// name the file and the key. Before the fix the first two ran for minutes / until memory ran out.
BOOST_AUTO_TEST_CASE(hostile_yaml) {
  const fs::path dir = fs::temp_directory_path() / ("ckb_hostile_yaml_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto write = [&](const char* name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return dir / name;
  };
  // Billion laughs: 10 levels of 10 aliases (10^10 nodes expanded), no key is ever used.
  std::string laughs = "lol0: &l0 [a, a, a, a, a, a, a, a, a, a]\n";
  for (int i = 1; i < 10; ++i) {
    laughs += "lol" + std::to_string(i) + ": &l" + std::to_string(i) + " [";
    for (int k = 0; k < 10; ++k) laughs += (k ? ", *l" : "*l") + std::to_string(i - 1);
    laughs += "]\n";
  }
  laughs += "num_layers: 2\n";
  const auto f1 = write("laughs.yaml", laughs);
  expect_error([&] { load_yaml(f1); }, {f1.string(), "key 'lol", "expands to more than"});
  expect_error([&] { resolve_interpolations(YAML::Load(laughs)); }, {"expands to more than"});
  LoadOptions lax;
  std::vector<std::string> unresolved;
  lax.strict = false;
  lax.unresolved = &unresolved;
  expect_error([&] { load_yaml(f1, lax); }, {"expands to more than"});
  // Strings that double at every step (2^40 bytes at the end), unused.
  std::string dbl = "s0: ab\n";
  for (int i = 1; i <= 40; ++i)
    dbl += "s" + std::to_string(i) + ": \"${s" + std::to_string(i - 1) + "}${s" + std::to_string(i - 1) + "}\"\n";
  const auto f2 = write("doubling.yaml", dbl);
  expect_error([&] { load_yaml(f2); }, {f2.string(), "key 's20'", "interpolated string longer than"});
  unresolved.clear();
  const auto lazy = load_yaml(f2, lax);  // non-strict: reported, the rest still loads
  BOOST_TEST(S(lazy["s19"]).size() == (std::size_t(2) << 19));
  BOOST_TEST(!unresolved.empty());
  // Many strings that each stay under the per-string bound still hit the total bound.
  std::string wide = "s0: " + std::string(1000, 'x') + "\n";
  for (int i = 1; i <= 100; ++i) wide += "w" + std::to_string(i) + ": \"" + std::string(1000, '.') + "\"\n";
  wide += "big: \"";
  for (int i = 0; i < 1000; ++i) wide += "${s0}";
  wide += "\"\n";
  for (int i = 0; i < 80; ++i) wide += "c" + std::to_string(i) + ": ${big}-\n";
  expect_error([&] { resolve_interpolations(YAML::Load(wide)); }, {"interpolated strings total more than"});
  // Duplicate keys: refused with file, line and key (yaml-cpp keeps both; lookups see the first).
  const auto f3 = write("dup.yaml", "a: 1\nb:\n  c: 2\n  d: 3\n  c: 4\n");
  expect_error([&] { load_yaml(f3); }, {f3.string(), "line 5", "duplicate key 'b.c'"});
  // Fuzz finding: a defaults entry whose file name is longer than the OS allows made
  // std::filesystem throw filesystem_error (ENAMETOOLONG) out of the loader.
  const auto f_long = write("long_default.yaml", "defaults:\n  - " + std::string(300, 'Y') + "\n  - _self_\nx: 1\n");
  expect_error([&] { load_yaml(f_long); }, {f_long.string(), "defaults entry", "not found"});
  const auto f_long2 = write("long_default2.yaml", "defaults:\n  - g: " + std::string(300, 'Y') + "\nx: 1\n");
  expect_error([&] { load_yaml(f_long2); }, {f_long2.string(), "defaults entry"});
  // Fuzz finding (slow units): keys that refer to each other cost O(keys^2) map scans in yaml-cpp
  // (a 5000-key chain took 8 s in non-strict mode); the scans are bounded, the error names the key.
  std::string chain;
  for (int k = 0; k < 5000; ++k) chain += "k" + std::to_string(k) + ": ${k" + std::to_string(k + 1) + "}\n";
  chain += "k5000: 1\n";
  std::vector<std::string> unres;
  LoadOptions lax2;
  lax2.strict = false;
  lax2.unresolved = &unres;
  (void)resolve_interpolations(YAML::Load(chain), lax2);
  bool bounded = false;
  for (const auto& m : unres) bounded = bounded || m.find("scans more than") != std::string::npos;
  BOOST_TEST(bounded);
  fs::remove_all(dir);
}

BOOST_AUTO_TEST_SUITE_END()

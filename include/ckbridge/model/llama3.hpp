#pragma once
// Llama 3 / 3.1 (dense decoder, GQA attention, SwiGLU MLP, RMSNorm, untied output layer): the
// parameter kinds, each bound to its TP rule, placement and FP8 treatment. As for every model,
// names are not here: configs/llama3/ckpt_convert/llama3_convert.yaml maps each common name to
// its HF and MCore names (LoongForge's TE naming: the input norm is
// `self_attention.linear_qkv.layer_norm_weight`, the post-attention norm
// `mlp.linear_fc1.layer_norm_weight`). HF's q_proj, k_proj and v_proj are one instance
// ("attention.query_key_value", a three-name list in the YAML) laid out by TpRule::GroupedQkv.
// docs/adding-a-model.md walks through this file as the worked example.
#include <string>
#include <string_view>
#include <tuple>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/model/param.hpp"

namespace ckbridge::model {

struct Llama3 {
  static constexpr std::string_view name = "llama3";
  using params = std::tuple<
      // ---- globals
      Param<"word_embeddings", TpRule::VocabRows, Where::FirstStage>,
      Param<"final_layernorm", TpRule::Replicate, Where::LastStage>,
      Param<"word_embeddings_for_head", TpRule::VocabRows, Where::LastStage>,
      // ---- attention, every layer
      Param<"input_layernorm", TpRule::Replicate, Where::Layer>,
      Param<"attention.query_key_value", TpRule::GroupedQkv, Where::Layer, Fp8::Blockwise>,
      Param<"attention.dense", TpRule::Cols, Where::Layer, Fp8::Blockwise>,
      // ---- MLP, every layer
      Param<"post_attention_layernorm", TpRule::Replicate, Where::Layer>,
      Param<"mlp.dense_h_to_4h", TpRule::GateUp, Where::Layer, Fp8::Blockwise>,
      Param<"mlp.dense_4h_to_h", TpRule::Cols, Where::Layer, Fp8::Blockwise>>;
  using mtp_copies = std::tuple<>;  // no MTP blocks

  // Checks what the shape rule relies on (the config reader checks the rest).
  static void check(const config::ModelConfig& c) {
    if (c.multi_latent_attention)
      fail("llama3: the model config describes multi-latent attention (kv_lora_rank, multi_latent_attention); "
           "Llama 3 uses grouped-query attention");
    if (c.num_experts != 0) fail("llama3: the model config has num_experts ", c.num_experts, "; Llama 3 is dense");
    if (c.mtp_num_layers != 0)
      fail("llama3: the model config has mtp_num_layers ", c.mtp_num_layers, "; Llama 3 has none");
    if (!c.untie_embeddings_and_output_weights)
      fail("llama3: tied embeddings (untie_embeddings_and_output_weights: false) are not supported");
  }

  // The full (HF-side, unsharded) shape of a parameter kind; [q; k; v] and [gate; up] are the
  // dim-0 concatenations of their HF tensors.
  static Shape full_shape(std::string_view common, const config::ModelConfig& c) {
    const std::int64_t H = c.hidden_size, hd = c.head_dim();
    if (common == "word_embeddings" || common == "word_embeddings_for_head") return {c.vocab_size, H};
    if (common == "final_layernorm" || common == "input_layernorm" || common == "post_attention_layernorm") return {H};
    if (common == "attention.query_key_value") return {(c.num_attention_heads + 2 * c.num_query_groups) * hd, H};
    if (common == "attention.dense") return {H, c.num_attention_heads * hd};
    if (common == "mlp.dense_h_to_4h") return {2 * c.ffn_hidden_size, H};
    if (common == "mlp.dense_4h_to_h") return {H, c.ffn_hidden_size};
    fail("llama3: no shape rule for parameter '", common, "'");
  }
  static bool hf_float32(std::string_view) { return false; }
  // HF config.json in the LlamaForCausalLM schema.
  static std::string hf_config_json(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    return config::to_hf_llama_config_json(c, o);
  }
};

}  // namespace ckbridge::model

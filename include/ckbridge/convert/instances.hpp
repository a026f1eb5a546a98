#pragma once
// Enumerates the parameter instances of a model spec for a concrete model shape: every global,
// every per-layer kind of every decoder layer (dense or MoE), every routed expert, every MTP block.
#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "ckbridge/convert/names.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/model/spec.hpp"

namespace ckbridge::convert {

// A value of the MCore `args` Namespace.
using ArgValue = std::variant<std::monostate, bool, std::int64_t, double, std::string>;
using ArgList = std::vector<std::pair<std::string, ArgValue>>;

struct ModelShape {
  int num_layers = 0;
  int mtp_num_layers = 0;
  int num_experts = 0;          // 0: dense model
  std::vector<bool> moe_layer;  // per decoder layer (size num_layers)
  bool mtp_moe = true;          // the inner layer of an MTP block is MoE (DeepSeek V3)
  std::int64_t vocab_size = 0;  // unpadded
  // GQA attention dims (the TP checks below); 0 where the model has none (MLA).
  std::int64_t num_attention_heads = 0, num_query_groups = 0, head_dim = 0;
  // Model fields for the MCore `args` Namespace (hidden_size, num_attention_heads, ...).
  std::vector<std::pair<std::string, ArgValue>> args;
  // What the parameter kinds' layout and shape rules read (the model config).
  model::Dims dims;

  bool is_moe(int layer) const {
    if (layer >= num_layers) return mtp_moe && num_experts > 0;
    return layer >= 0 && static_cast<std::size_t>(layer) < moe_layer.size() && moe_layer[static_cast<std::size_t>(layer)];
  }
  void validate() const {
    if (num_layers <= 0) fail("model config: num_layers must be > 0, got ", num_layers);
    if (mtp_num_layers < 0) fail("model config: mtp_num_layers must be >= 0, got ", mtp_num_layers);
    if (static_cast<int>(moe_layer.size()) != num_layers)
      fail("model config: moe_layer_freq has ", moe_layer.size(), " entries for num_layers = ", num_layers);
    for (bool m : moe_layer)
      if (m && num_experts <= 0) fail("model config: MoE layers but num_experts = ", num_experts);
    if (vocab_size <= 0) fail("model config: vocab size must be > 0, got ", vocab_size);
  }
  // Megatron gives every TP rank the same number of attention heads (and, with GQA, of query
  // groups); a TP size that does not divide them writes shards Megatron cannot load.
  void check_tensor_parallel(int tp, const char* flag = "--tensor_model_parallel_size") const {
    std::int64_t heads = num_attention_heads;
    if (heads == 0)  // MLA models: the head count is only among the args
      for (const auto& [k, v] : args)
        if (k == "num_attention_heads")
          if (const auto* h = std::get_if<std::int64_t>(&v)) heads = *h;
    if (tp <= 0) fail(flag, " must be > 0, got ", tp);
    // GQA: the groups first (they divide the heads, so this also covers the heads)
    if (num_query_groups > 0 && num_query_groups % tp != 0)
      fail(flag, " ", tp, " does not divide the model's num_query_groups ", num_query_groups,
           " (GQA: every TP rank must hold the same number of query groups)");
    if (heads > 0 && heads % tp != 0)
      fail(flag, " ", tp, " does not divide the model's num_attention_heads ", heads,
           " (every TP rank must hold the same number of heads)");
  }
};

// Instances in the canonical order: globals of the first stage, layers in order (per layer: the
// kinds in policy order, routed experts by ascending id), MTP blocks, then last-stage globals.
inline std::vector<Instance> enumerate_instances(const model::ModelSpec& spec, const ModelShape& shape) {
  using model::Where;
  std::vector<model::ParamKind> kinds;  // the kinds this model has (a kind may depend on the config)
  for (const auto& k : spec.params)
    if (!k.present || k.present(shape.dims.model)) kinds.push_back(k);
  std::vector<Instance> out;
  auto layer = [&](int id, int mtp) {
    const bool moe = shape.is_moe(id);
    for (const auto& k : kinds) {
      if (k.where == Where::Layer || (k.where == Where::DenseLayer && !moe) || (k.where == Where::MoeLayer && moe))
        out.push_back({k, id, mtp, -1});
      if (k.where == Where::Expert && moe)
        for (int e = 0; e < shape.num_experts; ++e) out.push_back({k, id, mtp, e});
    }
  };
  for (const auto& k : kinds)
    if (k.where == Where::FirstStage) out.push_back({k, -1, -1, -1});
  for (int l = 0; l < shape.num_layers; ++l) layer(l, -1);
  for (int i = 0; i < shape.mtp_num_layers; ++i) {
    for (const auto& k : kinds)
      if (k.where == Where::MtpBlock) out.push_back({k, shape.num_layers + i, i, -1});
    layer(shape.num_layers + i, i);
  }
  for (const auto& k : kinds)
    if (k.where == Where::LastStage) out.push_back({k, -1, -1, -1});
  return out;
}

// (copy key, original key) of every MTP-block duplicate the model spec declares.
inline std::vector<std::pair<std::string, std::string>> mtp_copy_keys(const model::ModelSpec& spec, const NameMap& nm,
                                                                      const ModelShape& shape) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& c : spec.mtp_copies) {
    if (!nm.hf.count(c.copy)) continue;  // the config does not name the copy: nothing to do
    for (int i = 0; i < shape.mtp_num_layers; ++i) {
      model::ParamKind ck, ok;
      ck.common = c.copy;
      ck.where = model::Where::MtpBlock;
      ok.common = c.of;
      ok.where = model::Where::FirstStage;
      out.push_back({hf_keys(nm, Instance{ck, shape.num_layers + i, i, -1}).front(),
                     hf_keys(nm, Instance{ok, -1, -1, -1}).front()});
    }
  }
  return out;
}

}  // namespace ckbridge::convert

#pragma once
// The layout maps of one parameter instance: its TP rule (from the model policy) turned into the
// layout policy that implements it, evaluated for every rank. Refusals carry the policy's
// message (tensor, shape, parallel size).
#include <string>
#include <vector>

#include "ckbridge/convert/instances.hpp"
#include "ckbridge/convert/options.hpp"
#include "ckbridge/layout/layout.hpp"
#include "ckbridge/model/param.hpp"

namespace ckbridge::convert {

// The model dims the TP rules need beyond the tensor's shape.
struct TpSettings {
  std::int64_t vocab_size = 0;                      // real rows
  std::int64_t make_vocab_size_divisible_by = 128;  // per TP rank
  std::int64_t pad_vocab_size_to = 0;               // 0 = unset
  layout::GroupedQkv qkv{};                         // heads, query groups, head_dim (GroupedQkv rule)
};
using VocabSettings = TpSettings;  // the former name (vocabulary fields only)

inline TpSettings tp_settings(const ModelShape& shape, const ConvertOptions& o) {
  return {shape.vocab_size, o.make_vocab_size_divisible_by, o.pad_vocab_size_to,
          layout::GroupedQkv{shape.num_attention_heads, shape.num_query_groups, shape.head_dim}};
}

template <layout::Policy P>
std::vector<layout::ShardMap> maps_of(const P& policy, const std::string& name, const Shape& full, int size) {
  if (auto why = policy.why_not(name, full, size)) fail(*why);
  std::vector<layout::ShardMap> out;
  for (int r = 0; r < size; ++r) out.push_back(policy.shard_map(name, full, r, size));
  return out;
}

// Maps for ranks [0, size). `replicate` forces a full copy per rank (ignore_tp / fp8_ignore_tp).
inline std::vector<layout::ShardMap> tp_maps(model::TpRule rule, bool replicate, const std::string& name,
                                             const Shape& full, int size, const TpSettings& v) {
  using model::TpRule;
  if (rule == TpRule::GroupedQkv) {  // reorders rows even when replicated or at TP 1
    if (!replicate) return maps_of(v.qkv, name, full, size);
    std::vector<layout::ShardMap> one = maps_of(v.qkv, name, full, 1);
    return std::vector<layout::ShardMap>(static_cast<std::size_t>(size), one[0]);
  }
  if (rule == TpRule::VocabRows)  // padding applies even when replicated (TP 1)
    return maps_of(layout::vocab_parallel(v.vocab_size, v.make_vocab_size_divisible_by, replicate ? 1 : size,
                                          v.pad_vocab_size_to),
                   name, full, replicate ? 1 : size);
  if (replicate || rule == TpRule::Replicate || size == 1) {
    std::vector<layout::ShardMap> one = maps_of(layout::Replicated{}, name, full, 1);
    return std::vector<layout::ShardMap>(static_cast<std::size_t>(size), one[0]);
  }
  switch (rule) {
    case TpRule::Rows: return maps_of(layout::SplitDim{0}, name, full, size);
    case TpRule::Cols: return maps_of(layout::SplitDim{1}, name, full, size);
    case TpRule::GateUp: return maps_of(layout::SwiGLUInterleave{0}, name, full, size);
    default: break;
  }
  fail("tensor '", name, "': unknown TP rule");
}

}  // namespace ckbridge::convert

#pragma once
// The layout maps of one parameter instance: its kind's own layout (the model policy's
// `layout(dims)`, a composed layout policy) evaluated for every rank. Refusals carry the policy's
// message (tensor, shape, parallel size).
#include <string>
#include <vector>

#include "ckbridge/convert/instances.hpp"
#include "ckbridge/convert/options.hpp"
#include "ckbridge/layout/any_policy.hpp"
#include "ckbridge/model/spec.hpp"

namespace ckbridge::convert {

// The dims the kinds' rules read for one run: the model's, plus the run's vocabulary padding.
inline model::Dims run_dims(const ModelShape& shape, const ConvertOptions& o) {
  model::Dims d = shape.dims;
  d.make_vocab_size_divisible_by = o.make_vocab_size_divisible_by;
  d.pad_vocab_size_to = o.pad_vocab_size_to;
  return d;
}

template <layout::Policy P>
std::vector<layout::ShardMap> maps_of(const P& policy, const std::string& name, const Shape& full, int size) {
  if (auto why = policy.why_not(name, full, size)) fail(*why);
  std::vector<layout::ShardMap> out;
  for (int r = 0; r < size; ++r) out.push_back(policy.shard_map(name, full, r, size));
  return out;
}

// Maps for ranks [0, size). `replicate` (ignore_tp / fp8_ignore_tp) gives every rank the layout
// at size 1: a full copy, still padded (vocabulary) or regrouped (grouped QKV) as the kind says.
inline std::vector<layout::ShardMap> kind_maps(const model::ParamKind& kind, const model::Dims& dims, bool replicate,
                                               const std::string& name, const Shape& full, int size) {
  if (!kind.layout) fail("tensor '", name, "': parameter kind '", kind.common, "' has no layout");
  const layout::AnyPolicy policy = kind.layout(dims);
  if (replicate || size == 1) {
    const std::vector<layout::ShardMap> one = maps_of(policy, name, full, 1);
    return std::vector<layout::ShardMap>(static_cast<std::size_t>(size < 1 ? 1 : size), one[0]);
  }
  return maps_of(policy, name, full, size);
}

}  // namespace ckbridge::convert

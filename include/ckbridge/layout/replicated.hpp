#pragma once
// Replicated: every rank holds the whole tensor (norms, router weight and bias, FP8 q_down/kv_down
// under fp8_ignore_tp). Merging takes rank 0's copy, as LoongForge does; apply.hpp's
// MergeOptions::verify checks the other replicas instead of trusting them.
#include <optional>
#include <string>
#include <string_view>

#include "ckbridge/layout/policy.hpp"

namespace ckbridge::layout {

struct Replicated {
  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    return detail::bad_size(tensor, full, size);
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    detail::require(why_not(tensor, full, size));
    detail::require_rank(tensor, full, rank, size);
    return ShardMap{full, 0, {Piece{whole(full), Shape(full.size(), 0)}}};
  }
  Shape full_shape(const Shape& shard, int /*size*/) const { return shard; }
};

}  // namespace ckbridge::layout

#pragma once
// SplitDim{dim}: torch.chunk(X, size, dim) with equal chunks; rank r holds the r-th chunk.
// LoongForge's TP rule for column-parallel (dim 0) and row-parallel (dim 1) weights and for
// biases. Unlike torch.chunk, an extent not divisible by `size` is refused instead of silently
// giving unequal (or missing) shards.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "ckbridge/layout/policy.hpp"

namespace ckbridge::layout {

struct SplitDim {
  std::size_t dim = 0;

  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    if (auto w = detail::bad_size(tensor, full, size)) return w;
    if (auto w = detail::bad_dim("SplitDim", tensor, full, size, dim)) return w;
    if (full[dim] % size != 0)
      return ckbridge::detail::concat("cannot split ", detail::subject(tensor, full, size), " along dim ", dim,
                                      ": extent ", full[dim], " is not divisible by ", size);
    return std::nullopt;
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    detail::require(why_not(tensor, full, size));
    detail::require_rank(tensor, full, rank, size);
    Shape shard = full;
    shard[dim] /= size;
    Box src{Shape(full.size(), 0), shard};
    src.begin[dim] = rank * shard[dim];
    return ShardMap{shard, dim, {Piece{src, Shape(full.size(), 0)}}};
  }
  Shape full_shape(const Shape& shard, int size) const {
    if (dim >= shard.size()) fail("SplitDim: shard shape ", shape_str(shard), " has no dim ", dim);
    Shape full = shard;
    full[dim] *= size;
    return full;
  }
};

}  // namespace ckbridge::layout

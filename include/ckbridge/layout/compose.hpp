#pragma once
// Then<A, B>: apply A, then B to A's shard. The parallel size factors as first_size x inner size
// with the rank outer-major (rank = rank_A * (size / first_size) + rank_B), which is Megatron's
// expert rank order (e = rank / etp, et = rank % etp). A transform that does not split (VocabPad,
// Replicated) runs with first_size = 1. The map is the composition of the two maps, so merging
// needs nothing new.
//   then(VocabPad{...}, SplitDim{0})                 pad the vocabulary, then split it over TP
//   then(ExpertSlice{E, ep}, SwiGLUInterleave{1}, ep) experts [E, 2F, H] over EP, fc1 over ETP
#include <optional>
#include <string>
#include <string_view>

#include "ckbridge/layout/policy.hpp"
#include "ckbridge/layout/shard_map.hpp"

namespace ckbridge::layout {

template <Policy A, Policy B>
struct Then {
  A first{};
  B second{};
  int first_size = 1;

  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    if (auto w = detail::bad_size(tensor, full, size)) return w;
    if (first_size < 1 || size % first_size != 0)
      return ckbridge::detail::concat("cannot lay out ", detail::subject(tensor, full, size),
                                      ": parallel size is not a multiple of the first stage's size ", first_size);
    if (auto w = first.why_not(tensor, full, first_size)) return w;
    const Shape mid = first.shard_map(tensor, full, 0, first_size).shard_shape;
    return second.why_not(tensor, mid, size / first_size);
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    detail::require(why_not(tensor, full, size));
    detail::require_rank(tensor, full, rank, size);
    const int inner = size / first_size;
    const ShardMap outer = first.shard_map(tensor, full, rank / inner, first_size);
    return compose(tensor, outer, second.shard_map(tensor, outer.shard_shape, rank % inner, inner));
  }
  Shape full_shape(const Shape& shard, int size) const {
    if (first_size < 1 || size % first_size != 0)
      fail("parallel size ", size, " is not a multiple of the first stage's size ", first_size);
    return first.full_shape(second.full_shape(shard, size / first_size), first_size);
  }
};

template <Policy A, Policy B>
constexpr Then<A, B> then(A a, B b, int first_size = 1) {
  return Then<A, B>{a, b, first_size};
}

}  // namespace ckbridge::layout

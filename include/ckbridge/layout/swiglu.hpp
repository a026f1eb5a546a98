#pragma once
// SwiGLUInterleave{dim}: the SwiGLU fc1 layout. Along `dim` the full tensor is [gate; up] (F rows
// each, gate first: MCore's swiglu applies SiLU to the first half). Rank r of n holds
// [gate[r*F/n, (r+1)*F/n) ; up[r*F/n, (r+1)*F/n)], which is LoongForge's transpose_shape0(X, 2, n)
// followed by chunk(n). dim is 0 for a [2F, H] weight or [2F] bias, 1 for experts stacked as
// [E, 2F, H].
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "ckbridge/layout/policy.hpp"

namespace ckbridge::layout {

struct SwiGLUInterleave {
  std::size_t dim = 0;

  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    if (auto w = detail::bad_size(tensor, full, size)) return w;
    if (auto w = detail::bad_dim("SwiGLUInterleave", tensor, full, size, dim)) return w;
    if (full[dim] % 2 != 0)
      return ckbridge::detail::concat("cannot interleave ", detail::subject(tensor, full, size), ": extent ",
                                      full[dim], " of dim ", dim, " is not [gate; up] (odd)");
    if ((full[dim] / 2) % size != 0)
      return ckbridge::detail::concat("cannot interleave ", detail::subject(tensor, full, size), ": gate/up extent ",
                                      full[dim] / 2, " of dim ", dim, " is not divisible by ", size);
    return std::nullopt;
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    detail::require(why_not(tensor, full, size));
    detail::require_rank(tensor, full, rank, size);
    const Shape zero(full.size(), 0);
    if (size == 1) return ShardMap{full, dim, {Piece{whole(full), zero}}};  // one piece: FP8 needs no mid-block cut
    const std::int64_t f = full[dim] / 2, part = f / size;
    Shape shard = full;
    shard[dim] = 2 * part;
    Shape ext = full;
    ext[dim] = part;
    ShardMap m{shard, dim, {}};
    for (std::int64_t half = 0; half < 2; ++half) {  // gate, then up
      Piece p{Box{zero, ext}, zero};
      p.src.begin[dim] = half * f + rank * part;
      p.at[dim] = half * part;
      m.pieces.push_back(p);
    }
    return m;
  }
  Shape full_shape(const Shape& shard, int size) const {
    if (dim >= shard.size()) fail("SwiGLUInterleave: shard shape ", shape_str(shard), " has no dim ", dim);
    Shape full = shard;
    full[dim] *= size;
    return full;
  }
};

}  // namespace ckbridge::layout

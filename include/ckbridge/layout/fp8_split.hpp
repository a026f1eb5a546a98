#pragma once
// Splitting blockwise-FP8 weights without re-quantizing (LoongForge's "direct" path). Data
// [..., M, N] is tiled in 128x128 blocks over its last two dims; its scale_inv is
// [..., ceil(M/128), ceil(N/128)] (leading dims, e.g. stacked experts, map one to one). A shard
// can take its blocks' scales verbatim only if every piece of the data map starts on a block
// boundary, in the full tensor and in the shard, and ends on one or at the full extent (a partial
// last block must stay the last block). Then the scale tensor's map is the data map seen one
// level up, in block coordinates. LoongForge never checks this (bug B6); we refuse.
//   Fp8Blocks<SplitDim>{{1}}: the data policy with the alignment check, plus scale_map().
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/core/tensor.hpp"
#include "ckbridge/layout/apply.hpp"
#include "ckbridge/layout/policy.hpp"
#include "ckbridge/layout/shard_map.hpp"

namespace ckbridge::layout {

inline constexpr std::int64_t kFp8Block = 128;

namespace detail {
constexpr std::int64_t ceil_blocks(std::int64_t n) { return (n + kFp8Block - 1) / kFp8Block; }

inline std::optional<std::string> fp8_bad_rank(std::string_view tensor, const Shape& data_full) {
  if (data_full.size() < 2)
    return ckbridge::detail::concat("FP8 block layout of tensor '", tensor, "' of shape ", shape_str(data_full),
                                    ": needs at least 2 dims");
  return std::nullopt;
}
}  // namespace detail

// scale_inv shape of blockwise-FP8 data (unpadded, HF weight_scale_inv; TE pads columns to 4).
inline Shape fp8_scale_shape(const Shape& data) {
  if (data.size() < 2) fail("FP8 data of shape ", shape_str(data), " needs at least 2 dims");
  Shape s = data;
  s[s.size() - 2] = detail::ceil_blocks(s[s.size() - 2]);
  s.back() = detail::ceil_blocks(s.back());
  return s;
}

// Why the data map `m` (one rank's shard of `data_full`) cannot be carried by whole blocks.
inline std::optional<std::string> fp8_why_not(std::string_view tensor, const Shape& data_full, const ShardMap& m,
                                              int rank, int size) {
  if (auto w = detail::fp8_bad_rank(tensor, data_full)) return w;
  const std::size_t r = data_full.size();
  auto refuse = [&](auto&&... why) {
    return ckbridge::detail::concat("FP8 block split of ", detail::subject(tensor, data_full, size), ": rank ", rank,
                                    " ", why...,
                                    " (direct FP8 copy needs whole 128x128 blocks; dequantize and re-quantize)");
  };
  for (const Piece& p : m.pieces)
    if (p.is_pad()) return refuse("would pad with row ", box_str(p.src), ", which FP8 blocks cannot carry");
  for (const Piece& p : m.pieces) {
    const Box d = p.dst();
    for (std::size_t dim = r - 2; dim < r; ++dim) {
      const std::int64_t sb = p.src.begin[dim], se = sb + p.src.extent[dim];
      const std::int64_t db = d.begin[dim], de = db + d.extent[dim];
      const bool src_ok = sb % kFp8Block == 0 && (se % kFp8Block == 0 || se == data_full[dim]);
      const bool dst_ok = db % kFp8Block == 0 && (de % kFp8Block == 0 || de == m.shard_shape[dim]);
      const bool partial_ok = (se % kFp8Block == 0) == (de % kFp8Block == 0);  // a partial block stays last
      if (!src_ok || !dst_ok || !partial_ok)
        return refuse("reads [", sb, ", ", se, ") of dim ", dim, " into [", db, ", ", de, ") of its shard ",
                      shape_str(m.shard_shape), ", not on 128-element block boundaries");
    }
  }
  return std::nullopt;
}

// The scale_inv map matching data map `m`. Throws with fp8_why_not's message if misaligned.
inline ShardMap fp8_scale_map(std::string_view tensor, const Shape& data_full, const ShardMap& m, int rank, int size) {
  detail::require(fp8_why_not(tensor, data_full, m, rank, size));
  const std::size_t r = data_full.size();
  ShardMap s{fp8_scale_shape(m.shard_shape), m.concat_dim, {}};
  for (const Piece& p : m.pieces) {
    Piece q = p;
    for (std::size_t dim = r - 2; dim < r; ++dim) {
      const std::int64_t b = p.src.begin[dim] / kFp8Block;
      q.src.extent[dim] = detail::ceil_blocks(p.src.begin[dim] + p.src.extent[dim]) - b;
      q.src.begin[dim] = b;
      q.at[dim] = p.at[dim] / kFp8Block;
    }
    s.pieces.push_back(q);
  }
  return s;
}

// An inner policy applied to blockwise-FP8 data: refuses splits that cut a block, and gives the
// matching scale_inv layout. A Policy itself (for the data tensor).
template <Policy Inner>
struct Fp8Blocks {
  Inner inner{};

  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    if (auto w = detail::fp8_bad_rank(tensor, full)) return w;
    if (auto w = inner.why_not(tensor, full, size)) return w;
    for (int r = 0; r < size; ++r)
      if (auto w = fp8_why_not(tensor, full, inner.shard_map(tensor, full, r, size), r, size)) return w;
    return std::nullopt;
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    ShardMap m = inner.shard_map(tensor, full, rank, size);
    detail::require(fp8_why_not(tensor, full, m, rank, size));
    return m;
  }
  Shape full_shape(const Shape& shard, int size) const { return inner.full_shape(shard, size); }

  // Layout of the scale_inv tensor of data `data_full` on `rank`.
  ShardMap scale_map(std::string_view tensor, const Shape& data_full, int rank, int size) const {
    return fp8_scale_map(tensor, data_full, inner.shard_map(tensor, data_full, rank, size), rank, size);
  }
  std::vector<ShardMap> scale_maps(std::string_view tensor, const Shape& data_full, int size) const {
    detail::require(why_not(tensor, data_full, size));
    std::vector<ShardMap> maps;
    for (int r = 0; r < size; ++r) maps.push_back(scale_map(tensor, data_full, r, size));
    return maps;
  }

  // Split / merge of the scale_inv tensor that belongs to data of shape `data_full`.
  std::vector<Tensor> split_scales(std::string_view tensor, const Shape& data_full, const AnyConstView& scale,
                                   int size) const {
    if (scale.shape != fp8_scale_shape(data_full))
      fail("FP8 scale of tensor '", tensor, "' has shape ", shape_str(scale.shape), ", data ", shape_str(data_full),
           " needs ", shape_str(fp8_scale_shape(data_full)));
    return split_by_maps(tensor, scale_maps(tensor, data_full, size), scale);
  }
  Tensor merge_scales(std::string_view tensor, const Shape& data_full, std::span<const AnyConstView> scales,
                      MergeOptions opts = {}) const {
    return merge_by_maps(tensor, scale_maps(tensor, data_full, static_cast<int>(scales.size())), scales,
                         fp8_scale_shape(data_full), opts);
  }
};

}  // namespace ckbridge::layout

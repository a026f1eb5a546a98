#pragma once
// GroupedQkv{heads, groups, head_dim}: the fused QKV layout of GQA attention (Megatron-Core
// `linear_qkv`). The full (HF-side) tensor is the dim-0 concatenation [q; k; v] of HF's q_proj
// (heads * head_dim rows, head h uses KV group h / (heads / groups)), k_proj and v_proj (groups *
// head_dim rows each). MCore orders the rows by query group: for each group g,
//   [q heads g*R .. g*R+R-1 (R = heads / groups, R * head_dim rows); k_g (head_dim); v_g (head_dim)]
// and TP gives rank r of n the groups [r*G/n, (r+1)*G/n), whole. This is LoongForge's
// HfAttnQkvConverter (transpose_shape0 on q, concat, transpose_shape0 on [q; k; v]) followed by
// chunk(n), and it is built as exactly that composition: Then<QkvRegroup, SplitDim{0}>, where
// QkvRegroup is the row permutation alone. Unlike the other TP rules it permutes rows even at
// size 1. Any trailing dims (a [rows, hidden] weight, a [rows] bias) are carried whole.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ckbridge/layout/compose.hpp"
#include "ckbridge/layout/policy.hpp"
#include "ckbridge/layout/split_dim.hpp"

namespace ckbridge::layout {

namespace detail {
inline std::optional<std::string> qkv_why_not(std::int64_t heads, std::int64_t groups, std::int64_t head_dim,
                                              std::string_view tensor, const Shape& full, int size) {
  if (auto w = bad_size(tensor, full, size)) return w;
  if (auto w = bad_dim("GroupedQkv", tensor, full, size, 0)) return w;
  if (heads <= 0 || groups <= 0 || head_dim <= 0)
    return ckbridge::detail::concat("cannot lay out ", subject(tensor, full, size), " as grouped QKV: heads ", heads,
                                    ", query groups ", groups, " and head_dim ", head_dim, " must all be > 0");
  if (heads % groups != 0)
    return ckbridge::detail::concat("cannot lay out ", subject(tensor, full, size), " as grouped QKV: ", heads,
                                    " heads do not divide into ", groups, " query groups");
  if (full[0] != (heads + 2 * groups) * head_dim)
    return ckbridge::detail::concat("cannot lay out ", subject(tensor, full, size), " as grouped QKV: ", "dim 0 has ",
                                    full[0], " rows, but (heads ", heads, " + 2 x groups ", groups, ") x head_dim ",
                                    head_dim, " = ", (heads + 2 * groups) * head_dim);
  return std::nullopt;
}
}  // namespace detail

// The row permutation [q; k; v] -> [q_0 k_0 v_0; q_1 k_1 v_1; ...] alone (no split: size 1).
struct QkvRegroup {
  std::int64_t heads = 0, groups = 0, head_dim = 0;

  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    if (auto w = detail::qkv_why_not(heads, groups, head_dim, tensor, full, size)) return w;
    if (size != 1)
      return ckbridge::detail::concat("QkvRegroup reorders but does not split ", detail::subject(tensor, full, size),
                                      ": compose it with SplitDim (GroupedQkv)");
    return std::nullopt;
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    detail::require(why_not(tensor, full, size));
    detail::require_rank(tensor, full, rank, size);
    const std::int64_t R = heads / groups, k0 = heads * head_dim, v0 = k0 + groups * head_dim;
    ShardMap m{full, 0, {}};
    const Shape zero(full.size(), 0);
    auto piece = [&](std::int64_t src_row, std::int64_t n, std::int64_t at_row) {
      Piece p{Box{zero, full}, zero};
      p.src.begin[0] = src_row;
      p.src.extent[0] = n;
      p.at[0] = at_row;
      m.pieces.push_back(p);
    };
    std::int64_t at = 0;
    for (std::int64_t g = 0; g < groups; ++g) {
      piece(g * R * head_dim, R * head_dim, at);  // the group's query heads, in head order
      at += R * head_dim;
      piece(k0 + g * head_dim, head_dim, at);
      at += head_dim;
      piece(v0 + g * head_dim, head_dim, at);
      at += head_dim;
    }
    coalesce(m);  // q runs of neighbouring groups never abut (k, v sit between), but keep maps minimal
    return m;
  }
  Shape full_shape(const Shape& shard, int /*size*/) const { return shard; }
};

struct GroupedQkv {
  std::int64_t heads = 0;     // query heads (MCore num_attention_heads)
  std::int64_t groups = 0;    // KV heads (MCore num_query_groups, HF num_key_value_heads)
  std::int64_t head_dim = 0;  // rows per head (MCore kv_channels, HF head_dim)

  constexpr std::int64_t q_per_group() const { return groups > 0 ? heads / groups : 0; }
  constexpr std::int64_t rows() const { return (heads + 2 * groups) * head_dim; }
  // Regroup, then split dim 0 into equal chunks (whole groups, by the check in why_not).
  constexpr Then<QkvRegroup, SplitDim> composed() const { return then(QkvRegroup{heads, groups, head_dim}, SplitDim{0}); }

  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    if (auto w = detail::qkv_why_not(heads, groups, head_dim, tensor, full, size)) return w;
    if (groups % size != 0)
      return ckbridge::detail::concat("cannot split ", detail::subject(tensor, full, size), " as grouped QKV: ",
                                      groups, " query groups are not divisible by ", size,
                                      " (tensor parallelism splits whole groups)");
    return composed().why_not(tensor, full, size);
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    detail::require(why_not(tensor, full, size));
    return composed().shard_map(tensor, full, rank, size);
  }
  Shape full_shape(const Shape& shard, int size) const {
    if (shard.empty()) fail("GroupedQkv: shard shape ", shape_str(shard), " has no dim 0");
    Shape full = shard;
    full[0] *= size;
    return full;
  }
};

}  // namespace ckbridge::layout

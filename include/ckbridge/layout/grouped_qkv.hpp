#pragma once
// GroupedQkv{heads, groups, head_dim}: the fused QKV layout of GQA attention (Megatron-Core
// `linear_qkv`). The full (HF-side) tensor is the dim-0 concatenation [q; k; v] of HF's q_proj
// (heads * head_dim rows, head h uses KV group h / (heads / groups)), k_proj and v_proj (groups *
// head_dim rows each). MCore orders the rows by query group: for each group g,
//   [q heads g*R .. g*R+R-1 (R = heads / groups, R * head_dim rows); k_g (head_dim); v_g (head_dim)]
// and TP gives rank r of n the groups [r*G/n, (r+1)*G/n), whole. This is LoongForge's
// HfAttnQkvConverter (transpose_shape0 on q, concat, transpose_shape0 on [q; k; v]) followed by
// chunk(n). Unlike the other TP rules it permutes rows even at size 1. Any trailing dims (a
// [rows, hidden] weight, a [rows] bias) are carried whole.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ckbridge/layout/policy.hpp"

namespace ckbridge::layout {

struct GroupedQkv {
  std::int64_t heads = 0;     // query heads (MCore num_attention_heads)
  std::int64_t groups = 0;    // KV heads (MCore num_query_groups, HF num_key_value_heads)
  std::int64_t head_dim = 0;  // rows per head (MCore kv_channels, HF head_dim)

  constexpr std::int64_t q_per_group() const { return groups > 0 ? heads / groups : 0; }
  constexpr std::int64_t rows() const { return (heads + 2 * groups) * head_dim; }

  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    if (auto w = detail::bad_size(tensor, full, size)) return w;
    if (auto w = detail::bad_dim("GroupedQkv", tensor, full, size, 0)) return w;
    if (heads <= 0 || groups <= 0 || head_dim <= 0)
      return ckbridge::detail::concat("cannot lay out ", detail::subject(tensor, full, size),
                                      " as grouped QKV: heads ", heads, ", query groups ", groups, " and head_dim ",
                                      head_dim, " must all be > 0");
    if (heads % groups != 0)
      return ckbridge::detail::concat("cannot lay out ", detail::subject(tensor, full, size), " as grouped QKV: ",
                                      heads, " heads do not divide into ", groups, " query groups");
    if (full[0] != rows())
      return ckbridge::detail::concat("cannot lay out ", detail::subject(tensor, full, size), " as grouped QKV: ",
                                      "dim 0 has ", full[0], " rows, but (heads ", heads, " + 2 x groups ", groups,
                                      ") x head_dim ", head_dim, " = ", rows());
    if (groups % size != 0)
      return ckbridge::detail::concat("cannot split ", detail::subject(tensor, full, size), " as grouped QKV: ",
                                      groups, " query groups are not divisible by ", size,
                                      " (tensor parallelism splits whole groups)");
    return std::nullopt;
  }

  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    detail::require(why_not(tensor, full, size));
    detail::require_rank(tensor, full, rank, size);
    const std::int64_t local = groups / size, R = q_per_group(), k0 = heads * head_dim, v0 = k0 + groups * head_dim;
    Shape shard = full;
    shard[0] = local * (R + 2) * head_dim;
    ShardMap m{shard, 0, {}};
    const Shape zero(full.size(), 0);
    auto piece = [&](std::int64_t src_row, std::int64_t n, std::int64_t at_row) {
      Piece p{Box{zero, full}, zero};
      p.src.begin[0] = src_row;
      p.src.extent[0] = n;
      p.at[0] = at_row;
      m.pieces.push_back(p);
    };
    std::int64_t at = 0;
    for (std::int64_t i = 0; i < local; ++i) {
      const std::int64_t g = rank * local + i;
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

  Shape full_shape(const Shape& shard, int size) const {
    if (shard.empty()) fail("GroupedQkv: shard shape ", shape_str(shard), " has no dim 0");
    Shape full = shard;
    full[0] *= size;
    return full;
  }
};

}  // namespace ckbridge::layout

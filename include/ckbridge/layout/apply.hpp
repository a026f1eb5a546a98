#pragma once
// The generic algorithms, written once over ShardMaps: every policy (and every composition)
// splits and merges through these, so no policy owns a copy loop.
//   copy_shard(policy, name, full, rank, size, out)        full -> one rank's shard
//   copy_from_shard(policy, name, shard, rank, size, full)  one rank's shard -> its part of full
//   split(policy, name, full, size)  -> std::vector<Tensor>
//   merge(policy, name, shards, opts) -> Tensor
// Merging writes each distinct source region once (the lowest rank's copy, as LoongForge takes
// shard 0 of replicated tensors) and never writes padding back; MergeOptions::verify compares
// every other replica and every padding row with the merged bytes instead of ignoring them.
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/copy.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/layout/policy.hpp"
#include "ckbridge/layout/shard_map.hpp"

namespace ckbridge::layout {

struct MergeOptions {
  bool verify = false;  // replicas and padding rows must equal the merged tensor, byte for byte
};

namespace detail {

template <class View>
View sub(View v, const Box& b) {
  for (std::size_t d = 0; d < b.rank(); ++d) v = v.slice(d, b.begin[d], b.begin[d] + b.extent[d]);
  return v;
}

inline bool same_bytes(const AnyConstView& a, const AnyConstView& b) {
  if (a.dtype != b.dtype || a.shape != b.shape) return false;
  const Tensor ca = Tensor::copy_of(a), cb = Tensor::copy_of(b);
  return ca.size_bytes() == 0 || std::memcmp(ca.data(), cb.data(), ca.size_bytes()) == 0;
}

// The shard region of a pad piece, one repeated row at a time.
template <class View, class F>
void for_each_pad_row(const Piece& p, const View& region, F&& f) {
  for (std::int64_t i = 0; i < p.pad_rows; ++i) f(region.slice(p.pad_dim, i, i + 1));
}

inline void check_views(std::string_view tensor, const AnyConstView& full, const AnyConstView& shard,
                        const ShardMap& m) {
  if (full.dtype != shard.dtype)
    fail("layout of tensor '", tensor, "': full tensor is ", full.dtype, " but the shard is ", shard.dtype);
  if (shard.shape != m.shard_shape)
    fail("layout of tensor '", tensor, "': shard has shape ", shape_str(shard.shape), ", expected ",
         shape_str(m.shard_shape));
  check_map(tensor, m, full.shape);
}

}  // namespace detail

// ---- map level ----

inline void copy_shard(std::string_view tensor, const ShardMap& m, const AnyConstView& full, const AnyView& out) {
  detail::check_views(tensor, full, out, m);
  for (const Piece& p : m.pieces) {
    const AnyConstView src = detail::sub(full, p.src);
    const AnyView dst = detail::sub(out, p.dst());
    if (!p.is_pad()) copy(src, dst);
    else detail::for_each_pad_row(p, dst, [&](const AnyView& row) { copy(src, row); });
  }
}

// Writes the shard's data pieces into `full`. With check_pad, padding rows must equal their
// source row in `full` (which must already hold it).
inline void copy_from_shard(std::string_view tensor, const ShardMap& m, const AnyConstView& shard, const AnyView& full,
                            bool check_pad = false) {
  detail::check_views(tensor, full, shard, m);
  for (const Piece& p : m.pieces)
    if (!p.is_pad()) copy(detail::sub(shard, p.dst()), detail::sub(full, p.src));
  if (!check_pad) return;
  for (const Piece& p : m.pieces) {
    if (!p.is_pad()) continue;
    const AnyConstView src = detail::sub(AnyConstView(full), p.src);
    detail::for_each_pad_row(p, detail::sub(shard, p.dst()), [&](const AnyConstView& row) {
      if (!detail::same_bytes(src, row))
        fail("layout of tensor '", tensor, "': padding ", box_str(p.dst()), " of the shard differs from row ",
             box_str(p.src), " it should repeat");
    });
  }
}

inline std::vector<Tensor> split_by_maps(std::string_view tensor, const std::vector<ShardMap>& maps,
                                         const AnyConstView& full) {
  std::vector<Tensor> out;
  out.reserve(maps.size());
  for (const ShardMap& m : maps) {
    out.emplace_back(full.dtype, m.shard_shape);
    copy_shard(tensor, m, full, out.back().view());
  }
  return out;
}

inline Tensor merge_by_maps(std::string_view tensor, const std::vector<ShardMap>& maps,
                            std::span<const AnyConstView> shards, const Shape& full_shape, MergeOptions opts = {}) {
  if (shards.empty() || shards.size() != maps.size())
    fail("merge of tensor '", tensor, "': got ", shards.size(), " shards for ", maps.size(), " ranks");
  const DType dt = shards[0].dtype;
  Tensor full(dt, full_shape);
  std::vector<Box> written;
  std::int64_t covered = 0;
  for (std::size_t r = 0; r < maps.size(); ++r) {
    if (shards[r].dtype != dt)
      fail("merge of tensor '", tensor, "': rank ", r, " is ", shards[r].dtype, ", rank 0 is ", dt);
    detail::check_views(tensor, full.cview(), shards[r], maps[r]);
    for (const Piece& p : maps[r].pieces) {
      if (p.is_pad()) continue;
      bool seen = false, overlap = false;
      for (const Box& b : written) {
        if (b == p.src) seen = true;
        else if (intersect(b, p.src)) overlap = true;
      }
      if (overlap)
        fail("merge of tensor '", tensor, "': rank ", r, " region ", box_str(p.src), " partly overlaps another rank's");
      if (seen) continue;  // replica: the lowest rank's copy is kept
      copy(detail::sub(shards[r], p.dst()), detail::sub(full.view(), p.src));
      written.push_back(p.src);
      covered += p.src.volume();
    }
  }
  if (covered != full.numel())
    fail("merge of tensor '", tensor, "': the ", maps.size(), " shards cover ", covered, " of ", full.numel(),
         " elements of ", shape_str(full_shape));
  if (opts.verify) {
    for (std::size_t r = 0; r < maps.size(); ++r)
      for (const Piece& p : maps[r].pieces) {
        const AnyConstView src = detail::sub(full.cview(), p.src);
        const AnyConstView dst = detail::sub(shards[r], p.dst());
        const bool ok = !p.is_pad() ? detail::same_bytes(src, dst) : [&] {
          bool all = true;
          detail::for_each_pad_row(p, dst, [&](const AnyConstView& row) { all = all && detail::same_bytes(src, row); });
          return all;
        }();
        if (!ok)
          fail("merge of tensor '", tensor, "': rank ", r, (p.is_pad() ? " padding " : " replica "),
               box_str(p.dst()), " differs from the merged ", box_str(p.src));
      }
  }
  return full;
}

// ---- policy level ----

template <Policy P>
std::vector<ShardMap> shard_maps(const P& policy, std::string_view tensor, const Shape& full, int size) {
  detail::require(policy.why_not(tensor, full, size));
  std::vector<ShardMap> maps;
  maps.reserve(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) maps.push_back(policy.shard_map(tensor, full, r, size));
  return maps;
}

template <Policy P>
void copy_shard(const P& policy, std::string_view tensor, const AnyConstView& full, int rank, int size,
                const AnyView& out) {
  copy_shard(tensor, policy.shard_map(tensor, full.shape, rank, size), full, out);
}

template <Policy P>
void copy_from_shard(const P& policy, std::string_view tensor, const AnyConstView& shard, int rank, int size,
                     const AnyView& full, bool check_pad = false) {
  copy_from_shard(tensor, policy.shard_map(tensor, full.shape, rank, size), shard, full, check_pad);
}

template <Policy P>
std::vector<Tensor> split(const P& policy, std::string_view tensor, const AnyConstView& full, int size) {
  return split_by_maps(tensor, shard_maps(policy, tensor, full.shape, size), full);
}

// The full shape the shards of `policy` merge into (all shards must have one shape).
template <Policy P>
Shape merged_shape(const P& policy, std::string_view tensor, std::span<const AnyConstView> shards) {
  if (shards.empty()) fail("merge of tensor '", tensor, "': no shards");
  for (std::size_t r = 1; r < shards.size(); ++r)
    if (shards[r].shape != shards[0].shape)
      fail("merge of tensor '", tensor, "': rank ", r, " has shape ", shape_str(shards[r].shape), ", rank 0 has ",
           shape_str(shards[0].shape));
  try {
    return policy.full_shape(shards[0].shape, static_cast<int>(shards.size()));
  } catch (const Error& e) {
    fail("merge of tensor '", tensor, "' from ", shards.size(), " shards: ", e.what());
  }
}

template <Policy P>
Tensor merge(const P& policy, std::string_view tensor, std::span<const AnyConstView> shards, MergeOptions opts = {}) {
  const Shape full = merged_shape(policy, tensor, shards);
  const int size = static_cast<int>(shards.size());
  if (auto why = policy.why_not(tensor, full, size))
    fail("merge of tensor '", tensor, "' from ", size, " shards of shape ", shape_str(shards[0].shape), ": ", *why);
  return merge_by_maps(tensor, shard_maps(policy, tensor, full, size), shards, full, opts);
}

template <Policy P>
Tensor merge(const P& policy, std::string_view tensor, const std::vector<Tensor>& shards, MergeOptions opts = {}) {
  std::vector<AnyConstView> views;
  views.reserve(shards.size());
  for (const Tensor& t : shards) views.push_back(t.cview());
  return merge(policy, tensor, std::span<const AnyConstView>(views), opts);
}

}  // namespace ckbridge::layout

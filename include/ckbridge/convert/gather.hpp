#pragma once
// Moving boxes between "placed" tensors. A conversion sees one logical full tensor in pieces:
// HF stores [gate; up] as two tensors, MCore stores TP shards whose layout maps place their
// pieces in the full tensor. Placing every available piece at its origin in full-tensor
// coordinates turns both directions into one operation: fill a box of the full tensor from the
// pieces that intersect it (and return a zero-copy view when one piece covers it contiguously).
#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/copy.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/layout/apply.hpp"
#include "ckbridge/layout/shard_map.hpp"

namespace ckbridge::convert {

struct Placed {
  AnyConstView view;  // covers full[origin, origin + view.shape)
  Shape origin;
  std::string from;   // where the piece is stored ("<file>: <dict>/<key>"), for messages
};

// Where the element `full_index` of the full tensor is stored (the label of the piece holding it),
// or empty.
inline std::string placed_origin(const std::vector<Placed>& srcs, const Shape& full_index) {
  for (const auto& p : srcs) {
    if (p.origin.size() != full_index.size()) continue;
    bool in = true;
    for (std::size_t d = 0; d < full_index.size() && in; ++d)
      in = full_index[d] >= p.origin[d] && full_index[d] < p.origin[d] + p.view.shape[d];
    if (in) return p.from;
  }
  return {};
}

// Parts concatenated along dim 0 (HF [gate, up] lists; a single tensor is one part).
inline std::vector<Placed> place_rows(const std::vector<AnyConstView>& parts) {
  std::vector<Placed> out;
  std::int64_t row = 0;
  for (const auto& p : parts) {
    Shape o(p.rank(), 0);
    if (!o.empty()) o[0] = row;
    out.push_back({p, o, {}});
    row += p.rank() ? p.shape[0] : 1;
  }
  return out;
}

// The data pieces of a shard (its map and its view), placed in full-tensor coordinates.
inline void place_shard(const layout::ShardMap& m, const AnyConstView& shard, std::vector<Placed>& out,
                        const std::string& from = {}) {
  for (const auto& p : m.pieces)
    if (!p.is_pad()) out.push_back({layout::detail::sub(shard, p.dst()), p.src.begin, from});
}

// Shape covered by placed parts (max extent per dim), for sanity checks.
inline Shape placed_extent(const std::vector<Placed>& srcs) {
  Shape s;
  for (const auto& p : srcs) {
    if (s.empty()) s.assign(p.view.rank(), 0);
    for (std::size_t d = 0; d < s.size(); ++d) s[d] = std::max(s[d], p.origin[d] + p.view.shape[d]);
  }
  return s;
}

// Fills `out` (= the box `region` of the full tensor) from `srcs`. Throws, naming `tensor`, if
// some element of the region is not covered.
inline void gather(std::string_view tensor, const std::vector<Placed>& srcs, const layout::Box& region,
                   const AnyView& out) {
  std::int64_t covered = 0;
  for (const auto& p : srcs) {
    const layout::Box pb{p.origin, p.view.shape};
    const auto hit = layout::intersect(pb, region);
    if (!hit) continue;
    layout::Box in_src{hit->begin, hit->extent}, in_out{hit->begin, hit->extent};
    for (std::size_t d = 0; d < region.rank(); ++d) {
      in_src.begin[d] -= p.origin[d];
      in_out.begin[d] -= region.begin[d];
    }
    copy(layout::detail::sub(p.view, in_src), layout::detail::sub(out, in_out));
    covered += hit->volume();
  }
  if (covered != region.volume())
    fail("tensor '", tensor, "': the available pieces cover ", covered, " of ", region.volume(),
         " elements of region ", layout::box_str(region), " (missing or overlapping shards)");
}

// A zero-copy view of `region` when one placed piece holds all of it contiguously.
inline std::optional<AnyConstView> gather_view(const std::vector<Placed>& srcs, const layout::Box& region) {
  for (const auto& p : srcs) {
    const layout::Box pb{p.origin, p.view.shape};
    const auto hit = layout::intersect(pb, region);
    if (!hit || !(*hit == region)) continue;
    layout::Box in_src{region.begin, region.extent};
    for (std::size_t d = 0; d < region.rank(); ++d) in_src.begin[d] -= p.origin[d];
    AnyConstView v = layout::detail::sub(p.view, in_src);
    if (v.is_contiguous()) return v;
  }
  return std::nullopt;
}

// Produces a shard (map `m`) of the full tensor from placed sources, padding rows included.
inline void gather_shard(std::string_view tensor, const std::vector<Placed>& srcs, const layout::ShardMap& m,
                         const AnyView& out) {
  for (const auto& p : m.pieces) {
    const AnyView dst = layout::detail::sub(out, p.dst());
    if (!p.is_pad()) {
      gather(tensor, srcs, p.src, dst);
    } else {
      layout::detail::for_each_pad_row(p, dst, [&](const AnyView& row) { gather(tensor, srcs, p.src, row); });
    }
  }
}

// Zero-copy view of a shard when it is a single data piece stored contiguously in one source.
inline std::optional<AnyConstView> shard_view(const std::vector<Placed>& srcs, const layout::ShardMap& m) {
  if (m.pieces.size() != 1 || m.pieces[0].is_pad()) return std::nullopt;
  return gather_view(srcs, m.pieces[0].src);
}

}  // namespace ckbridge::convert

#pragma once
// A shard is described, not computed: a ShardMap lists which boxes of the full tensor land where
// in one rank's shard. Policies only produce maps; apply.hpp moves the bytes, and merging reads
// the same map backwards, so merge is the inverse of split by construction (CuTe's idea).
// Maps compose: a map from full -> intermediate followed by one from intermediate -> shard is
// again a map from full -> shard (compose() below), so "pad then split" or "slice experts then
// interleave" needs no new loops.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"

namespace ckbridge::layout {

// A hyper-rectangle [begin, begin + extent) of a tensor; one entry per dimension.
struct Box {
  Shape begin, extent;

  std::size_t rank() const { return begin.size(); }
  std::int64_t volume() const { return ckbridge::numel(extent); }
  Shape end() const {
    Shape e = begin;
    for (std::size_t d = 0; d < e.size(); ++d) e[d] += extent[d];
    return e;
  }
  friend bool operator==(const Box&, const Box&) = default;
};

// One region of a shard and where its bytes come from.
//  - data piece (pad_rows == 0): the box `src` of the full tensor lands at `at` in the shard.
//  - pad piece (pad_rows > 0): `src` is one element thick along `pad_dim` and is repeated
//    pad_rows times there (LoongForge pads vocabularies with copies of the last real row).
//    Merging never writes pad pieces back; it may check them.
struct Piece {
  Box src;
  Shape at;
  std::int64_t pad_rows = 0;
  std::size_t pad_dim = 0;

  bool is_pad() const { return pad_rows > 0; }
  // The region this piece fills in the shard.
  Box dst() const {
    Box b{at, src.extent};
    if (is_pad()) b.extent[pad_dim] = pad_rows;
    return b;
  }
  friend bool operator==(const Piece&, const Piece&) = default;
};

struct ShardMap {
  Shape shard_shape;
  std::size_t concat_dim = 0;  // the dim the (last applied) policy lays pieces out along
  std::vector<Piece> pieces;
};

inline Box whole(const Shape& shape) { return Box{Shape(shape.size(), 0), shape}; }

inline std::optional<Box> intersect(const Box& a, const Box& b) {
  Box r{a.begin, a.extent};
  for (std::size_t d = 0; d < a.rank(); ++d) {
    const auto lo = std::max(a.begin[d], b.begin[d]);
    const auto hi = std::min(a.begin[d] + a.extent[d], b.begin[d] + b.extent[d]);
    if (hi <= lo) return std::nullopt;
    r.begin[d] = lo;
    r.extent[d] = hi - lo;
  }
  return r;
}

inline bool contains(const Shape& shape, const Box& b) {
  if (b.rank() != shape.size() || b.extent.size() != shape.size()) return false;
  for (std::size_t d = 0; d < shape.size(); ++d)
    if (b.begin[d] < 0 || b.extent[d] < 0 || b.begin[d] + b.extent[d] > shape[d]) return false;
  return true;
}

inline std::string box_str(const Box& b) {
  std::string s = "[";
  for (std::size_t d = 0; d < b.rank(); ++d) {
    if (d) s += ", ";
    s += std::to_string(b.begin[d]) + ":" + std::to_string(b.begin[d] + b.extent[d]);
  }
  return s + "]";
}

// Throws unless the map is well formed for a full tensor of shape `full`: every source box lies
// inside `full`, pad sources are one element thick, and the pieces tile the shard exactly
// (disjoint, nothing left unwritten). Cheap: O(pieces^2), pieces are few.
inline void check_map(std::string_view tensor, const ShardMap& m, const Shape& full) {
  const std::size_t r = full.size();
  if (m.shard_shape.size() != r)
    fail("layout of tensor '", tensor, "': shard shape ", shape_str(m.shard_shape), " has another rank than ",
         shape_str(full));
  std::int64_t covered = 0;
  for (std::size_t i = 0; i < m.pieces.size(); ++i) {
    const Piece& p = m.pieces[i];
    if (p.at.size() != r || !contains(full, p.src))
      fail("layout of tensor '", tensor, "': piece ", i, " reads ", box_str(p.src), " outside the tensor of shape ",
           shape_str(full));
    if (p.is_pad() && (p.pad_dim >= r || p.src.extent[p.pad_dim] != 1))
      fail("layout of tensor '", tensor, "': padding piece ", i, " must read one row along dim ", p.pad_dim);
    const Box d = p.dst();
    if (!contains(m.shard_shape, d))
      fail("layout of tensor '", tensor, "': piece ", i, " writes ", box_str(d), " outside the shard of shape ",
           shape_str(m.shard_shape));
    for (std::size_t j = 0; j < i; ++j)
      if (intersect(d, m.pieces[j].dst()))
        fail("layout of tensor '", tensor, "': pieces ", j, " and ", i, " overlap in the shard");
    covered += d.volume();
  }
  if (covered != ckbridge::numel(m.shard_shape))
    fail("layout of tensor '", tensor, "': pieces cover ", covered, " of ", ckbridge::numel(m.shard_shape),
         " elements of the shard ", shape_str(m.shard_shape));
}

// Joins neighbouring pieces that continue each other in both the source and the shard (a
// composition often cuts one contiguous run into several), so copies stay few and large.
inline void coalesce(ShardMap& m) {
  std::vector<Piece> out;
  for (const Piece& p : m.pieces) {
    if (!out.empty()) {
      Piece& q = out.back();
      const std::size_t r = p.at.size();
      if (q.is_pad() == p.is_pad() && (!p.is_pad() || (q.pad_dim == p.pad_dim && q.src == p.src))) {
        // find the single dim where they abut; all other dims must agree
        std::optional<std::size_t> along;
        bool ok = true;
        for (std::size_t d = 0; d < r && ok; ++d) {
          const Box qd = q.dst(), pd = p.dst();
          const bool same = qd.begin[d] == pd.begin[d] && qd.extent[d] == pd.extent[d] &&
                            (q.src.begin[d] == p.src.begin[d] && q.src.extent[d] == p.src.extent[d]);
          if (same) continue;
          const bool abut_dst = qd.begin[d] + qd.extent[d] == pd.begin[d];
          const bool abut_src = p.is_pad() ? (d == p.pad_dim)
                                           : q.src.begin[d] + q.src.extent[d] == p.src.begin[d];
          if (abut_dst && abut_src && !along) along = d;
          else ok = false;
        }
        if (ok && along) {
          if (p.is_pad()) q.pad_rows += p.pad_rows;
          else q.src.extent[*along] += p.src.extent[*along];
          continue;
        }
      }
    }
    out.push_back(p);
  }
  m.pieces = std::move(out);
}

// outer: full -> intermediate shard; inner: intermediate shard -> final shard. Returns the map
// full -> final shard. Each inner piece is cut by the outer pieces it reads from and each cut is
// translated back into full coordinates; padding survives (an inner read of an outer pad piece
// is a pad piece of the result).
inline ShardMap compose(std::string_view tensor, const ShardMap& outer, const ShardMap& inner) {
  ShardMap out{inner.shard_shape, inner.concat_dim, {}};
  for (const Piece& p : inner.pieces) {
    for (const Piece& q : outer.pieces) {
      const auto cut = intersect(p.src, q.dst());
      if (!cut) continue;
      if (p.is_pad() && q.is_pad() && p.pad_dim != q.pad_dim)
        fail("layout of tensor '", tensor, "': cannot compose padding along dim ", q.pad_dim, " with padding along dim ",
             p.pad_dim);
      const std::size_t r = p.at.size();
      Piece n;
      n.src.begin.resize(r);
      n.src.extent = cut->extent;
      n.at.resize(r);
      for (std::size_t d = 0; d < r; ++d) {
        n.src.begin[d] = q.src.begin[d] + (cut->begin[d] - q.at[d]);
        n.at[d] = p.at[d] + (cut->begin[d] - p.src.begin[d]);
      }
      if (q.is_pad()) {  // every row of q's region is q's one source row
        n.src.begin[q.pad_dim] = q.src.begin[q.pad_dim];
        n.src.extent[q.pad_dim] = 1;
      }
      if (p.is_pad()) {
        n.pad_dim = p.pad_dim;
        n.pad_rows = p.pad_rows;
      } else if (q.is_pad()) {
        n.pad_dim = q.pad_dim;
        n.pad_rows = cut->extent[q.pad_dim];
      }
      out.pieces.push_back(std::move(n));
    }
  }
  coalesce(out);
  return out;
}

}  // namespace ckbridge::layout

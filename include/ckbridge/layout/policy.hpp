#pragma once
// The layout-policy concept. A policy is a small literal type with run-time parameters that says
// how one full (HF-side) tensor maps to the shard of `rank` out of `size` parallel ranks:
//   shard_map(tensor, full, rank, size) -> ShardMap     (throws ckbridge::Error if impossible)
//   why_not(tensor, full, size)        -> optional msg  (the query: can this split be done?)
//   full_shape(shard, size)            -> Shape         (sizes the merged tensor)
// A model's parameter kinds return one of these from their `layout(dims)` (model/param.hpp).
#include <concepts>
#include <optional>
#include <string>
#include <string_view>

#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/layout/shard_map.hpp"

namespace ckbridge::layout {

template <class P>
concept Policy = std::copy_constructible<P> &&
                 requires(const P& p, std::string_view tensor, const Shape& shape, int rank, int size) {
                   { p.shard_map(tensor, shape, rank, size) } -> std::same_as<ShardMap>;
                   { p.why_not(tensor, shape, size) } -> std::same_as<std::optional<std::string>>;
                   { p.full_shape(shape, size) } -> std::same_as<Shape>;
                 };

namespace detail {

// "tensor 'x' of shape [8, 4] at parallel size 3": the common prefix of every refusal.
inline std::string subject(std::string_view tensor, const Shape& full, int size) {
  return ckbridge::detail::concat("tensor '", tensor, "' of shape ", shape_str(full), " at parallel size ", size);
}

inline std::optional<std::string> bad_size(std::string_view tensor, const Shape& full, int size) {
  if (size < 1) return ckbridge::detail::concat("cannot lay out ", subject(tensor, full, size), ": size must be >= 1");
  return std::nullopt;
}

inline std::optional<std::string> bad_dim(std::string_view what, std::string_view tensor, const Shape& full, int size,
                                          std::size_t dim) {
  if (dim >= full.size())
    return ckbridge::detail::concat(what, ": cannot use dim ", dim, " of ", subject(tensor, full, size), " (rank ",
                                    full.size(), ")");
  return std::nullopt;
}

// Throw the refusal, if any; then check the rank index.
inline void require(const std::optional<std::string>& why) {
  if (why) throw Error(*why);
}
inline void require_rank(std::string_view tensor, const Shape& full, int rank, int size) {
  if (rank < 0 || rank >= size) fail("rank ", rank, " out of range for ", subject(tensor, full, size));
}

}  // namespace detail
}  // namespace ckbridge::layout

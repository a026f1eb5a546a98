#pragma once
// Block geometry of 128x128 blockwise FP8: block counts, the two scale layouts, and the
// alignment rules that decide whether a sub-box of an FP8 tensor can be cut out (or glued
// together) without re-quantization. Pure index math: no dtype, no data.
//
// A tensor [M, N] (M = product of the leading dims) is tiled into blocks of kBlock x kBlock;
// the last block row / column may be partial. One float32 scale per block, stored either
//   ScaleLayout::Unpadded  [ceil(M/128), ceil(N/128)]                (HF `weight_scale_inv`, pt)
//   ScaleLayout::TePadded  [ceil(M/128), roundup(ceil(N/128), 4)]    (TransformerEngine, MCore)
// Padding columns carry no meaning; ckbridge writes +0.0 there and never reads them.
#include <cstdint>
#include <string_view>

#include "ckbridge/core/config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"

namespace ckbridge::quant {

inline constexpr std::int64_t kBlock = 128;

enum class ScaleLayout : std::uint8_t { Unpadded, TePadded };

constexpr std::string_view to_string(ScaleLayout l) { return l == ScaleLayout::Unpadded ? "unpadded" : "te-padded"; }

// Number of 128-blocks covering n elements.
CKB_HD constexpr std::int64_t block_count(std::int64_t n) { return (n + kBlock - 1) / kBlock; }

// Scale columns actually stored for N data columns.
constexpr std::int64_t scale_cols(std::int64_t n, ScaleLayout l) {
  const std::int64_t c = block_count(n);
  return l == ScaleLayout::TePadded ? (c + 3) / 4 * 4 : c;
}

// Shape of the scale tensor for a 2-D [M, N] data tensor.
inline Shape scale_shape(std::int64_t m, std::int64_t n, ScaleLayout l) { return {block_count(m), scale_cols(n, l)}; }

// A data shape of any rank >= 1 seen as 2-D: N = last dim, M = product of the others.
struct Matrix2D {
  std::int64_t m = 0, n = 0;
};
inline Matrix2D as_matrix(const Shape& s) {
  if (s.empty()) fail("blockwise FP8 needs a tensor of rank >= 1, got a scalar");
  Matrix2D r{1, s.back()};
  for (std::size_t i = 0; i + 1 < s.size(); ++i) r.m *= s[i];
  return r;
}

// Half-open element range [begin, end) along one dimension of extent `extent`.
struct Range {
  std::int64_t begin = 0, end = 0;
  constexpr std::int64_t size() const { return end - begin; }
  friend constexpr bool operator==(Range, Range) = default;
};

// A range can be cut out of (or appended to) an FP8 tensor without re-quantization iff it starts
// on a block boundary and ends on one or at the tensor's end: then every block of the piece is a
// whole block of the original (or its trailing partial block), so amax, scale and codes agree.
constexpr bool is_block_aligned(Range r, std::int64_t extent) {
  return r.begin >= 0 && r.begin <= r.end && r.end <= extent && r.begin % kBlock == 0 &&
         (r.end % kBlock == 0 || r.end == extent);
}

// Scale rows/columns covering the data range `r` (which must be block-aligned).
constexpr Range scale_range(Range r) { return {r.begin / kBlock, block_count(r.end)}; }

// Throws an Error naming the tensor, its shape and the offending boundary if `r` along `dim` is
// not block-aligned. `what` says what the caller was doing ("split", "concatenate", ...).
inline void check_block_aligned(std::string_view tensor, const Shape& shape, std::size_t dim, Range r,
                                std::string_view what = "slice") {
  if (dim >= shape.size()) fail(what, " of FP8 tensor '", tensor, "' ", shape_str(shape), ": no dimension ", dim);
  const std::int64_t ext = shape[dim];
  if (r.begin < 0 || r.end < r.begin || r.end > ext)
    fail(what, " of FP8 tensor '", tensor, "' ", shape_str(shape), ": range [", r.begin, ", ", r.end,
         ") out of bounds in dim ", dim);
  if (r.begin % kBlock != 0)
    fail(what, " of FP8 tensor '", tensor, "' ", shape_str(shape), " along dim ", dim, ": boundary ", r.begin,
         " is not a multiple of ", kBlock, "; the shard must be re-quantized");
  if (r.end % kBlock != 0 && r.end != ext)
    fail(what, " of FP8 tensor '", tensor, "' ", shape_str(shape), " along dim ", dim, ": boundary ", r.end,
         " is not a multiple of ", kBlock, " (nor the end ", ext, "); the shard must be re-quantized");
}

// The scales of the data sub-box rows x cols (both block-aligned, see check_block_aligned): a
// slice of the scale tensor, no copy. Works on any view type with slice(dim, begin, end)
// (TensorView, AnyView, AnyConstView).
template <class View>
View slice_scales(const View& scale, Range rows, Range cols) {
  const Range sr = scale_range(rows), sc = scale_range(cols);
  return scale.slice(0, sr.begin, sr.end).slice(1, sc.begin, sc.end);
}

// Checks that a scale tensor of shape `scale` fits data [m, n] in some layout: exactly
// ceil(m/128) rows and at least ceil(n/128) columns (padding allowed).
inline void check_scale_shape(std::string_view tensor, std::int64_t m, std::int64_t n, const Shape& scale) {
  if (scale.size() != 2 || scale[0] != block_count(m) || scale[1] < block_count(n) ||
      scale[1] > scale_cols(n, ScaleLayout::TePadded))
    fail("FP8 tensor '", tensor, "' [", m, ", ", n, "]: scale shape ", shape_str(scale), " does not match; expected [",
         block_count(m), ", ", block_count(n), "] (or columns padded to ", scale_cols(n, ScaleLayout::TePadded), ")");
}

}  // namespace ckbridge::quant

#pragma once
// Resharding FP8 tensors WITHOUT re-quantization: cutting a block-aligned sub-box out of
// (data [M, N], scale_inv) or gluing pieces together along rows or columns. Every 128x128 block
// of the result is a whole block of a source (or its trailing partial block), so its scale and
// codes are exactly what quantizing the result directly would give. Non-aligned requests throw
// an Error naming the tensor, its shape and the boundary, so the caller can re-quantize instead.
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/copy.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/quant/fp8_blocks.hpp"

namespace ckbridge::quant {

// Non-owning FP8 pair. data: F8_E4M3 (or U8) [M, N]; scale_inv: F32 [ceil(M/128), >= ceil(N/128)].
struct Fp8View {
  AnyConstView data;
  AnyConstView scale_inv;
};
// Owning FP8 pair.
struct Fp8Tensor {
  Tensor data;
  Tensor scale_inv;
  Fp8View view() const { return {data.view(), scale_inv.view()}; }
};

namespace detail {
inline void check_fp8_pair(const Fp8View& t, std::string_view name) {
  if (t.data.rank() != 2)
    fail("FP8 tensor '", name, "' ", shape_str(t.data.shape), ": resharding needs a 2-D tensor");
  if (t.data.dtype != DType::F8_E4M3 && t.data.dtype != DType::U8)
    fail("FP8 tensor '", name, "': data dtype ", safetensors_name(t.data.dtype), " is not F8_E4M3 or U8");
  if (t.scale_inv.dtype != DType::F32)
    fail("FP8 tensor '", name, "': scale_inv dtype ", safetensors_name(t.scale_inv.dtype), " is not F32");
  check_scale_shape(name, t.data.shape[0], t.data.shape[1], t.scale_inv.shape);
}
}  // namespace detail

// Owned copy with the scale in `layout` (TE padding filled with +0.0).
inline Fp8Tensor materialize(const Fp8View& t, ScaleLayout layout, std::string_view name = {}) {
  detail::check_fp8_pair(t, name);
  const std::int64_t m = t.data.shape[0], n = t.data.shape[1];
  Fp8Tensor r{Tensor(t.data.dtype, t.data.shape), Tensor(DType::F32, scale_shape(m, n, layout))};
  copy(t.data, r.data.view());
  std::memset(r.scale_inv.data(), 0, r.scale_inv.size_bytes());
  copy(t.scale_inv.slice(1, 0, block_count(n)), r.scale_inv.view().slice(1, 0, block_count(n)));
  return r;
}

// The block-aligned sub-box rows x cols, as views (no copy). The scale view covers exactly the
// sub-box's blocks (unpadded).
inline Fp8View slice_fp8(const Fp8View& t, Range rows, Range cols, std::string_view name = {}) {
  detail::check_fp8_pair(t, name);
  check_block_aligned(name, t.data.shape, 0, rows, "slice");
  check_block_aligned(name, t.data.shape, 1, cols, "slice");
  return {t.data.slice(0, rows.begin, rows.end).slice(1, cols.begin, cols.end),
          slice_scales(t.scale_inv.slice(1, 0, block_count(t.data.shape[1])), rows, cols)};
}

// `parts` equal pieces along `dim` (0 = rows, 1 = columns), copied, scales in `layout`.
inline std::vector<Fp8Tensor> split_fp8(const Fp8View& t, std::size_t dim, std::int64_t parts, ScaleLayout layout,
                                        std::string_view name = {}) {
  detail::check_fp8_pair(t, name);
  if (dim > 1) fail("split of FP8 tensor '", name, "': dim ", dim, " is not 0 or 1");
  const std::int64_t ext = t.data.shape[dim];
  if (parts <= 0 || ext % parts != 0)
    fail("split of FP8 tensor '", name, "' ", shape_str(t.data.shape), ": extent ", ext, " of dim ", dim,
         " is not divisible into ", parts, " parts");
  const std::int64_t len = ext / parts;
  std::vector<Fp8Tensor> out;
  out.reserve(static_cast<std::size_t>(parts));
  for (std::int64_t p = 0; p < parts; ++p) {
    Range rows{0, t.data.shape[0]}, cols{0, t.data.shape[1]};
    (dim == 0 ? rows : cols) = Range{p * len, (p + 1) * len};
    check_block_aligned(name, t.data.shape, dim, dim == 0 ? rows : cols, "split");
    out.push_back(materialize(slice_fp8(t, rows, cols, name), layout, name));
  }
  return out;
}

// Concatenation along `dim`: all pieces must agree on the other dimension and every piece but
// the last must span whole blocks along `dim`.
inline Fp8Tensor concat_fp8(std::span<const Fp8View> pieces, std::size_t dim, ScaleLayout layout,
                            std::string_view name = {}) {
  if (pieces.empty()) fail("concatenate FP8 tensor '", name, "': no pieces");
  if (dim > 1) fail("concatenate FP8 tensor '", name, "': dim ", dim, " is not 0 or 1");
  const std::size_t other = 1 - dim;
  std::int64_t total = 0;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const Fp8View& p = pieces[i];
    detail::check_fp8_pair(p, name);
    if (p.data.dtype != pieces[0].data.dtype || p.data.shape[other] != pieces[0].data.shape[other])
      fail("concatenate FP8 tensor '", name, "' along dim ", dim, ": piece ", i, " ", shape_str(p.data.shape), " (",
           safetensors_name(p.data.dtype), ") does not match piece 0 ", shape_str(pieces[0].data.shape));
    if (i + 1 < pieces.size() && p.data.shape[dim] % kBlock != 0)
      fail("concatenate FP8 tensor '", name, "' along dim ", dim, ": piece ", i, " ", shape_str(p.data.shape),
           " ends at ", total + p.data.shape[dim], ", not a multiple of ", kBlock,
           "; the merged tensor must be re-quantized");
    total += p.data.shape[dim];
  }
  Shape shape = pieces[0].data.shape;
  shape[dim] = total;
  Fp8Tensor r{Tensor(pieces[0].data.dtype, shape), Tensor(DType::F32, scale_shape(shape[0], shape[1], layout))};
  std::memset(r.scale_inv.data(), 0, r.scale_inv.size_bytes());
  std::int64_t off = 0;
  for (const Fp8View& p : pieces) {
    const std::int64_t len = p.data.shape[dim];
    copy(p.data, r.data.view().slice(dim, off, off + len));
    const std::int64_t sb = off / kBlock, sl = block_count(len);
    const AnyConstView ps = p.scale_inv.slice(1, 0, block_count(p.data.shape[1]));
    AnyView rs = r.scale_inv.view().slice(1, 0, block_count(shape[1]));
    copy(ps, rs.slice(dim, sb, sb + sl));
    off += len;
  }
  return r;
}

}  // namespace ckbridge::quant

#pragma once
// Strided copy between views of the same dtype and shape. The innermost dimension is copied
// with memcpy when both sides are dense there (the common case: row blocks of a tensor).
#include <cstring>

#include "ckbridge/core/any_view.hpp"

namespace ckbridge {

namespace detail {
inline void copy_rec(const std::byte* s, std::byte* d, const AnyConstView& src, const AnyView& dst, std::size_t dim,
                     std::size_t es) {
  const std::size_t r = src.rank();
  const std::int64_t n = src.shape[dim];
  if (dim + 1 == r) {
    if (src.strides[dim] == 1 && dst.strides[dim] == 1) {
      std::memcpy(d, s, static_cast<std::size_t>(n) * es);
    } else {
      for (std::int64_t i = 0; i < n; ++i)
        std::memcpy(d + i * dst.strides[dim] * std::int64_t(es), s + i * src.strides[dim] * std::int64_t(es), es);
    }
    return;
  }
  for (std::int64_t i = 0; i < n; ++i)
    copy_rec(s + i * src.strides[dim] * std::int64_t(es), d + i * dst.strides[dim] * std::int64_t(es), src, dst,
             dim + 1, es);
}
}  // namespace detail

inline void copy(const AnyConstView& src, const AnyView& dst) {
  if (src.dtype != dst.dtype)
    fail("copy: dtype mismatch ", safetensors_name(src.dtype), " -> ", safetensors_name(dst.dtype));
  if (src.shape != dst.shape) fail("copy: shape mismatch ", shape_str(src.shape), " -> ", shape_str(dst.shape));
  if (src.numel() == 0) return;
  if (src.is_contiguous() && dst.is_contiguous()) {
    std::memcpy(dst.data, src.data, src.size_bytes());
    return;
  }
  if (src.rank() == 0) {
    std::memcpy(dst.data, src.data, src.element_size());
    return;
  }
  detail::copy_rec(src.data, dst.data, src, dst, 0, src.element_size());
}

}  // namespace ckbridge

#pragma once
// TensorView<T, Rank>: a non-owning, typed, strided view (mdspan's idea: element type, shape +
// strides, and where the bytes live are independent). Strides are in elements, row-major by
// default. Slicing never copies; `is_contiguous()` says whether the view is one dense block.
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "ckbridge/core/config.hpp"
#include "ckbridge/core/error.hpp"

namespace ckbridge {

template <std::size_t Rank>
using Extents = std::array<std::int64_t, Rank>;

template <std::size_t Rank>
constexpr Extents<Rank> row_major_strides(const Extents<Rank>& shape) {
  Extents<Rank> s{};
  std::int64_t acc = 1;
  for (std::size_t i = Rank; i-- > 0;) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

template <class T, std::size_t Rank>
class TensorView {
public:
  using element_type = T;
  static constexpr std::size_t rank = Rank;

  constexpr TensorView() = default;
  constexpr TensorView(T* data, const Extents<Rank>& shape)
      : data_(data), shape_(shape), strides_(row_major_strides(shape)) {}
  constexpr TensorView(T* data, const Extents<Rank>& shape, const Extents<Rank>& strides)
      : data_(data), shape_(shape), strides_(strides) {}

  // A view of const elements from a view of mutable ones.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr TensorView(const TensorView<U, Rank>& o) : data_(o.data()), shape_(o.shape()), strides_(o.strides()) {}

  constexpr T* data() const { return data_; }
  constexpr const Extents<Rank>& shape() const { return shape_; }
  constexpr const Extents<Rank>& strides() const { return strides_; }
  constexpr std::int64_t extent(std::size_t d) const { return shape_[d]; }
  constexpr std::int64_t stride(std::size_t d) const { return strides_[d]; }

  constexpr std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto e : shape_) n *= e;
    return n;
  }
  constexpr std::size_t size_bytes() const { return static_cast<std::size_t>(numel()) * sizeof(T); }

  constexpr bool is_contiguous() const {
    std::int64_t acc = 1;
    for (std::size_t i = Rank; i-- > 0;) {
      if (shape_[i] != 1 && strides_[i] != acc) return false;
      acc *= shape_[i];
    }
    return true;
  }

  template <class... I>
    requires(sizeof...(I) == Rank)
  CKB_HD constexpr T& operator()(I... idx) const {
    const std::int64_t ix[] = {static_cast<std::int64_t>(idx)...};
    std::int64_t off = 0;
    for (std::size_t d = 0; d < Rank; ++d) off += ix[d] * strides_[d];
    return data_[off];
  }

  // Elements [begin, end) along dimension `dim`; same rank, no copy.
  constexpr TensorView slice(std::size_t dim, std::int64_t begin, std::int64_t end) const {
    if (dim >= Rank || begin < 0 || end < begin || end > shape_[dim])
      fail("slice [", begin, ", ", end, ") out of range for dim ", dim, " of shape ", shape_str(shape_));
    TensorView v = *this;
    v.data_ = data_ + begin * strides_[dim];
    v.shape_[dim] = end - begin;
    return v;
  }

  // Contiguous views only: the elements as a span.
  std::span<T> span() const {
    if (!is_contiguous()) fail("span() of a non-contiguous view of shape ", shape_str(shape_));
    return {data_, static_cast<std::size_t>(numel())};
  }

private:
  T* data_ = nullptr;
  Extents<Rank> shape_{};
  Extents<Rank> strides_{};
};

}  // namespace ckbridge

#pragma once
// Type-erased strided view: dtype and rank known at run time (what a file header gives).
// `as<T, Rank>()` checks both and returns the typed TensorView; `visit<Rank>(f)` dispatches on
// the dtype and calls f with the typed view.
#include <cstddef>
#include <type_traits>

#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/core/tensor_view.hpp"

namespace ckbridge {

template <class Byte>
struct BasicAnyView {
  static_assert(std::is_same_v<std::remove_const_t<Byte>, std::byte>);
  Byte* data = nullptr;
  DType dtype = DType::U8;
  Shape shape;
  Shape strides;  // in elements

  BasicAnyView() = default;
  BasicAnyView(Byte* d, DType t, Shape s) : data(d), dtype(t), shape(std::move(s)), strides(contiguous_strides(shape)) {}
  BasicAnyView(Byte* d, DType t, Shape s, Shape st) : data(d), dtype(t), shape(std::move(s)), strides(std::move(st)) {}
  // mutable -> const
  template <class B2>
    requires(std::is_same_v<Byte, const std::byte> && std::is_same_v<B2, std::byte>)
  BasicAnyView(const BasicAnyView<B2>& o) : data(o.data), dtype(o.dtype), shape(o.shape), strides(o.strides) {}

  std::size_t rank() const { return shape.size(); }
  std::int64_t numel() const { return ckbridge::numel(shape); }
  std::size_t element_size() const { return dtype_size(dtype); }
  std::size_t size_bytes() const { return static_cast<std::size_t>(numel()) * element_size(); }
  bool is_contiguous() const { return strides == contiguous_strides(shape) || numel() <= 1; }

  BasicAnyView slice(std::size_t dim, std::int64_t begin, std::int64_t end) const {
    if (dim >= rank() || begin < 0 || end < begin || end > shape[dim])
      fail("slice [", begin, ", ", end, ") out of range for dim ", dim, " of shape ", shape_str(shape));
    BasicAnyView v = *this;
    v.data = data + begin * strides[dim] * static_cast<std::int64_t>(element_size());
    v.shape[dim] = end - begin;
    return v;
  }

  template <class T, std::size_t Rank>
  auto as() const {
    using E = std::conditional_t<std::is_const_v<Byte>, const T, T>;
    if (dtype_of<T> != dtype)
      fail("view holds ", safetensors_name(dtype), ", requested ", safetensors_name(dtype_of<T>));
    if (rank() != Rank) fail("view of shape ", shape_str(shape), " has rank ", rank(), ", requested ", Rank);
    Extents<Rank> sh{}, st{};
    for (std::size_t i = 0; i < Rank; ++i) { sh[i] = shape[i]; st[i] = strides[i]; }
    return TensorView<E, Rank>(reinterpret_cast<E*>(data), sh, st);
  }

  template <std::size_t Rank, class F>
  decltype(auto) visit(F&& f) const {
    return dispatch_dtype(dtype, [&](auto tag) -> decltype(auto) {
      using T = typename decltype(tag)::type;
      return f(this->template as<T, Rank>());
    });
  }
};

using AnyView = BasicAnyView<std::byte>;
using AnyConstView = BasicAnyView<const std::byte>;

}  // namespace ckbridge

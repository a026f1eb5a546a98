#pragma once
// Tensor: an owning, 64-byte aligned, contiguous host buffer with a run-time dtype and shape.
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

#include "ckbridge/core/any_view.hpp"

namespace ckbridge {

class Tensor {
public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
    for (auto e : shape_)
      if (e < 0) fail("negative extent in shape ", shape_str(shape_));
    bytes_ = static_cast<std::size_t>(ckbridge::numel(shape_)) * dtype_size(dtype_);
    if (bytes_) data_.reset(static_cast<std::byte*>(::operator new[](bytes_, std::align_val_t{64})));
  }
  // A copy of any (possibly strided) view.
  static Tensor copy_of(const AnyConstView& v);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  std::int64_t numel() const { return ckbridge::numel(shape_); }
  std::size_t size_bytes() const { return bytes_; }
  std::byte* data() { return data_.get(); }
  const std::byte* data() const { return data_.get(); }

  AnyView view() { return AnyView(data(), dtype_, shape_); }
  AnyConstView view() const { return AnyConstView(data(), dtype_, shape_); }
  AnyConstView cview() const { return view(); }

  template <class T, std::size_t Rank> auto typed() { return view().as<T, Rank>(); }
  template <class T, std::size_t Rank> auto typed() const { return view().as<T, Rank>(); }

  // Same bytes, new shape with the same element count.
  void reshape(Shape s) {
    if (ckbridge::numel(s) != numel()) fail("cannot reshape ", shape_str(shape_), " to ", shape_str(s));
    shape_ = std::move(s);
  }

private:
  struct Free {
    void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  DType dtype_ = DType::U8;
  Shape shape_;
  std::size_t bytes_ = 0;
  std::unique_ptr<std::byte[], Free> data_;
};

}  // namespace ckbridge

#include "ckbridge/core/copy.hpp"

inline ckbridge::Tensor ckbridge::Tensor::copy_of(const AnyConstView& v) {
  Tensor t(v.dtype, v.shape);
  copy(v, t.view());
  return t;
}

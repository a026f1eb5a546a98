#pragma once
// Run-time shapes (rank known only after reading a file header).
#include <cstdint>
#include <vector>

namespace ckbridge {

using Shape = std::vector<std::int64_t>;

inline std::int64_t numel(const Shape& s) {
  std::int64_t n = 1;
  for (auto e : s) n *= e;
  return n;
}

inline Shape contiguous_strides(const Shape& shape) {
  Shape s(shape.size());
  std::int64_t acc = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

}  // namespace ckbridge

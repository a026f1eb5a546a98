#pragma once
// One exception type for every user-facing failure. Messages name the file, tensor, flag or
// offset at fault: callers build them with ckbridge::fail(...) which streams its arguments.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace ckbridge {

class Error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... A>
std::string concat(A&&... a) {
  std::ostringstream os;
  (os << ... << std::forward<A>(a));
  return os.str();
}
}  // namespace detail

template <class... A>
[[noreturn]] void fail(A&&... a) {
  throw Error(detail::concat(std::forward<A>(a)...));
}

// Shape printer for messages: "[3, 128]".
template <class Range>
std::string shape_str(const Range& r) {
  std::ostringstream os;
  os << '[';
  bool first = true;
  for (auto v : r) {
    if (!first) os << ", ";
    os << v;
    first = false;
  }
  os << ']';
  return os.str();
}

}  // namespace ckbridge

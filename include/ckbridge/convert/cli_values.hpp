#pragma once
// Strict parsing of the converter's numeric flag values: a value that is not a whole number,
// overflows its type, or lies outside the flag's range is refused with a message that names the
// flag and the value (instead of wrapping, or a generic "not in range 0 to 1.797e308").
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>

#include "ckbridge/core/error.hpp"

namespace ckbridge::convert {

// Why `text` is not a whole number in [min, max] (nullopt: it is).
inline std::optional<std::string> integer_problem(const std::string& text, std::int64_t min, std::int64_t max) {
  std::size_t i = 0;
  if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
  const bool digits = i < text.size() && text.find_first_not_of("0123456789", i) == std::string::npos;
  if (!digits) return "expected a whole number, got '" + text + "'";
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  auto range = [&] {
    return max == std::numeric_limits<std::int64_t>::max() ? "at least " + std::to_string(min)
                                                            : "in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
  };
  if (errno == ERANGE || v < min || v > max) return "'" + text + "' is out of range: expected a whole number " + range();
  return std::nullopt;
}

// Parses a byte size: a number with an optional unit B, KB, MB, GB (powers of 1000) or KiB,
// MiB, GiB (powers of 1024). Refuses 0, negative, non-finite and >= 2^64 byte values.
inline std::uint64_t parse_byte_size(const std::string& s, const char* flag) {
  std::size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    fail(flag, ": cannot parse size '", s, "' (expected e.g. 5GB, 500MB or 1000000)");
  }
  const std::string u = s.substr(pos);
  if (u == "KB") v *= 1e3;
  else if (u == "MB") v *= 1e6;
  else if (u == "GB") v *= 1e9;
  else if (u == "KiB") v *= 1024.0;
  else if (u == "MiB") v *= 1024.0 * 1024.0;
  else if (u == "GiB") v *= 1024.0 * 1024.0 * 1024.0;
  else if (!u.empty() && u != "B") fail(flag, ": unknown unit '", u, "' in '", s, "' (use B, KB, MB, GB, KiB, MiB or GiB)");
  if (!std::isfinite(v)) fail(flag, ": size '", s, "' is not a finite number");
  if (v < 1) fail(flag, ": size must be at least 1 byte, got '", s, "'");
  if (v >= 18446744073709551616.0)  // 2^64
    fail(flag, ": size '", s, "' is too large (at most 2^64 - 1 bytes)");
  return static_cast<std::uint64_t>(v);
}

}  // namespace ckbridge::convert

#pragma once
// Small JSON helpers shared by the format writers and readers.
//
// Two string escapers, because byte-identical output means matching two different writers:
//  - serde_json (Rust; the safetensors header): UTF-8 written raw, only '"', '\\' and control
//    characters escaped (\b \t \n \f \r, else \u00xx);
//  - Python json.dumps(ensure_ascii=True) (the transformers index file): additionally every
//    byte outside printable ASCII (0x20..0x7e) is written as \uxxxx, astral code points as a
//    UTF-16 surrogate pair, lowercase hex.
// `parse` wraps rapidjson with the flags every reader here wants (UTF-8 validation, no recursion,
// so hostile input cannot overflow the stack) and turns errors into ckbridge::Error.
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ckbridge/core/error.hpp"

namespace ckbridge::json {

inline constexpr unsigned kParseFlags = rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag;

namespace detail {
inline void append_u4(std::string& out, std::uint32_t v) {
  static constexpr char hex[] = "0123456789abcdef";
  out += "\\u";
  for (int sh = 12; sh >= 0; sh -= 4) out += hex[(v >> sh) & 0xF];
}
// Short escapes both serde_json and Python use; 0 if the byte has none.
inline char short_escape(unsigned char c) {
  switch (c) {
    case '"': return '"';
    case '\\': return '\\';
    case '\b': return 'b';
    case '\f': return 'f';
    case '\n': return 'n';
    case '\r': return 'r';
    case '\t': return 't';
    default: return 0;
  }
}
// Decodes one UTF-8 sequence at s[i]; returns its length (0 if malformed) and the code point.
inline std::size_t decode_utf8(std::string_view s, std::size_t i, std::uint32_t& cp) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  std::size_t n;
  std::uint32_t min;
  if (c < 0x80) { cp = c; return 1; }
  if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; min = 0x80; }
  else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; min = 0x800; }
  else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; min = 0x10000; }
  else return 0;
  if (s.size() - i < n) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  // overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}
}  // namespace detail

// Strict UTF-8 check (what Rust's String and Python's str.decode accept).
inline bool is_valid_utf8(std::string_view s) {
  std::uint32_t cp;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = detail::decode_utf8(s, i, cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// `"s"` as serde_json writes it. `s` must be valid UTF-8 (callers check).
inline void append_string_serde(std::string& out, std::string_view s) {
  out += '"';
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (const char e = detail::short_escape(c)) {
      out += '\\';
      out += e;
    } else if (c < 0x20) {
      detail::append_u4(out, c);
    } else {
      out += ch;
    }
  }
  out += '"';
}

// `"s"` as Python's json.dumps(s) (ensure_ascii=True) writes it. `s` must be valid UTF-8.
inline void append_string_python(std::string& out, std::string_view s) {
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    std::uint32_t cp = 0;
    const std::size_t n = detail::decode_utf8(s, i, cp);
    if (n == 0) fail("json: string is not valid UTF-8 at byte ", i);
    i += n;
    if (cp < 0x80) {
      if (const char e = detail::short_escape(static_cast<unsigned char>(cp))) {
        out += '\\';
        out += e;
      } else if (cp < 0x20 || cp == 0x7F) {
        detail::append_u4(out, cp);
      } else {
        out += static_cast<char>(cp);
      }
    } else if (cp < 0x10000) {
      detail::append_u4(out, cp);
    } else {
      const std::uint32_t v = cp - 0x10000;
      detail::append_u4(out, 0xD800 + (v >> 10));
      detail::append_u4(out, 0xDC00 + (v & 0x3FF));
    }
  }
  out += '"';
}

// Parses `text` (need not be NUL-terminated); `what` names the source in the error.
inline void parse(rapidjson::Document& doc, std::string_view text, std::string_view what) {
  doc.Parse<kParseFlags>(text.data(), text.size());
  if (doc.HasParseError())
    fail(what, ": invalid JSON at byte ", doc.GetErrorOffset(), ": ", rapidjson::GetParseError_En(doc.GetParseError()));
}

inline std::string_view str(const rapidjson::Value& v) { return {v.GetString(), v.GetStringLength()}; }

// Calls f(name, value) for each member of an object, in document order (duplicates included).
// Indexing instead of iterator comparisons: rapidjson 1.1's iterator operator== is ambiguous
// under C++20 rewritten-comparison rules (clang warns).
template <class F>
void for_each_member(const rapidjson::Value& obj, F&& f) {
  const auto first = obj.MemberBegin();
  for (rapidjson::SizeType i = 0; i < obj.MemberCount(); ++i) f((first + i)->name, (first + i)->value);
}

// The first member named `key`, or nullptr.
inline const rapidjson::Value* find_member(const rapidjson::Value& obj, std::string_view key) {
  const auto first = obj.MemberBegin();
  for (rapidjson::SizeType i = 0; i < obj.MemberCount(); ++i)
    if (str((first + i)->name) == key) return &(first + i)->value;
  return nullptr;
}

// Unsigned 64-bit integer value (JSON integers only, no floats or negatives).
inline bool get_u64(const rapidjson::Value& v, std::uint64_t& out) {
  if (!v.IsUint64()) return false;
  out = v.GetUint64();
  return true;
}

}  // namespace ckbridge::json

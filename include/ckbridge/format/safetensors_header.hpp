#pragma once
// The safetensors header: parsing with the reference reader's validation rules, and building a
// header byte-identical to the reference (Rust `safetensors`, used by Python) writer's.
//
// File layout: u64 LE N | N bytes of JSON (space padded) | data section. Each tensor's
// data_offsets are relative to the data section, which the tensors must tile exactly.
#include <rapidjson/document.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/format/json.hpp"

namespace ckbridge::safetensors {

// The reference reader refuses larger headers (HeaderTooLarge).
inline constexpr std::uint64_t kMaxHeaderSize = 100'000'000;
inline constexpr std::string_view kMetadataKey = "__metadata__";

// `__metadata__`: string -> string. Written in key order (the reference writer's order is its
// HashMap's, i.e. random; with the usual single {"format": "pt"} entry both agree).
using Metadata = std::map<std::string, std::string>;

struct TensorInfo {
  std::string name;
  DType dtype = DType::U8;
  Shape shape;
  std::uint64_t begin = 0, end = 0;  // relative to the data section
  std::uint64_t size_bytes() const { return end - begin; }
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::U8;
  Shape shape;
};

struct Header {
  std::uint64_t header_size = 0;      // N: JSON bytes incl. padding
  std::uint64_t data_size = 0;        // bytes after the header
  std::vector<TensorInfo> tensors;    // in data order (by offsets)
  std::optional<Metadata> metadata;   // absent when the file has no __metadata__
  std::uint64_t data_offset() const { return 8 + header_size; }
};

namespace detail {

inline std::uint64_t load_u64_le(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
  return v;
}

// Rank in the reference's Dtype enum; the writer orders tensors by it, descending.
constexpr int reference_rank(DType d) {
  switch (d) {
    case DType::Bool: return 0;
    case DType::U8: return 4;
    case DType::I8: return 5;
    case DType::F8_E5M2: return 6;
    case DType::F8_E4M3: return 7;
    case DType::F8_E8M0: return 8;
    case DType::I16: return 11;
    case DType::F16: return 13;
    case DType::BF16: return 14;
    case DType::I32: return 15;
    case DType::F32: return 17;
    case DType::F64: return 19;
    case DType::I64: return 20;
  }
  return -1;
}

// dtypes the format defines but ckbridge has no element type for (named in the error).
inline bool is_reference_only_dtype(std::string_view s) {
  static constexpr std::string_view names[] = {"F4", "F6_E2M3", "F6_E3M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
                                               "U16", "U32", "U64", "C64"};
  return std::find(std::begin(names), std::end(names), s) != std::end(names);
}

// numel(shape) * elem bytes, or nullopt on overflow (u64 and int64 extents).
inline std::optional<std::uint64_t> checked_nbytes(const Shape& shape, std::size_t elem) {
  std::uint64_t n = 1;
  for (auto e : shape) {
    if (e < 0) return std::nullopt;
    const auto u = static_cast<std::uint64_t>(e);
    if (u != 0 && n > std::numeric_limits<std::uint64_t>::max() / u) return std::nullopt;
    n *= u;
  }
  if (n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
  if (elem != 0 && n > std::numeric_limits<std::uint64_t>::max() / elem) return std::nullopt;
  return n * elem;
}

// 's' for messages (not std::quoted, which ADL would otherwise pick for std::string).
inline std::string squote(std::string_view s) {
  std::string q = "'";
  q.append(s);
  q += '\'';
  return q;
}

inline TensorInfo parse_tensor_entry(std::string_view label, std::string name, const rapidjson::Value& v) {
  TensorInfo t;
  t.name = std::move(name);
  const auto where = [&] { return ckbridge::detail::concat(label, ": tensor ", squote(t.name)); };
  if (!v.IsObject()) fail(where(), ": header entry is not a JSON object");
  bool have_dtype = false, have_shape = false, have_offsets = false;
  json::for_each_member(v, [&](const rapidjson::Value& k, const rapidjson::Value& f) {
    const std::string_view key = json::str(k);
    // Unknown fields are ignored, as by the reference (serde without deny_unknown_fields).
    bool* seen = key == "dtype" ? &have_dtype : key == "shape" ? &have_shape : key == "data_offsets" ? &have_offsets : nullptr;
    if (!seen) return;
    if (*seen) fail(where(), ": duplicate field ", squote(key));
    *seen = true;
    if (key == "dtype") {
      if (!f.IsString()) fail(where(), ": dtype is not a string");
      const std::string_view ds = json::str(f);
      const auto d = dtype_from_safetensors(ds);
      if (!d) {
        if (is_reference_only_dtype(ds)) fail(where(), ": dtype ", ds, " is valid safetensors but not supported by ckbridge");
        fail(where(), ": unknown dtype ", squote(ds));
      }
      t.dtype = *d;
    } else if (key == "shape") {
      if (!f.IsArray()) fail(where(), ": shape is not a JSON array");
      for (const auto& e : f.GetArray()) {
        std::uint64_t u;
        if (!json::get_u64(e, u) || u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
          fail(where(), ": shape entries must be non-negative integers below 2^63");
        t.shape.push_back(static_cast<std::int64_t>(u));
      }
    } else {
      if (!f.IsArray() || f.Size() != 2 || !json::get_u64(f[0], t.begin) || !json::get_u64(f[1], t.end))
        fail(where(), ": data_offsets must be [begin, end] with unsigned integers");
    }
  });
  if (!have_dtype) fail(where(), ": missing field 'dtype'");
  if (!have_shape) fail(where(), ": missing field 'shape'");
  if (!have_offsets) fail(where(), ": missing field 'data_offsets'");
  return t;
}

}  // namespace detail

// Parses and validates the header of a complete safetensors file held in `file` (a mapping or a
// buffer); `label` (usually the path) prefixes every error message. Rules: those of the
// reference reader (file-formats.md 5.2) plus refusal of duplicate tensor names, which the JSON
// spec allows but would make a tensor ambiguous.
inline Header parse_header(std::span<const std::byte> file, std::string_view label) {
  using detail::squote;
  if (file.size() < 8) fail(label, ": file is ", file.size(), " bytes, too short for a safetensors header (8-byte length)");
  Header h;
  h.header_size = detail::load_u64_le(file.data());
  if (h.header_size > kMaxHeaderSize)
    fail(label, ": header length ", h.header_size, " exceeds the ", kMaxHeaderSize, "-byte limit (not a safetensors file?)");
  if (h.header_size > file.size() - 8)
    fail(label, ": header length ", h.header_size, " runs past the end of the file (", file.size(), " bytes; truncated?)");
  h.data_size = file.size() - 8 - h.header_size;

  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), h.header_size);
  rapidjson::Document doc;
  json::parse(doc, text, ckbridge::detail::concat(label, ": header"));
  if (!doc.IsObject()) fail(label, ": header is not a JSON object");

  std::set<std::string_view> seen;
  json::for_each_member(doc, [&](const rapidjson::Value& k, const rapidjson::Value& value) {
    const std::string_view key = json::str(k);
    // rapidjson lets lone \u surrogates through; serde_json (and our writer) do not.
    if (!json::is_valid_utf8(key)) fail(label, ": header key ", squote(key), " is not valid UTF-8");
    if (!seen.insert(key).second) {
      if (key == kMetadataKey) fail(label, ": __metadata__ appears twice in the header");
      fail(label, ": tensor ", squote(key), " appears twice in the header");
    }
    if (key == kMetadataKey) {
      const rapidjson::Value& m = value;
      if (m.IsNull()) return;  // serde reads null as "no metadata"
      if (!m.IsObject()) fail(label, ": __metadata__ is not a JSON object");
      Metadata md;
      json::for_each_member(m, [&](const rapidjson::Value& mkey, const rapidjson::Value& mval) {
        const std::string mk(json::str(mkey));
        if (!mval.IsString()) fail(label, ": __metadata__ value of ", squote(mk), " is not a string");
        if (!json::is_valid_utf8(mk) || !json::is_valid_utf8(json::str(mval)))
          fail(label, ": __metadata__ entry ", squote(mk), " is not valid UTF-8");
        if (!md.emplace(mk, std::string(json::str(mval))).second)
          fail(label, ": __metadata__ key ", squote(mk), " appears twice");
      });
      h.metadata = std::move(md);
      return;
    }
    h.tensors.push_back(detail::parse_tensor_entry(label, std::string(key), value));
  });

  // Each tensor's own offsets first (so that a bad entry is named itself, not the neighbour whose
  // place it left), then the tiling.
  for (const TensorInfo& t : h.tensors) {
    const auto where = [&] { return ckbridge::detail::concat(label, ": tensor ", squote(t.name)); };
    if (t.end < t.begin) fail(where(), ": data_offsets [", t.begin, ", ", t.end, "] end before they begin");
    const auto nbytes = detail::checked_nbytes(t.shape, dtype_size(t.dtype));
    if (!nbytes) fail(where(), ": shape ", shape_str(t.shape), " overflows");
    if (*nbytes != t.end - t.begin)
      fail(where(), ": data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin, " bytes but ", t.dtype, " ",
           shape_str(t.shape), " needs ", *nbytes);
    if (t.end > h.data_size)
      fail(where(), ": data_offsets [", t.begin, ", ", t.end, "] run past the data section (", h.data_size,
           " bytes; file truncated?)");
  }
  // Offsets must tile the data section: sorted by offsets, each begins where the last ended.
  std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t pos = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : h.tensors) {
    const auto where = [&] { return ckbridge::detail::concat(label, ": tensor ", squote(t.name)); };
    if (t.end < t.begin) fail(where(), ": data_offsets [", t.begin, ", ", t.end, "] end before they begin");
    if (t.begin != pos) {
      if (t.begin > pos)
        fail(where(), ": data_offsets [", t.begin, ", ", t.end, "] leave a gap after ",
             prev ? ckbridge::detail::concat("tensor ", squote(prev->name), " (ends at ", pos, ")") : std::string("the data start (0)"));
      fail(where(), ": data_offsets [", t.begin, ", ", t.end, "] overlap tensor ", squote(prev->name), " (ends at ", pos, ")");
    }
    const auto nbytes = detail::checked_nbytes(t.shape, dtype_size(t.dtype));
    if (!nbytes) fail(where(), ": shape ", shape_str(t.shape), " overflows");
    if (*nbytes != t.end - t.begin)
      fail(where(), ": data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin, " bytes but ", t.dtype, " ",
           shape_str(t.shape), " needs ", *nbytes);
    if (t.end > h.data_size)
      fail(where(), ": data_offsets [", t.begin, ", ", t.end, "] run past the data section (", h.data_size,
           " bytes; file truncated?)");
    pos = t.end;
    prev = &t;
  }
  if (pos != h.data_size)
    fail(label, ": data section is ", h.data_size, " bytes but the tensors cover ", pos, " (", h.data_size - pos,
         " trailing bytes not covered by any tensor)");
  return h;
}

// ------------------------------------------------------------------------------------ writing

// Where each tensor goes in a file the reference writer would produce, and the header bytes.
struct Layout {
  std::string header;                // 8-byte length + JSON + space padding
  std::vector<TensorInfo> tensors;   // in data order
  std::uint64_t data_offset() const { return header.size(); }
  std::uint64_t file_size = 0;
};

inline std::uint64_t byte_size(const TensorSpec& s, std::string_view label = {}) {
  const auto n = detail::checked_nbytes(s.shape, dtype_size(s.dtype));
  if (!n) fail(label, label.empty() ? "" : ": ", "tensor ", detail::squote(s.name), ": invalid shape ", shape_str(s.shape));
  return *n;
}

// Orders tensors as the reference writer does (dtype descending in its enum order, then name by
// bytes), assigns contiguous offsets, and emits compact JSON with `__metadata__` first, padded
// with spaces to a multiple of 8. `label` names the output in errors.
inline Layout plan_layout(std::vector<TensorSpec> specs, const std::optional<Metadata>& metadata, std::string_view label) {
  using detail::squote;
  std::stable_sort(specs.begin(), specs.end(), [](const TensorSpec& a, const TensorSpec& b) {
    const int ra = detail::reference_rank(a.dtype), rb = detail::reference_rank(b.dtype);
    return ra != rb ? ra > rb : a.name < b.name;
  });
  Layout L;
  std::string js = "{";
  if (metadata) {
    js += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : *metadata) {
      if (!json::is_valid_utf8(k) || !json::is_valid_utf8(v))
        fail(label, ": __metadata__ entry ", squote(k), " is not valid UTF-8");
      if (!first) js += ',';
      first = false;
      json::append_string_serde(js, k);
      js += ':';
      json::append_string_serde(js, v);
    }
    js += '}';
  }
  std::uint64_t pos = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    TensorSpec& s = specs[i];
    if (!L.tensors.empty() && L.tensors.back().name == s.name) fail(label, ": tensor ", squote(s.name), " is listed twice");
    if (s.name == kMetadataKey) fail(label, ": a tensor cannot be named __metadata__");
    if (!json::is_valid_utf8(s.name)) fail(label, ": tensor ", squote(s.name), ": name is not valid UTF-8");
    const std::uint64_t n = byte_size(s, label);
    if (pos > std::numeric_limits<std::uint64_t>::max() - n) fail(label, ": total size overflows");
    if (js.size() > 1) js += ',';
    json::append_string_serde(js, s.name);
    js += ":{\"dtype\":\"";
    js += safetensors_name(s.dtype);
    js += "\",\"shape\":[";
    for (std::size_t d = 0; d < s.shape.size(); ++d) {
      if (d) js += ',';
      js += std::to_string(s.shape[d]);
    }
    js += "],\"data_offsets\":[";
    js += std::to_string(pos);
    js += ',';
    js += std::to_string(pos + n);
    js += "]}";
    L.tensors.push_back(TensorInfo{std::move(s.name), s.dtype, std::move(s.shape), pos, pos + n});
    pos += n;
  }
  js += '}';
  js.append((8 - js.size() % 8) % 8, ' ');
  if (js.size() > kMaxHeaderSize) fail(label, ": header would be ", js.size(), " bytes, over the ", kMaxHeaderSize, " limit");
  L.header.resize(8);
  for (int i = 0; i < 8; ++i) L.header[i] = static_cast<char>((js.size() >> (8 * i)) & 0xFF);
  L.header += js;
  L.file_size = L.header.size() + pos;
  return L;
}

}  // namespace ckbridge::safetensors

// libFuzzer target for the safetensors header parser and the sharded-index parser (no disk).
// Input starting with '{' is an index file; anything else is a whole .safetensors file.
// Beyond "no crash, no out-of-bounds read", every accepted header must satisfy the format's
// invariants and survive a round trip through the writer's layout.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "ckbridge/format/safetensors_checkpoint.hpp"
#include "ckbridge/format/safetensors_header.hpp"

namespace st = ckbridge::safetensors;

static void require(bool ok) {
  if (!ok) std::abort();
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 0 && data[0] == '{') {
    try {
      const auto idx = st::parse_index({reinterpret_cast<const char*>(data), size}, "fuzz.index.json");
      for (const auto& [name, file] : idx.weight_map) require(!file.empty() && file[0] != '/');
    } catch (const ckbridge::Error&) {
    }
    return 0;
  }
  st::Header h;
  try {
    h = st::parse_header({reinterpret_cast<const std::byte*>(data), size}, "fuzz.safetensors");
  } catch (const ckbridge::Error&) {
    return 0;
  }
  // tiling and bounds
  std::uint64_t pos = 0;
  for (const auto& t : h.tensors) {
    require(t.begin == pos && t.end >= t.begin);
    pos = t.end;
  }
  require(pos == h.data_size);
  require(h.data_offset() + h.data_size == size);
  // what we read, we can write, and read back the same
  std::vector<st::TensorSpec> specs;
  for (const auto& t : h.tensors) specs.push_back({t.name, t.dtype, t.shape});
  const st::Layout L = st::plan_layout(specs, h.metadata, "fuzz-out");
  require(L.file_size - L.data_offset() == h.data_size);
  std::vector<std::byte> buf(L.file_size);
  std::memcpy(buf.data(), L.header.data(), L.header.size());
  const st::Header h2 = st::parse_header(buf, "fuzz-out");
  require(h2.tensors.size() == h.tensors.size());
  require(h2.metadata == h.metadata);
  for (const auto& t : h2.tensors) {
    bool found = false;
    for (const auto& u : h.tensors)
      if (u.name == t.name) {
        require(u.dtype == t.dtype && u.shape == t.shape && u.size_bytes() == t.size_bytes());
        found = true;
      }
    require(found);
  }
  return 0;
}

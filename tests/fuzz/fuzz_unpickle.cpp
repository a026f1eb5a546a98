// libFuzzer target: the safe unpickler on raw pickle streams (data.pkl, TE _extra_state, DCP
// .metadata). Any input must give an object tree or a ckbridge::Error; tight limits keep each run
// small, and the result is walked to check the graph is finite and acyclic.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "ckbridge/format/pickle_reader.hpp"
#include "ckbridge/format/te_fp8_reader.hpp"

namespace {
std::uint64_t walk(const ckbridge::pickle::Object& o, std::uint32_t depth) {
  if (depth > 1000) __builtin_trap();  // the depth limit must hold
  std::uint64_t n = 1;
  for (const auto& x : o.items) n += walk(*x, depth + 1);
  for (const auto& [k, v] : o.dict) n += walk(*k, depth + 1) + walk(*v, depth + 1);
  if (o.callable) n += walk(*o.callable, depth + 1);
  if (o.args) n += walk(*o.args, depth + 1);
  if (o.state) n += walk(*o.state, depth + 1);
  if (o.tensor && o.tensor->attributes) n += walk(*o.tensor->attributes, depth + 1);
  return n;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ckbridge::pickle::Limits lim;
  lim.max_depth = 64;
  lim.max_weight = 1u << 16;
  try {
    auto root = ckbridge::pickle::loads(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size),
                                        "fuzz.pkl", lim);
    if (walk(*root, 0) > lim.max_weight) __builtin_trap();  // the expanded-size limit must hold
    (void)ckbridge::pickle::describe(*root);
    if (ckbridge::format::is_te_fp8_blockwise(*root)) {
      try {
        (void)ckbridge::format::read_te_fp8_blockwise(*root, "fuzz");
      } catch (const ckbridge::Error&) {
      }
    }
  } catch (const ckbridge::Error&) {
  }
  return 0;
}

// libFuzzer target: torch.save zip container + whole-file read (index, unpickle data.pkl, resolve
// every tensor view). Any input must either parse or throw ckbridge::Error; views must stay inside
// the input (ASan checks the reads below).
#include <cstddef>
#include <cstdint>
#include <span>

#include "ckbridge/format/megatron_reader.hpp"

namespace {
std::uint64_t touch(const ckbridge::format::TorchFile& f, const ckbridge::pickle::Object& o, int depth) {
  using K = ckbridge::pickle::Kind;
  std::uint64_t sum = 0;
  if (depth > 64) return 0;
  if (o.kind == K::Tensor) {
    try {
      auto v = f.view(*o.tensor);
      if (v.numel() > 0) {
        // first and last element of the view
        std::int64_t last = 0;
        for (std::size_t d = 0; d < v.rank(); ++d) last += (v.shape[d] - 1) * v.strides[d];
        sum += std::to_integer<unsigned>(v.data[0]);
        sum += std::to_integer<unsigned>(v.data[last * static_cast<std::int64_t>(v.element_size()) + v.element_size() - 1]);
      }
    } catch (const ckbridge::Error&) {
    }
  }
  for (const auto& x : o.items) sum += touch(f, *x, depth + 1);
  for (const auto& [k, v] : o.dict) sum += touch(f, *k, depth + 1) + touch(f, *v, depth + 1);
  if (o.callable) sum += touch(f, *o.callable, depth + 1);
  if (o.args) sum += touch(f, *o.args, depth + 1);
  if (o.state) sum += touch(f, *o.state, depth + 1);
  if (ckbridge::format::is_te_fp8_blockwise(o)) {
    try {
      (void)ckbridge::format::read_te_fp8_blockwise(o, "fuzz");
    } catch (const ckbridge::Error&) {
    }
  }
  return sum;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    ckbridge::format::TorchZipReader z(bytes, "fuzz.pt", ckbridge::format::ZipReadOptions{.require_torch_layout = false});
    for (const auto& r : z.records()) (void)z.bytes(r);
  } catch (const ckbridge::Error&) {
  }
  // With CRC checks on read (the converter's default) and without them (so that mutated
  // records still reach the unpickler and the view code).
  for (const bool crc : {true, false}) {
    try {
      ckbridge::format::ZipReadOptions o;
      o.verify_crc_on_read = crc;
      ckbridge::format::TorchFile f(bytes, "fuzz.pt", o);
      volatile std::uint64_t s = touch(f, *f.root(), 0);
      (void)s;
    } catch (const ckbridge::Error&) {
    }
  }
  return 0;
}

// fp8_tool: raw-file front end of ckbridge's blockwise FP8 code, driven by
// tests/python/test_fp8_mldtypes.py.
//   fp8_tool quantize <te|pt|pt_loongforge_raw> <BF16|F16|F32> <m> <n> <eps> <pow2 0|1> <in> <out.q> <out.s>
//     in: m*n little-endian elements; out.q: m*n e4m3 codes; out.s: float32 [ceil(m/128), ceil(n/128)]
//     prints the fallback block count
//   fp8_tool dequantize <F32|BF16> <m> <n> <in.q> <in.s> <out>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "ckbridge/quant/dequantize.hpp"
#include "ckbridge/quant/quantize.hpp"

using namespace ckbridge;

namespace {
std::vector<char> read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail("cannot open ", p);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void write_all(const std::string& p, const void* d, std::size_t n) {
  std::ofstream f(p, std::ios::binary);
  f.write(static_cast<const char*>(d), static_cast<std::streamsize>(n));
  if (!f) fail("cannot write ", p);
}
DType dtype_arg(const std::string& s) {
  auto d = dtype_from_safetensors(s);
  if (!d) fail("unknown dtype ", s);
  return *d;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 10 && a[0] == "quantize") {
      const DType dt = dtype_arg(a[2]);
      const std::int64_t m = std::stoll(a[3]), n = std::stoll(a[4]);
      std::vector<char> in = read_all(a[7]);
      if (in.size() != std::size_t(m * n) * dtype_size(dt)) fail("input ", a[7], " has ", in.size(), " bytes");
      quant::QuantOptions o;
      o.amax_epsilon = std::stof(a[5]);
      o.force_pow_2_scales = a[6] == "1";
      o.device = quant::Device::Cpu;
      o.name = a[7];
      const auto r = quant::quantize(quant::method_from_string(a[1]),
                                     AnyConstView(reinterpret_cast<const std::byte*>(in.data()), dt, {m, n}), o);
      write_all(a[8], r.data.data(), r.data.size_bytes());
      write_all(a[9], r.scale_inv.data(), r.scale_inv.size_bytes());
      std::printf("%lld\n", static_cast<long long>(r.fallback_blocks));
      return 0;
    }
    if (a.size() == 7 && a[0] == "dequantize") {
      const DType out = dtype_arg(a[1]);
      const std::int64_t m = std::stoll(a[2]), n = std::stoll(a[3]);
      std::vector<char> q = read_all(a[4]), s = read_all(a[5]);
      const Shape ss = quant::scale_shape(m, n, quant::ScaleLayout::Unpadded);
      if (s.size() != std::size_t(numel(ss)) * 4) fail("scale file ", a[5], " has ", s.size(), " bytes");
      const Tensor y = quant::dequantize(AnyConstView(reinterpret_cast<const std::byte*>(q.data()), DType::F8_E4M3, {m, n}),
                                         AnyConstView(reinterpret_cast<const std::byte*>(s.data()), DType::F32, ss), out,
                                         {quant::Device::Cpu});
      write_all(a[6], y.data(), y.size_bytes());
      return 0;
    }
    std::fprintf(stderr, "usage: see the header of tests/tools/fp8_tool.cpp\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fp8_tool: %s\n", e.what());
    return 1;
  }
}

// CUDA vs CPU byte comparison of blockwise FP8 quantization and dequantization: the 16 reference
// vector cases x eps {0, 1e-4} x pow2 {off, on} x {te, pt, pt_loongforge_raw}, plus random
// tensors (bf16 / fp16 / fp32, aligned and odd shapes, NaN/Inf sprinkled in), both scale layouts.
// Prints one table row per group. Exit 0 = all equal, 1 = a mismatch, 77 = no GPU (skip).
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ckbridge/quant/dequantize.hpp"
#include "ckbridge/quant/quantize.hpp"
#include "ckbridge/quant/quantize_cuda.cuh"
#include "../unit/fp8_vectors.hpp"

using namespace ckbridge;
using namespace ckbridge::quant;

namespace {

struct Tally {
  int configs = 0, mismatches = 0;
  long long bytes = 0, fallbacks = 0;
};

bool same(const Tensor& a, const Tensor& b) {
  return a.size_bytes() == b.size_bytes() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

template <class M>
void compare(const std::string& label, const AnyConstView& x, float eps, bool pow2, ScaleLayout lay, Tally& t) {
  QuantOptions o;
  o.amax_epsilon = eps;
  o.force_pow_2_scales = pow2;
  o.layout = lay;
  o.name = label;
  o.device = Device::Cpu;
  const QuantResult c = quantize<M>(x, o);
  o.device = Device::Cuda;
  const QuantResult g = quantize<M>(x, o);
  bool ok = same(c.data, g.data) && same(c.scale_inv, g.scale_inv) && c.fallback_blocks == g.fallback_blocks &&
            g.device == Device::Cuda;
  // dequantization of the result, both output dtypes
  for (DType od : {DType::F32, DType::BF16}) {
    const Tensor dc = dequantize(c.data.view(), c.scale_inv.view(), od, {Device::Cpu});
    const Tensor dg = dequantize(c.data.view(), c.scale_inv.view(), od, {Device::Cuda});
    ok = ok && same(dc, dg);
    t.bytes += static_cast<long long>(dc.size_bytes());
  }
  ++t.configs;
  t.bytes += static_cast<long long>(c.data.size_bytes() + c.scale_inv.size_bytes());
  t.fallbacks += c.fallback_blocks;
  if (!ok) {
    ++t.mismatches;
    std::printf("  MISMATCH %s method=%s eps=%g pow2=%d layout=%s\n", label.c_str(), M::name, double(eps), int(pow2),
                std::string(to_string(lay)).c_str());
  }
}

template <class F>
void all_methods(F&& f) {
  f(te{});
  f(pt{});
  f(pt_loongforge_raw{});
}

Tensor random_tensor(DType dt, std::int64_t m, std::int64_t n, std::mt19937_64& rng) {
  Tensor t(dt, {m, n});
  std::normal_distribution<double> nd;
  std::uniform_real_distribution<double> ud(0, 1);
  const std::int64_t bn = block_count(n);
  std::vector<double> mag(std::size_t(block_count(m) * bn));
  for (auto& g : mag) g = ud(rng) < 0.1 ? 0.0 : std::pow(10.0, -8 + 11 * ud(rng));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double v = nd(rng) * mag[std::size_t((i / 128) * bn + j / 128)];
      if (ud(rng) < 1e-5) v = ud(rng) < 0.5 ? NAN : INFINITY;
      const float f = float(v);
      if (dt == DType::F32) t.typed<float, 2>()(i, j) = f;
      else if (dt == DType::BF16) t.typed<bf16_t, 2>()(i, j) = bf16_t{f32_to_bf16_bits(f)};
      else t.typed<f16_t, 2>()(i, j) = f16_t{f32_to_f16_bits(f)};
    }
  return t;
}

// One dequantization kernel variant on device buffers vs the CPU bytes (fp32 and bf16 output).
template <int Threads, bool Streaming>
bool dequant_variant_equal(const QuantResult& r) {
  const std::int64_t m = r.data.shape()[0], n = r.data.shape()[1], sld = r.scale_inv.shape()[1];
  cuda::staging::DeviceBuffer dq(r.data.size_bytes()), ds(r.scale_inv.size_bytes()), d32(std::size_t(m * n) * 4),
      d16(std::size_t(m * n) * 2);
  cudaMemcpy(dq.p, r.data.data(), r.data.size_bytes(), cudaMemcpyHostToDevice);
  cudaMemcpy(ds.p, r.scale_inv.data(), r.scale_inv.size_bytes(), cudaMemcpyHostToDevice);
  cuda::dequantize_device<float, Threads, Streaming>(dq.as<std::uint8_t>(), m, n, ds.as<float>(), sld, d32.as<float>());
  cuda::dequantize_device<bf16_t, Threads, Streaming>(dq.as<std::uint8_t>(), m, n, ds.as<float>(), sld, d16.as<bf16_t>());
  Tensor g32(DType::F32, {m, n}), g16(DType::BF16, {m, n});
  cudaMemcpy(g32.data(), d32.p, g32.size_bytes(), cudaMemcpyDeviceToHost);
  cudaMemcpy(g16.data(), d16.p, g16.size_bytes(), cudaMemcpyDeviceToHost);
  return same(g32, dequantize(r.data.view(), r.scale_inv.view(), DType::F32, {Device::Cpu})) &&
         same(g16, dequantize(r.data.view(), r.scale_inv.view(), DType::BF16, {Device::Cpu}));
}

}  // namespace

int main() {
  if (!cuda::available()) {
    std::printf("no GPU visible: skipping the CUDA vs CPU FP8 comparison\n");
    return 77;
  }
  // including quantize_cuda.cuh registers the backend at start-up; enable() is the explicit form
  const bool auto_registered = cuda_backend() == &cuda::kBackend;
  cuda::enable();
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s (sm_%d%d), backend auto-registered: %s, Device::Auto -> %s\n", prop.name, prop.major,
              prop.minor, auto_registered ? "yes" : "NO", to_string(resolve_device(Device::Auto)));
  const float eps4 = f32_from_bits(0x38D1B717u);
  std::printf("%-34s %8s %10s %10s %12s\n", "group", "configs", "mismatch", "fallbacks", "bytes");
  int bad = 0;
  auto row = [&](const std::string& g, const Tally& t) {
    std::printf("%-34s %8d %10d %10lld %12lld\n", g.c_str(), t.configs, t.mismatches, t.fallbacks, t.bytes);
    bad += t.mismatches;
  };
  {
    Tally t;
    for (const auto& c : ckbridge::test::make_fp8_vector_cases())
      for (float eps : {0.0f, eps4})
        for (bool p2 : {false, true})
          all_methods([&](auto m) { compare<decltype(m)>(c.name, c.x.view(), eps, p2, ScaleLayout::Unpadded, t); });
    row("reference vectors (16 cases)", t);
  }
  std::mt19937_64 rng(12345);
  const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {
      {1, 1}, {129, 129}, {200, 300}, {256, 512}, {384, 1040}, {1000, 7}, {512, 7168 / 4}, {300, 4096 + 16}};
  for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
    Tally t;
    for (auto [m, n] : shapes) {
      const Tensor x = random_tensor(dt, m, n, rng);
      for (float eps : {0.0f, eps4})
        for (bool p2 : {false, true})
          for (ScaleLayout lay : {ScaleLayout::Unpadded, ScaleLayout::TePadded})
            all_methods([&](auto mm) {
              compare<decltype(mm)>(std::to_string(m) + "x" + std::to_string(n), x.view(), eps, p2, lay, t);
            });
    }
    // a strided input (row stride wider than the row): staged densely, same bytes
    const Tensor wide = random_tensor(dt, 256, 1040, rng);
    all_methods([&](auto mm) {
      compare<decltype(mm)>("strided 256x1024", wide.view().slice(1, 8, 1032), 0.0f, false, ScaleLayout::TePadded, t);
    });
    row(std::string("random ") + std::string(safetensors_name(dt)), t);
  }
  if (!auto_registered) ++bad;
  {  // every dequantization kernel variant (threads per CTA x streaming stores), vector path shapes
    Tally t;
    for (auto [m, n] : std::vector<std::pair<std::int64_t, std::int64_t>>{{129, 144}, {256, 512}, {300, 4112}, {1000, 16}}) {
      const Tensor x = random_tensor(DType::BF16, m, n, rng);
      for (bool p2 : {false, true}) {
        QuantOptions o;
        o.force_pow_2_scales = p2;
        o.layout = ScaleLayout::TePadded;
        o.device = Device::Cpu;
        const QuantResult r = quantize<pt_loongforge_raw>(x.view(), o);  // NaN blocks included
        const bool ok = dequant_variant_equal<256, false>(r) && dequant_variant_equal<256, true>(r) &&
                        dequant_variant_equal<512, false>(r) && dequant_variant_equal<512, true>(r);
        ++t.configs;
        t.mismatches += ok ? 0 : 1;
        if (!ok) std::printf("  MISMATCH dequant variants %lldx%lld pow2=%d\n", (long long)m, (long long)n, int(p2));
      }
    }
    row("dequant kernel variants (x4)", t);
  }
  std::printf("%s\n", bad ? "FAILED: CUDA and CPU bytes differ" : "OK: CUDA bytes == CPU bytes in every configuration");
  return bad ? 1 : 0;
}

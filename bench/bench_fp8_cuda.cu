// CUDA FP8 blockwise kernels: bandwidth of quantize (bf16 / fp32 -> e4m3 + scales) and dequantize
// (e4m3 -> bf16 / fp32) on a [rows, cols] tensor (default 16384 x 7168), as a fraction of a
// device-to-device cudaMemcpy moving the same number of bytes, measured in the same run.
// GB/s counts bytes read + bytes written. Also cross-checks the GPU bytes against the CPU path.
//   bench_fp8_cuda [rows] [cols] [iterations]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "ckbridge/quant/dequantize.hpp"
#include "ckbridge/quant/quantize.hpp"
#include "ckbridge/quant/quantize_cuda.cuh"

using namespace ckbridge;
using namespace ckbridge::quant;

namespace {

template <class F>
float time_ms(F&& f, int iters) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) f();  // warm-up
  std::vector<float> ts;
  for (int i = 0; i < iters; ++i) {
    cudaEventRecord(a);
    f();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    ts.push_back(ms);
  }
  cuda::check(cudaGetLastError(), "benchmark");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];  // median
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t m = argc > 1 ? std::atoll(argv[1]) : 16384, n = argc > 2 ? std::atoll(argv[2]) : 7168;
  const int iters = argc > 3 ? std::atoi(argv[3]) : 20;
  if (!cuda::available()) {
    std::printf("no GPU visible: skipping\n");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s, tensor %lld x %lld, median of %d runs\n", prop.name, (long long)m, (long long)n, iters);

  // inputs: normal values with a per-row-block magnitude
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  Tensor xb(DType::BF16, {m, n}), xf(DType::F32, {m, n});
  {
    auto b = xb.typed<bf16_t, 2>();
    auto f = xf.typed<float, 2>();
    std::vector<float> row(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < m; ++i) {
      for (auto& v : row) v = nd(rng) * float(1 + (i / 128) % 7);
      for (std::int64_t j = 0; j < n; ++j) {
        f(i, j) = row[std::size_t(j)];
        b(i, j) = bf16_t{f32_to_bf16_bits(row[std::size_t(j)])};
      }
    }
  }
  const std::size_t mn = std::size_t(m * n), bm = std::size_t(block_count(m)), bn = std::size_t(block_count(n));
  const std::size_t sbytes = bm * bn * 4;
  void *dxb, *dxf, *dq, *ds, *dflags, *dyb, *dyf, *dcpy_a, *dcpy_b;
  cuda::check(cudaMalloc(&dxb, mn * 2), "malloc");
  cuda::check(cudaMalloc(&dxf, mn * 4), "malloc");
  cuda::check(cudaMalloc(&dq, mn), "malloc");
  cuda::check(cudaMalloc(&ds, sbytes), "malloc");
  cuda::check(cudaMalloc(&dflags, bm * bn), "malloc");
  cuda::check(cudaMalloc(&dyb, mn * 2), "malloc");
  cuda::check(cudaMalloc(&dyf, mn * 4), "malloc");
  cuda::check(cudaMalloc(&dcpy_a, mn * 5 / 2 + sbytes), "malloc");
  cuda::check(cudaMalloc(&dcpy_b, mn * 5 / 2 + sbytes), "malloc");
  cudaMemcpy(dxb, xb.data(), mn * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dxf, xf.data(), mn * 4, cudaMemcpyHostToDevice);

  auto* q = static_cast<std::uint8_t*>(dq);
  auto* s = static_cast<float*>(ds);
  auto* fl = static_cast<std::uint8_t*>(dflags);
  const std::int64_t sld = std::int64_t(bn);

  struct Row {
    std::string op;
    double bytes;
    float ms;
  };
  std::vector<Row> rows;
  auto add = [&](const std::string& op, double bytes, auto&& f) { rows.push_back({op, bytes, time_ms(f, iters)}); };
  const double qb16 = double(mn) * 3 + double(sbytes), qf32 = double(mn) * 5 + double(sbytes);
  add("quantize te   bf16 -> e4m3", qb16, [&] {
    cuda::quantize_device<te, bf16_t>(static_cast<bf16_t*>(dxb), m, n, n, q, s, sld, fl, 0.0f, false);
  });
  add("quantize te   bf16, pow2", qb16, [&] {
    cuda::quantize_device<te, bf16_t>(static_cast<bf16_t*>(dxb), m, n, n, q, s, sld, fl, 0.0f, true);
  });
  add("quantize pt   bf16 -> e4m3", qb16, [&] {
    cuda::quantize_device<pt, bf16_t>(static_cast<bf16_t*>(dxb), m, n, n, q, s, sld, fl, 0.0f, false);
  });
  add("quantize te   fp32 -> e4m3", qf32, [&] {
    cuda::quantize_device<te, float>(static_cast<float*>(dxf), m, n, n, q, s, sld, fl, 0.0f, false);
  });
  add("quantize pt   fp32 -> e4m3", qf32, [&] {
    cuda::quantize_device<pt, float>(static_cast<float*>(dxf), m, n, n, q, s, sld, fl, 0.0f, false);
  });
  // leave the te bf16 result in q/s for the dequantization rows and the CPU cross-check
  cuda::quantize_device<te, bf16_t>(static_cast<bf16_t*>(dxb), m, n, n, q, s, sld, fl, 0.0f, false);
  cudaDeviceSynchronize();
  Tensor gq(DType::F8_E4M3, {m, n}), gs(DType::F32, {std::int64_t(bm), std::int64_t(bn)});
  cudaMemcpy(gq.data(), dq, mn, cudaMemcpyDeviceToHost);
  cudaMemcpy(gs.data(), ds, sbytes, cudaMemcpyDeviceToHost);
  // dequantization, every kernel variant (threads per CTA, streaming stores); each variant's
  // output is compared with the CPU bytes below
  const Tensor cy16 = dequantize(gq.view(), gs.view(), DType::BF16, {Device::Cpu});
  const Tensor cy32 = dequantize(gq.view(), gs.view(), DType::F32, {Device::Cpu});
  bool variants_ok = true;
  auto dq_variant = [&](auto threads, auto streaming) {
    constexpr int T = decltype(threads)::value;
    constexpr bool S = decltype(streaming)::value;
    const std::string tag = std::string(" [") + std::to_string(T) + (S ? ",cs]" : "]");
    add("dequantize e4m3->bf16" + tag, double(mn) * 3 + double(sbytes),
        [&] { cuda::dequantize_device<bf16_t, T, S>(q, m, n, s, sld, static_cast<bf16_t*>(dyb)); });
    add("dequantize e4m3->fp32" + tag, double(mn) * 5 + double(sbytes),
        [&] { cuda::dequantize_device<float, T, S>(q, m, n, s, sld, static_cast<float*>(dyf)); });
    cudaDeviceSynchronize();
    Tensor g16(DType::BF16, {m, n}), g32(DType::F32, {m, n});
    cudaMemcpy(g16.data(), dyb, mn * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(g32.data(), dyf, mn * 4, cudaMemcpyDeviceToHost);
    const bool ok = std::memcmp(g16.data(), cy16.data(), mn * 2) == 0 && std::memcmp(g32.data(), cy32.data(), mn * 4) == 0;
    if (!ok) std::printf("dequant variant%s: GPU bytes DIFFER from CPU\n", tag.c_str());
    variants_ok = variants_ok && ok;
  };
  dq_variant(std::integral_constant<int, 512>{}, std::false_type{});
  dq_variant(std::integral_constant<int, 512>{}, std::true_type{});
  dq_variant(std::integral_constant<int, 256>{}, std::true_type{});
  dq_variant(std::integral_constant<int, 256>{}, std::false_type{});

  std::printf("%-30s %10s %9s %9s %12s %9s\n", "op", "MB moved", "ms", "GB/s", "memcpy GB/s", "fraction");
  for (const Row& r : rows) {
    // a D2D copy of half the bytes moves the same number of bytes (read + write)
    const std::size_t half = std::size_t(r.bytes / 2);
    const float cms = time_ms([&] { cudaMemcpyAsync(dcpy_b, dcpy_a, half, cudaMemcpyDeviceToDevice); }, iters);
    const double gbs = r.bytes / (r.ms * 1e6), cgbs = 2.0 * double(half) / (cms * 1e6);
    std::printf("%-30s %10.1f %9.3f %9.1f %12.1f %9.3f\n", r.op.c_str(), r.bytes / 1e6, r.ms, gbs, cgbs, gbs / cgbs);
  }

  // cross-check the big tensor: GPU bytes == CPU bytes
  QuantOptions o;
  o.device = Device::Cpu;
  const QuantResult c = quantize<te>(xb.view(), o);
  const bool same_q = std::memcmp(c.data.data(), gq.data(), mn) == 0;
  const bool same_s = std::memcmp(c.scale_inv.data(), gs.data(), sbytes) == 0;
  Tensor gy(DType::BF16, {m, n});
  cudaMemcpy(gy.data(), dyb, mn * 2, cudaMemcpyDeviceToHost);
  const Tensor cy = dequantize(c.data.view(), c.scale_inv.view(), DType::BF16, {Device::Cpu});
  const bool same_y = std::memcmp(cy.data(), gy.data(), mn * 2) == 0;
  std::printf("GPU vs CPU bytes (te bf16 %lldx%lld): codes %s, scales %s, dequant bf16 %s\n", (long long)m,
              (long long)n, same_q ? "equal" : "DIFFER", same_s ? "equal" : "DIFFER", same_y ? "equal" : "DIFFER");
  for (void* p : {dxb, dxf, dq, ds, dflags, dyb, dyf, dcpy_a, dcpy_b}) cudaFree(p);
  std::printf("dequant kernel variants vs CPU bytes: %s\n", variants_ok ? "all equal" : "DIFFER");
  return same_q && same_s && same_y && variants_ok ? 0 : 1;
}

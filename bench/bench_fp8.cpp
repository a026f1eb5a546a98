// CPU FP8 blockwise quantize / dequantize bandwidth vs memcpy of the same number of bytes
// (bytes read + written), all hardware threads.
//   bench_fp8 [rows] [cols] [iterations]      default 16384 x 7168, 3 iterations
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ckbridge/quant/dequantize.hpp"
#include "ckbridge/quant/quantize.hpp"

using namespace ckbridge;
using namespace ckbridge::quant;

namespace {
template <class F>
double time_s(F&& f, int iters) {
  f();  // warm-up (page faults)
  std::vector<double> ts;
  for (int i = 0; i < iters; ++i) {
    const auto a = std::chrono::steady_clock::now();
    f();
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  const std::int64_t m = argc > 1 ? std::atoll(argv[1]) : 16384, n = argc > 2 ? std::atoll(argv[2]) : 7168;
  const int iters = argc > 3 ? std::atoi(argv[3]) : 3;
  const unsigned threads = std::thread::hardware_concurrency();
  std::printf("CPU: %u threads, tensor %lld x %lld, median of %d runs\n", threads, (long long)m, (long long)n, iters);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  Tensor xb(DType::BF16, {m, n}), xf(DType::F32, {m, n});
  {
    auto b = xb.typed<bf16_t, 2>();
    auto f = xf.typed<float, 2>();
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) {
        const float v = nd(rng);
        f(i, j) = v;
        b(i, j) = bf16_t{f32_to_bf16_bits(v)};
      }
  }
  const std::size_t mn = std::size_t(m * n), sbytes = std::size_t(block_count(m) * block_count(n)) * 4;
  Tensor q(DType::F8_E4M3, {m, n}), s(DType::F32, {block_count(m), block_count(n)}), yb(DType::BF16, {m, n}),
      yf(DType::F32, {m, n});
  std::vector<char> ca(mn * 5 / 2 + sbytes, 1), cb(mn * 5 / 2 + sbytes, 0);
  struct Row {
    const char* op;
    double bytes, sec;
  };
  std::vector<Row> rows;
  auto qrun = [&](auto method, const Tensor& x) {
    using M = decltype(method);
    return [&, x_ = &x] {
      const auto xv = x_->dtype() == DType::BF16 ? x_->view() : x_->view();
      x_->dtype() == DType::BF16
          ? (void)quantize_cpu<M, bf16_t>(xv.as<bf16_t, 2>(), q.typed<e4m3_t, 2>(), s.typed<float, 2>(), 0.0f, false)
          : (void)quantize_cpu<M, float>(xv.as<float, 2>(), q.typed<e4m3_t, 2>(), s.typed<float, 2>(), 0.0f, false);
    };
  };
  const double qb16 = double(mn) * 3 + double(sbytes), qf32 = double(mn) * 5 + double(sbytes);
  rows.push_back({"quantize te  bf16 -> e4m3", qb16, time_s(qrun(te{}, xb), iters)});
  rows.push_back({"quantize pt  bf16 -> e4m3", qb16, time_s(qrun(pt{}, xb), iters)});
  rows.push_back({"quantize te  fp32 -> e4m3", qf32, time_s(qrun(te{}, xf), iters)});
  rows.push_back({"dequantize   e4m3 -> bf16", double(mn) * 3 + double(sbytes), time_s([&] {
                    dequantize_cpu<bf16_t>(q.typed<e4m3_t, 2>(), s.typed<float, 2>(), yb.typed<bf16_t, 2>());
                  }, iters)});
  rows.push_back({"dequantize   e4m3 -> fp32", double(mn) * 5 + double(sbytes), time_s([&] {
                    dequantize_cpu<float>(q.typed<e4m3_t, 2>(), s.typed<float, 2>(), yf.typed<float, 2>());
                  }, iters)});
  std::printf("%-28s %10s %9s %9s %12s %9s\n", "op", "MB moved", "ms", "GB/s", "memcpy GB/s", "fraction");
  for (const Row& r : rows) {
    const std::size_t half = std::size_t(r.bytes / 2);
    const double cs = time_s([&] { std::memcpy(cb.data(), ca.data(), half); }, iters);
    const double gbs = r.bytes / r.sec / 1e9, cgbs = 2.0 * double(half) / cs / 1e9;
    std::printf("%-28s %10.1f %9.1f %9.2f %12.2f %9.3f\n", r.op, r.bytes / 1e6, r.sec * 1e3, gbs, cgbs, gbs / cgbs);
  }
  return 0;
}

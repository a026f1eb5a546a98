// bench_crc32: CRC-32 of zip records (every record the converter reads is checked) against
// zlib's crc32 over the same buffer in the same run, and against a plain read of it (memcpy-free
// sum of 64-bit words: what streaming the bytes costs at all).
//
//   bench_crc32 [MiB] [ITERATIONS]     defaults 512, 5; reports the best run of each
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ckbridge/core/crc32.hpp"

using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  const std::size_t mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 512;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 5;
  std::vector<std::byte> buf(mib << 20);
  std::uint64_t x = 88172645463325252ull;
  for (auto& b : buf) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b = std::byte(x);
  }
  auto best = [&](auto&& fn, std::uint64_t& out) {
    double t = 1e30;
    for (int i = 0; i < iters; ++i) {
      asm volatile("" : : "r"(buf.data()) : "memory");  // the bytes may have changed: read them again
      const auto t0 = Clock::now();
      out = fn();
      asm volatile("" : : "r"(out) : "memory");  // the result exists before the clock is read
      t = std::min(t, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    return double(buf.size()) / t / 1e9;
  };
  std::uint64_t a = 0, b = 0, c = 0;
  const double read = best([&] {
    std::uint64_t s = 0, w = 0;
    for (std::size_t i = 0; i + 8 <= buf.size(); i += 8) {
      std::memcpy(&w, buf.data() + i, 8);
      s += w;
    }
    return s;
  }, c);
  const double z = best([&] { return std::uint64_t{ckbridge::detail::crc32_zlib(0, buf.data(), buf.size())}; }, a);
  const double ours = best([&] { return std::uint64_t{ckbridge::crc32_of(buf)}; }, b);
  std::printf("crc32 of %zu MiB: ckbridge %.2f GB/s, zlib %s %.2f GB/s (%.2fx), plain read %.2f GB/s (%.2fx of it); %s\n",
              mib, ours, zlibVersion(), z, ours / z, read, ours / read, a == b ? "same CRC" : "CRC MISMATCH");
  return a == b ? 0 : 1;
}

#pragma once
// Minimal fork-join loop for the CPU kernels: tasks are handed out by an atomic counter (blocks
// differ in cost only at the edges), each worker keeps a private accumulator, no locks.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace ckbridge::quant::detail {

inline unsigned resolve_threads(unsigned requested) {
  if (requested) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? hw : 1;
}

// Calls f(i, acc) for i in [0, n) on up to `threads` threads; returns the sum of the per-thread
// int64 accumulators that f increments.
template <class F>
std::int64_t parallel_for_sum(std::int64_t n, unsigned threads, F&& f) {
  const unsigned t = static_cast<unsigned>(std::min<std::int64_t>(resolve_threads(threads), n));
  if (t <= 1) {
    std::int64_t acc = 0;
    for (std::int64_t i = 0; i < n; ++i) f(i, acc);
    return acc;
  }
  std::atomic<std::int64_t> next{0};
  std::vector<std::int64_t> accs(t, 0);
  auto work = [&](unsigned w) {
    std::int64_t acc = 0;
    for (std::int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) f(i, acc);
    accs[w] = acc;
  };
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  for (unsigned w = 1; w < t; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& th : pool) th.join();
  std::int64_t sum = 0;
  for (auto a : accs) sum += a;
  return sum;
}

}  // namespace ckbridge::quant::detail

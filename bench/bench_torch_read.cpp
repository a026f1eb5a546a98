// bench_torch_read: unpickling speed of a Megatron-style data.pkl (an OrderedDict of N tensors,
// memoized the way CPython's pickler writes it: BINPUT after every object, BINGET for the repeated
// 'storage' / 'cpu' strings and the GLOBALs), plus Megatron model-dict interpretation.
//
//   bench_torch_read [TENSORS] [ITERATIONS]     defaults 100000, 5; reports the best run
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "ckbridge/format/pickle_reader.hpp"
#include "ckbridge/format/te_fp8_reader.hpp"

namespace pk = ckbridge::pickle;
using Clock = std::chrono::steady_clock;

namespace {
struct Writer {
  std::string b = "\x80\x02";
  std::uint32_t memo = 0;
  void u32(std::uint32_t v) { for (int k = 0; k < 4; ++k) b += static_cast<char>((v >> (8 * k)) & 255); }
  void put() { b += 'r'; u32(memo++); }
  void get(std::uint32_t id) { b += 'j'; u32(id); }
  void str(const std::string& s) { b += 'X'; u32(static_cast<std::uint32_t>(s.size())); b += s; put(); }
  void integer(std::uint32_t v) { b += 'J'; u32(v); }
};

std::string make_pickle(int n) {
  Writer w;
  w.b += "ccollections\nOrderedDict\n";
  w.put();
  const std::uint32_t od = 0;
  w.b += ")R";
  w.put();
  std::uint32_t rebuild = 0, storage_s = 0, bf16 = 0, cpu = 0;
  for (int i = 0; i < n; ++i) {
    if (i % 1000 == 0) w.b += '(';
    w.str("decoder.layers." + std::to_string(i / 16) + ".mlp.experts." + std::to_string(i % 16) + ".weight");
    if (i == 0) { w.b += "ctorch._utils\n_rebuild_tensor_v2\n"; rebuild = w.memo; w.put(); } else w.get(rebuild);
    w.b += "((";
    if (i == 0) { w.str("storage"); storage_s = w.memo - 1; } else w.get(storage_s);
    if (i == 0) { w.b += "ctorch\nBFloat16Storage\n"; bf16 = w.memo; w.put(); } else w.get(bf16);
    w.str(std::to_string(i));
    if (i == 0) { w.str("cpu"); cpu = w.memo - 1; } else w.get(cpu);
    w.integer(7168 * 2048);
    w.b += "tQ";
    w.integer(0);
    w.b += "(";
    w.integer(7168);
    w.integer(2048);
    w.b += "t(";
    w.integer(2048);
    w.integer(1);
    w.b += "t\x89";
    w.get(od);
    w.b += ")R";
    w.put();
    w.b += "tR";
    w.put();
    if (i % 1000 == 999 || i == n - 1) w.b += 'u';
  }
  w.b += '.';
  return w.b;
}
}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 100000;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 5;
  const std::string pkl = make_pickle(n);
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(pkl.data()), pkl.size());
  double best = 1e30;
  std::size_t tensors = 0;
  for (int it = 0; it < iters; ++it) {
    const auto t0 = Clock::now();
    auto root = pk::loads(bytes, "bench.pkl");
    tensors = 0;
    for (const auto& [k, v] : root->dict) tensors += v->kind == pk::Kind::Tensor && !ckbridge::format::is_te_fp8_blockwise(*v);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::printf("data.pkl %.1f MB, %zu tensors: best %.3f s  (%.0f tensors/s, %.1f MB/s)\n", pkl.size() / 1e6, tensors, best,
              tensors / best, pkl.size() / 1e6 / best);
  return tensors == static_cast<std::size_t>(n) ? 0 : 1;
}

// bench_torch_save: throughput of ckbridge's torch.save writer (streaming zip + CRC-32) against the
// floor of writing the same bytes with plain write(2), in the same run, plus CRC-32 alone.
//
//   bench_torch_save [DIR] [GB] [TENSORS]   DIR: scratch directory (default $CKB_BENCH_DIR, else
//                                           the system temp dir); GB: payload (default 1);
//                                           TENSORS: number of bf16 tensors (default 64).
// Files are written without fsync (page-cache bandwidth, like torch.save) and deleted at once.
// Each method runs 3 times, interleaved; the best time is reported.
#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ckbridge/core/tensor.hpp"
#include "ckbridge/format/torch_save.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace ckbridge;

namespace {
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

int main(int argc, char** argv) {
  const char* env = std::getenv("CKB_BENCH_DIR");
  const fs::path dir = argc > 1 ? fs::path(argv[1]) : env ? fs::path(env) : fs::temp_directory_path();
  const double gb = argc > 2 ? std::atof(argv[2]) : 1.0;
  const int n = argc > 3 ? std::atoi(argv[3]) : 64;
  if (gb <= 0 || n <= 0) {
    std::fprintf(stderr, "usage: bench_torch_save [DIR] [GB > 0] [TENSORS > 0]\n");
    return 2;
  }
  const std::int64_t cols = 4096;
  const std::int64_t rows = std::max<std::int64_t>(1, static_cast<std::int64_t>(gb * 1e9 / n / 2 / cols));
  std::vector<std::shared_ptr<Tensor>> ts;
  pickle::Value sd = pickle::Value::dict();
  for (int i = 0; i < n; ++i) {
    auto t = std::make_shared<Tensor>(DType::BF16, Shape{rows, cols});
    auto* p = reinterpret_cast<std::uint16_t*>(t->data());
    for (std::int64_t k = 0; k < t->numel(); ++k) p[k] = static_cast<std::uint16_t>(k * 2654435761u >> 16);
    sd.set("decoder.layers." + std::to_string(i) + ".weight", pickle::Value::tensor(std::as_const(*t).view(), t));
    ts.push_back(t);
  }
  const double bytes = double(n) * double(rows * cols * 2);
  std::printf("payload: %d bf16 tensors [%lld, %lld] = %.2f GB in %s\n", n, static_cast<long long>(rows),
              static_cast<long long>(cols), bytes / 1e9, dir.c_str());

  // CRC-32 alone (zlib)
  auto t0 = Clock::now();
  uLong c = 0;
  for (auto& t : ts) c = ::crc32_z(c, reinterpret_cast<const Bytef*>(t->data()), t->size_bytes());
  const double crc_s = since(t0);

  // floor: the same bytes with write(2)
  auto raw_write = [&] {
    const fs::path raw = dir / "ckb_bench_raw.bin";
    const auto t = Clock::now();
    int fd = ::open(raw.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) fail("cannot create ", raw.string());
    for (auto& x : ts) {
      const char* p = reinterpret_cast<const char*>(x->data());
      std::size_t left = x->size_bytes();
      while (left) {
        const ssize_t w = ::write(fd, p, left);
        if (w <= 0) fail("write failed on ", raw.string());
        p += w;
        left -= static_cast<std::size_t>(w);
      }
    }
    ::close(fd);
    const double s = since(t);
    fs::remove(raw);
    return s;
  };
  auto save = [&](bool crc, unsigned crc_threads) {
    const fs::path pt = dir / "ckb_bench_model_optim_rng.pt";
    format::TorchSaveOptions o;
    o.fsync = false;
    o.crc = crc;
    o.crc_threads = crc_threads;
    const auto t = Clock::now();
    format::save_torch(pt.string(), sd, o);
    const double s = since(t);
    fs::remove(pt);
    return s;
  };
  // interleaved, best of 3 (page-cache writeback of one run slows the next)
  double raw_s = 1e30, save_s[3] = {1e30, 1e30, 1e30};
  for (int rep = 0; rep < 3; ++rep) {
    raw_s = std::min(raw_s, raw_write());
    save_s[0] = std::min(save_s[0], save(false, 1));
    save_s[1] = std::min(save_s[1], save(true, 1));
    save_s[2] = std::min(save_s[2], save(true, 0));
  }
  std::printf("crc32 (zlib) alone          : %6.2f GB/s (crc %08lx)\n", bytes / crc_s / 1e9, c);
  std::printf("write(2) of the same bytes  : %6.2f GB/s\n", bytes / raw_s / 1e9);
  std::printf("save_torch, CRC off         : %6.2f GB/s\n", bytes / save_s[0] / 1e9);
  std::printf("save_torch, CRC inline      : %6.2f GB/s\n", bytes / save_s[1] / 1e9);
  std::printf("save_torch, CRC overlapped  : %6.2f GB/s (%u threads; storages >= 32 MiB)\n", bytes / save_s[2] / 1e9,
              std::min(8u, std::max(1u, std::thread::hardware_concurrency())));
  return 0;
}

// bench_safetensors: (a) zero-copy reading - resident memory before/after making views of every
// tensor of a ~2 GB shard and after touching the data; (b) FileWriter write throughput against
// `cp` of the same bytes, in the same run.
//
//   bench_safetensors [DIR] [GB]     DIR: scratch directory (default $CKB_BENCH_DIR, else the
//                                    system temp dir); GB: shard size (default 2). The scratch
//                                    files are deleted at the end.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "ckbridge/format/safetensors.hpp"

namespace st = ckbridge::safetensors;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Resident set size of this process (bytes), from /proc/self/statm.
std::size_t rss_bytes() {
  std::ifstream in("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

// Bytes of a mapping that are in the page cache (mincore).
std::size_t cached_bytes(const std::byte* p, std::size_t n) {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> v((n + page - 1) / page);
  if (::mincore(const_cast<std::byte*>(p), n, v.data()) != 0) return 0;
  std::size_t c = 0;
  for (auto b : v) c += b & 1;
  return c * page;
}

void drop_from_page_cache(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

double mib(std::size_t b) { return static_cast<double>(b) / (1 << 20); }

// Writes every tensor of `src` into `out` with FileWriter, `threads` workers, `piece`-byte pieces;
// from the mapping (write) or, with `src_fd` >= 0, by kernel copy (write_from_fd).
double write_copy(const st::File& src, const fs::path& out, unsigned threads, std::size_t piece, int src_fd = -1) {
  std::vector<st::TensorSpec> specs;
  for (const auto& t : src.tensors()) specs.push_back({t.name, t.dtype, t.shape});
  const auto t0 = Clock::now();
  st::FileWriter w(out, specs);
  struct Piece {
    const st::TensorInfo* t;
    std::uint64_t off, len;
  };
  std::vector<Piece> pieces;
  for (const auto& t : src.tensors())
    for (std::uint64_t off = 0; off < t.size_bytes(); off += piece)
      pieces.push_back({&t, off, std::min<std::uint64_t>(piece, t.size_bytes() - off)});
  std::atomic<std::size_t> next{0};
  std::vector<std::thread> pool;
  for (unsigned i = 0; i < threads; ++i)
    pool.emplace_back([&] {
      for (std::size_t k; (k = next.fetch_add(1)) < pieces.size();) {
        const Piece& pc = pieces[k];
        if (src_fd >= 0)
          w.write_from_fd(pc.t->name, src_fd, src.file_offset(*pc.t) + pc.off, pc.len, pc.off);
        else
          w.write(pc.t->name, src.bytes(*pc.t).subspan(pc.off, pc.len), pc.off);
      }
    });
  for (auto& t : pool) t.join();
  w.commit();  // includes fsync
  return seconds_since(t0);
}

std::string shell_quote(const fs::path& p) {
  std::string s = "'";
  for (char c : p.string()) s += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return s + "'";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    fs::path base = argc > 1 ? fs::path(argv[1])
                             : (std::getenv("CKB_BENCH_DIR") ? fs::path(std::getenv("CKB_BENCH_DIR")) : fs::temp_directory_path());
    const double gb = argc > 2 ? std::stod(argv[2]) : 2.0;
    const fs::path dir = base / ("ckb_bench_st_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    struct Cleanup {
      fs::path d;
      ~Cleanup() {
        std::error_code ec;
        fs::remove_all(d, ec);
      }
    } cleanup{dir};

    // ---- a ~GB-sized shard: BF16 [4096, 8192] tensors (64 MiB each) plus small ones
    const std::int64_t rows = 4096, cols = 8192;
    const std::size_t big_bytes = static_cast<std::size_t>(rows * cols * 2);
    const int n_big = std::max(1, static_cast<int>(gb * 1e9 / static_cast<double>(big_bytes)));
    std::vector<st::TensorSpec> specs;
    for (int i = 0; i < n_big; ++i) specs.push_back({"layers." + std::to_string(i) + ".weight", ckbridge::DType::BF16, {rows, cols}});
    for (int i = 0; i < n_big; ++i) specs.push_back({"layers." + std::to_string(i) + ".norm", ckbridge::DType::F32, {cols}});
    const fs::path shard = dir / "shard.safetensors";
    {
      std::vector<std::byte> pattern(big_bytes);
      for (std::size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<std::byte>((i * 131) >> 7);
      st::FileWriter w(shard, specs);
      for (const auto& s : specs)
        w.write(s.name, std::span<const std::byte>(pattern).first(static_cast<std::size_t>(st::byte_size(s))));
      w.commit();
    }
    const std::size_t file_bytes = fs::file_size(shard);
    drop_from_page_cache(shard);
    std::printf("shard: %s, %.1f MiB, %zu tensors\n", shard.c_str(), mib(file_bytes), specs.size());

    // ---- (a) zero-copy views
    const std::size_t rss0 = rss_bytes();
    const auto t_open = Clock::now();
    st::File f(shard);
    std::vector<ckbridge::AnyConstView> views;
    std::size_t view_bytes = 0;
    for (const auto& t : f.tensors()) {
      views.push_back(f.view(t));
      view_bytes += views.back().size_bytes();
    }
    const double open_s = seconds_since(t_open);
    const std::size_t rss1 = rss_bytes();
    const std::size_t cache1 = cached_bytes(f.mapped().data(), f.mapped().size());
    const auto t_touch = Clock::now();
    unsigned sum = 0;
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    for (const auto& v : views)
      for (std::size_t i = 0; i < v.size_bytes(); i += page) sum += std::to_integer<unsigned>(v.data[i]);
    const double touch_s = seconds_since(t_touch);
    const std::size_t rss2 = rss_bytes();
    std::printf("(a) open + %zu views covering %.1f MiB: %.3f ms; RSS %.1f -> %.1f MiB (+%.1f), page cache %.1f MiB\n",
                views.size(), mib(view_bytes), open_s * 1e3, mib(rss0), mib(rss1), mib(rss1 - rss0), mib(cache1));
    std::printf("    after touching every page: RSS %.1f MiB (+%.1f), %.2f GB/s from disk (checksum %u)\n", mib(rss2),
                mib(rss2 - rss0), static_cast<double>(view_bytes) / touch_s / 1e9, sum);

    // ---- (b) write throughput: FileWriter (from the mapped, now cached source) vs cp
    const unsigned hw = std::max(2u, std::thread::hardware_concurrency());
    // Each way twice, interleaved, best time kept: the first writes of a run pay for the file
    // system's block allocation and for writeback of earlier dirty pages.
    const std::string cmd = "cp " + shell_quote(shard) + " " + shell_quote(dir / "cp.safetensors") + " && sync " +
                            shell_quote(dir / "cp.safetensors");
    double s1 = 1e30, sn = 1e30, scp = 1e30, sk = 1e30;
    const int src_fd = ::open(shard.c_str(), O_RDONLY | O_CLOEXEC);
    bool same = true;
    for (int rep = 0; rep < 2; ++rep) {
      const auto t_cp = Clock::now();
      const int rc = std::system(cmd.c_str());
      scp = std::min(scp, seconds_since(t_cp));
      if (rc != 0) std::printf("    (cp failed: rc %d)\n", rc);
      fs::remove(dir / "cp.safetensors");
      s1 = std::min(s1, write_copy(f, dir / "out1.safetensors", 1, 64 << 20));
      fs::remove(dir / "out1.safetensors");
      sn = std::min(sn, write_copy(f, dir / "outn.safetensors", hw, 16 << 20));
      {
        const st::File g(dir / "outn.safetensors");
        same = same && g.mapped().size() == f.mapped().size() &&
               std::equal(g.mapped().data(), g.mapped().data() + g.mapped().size(), f.mapped().data());
      }
      fs::remove(dir / "outn.safetensors");
      sk = std::min(sk, write_copy(f, dir / "outk.safetensors", 1, 256 << 20, src_fd));
      {
        const st::File g(dir / "outk.safetensors");
        same = same && g.mapped().size() == f.mapped().size() &&
               std::equal(g.mapped().data(), g.mapped().data() + g.mapped().size(), f.mapped().data());
      }
      fs::remove(dir / "outk.safetensors");
    }
    ::close(src_fd);
    const double fb = static_cast<double>(file_bytes);
    std::printf("(b) write %.1f MiB, each incl. fsync, best of 2:\n", mib(file_bytes));
    std::printf("    FileWriter 1 thread   : %.2f GB/s (%.2f s)\n", fb / s1 / 1e9, s1);
    std::printf("    FileWriter %2u threads : %.2f GB/s (%.2f s)%s\n", hw, fb / sn / 1e9, sn, same ? ", outputs identical" : ", OUTPUT DIFFERS");
    std::printf("    FileWriter kernel copy: %.2f GB/s (%.2f s) (write_from_fd, 1 thread)\n", fb / sk / 1e9, sk);
    std::printf("    cp + sync             : %.2f GB/s (%.2f s)\n", fb / scp / 1e9, scp);
    std::printf("    ratio FileWriter/cp   : %.2f (1 thread), %.2f (%u threads), %.2f (kernel copy)\n", scp / s1, scp / sn,
                hw, scp / sk);
    return same ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

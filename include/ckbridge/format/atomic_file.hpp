#pragma once
// AtomicFile: an output file that appears under its final name only when complete.
//
// The bytes go to `<path>.tmp-<random>` in the same directory (so the final rename stays on one
// file system and is atomic); `pwrite` may be called from several threads at distinct offsets;
// `commit()` fsyncs, renames over the final path and fsyncs the directory. An AtomicFile that is
// destroyed (or `abandon()`ed) before `commit()` removes its temporary file, so a failed or
// interrupted conversion never leaves a half-written file behind under a real name.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/core/error.hpp"

namespace ckbridge {

class AtomicFile {
public:
  AtomicFile() = default;
  // Creates the temporary file (mode 0666 & ~umask, like any new file). With `size`, the file is
  // extended to that many bytes up front (sparse), so writes may arrive in any order.
  explicit AtomicFile(std::filesystem::path path, std::uint64_t size = 0) : path_(std::move(path)) {
    std::random_device rd;
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
      static constexpr char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
      std::string suffix = ".tmp-";
      std::uint64_t r = (std::uint64_t{rd()} << 32) ^ rd() ^ counter().fetch_add(1);
      for (int i = 0; i < 8; ++i, r /= 36) suffix += digits[r % 36];
      tmp_ = path_;
      tmp_ += suffix;
      fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ < 0 && errno != EEXIST) fail(tmp_.string(), ": cannot create: ", std::strerror(errno));
    }
    if (fd_ < 0) fail(path_.string(), ": cannot find a free temporary name");
    if (size) resize(size);
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  AtomicFile(AtomicFile&& o) noexcept { swap(o); }
  AtomicFile& operator=(AtomicFile&& o) noexcept {
    if (this != &o) {
      abandon();
      swap(o);
    }
    return *this;
  }
  ~AtomicFile() { abandon(); }

  const std::filesystem::path& path() const { return path_; }
  const std::filesystem::path& temp_path() const { return tmp_; }
  bool is_open() const { return fd_ >= 0; }
  int fd() const { return fd_; }

  void resize(std::uint64_t size) {
    check_open();
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
      fail(tmp_.string(), ": cannot resize to ", size, " bytes: ", std::strerror(errno));
  }

  // Thread-safe: writes all of `bytes` at `offset` (retrying short writes and EINTR).
  void pwrite(std::span<const std::byte> bytes, std::uint64_t offset) const {
    check_open();
    const std::byte* p = bytes.data();
    std::size_t left = bytes.size();
    while (left > 0) {
      // Linux writes at most ~2 GiB per call; chunk explicitly to keep the loop obvious.
      const std::size_t chunk = left < (std::size_t{1} << 30) ? left : (std::size_t{1} << 30);
      const ssize_t n = ::pwrite(fd_, p, chunk, static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        fail(tmp_.string(), ": write of ", chunk, " bytes at offset ", offset, " failed: ", std::strerror(errno));
      }
      if (n == 0) fail(tmp_.string(), ": write at offset ", offset, " made no progress");
      p += n;
      left -= static_cast<std::size_t>(n);
      offset += static_cast<std::uint64_t>(n);
    }
  }
  void pwrite(std::string_view s, std::uint64_t offset) const {
    pwrite(std::as_bytes(std::span<const char>(s.data(), s.size())), offset);
  }

  // Thread-safe: copies `len` bytes at `src_offset` of the open file `src_fd` to `offset`,
  // inside the kernel where possible (copy_file_range: no pass through user memory, reflinks on
  // file systems that share extents), else through a bounded buffer.
  void copy_from(int src_fd, std::uint64_t src_offset, std::uint64_t len, std::uint64_t offset) const {
    check_open();
    auto in = static_cast<loff_t>(src_offset), out = static_cast<loff_t>(offset);
    while (len > 0) {
      const std::size_t chunk = len < (std::uint64_t{1} << 30) ? static_cast<std::size_t>(len) : (std::size_t{1} << 30);
      const ssize_t n = ::copy_file_range(src_fd, &in, fd_, &out, chunk, 0);
      if (n > 0) {
        len -= static_cast<std::uint64_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) fail(tmp_.string(), ": source ended early while copying ", len, " more bytes from offset ", in);
      // EXDEV (older kernels), ENOSYS, EINVAL, EOPNOTSUPP...: fall back to pread + pwrite
      std::vector<std::byte> buf(std::min<std::uint64_t>(len, std::uint64_t{16} << 20));
      while (len > 0) {
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(len, buf.size()));
        const ssize_t r = ::pread(src_fd, buf.data(), want, in);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) fail(tmp_.string(), ": read of the copy source at offset ", in, " failed: ", std::strerror(errno));
        if (r == 0) fail(tmp_.string(), ": source ended early while copying ", len, " more bytes from offset ", in);
        pwrite(std::span<const std::byte>(buf.data(), static_cast<std::size_t>(r)), static_cast<std::uint64_t>(out));
        in += r;
        out += r;
        len -= static_cast<std::uint64_t>(r);
      }
    }
  }

  // fsync, rename to the final path, fsync the directory. After this the object is empty.
  void commit() {
    check_open();
    if (::fsync(fd_) != 0) fail(tmp_.string(), ": fsync failed: ", std::strerror(errno));
    if (::close(fd_) != 0) {
      fd_ = -1;
      fail(tmp_.string(), ": close failed: ", std::strerror(errno));
    }
    fd_ = -1;
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int e = errno;
      std::error_code ec;
      std::filesystem::remove(tmp_, ec);
      tmp_.clear();
      fail(path_.string(), ": cannot rename the temporary file into place: ", std::strerror(e));
    }
    tmp_.clear();
    sync_dir(path_.parent_path());
  }

  // Closes and deletes the temporary file; no effect after commit().
  void abandon() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!tmp_.empty()) {
      std::error_code ec;
      std::filesystem::remove(tmp_, ec);
      tmp_.clear();
    }
  }

  // Writes a whole small file (an index, a config) atomically.
  static void write_all(const std::filesystem::path& path, std::string_view content) {
    AtomicFile f(path);
    f.pwrite(content, 0);
    f.commit();
  }

private:
  static std::atomic<std::uint64_t>& counter() {
    static std::atomic<std::uint64_t> c{0};
    return c;
  }
  static void sync_dir(const std::filesystem::path& dir) {
    const int d = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d < 0) return;  // best effort: the rename itself has happened
    ::fsync(d);
    ::close(d);
  }
  void check_open() const {
    if (fd_ < 0) fail(path_.string(), ": file is not open for writing (already committed or abandoned)");
  }
  void swap(AtomicFile& o) noexcept {
    std::swap(path_, o.path_);
    std::swap(tmp_, o.tmp_);
    std::swap(fd_, o.fd_);
  }
  std::filesystem::path path_;
  std::filesystem::path tmp_;
  int fd_ = -1;
};

}  // namespace ckbridge

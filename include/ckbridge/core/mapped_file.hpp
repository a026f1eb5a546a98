#pragma once
// Read-only memory map of a whole file. Views into it cost no copy; pages are read when touched.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <utility>

#include "ckbridge/core/error.hpp"

namespace ckbridge {

class MappedFile {
public:
  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(path.string(), ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      fail(path.string(), ": cannot stat: ", std::strerror(e));
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        fail(path.string(), ": cannot mmap ", size_, " bytes: ", std::strerror(e));
      }
      data_ = static_cast<const std::byte*>(p);
    }
    ::close(fd);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept { swap(o); }
  MappedFile& operator=(MappedFile&& o) noexcept {
    if (this != &o) {
      unmap();
      swap(o);
    }
    return *this;
  }
  ~MappedFile() { unmap(); }

  const std::filesystem::path& path() const { return path_; }
  std::size_t size() const { return size_; }
  const std::byte* data() const { return data_; }

  // Bytes [offset, offset+len), refusing ranges outside the file.
  std::span<const std::byte> bytes(std::size_t offset, std::size_t len) const {
    if (offset > size_ || len > size_ - offset)
      fail(path_.string(), ": byte range [", offset, ", ", offset + len, ") is outside the file (", size_, " bytes)");
    return {data_ + offset, len};
  }

  // Hints: the range will be read once, front to back / is no longer needed.
  void advise_sequential(std::size_t offset, std::size_t len) const { advise(offset, len, MADV_SEQUENTIAL); }
  void advise_willneed(std::size_t offset, std::size_t len) const { advise(offset, len, MADV_WILLNEED); }
  void release(std::size_t offset, std::size_t len) const { advise(offset, len, MADV_DONTNEED); }
  // Scattered small reads (e.g. only FP8 scales while planning): a page fault reads only its page.
  // Without it the kernel reads around every fault (the block device's read-ahead, often MBs).
  void advise_random(std::size_t offset, std::size_t len) const { advise(offset, len, MADV_RANDOM); }
  void advise_normal(std::size_t offset, std::size_t len) const { advise(offset, len, MADV_NORMAL); }
  // Drops the resident pages of [p - around, p + len + around) of this mapping, clipped to it
  // (they re-fault from the page cache). `around` covers pages the kernel mapped next to a fault
  // (fault-around, 64 KiB by default).
  void release_at(const void* p, std::size_t len, std::size_t around = 64 << 10) const {
    const auto* b = static_cast<const std::byte*>(p);
    if (!data_ || b < data_ || b > data_ + size_) return;
    const std::size_t off = static_cast<std::size_t>(b - data_);
    const std::size_t start = off > around ? off - around : 0;
    release(start, off - start + len + around);
  }

private:
  void advise(std::size_t offset, std::size_t len, int how) const {
    if (!data_ || offset >= size_) return;
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t start = offset / page * page;
    const std::size_t end = std::min(size_, offset + len);
    ::madvise(const_cast<std::byte*>(data_) + start, end - start, how);
  }
  void unmap() {
    if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }
  void swap(MappedFile& o) noexcept {
    std::swap(path_, o.path_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
  }
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace ckbridge

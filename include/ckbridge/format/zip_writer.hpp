#pragma once
// Streaming, store-only ZIP writer that reproduces the byte layout torch.save (PyTorch's bundled
// miniz + PyTorchStreamWriter) produces:
//  * local header: version 0, flags 0x0808 (data descriptor + UTF-8; 0x0800 for 0-byte records),
//    method 0, time/date 0, CRC and sizes 0 (the real values follow in the data descriptor);
//  * extras: a zip64 extra only when the record size or its header offset is >= 0xFFFFFFFF, then
//    always the "FB" padding extra that puts the record data on a multiple of `alignment` (64);
//  * a 16-byte data descriptor after every non-empty record (24 bytes in the zip64 case);
//  * central directory with zip64 extras only for the overflowing fields;
//  * zip64 end record + locator + classic end record, always.
// torch's storage-offset calculator (`.format_version` >= 1) relies on exactly these sizes, so
// nothing here is "close enough": see tests/unit/test_torch_write.cpp.
//
// Data is streamed: begin_record(name, size) writes the local header, write() appends bytes while
// updating the CRC-32, end_record() writes the descriptor. Nothing is buffered per record, so
// tensors go straight from their source views to the sink.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include "ckbridge/core/crc32.hpp"
#include "ckbridge/core/error.hpp"

namespace ckbridge::format {

// ------------------------------------------------------------------------------------- sinks
// Where the archive bytes go. `write_zeros` lets a file sink leave a sparse hole (used by tests of
// the >4 GiB zip64 path); the default writes real zero bytes.
class ByteSink {
public:
  virtual ~ByteSink() = default;
  virtual void write(const void* data, std::size_t n) = 0;
  virtual void write_zeros(std::uint64_t n) {
    static constexpr std::array<std::byte, 65536> z{};
    while (n) {
      const auto k = static_cast<std::size_t>(std::min<std::uint64_t>(n, z.size()));
      write(z.data(), k);
      n -= k;
    }
  }
  // Human-readable destination for error messages.
  virtual std::string describe() const { return "<memory>"; }
};

class MemorySink final : public ByteSink {
public:
  void write(const void* data, std::size_t n) override {
    const auto* p = static_cast<const std::byte*>(data);
    bytes.insert(bytes.end(), p, p + n);
  }
  std::vector<std::byte> bytes;
};

// Writes to "<path>.ckb-tmp-<pid>-<n>" and renames onto `path` in commit(); an uncommitted sink
// (exception, early return) deletes its temporary on destruction, so no half-written file is left.
class AtomicFileSink final : public ByteSink {
public:
  explicit AtomicFileSink(std::string path, bool fsync_on_commit = true)
      : path_(std::move(path)), fsync_(fsync_on_commit) {
    static std::atomic<unsigned> counter{0};
    tmp_ = path_ + ".ckb-tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(path_, ": cannot create temporary file ", tmp_, ": ", std::strerror(errno));
    buf_.reserve(kBuf);
  }
  AtomicFileSink(const AtomicFileSink&) = delete;
  AtomicFileSink& operator=(const AtomicFileSink&) = delete;
  ~AtomicFileSink() override {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  void write(const void* data, std::size_t n) override {
    const auto* p = static_cast<const char*>(data);
    if (buf_.size() + n <= kBuf) {
      buf_.insert(buf_.end(), p, p + n);
      return;
    }
    flush();
    if (n >= kBuf) raw_write(p, n);
    else buf_.insert(buf_.end(), p, p + n);
  }
  void write_zeros(std::uint64_t n) override {
    flush();
    if (::lseek(fd_, static_cast<off_t>(n), SEEK_CUR) < 0) fail(path_, ": seek failed: ", std::strerror(errno));
  }
  std::string describe() const override { return path_; }

  void commit() {
    if (committed_) fail(path_, ": already committed");
    flush();
    if (fsync_ && ::fsync(fd_) != 0) fail(path_, ": fsync failed: ", std::strerror(errno));
    if (::close(fd_) != 0) {
      fd_ = -1;
      fail(path_, ": close failed: ", std::strerror(errno));
    }
    fd_ = -1;
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail(path_, ": rename from ", tmp_, " failed: ", std::strerror(errno));
    committed_ = true;
  }
  const std::string& path() const { return path_; }

private:
  static constexpr std::size_t kBuf = std::size_t(1) << 20;
  void flush() {
    if (!buf_.empty()) raw_write(buf_.data(), buf_.size());
    buf_.clear();
  }
  void raw_write(const char* p, std::size_t n) {
    while (n) {
      const ssize_t w = ::write(fd_, p, std::min<std::size_t>(n, std::size_t(1) << 30));
      if (w < 0) {
        if (errno == EINTR) continue;
        fail(path_, ": write failed: ", std::strerror(errno));
      }
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }
  std::string path_, tmp_;
  bool fsync_;
  int fd_ = -1;
  bool committed_ = false;
  std::vector<char> buf_;
};

// CRC-32 of a buffer on up to `threads` threads (ckbridge::crc32_update, the reader's: carry-less
// multiply where the CPU has it; slices combined with zlib's crc32_combine).
inline std::uint32_t parallel_crc32(const void* data, std::size_t n, unsigned threads) {
  const auto* p = static_cast<const std::byte*>(data);
  constexpr std::size_t kMinSlice = std::size_t(8) << 20;
  threads = static_cast<unsigned>(std::max<std::size_t>(1, std::min<std::size_t>(threads, n / kMinSlice)));
  if (threads <= 1) return crc32_update(0, p, n);
  std::vector<uLong> part(threads);
  std::vector<std::thread> pool;
  const std::size_t slice = n / threads;
  for (unsigned t = 0; t < threads; ++t) {
    const std::size_t b = t * slice, e = t + 1 == threads ? n : b + slice;
    pool.emplace_back([&part, p, b, e, t] { part[t] = crc32_update(0, p + b, e - b); });
  }
  for (auto& th : pool) th.join();
  uLong c = part[0];
  for (unsigned t = 1; t < threads; ++t) {
    const std::size_t len = t + 1 == threads ? n - t * slice : slice;
    c = ::crc32_combine(c, part[t], static_cast<z_off_t>(len));
  }
  return static_cast<std::uint32_t>(c);
}

// ------------------------------------------------------------------------------------ layout
namespace zip_detail {
inline constexpr std::uint64_t kMax32 = 0xFFFFFFFFull;
inline constexpr std::uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kDescSig = 0x08074b50,
                               kEocdSig = 0x06054b50, kZip64EocdSig = 0x06064b50, kZip64LocSig = 0x07064b50;

struct Buf {
  std::vector<std::uint8_t> b;
  void u16(std::uint64_t v) { for (int i = 0; i < 2; ++i) b.push_back(std::uint8_t(v >> (8 * i))); }
  void u32(std::uint64_t v) { for (int i = 0; i < 4; ++i) b.push_back(std::uint8_t(v >> (8 * i))); }
  void u64(std::uint64_t v) { for (int i = 0; i < 8; ++i) b.push_back(std::uint8_t(v >> (8 * i))); }
  void str(std::string_view s) { b.insert(b.end(), s.begin(), s.end()); }
};
}  // namespace zip_detail

// Pure functions of (header offset, name length, size): the whole file layout can be computed
// before writing (torch's loader does the same when `.format_version` is present).
struct ZipRecordLayout {
  bool zip64 = false;            // local zip64 extra + 24-byte descriptor
  std::uint32_t zip64_extra = 0; // bytes of the local zip64 extra (0, 12, 20 or 28)
  std::uint32_t pad = 0;         // 'Z' bytes inside the FB extra
  std::uint64_t data_offset = 0; // absolute offset of the record's first data byte
  std::uint32_t descriptor = 0;  // 0, 16 or 24
  std::uint64_t end = 0;         // offset just past the descriptor
};

inline ZipRecordLayout zip_record_layout(std::uint64_t header_offset, std::size_t name_len, std::uint64_t size,
                                         std::uint32_t alignment) {
  using zip_detail::kMax32;
  ZipRecordLayout L;
  const bool big_size = size >= kMax32, big_off = header_offset >= kMax32;
  L.zip64 = big_size || big_off;
  if (L.zip64) L.zip64_extra = 4 + (big_size ? 16 : 0) + (big_off ? 8 : 0);
  std::uint64_t start = header_offset + 30 + name_len + L.zip64_extra;
  if (alignment) {
    start += 4;  // FB extra header
    L.pad = static_cast<std::uint32_t>((alignment - start % alignment) % alignment);
  }
  L.data_offset = start + L.pad;
  L.descriptor = size == 0 ? 0 : (L.zip64 ? 24 : 16);
  L.end = L.data_offset + size + L.descriptor;
  return L;
}

// ------------------------------------------------------------------------------------ writer
class ZipWriter {
public:
  struct Options {
    std::uint32_t alignment = 64;  // torch's default `.storage_alignment`; 0 = no FB padding
    bool crc = true;               // false: CRC fields 0 (torch's set_crc32_options(False))
  };
  struct Entry {
    std::string name;
    std::uint32_t crc = 0;
    std::uint64_t size = 0;
    std::uint64_t header_offset = 0;
  };

  explicit ZipWriter(ByteSink& sink) : ZipWriter(sink, Options{}) {}
  ZipWriter(ByteSink& sink, Options opt) : sink_(sink), opt_(opt) {
    if (opt_.alignment > 0x8000) fail(sink_.describe(), ": zip alignment ", opt_.alignment, " too large");
  }

  std::uint64_t offset() const { return pos_; }
  const std::vector<Entry>& entries() const { return entries_; }
  // Combined CRCs of the records written so far (torch's serialization_id input).
  std::uint64_t combined_crc_hash() const { return crc_hash_; }

  void begin_record(std::string_view name, std::uint64_t size) {
    if (open_) fail(sink_.describe(), ": zip record '", name, "' started while '", cur_.name, "' is still open");
    if (finished_) fail(sink_.describe(), ": zip record '", name, "' added after the archive was finished");
    if (name.empty() || name.size() > 0xFFFF) fail(sink_.describe(), ": invalid zip record name '", name, "'");
    if (!names_.emplace(name).second) fail(sink_.describe(), ": zip record '", name, "' written twice");
    cur_ = Entry{std::string(name), 0, size, pos_};
    layout_ = zip_record_layout(pos_, name.size(), size, opt_.alignment);
    written_ = 0;
    deferred_ = 0;
    crc_ = 0;

    zip_detail::Buf h;
    h.u32(zip_detail::kLocalSig);
    h.u16(0);                          // version needed (miniz: 0 for stored)
    h.u16(size ? 0x0808 : 0x0800);     // data descriptor + UTF-8 names
    h.u16(0);                          // stored
    h.u16(0); h.u16(0);                // DOS time, date
    h.u32(0); h.u32(0); h.u32(0);      // CRC and sizes: in the descriptor
    h.u16(name.size());
    h.u16(layout_.zip64_extra + (opt_.alignment ? 4 + layout_.pad : 0));
    h.str(name);
    if (layout_.zip64) {
      h.u16(1);
      h.u16(layout_.zip64_extra - 4);
      if (size >= zip_detail::kMax32) { h.u64(size); h.u64(0); }  // miniz: compressed size unknown yet
      if (pos_ >= zip_detail::kMax32) h.u64(pos_);
    }
    if (opt_.alignment) {
      h.u16(0x4246);  // "FB"
      h.u16(layout_.pad);
      h.b.insert(h.b.end(), layout_.pad, 'Z');
    }
    emit(h.b.data(), h.b.size());
    open_ = true;
  }

  void write(const void* data, std::size_t n) {
    check_room(n);
    if (opt_.crc && n) crc_ = static_cast<uLong>(crc32_update(static_cast<std::uint32_t>(crc_), static_cast<const std::byte*>(data), n));
    emit(data, n);
    written_ += n;
  }
  void write(std::span<const std::byte> s) { write(s.data(), s.size()); }
  // Appends bytes whose CRC-32 the caller supplies afterwards through fold_crc (computed on other
  // threads while these bytes are written). Nothing else may be written in between.
  void write_deferred_crc(const void* data, std::size_t n) {
    check_room(n);
    emit(data, n);
    written_ += n;
    deferred_ += n;
  }
  void fold_crc(std::uint32_t crc_of_data, std::uint64_t n) {
    if (n != deferred_)
      fail(sink_.describe(), ": zip record '", cur_.name, "': CRC folded for ", n, " bytes, ", deferred_, " pending");
    deferred_ = 0;
    if (opt_.crc && n) crc_ = ::crc32_combine(crc_, crc_of_data, static_cast<z_off_t>(n));
  }
  bool crc_enabled() const { return opt_.crc; }

  // n zero bytes (sparse on file sinks); the CRC is extended without touching memory.
  void write_zeros(std::uint64_t n) {
    check_room(n);
    if (opt_.crc && n) {
      static const std::vector<Bytef> zeros(std::size_t(1) << 20, 0);
      static const uLong zcrc = crc32_update(0, reinterpret_cast<const std::byte*>(zeros.data()), zeros.size());
      std::uint64_t left = n;
      while (left >= zeros.size()) {
        crc_ = ::crc32_combine(crc_, zcrc, static_cast<z_off_t>(zeros.size()));
        left -= zeros.size();
      }
      if (left)
        crc_ = crc32_update(static_cast<std::uint32_t>(crc_), reinterpret_cast<const std::byte*>(zeros.data()),
                            static_cast<std::size_t>(left));
    }
    sink_.write_zeros(n);
    pos_ += n;
    written_ += n;
  }

  void end_record() {
    if (!open_) fail(sink_.describe(), ": end_record without an open zip record");
    if (deferred_) fail(sink_.describe(), ": zip record '", cur_.name, "' ended before its deferred CRC was folded");
    if (written_ != cur_.size)
      fail(sink_.describe(), ": zip record '", cur_.name, "' declared ", cur_.size, " bytes but ", written_,
           " were written");
    cur_.crc = opt_.crc && cur_.size ? static_cast<std::uint32_t>(crc_) : 0;
    if (cur_.size) {
      zip_detail::Buf d;
      d.u32(zip_detail::kDescSig);
      d.u32(cur_.crc);
      if (layout_.zip64) { d.u64(cur_.size); d.u64(cur_.size); }
      else { d.u32(cur_.size); d.u32(cur_.size); }
      emit(d.b.data(), d.b.size());
      // PyTorchStreamWriter folds every descriptor CRC into its serialization id.
      crc_hash_ = hash_combine(crc_hash_, cur_.crc);
    }
    entries_.push_back(cur_);
    open_ = false;
  }

  void add_record(std::string_view name, std::span<const std::byte> data) {
    begin_record(name, data.size());
    write(data);
    end_record();
  }
  void add_record(std::string_view name, std::string_view text) {
    add_record(name, std::as_bytes(std::span<const char>(text.data(), text.size())));
  }

  // Central directory + zip64 end record + locator + end record.
  void finish() {
    if (open_) fail(sink_.describe(), ": finish() while zip record '", cur_.name, "' is open");
    if (finished_) fail(sink_.describe(), ": zip archive finished twice");
    using zip_detail::kMax32;
    const std::uint64_t cd_start = pos_;
    for (const auto& e : entries_) {
      zip_detail::Buf c;
      const bool bs = e.size >= kMax32, bo = e.header_offset >= kMax32;
      const std::uint32_t n64 = (bs ? 2 : 0) + (bo ? 1 : 0);
      c.u32(zip_detail::kCentralSig);
      c.u16(0); c.u16(0);                       // made by, needed
      c.u16(e.size ? 0x0808 : 0x0800);
      c.u16(0); c.u16(0); c.u16(0);             // method, time, date
      c.u32(e.crc);
      c.u32(std::min(e.size, kMax32)); c.u32(std::min(e.size, kMax32));
      c.u16(e.name.size());
      c.u16(n64 ? 4 + 8 * n64 : 0);
      c.u16(0); c.u16(0); c.u16(0); c.u32(0);   // comment len, disk, internal, external attrs
      c.u32(std::min(e.header_offset, kMax32));
      c.str(e.name);
      if (n64) {
        c.u16(1);
        c.u16(8 * n64);
        if (bs) { c.u64(e.size); c.u64(e.size); }
        if (bo) c.u64(e.header_offset);
      }
      emit(c.b.data(), c.b.size());
    }
    const std::uint64_t cd_size = pos_ - cd_start, n = entries_.size();
    const std::uint64_t z64 = pos_;
    zip_detail::Buf t;
    t.u32(zip_detail::kZip64EocdSig);
    t.u64(44);
    t.u16(0x031E); t.u16(45);
    t.u32(0); t.u32(0);
    t.u64(n); t.u64(n); t.u64(cd_size); t.u64(cd_start);
    t.u32(zip_detail::kZip64LocSig);
    t.u32(0); t.u64(z64); t.u32(1);
    t.u32(zip_detail::kEocdSig);
    t.u16(0); t.u16(0);
    t.u16(std::min<std::uint64_t>(n, 0xFFFF)); t.u16(std::min<std::uint64_t>(n, 0xFFFF));
    t.u32(std::min(cd_size, kMax32)); t.u32(std::min(cd_start, kMax32));
    t.u16(0);
    emit(t.b.data(), t.b.size());
    finished_ = true;
  }
  bool finished() const { return finished_; }

  static std::uint64_t hash_combine(std::uint64_t seed, std::uint64_t v) {
    return seed ^ (v + 0x9e3779b9ull + (seed << 6) + (seed >> 2));
  }

private:
  void check_room(std::uint64_t n) const {
    if (!open_) fail(sink_.describe(), ": zip data written outside a record");
    if (deferred_) fail(sink_.describe(), ": zip record '", cur_.name, "': write before the deferred CRC was folded");
    if (written_ + n > cur_.size)
      fail(sink_.describe(), ": zip record '", cur_.name, "' overflows its declared size ", cur_.size);
  }
  void emit(const void* p, std::size_t n) {
    sink_.write(p, n);
    pos_ += n;
  }

  ByteSink& sink_;
  Options opt_;
  std::vector<Entry> entries_;
  std::unordered_set<std::string> names_;
  Entry cur_;
  ZipRecordLayout layout_;
  std::uint64_t pos_ = 0, written_ = 0, crc_hash_ = 0, deferred_ = 0;
  uLong crc_ = 0;
  bool open_ = false, finished_ = false;
};

}  // namespace ckbridge::format

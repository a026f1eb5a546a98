#pragma once
// Reader for the ZIP container torch.save writes (file-formats.md §1). Central-directory driven,
// zero-copy: record bytes are spans into a read-only mapping of the file. Only STORED (method 0)
// records are served: torch never compresses, and a compressed record read through mmap would
// give silently wrong tensors. Every offset and size is checked against the file before use.
#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ckbridge/core/crc32.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/mapped_file.hpp"

namespace ckbridge::format {

struct ZipRecord {
  std::string name;            // full name as stored, e.g. "model_optim_rng/data/0"
  std::uint64_t header_offset = 0;
  std::uint64_t data_offset = 0;  // first byte of the record's data in the file
  std::uint64_t size = 0;         // uncompressed == stored size
  std::uint32_t crc32 = 0;        // from the central directory
  std::uint16_t method = 0;
  std::uint16_t flags = 0;
};

struct ZipReadOptions {
  bool verify_crc = false;         // CRC-check every record when opening (reads the whole file)
  bool require_torch_layout = true;  // one top-level folder holding data.pkl and version
  bool verify_crc_on_read = true;  // TorchFile: CRC-check each record the first time its bytes are taken
};

namespace detail {
inline std::uint16_t rd16(const std::byte* p) {
  return static_cast<std::uint16_t>(std::to_integer<unsigned>(p[0]) | (std::to_integer<unsigned>(p[1]) << 8));
}
inline std::uint32_t rd32(const std::byte* p) { return rd16(p) | (static_cast<std::uint32_t>(rd16(p + 2)) << 16); }
inline std::uint64_t rd64(const std::byte* p) { return rd32(p) | (static_cast<std::uint64_t>(rd32(p + 4)) << 32); }
inline std::uint32_t crc32_of(std::span<const std::byte> s) { return ckbridge::crc32_of(s); }
}  // namespace detail

class TorchZipReader {
public:
  // Maps `path` read-only and indexes it.
  explicit TorchZipReader(const std::filesystem::path& path, ZipReadOptions opts = {})
      : file_(std::make_unique<MappedFile>(path)), name_(path.string()) {
    data_ = file_->data();
    size_ = file_->size();
    // Indexing reads the central directory and every record's local header, scattered over the
    // file: no read-ahead of the tensor data around each (often MBs), then normal access.
    file_->advise_random(0, size_);
    index(opts);
    file_->advise_normal(0, size_);
  }
  // Non-owning: indexes bytes that outlive the reader (nested archives, fuzzing). `name` is
  // used in error messages.
  TorchZipReader(std::span<const std::byte> bytes, std::string name, ZipReadOptions opts = {})
      : name_(std::move(name)), data_(bytes.data()), size_(bytes.size()) {
    index(opts);
  }
  TorchZipReader(const TorchZipReader&) = delete;
  TorchZipReader& operator=(const TorchZipReader&) = delete;
  TorchZipReader(TorchZipReader&&) noexcept = default;
  TorchZipReader& operator=(TorchZipReader&&) noexcept = default;

  const std::string& file_name() const { return name_; }
  // Top-level folder every record lives in ("model_optim_rng", "archive", ...), no slash.
  const std::string& prefix() const { return prefix_; }
  const std::vector<ZipRecord>& records() const { return records_; }
  std::span<const std::byte> file_bytes() const { return {data_, size_}; }
  const MappedFile* mapped_file() const { return file_.get(); }

  // Lookups take the name below the prefix ("data.pkl", "data/0", "version").
  bool has(std::string_view rel) const { return find(rel) != nullptr; }
  const ZipRecord* find(std::string_view rel) const {
    auto it = by_name_.find(std::string(rel));
    return it == by_name_.end() ? nullptr : &records_[it->second];
  }
  const ZipRecord& record(std::string_view rel) const {
    if (const ZipRecord* r = find(rel)) return *r;
    fail(name_, ": no record '", prefix_, "/", rel, "' in the archive");
  }
  std::span<const std::byte> bytes(std::string_view rel) const { return bytes(record(rel)); }
  std::span<const std::byte> bytes(const ZipRecord& r) const { return {data_ + r.data_offset, static_cast<std::size_t>(r.size)}; }
  std::string text(std::string_view rel) const {
    auto b = bytes(rel);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }

  void verify_crc(const ZipRecord& r) const {
    const std::uint32_t c = detail::crc32_of(bytes(r));
    if (c != r.crc32)
      fail(name_, ": CRC-32 mismatch in record '", r.name, "' (data at offset ", r.data_offset, "): stored 0x", std::hex,
           r.crc32, ", computed 0x", c);
  }
  void verify_all_crcs() const {
    for (const auto& r : records_) verify_crc(r);
  }

  // File format version from `version` or `.data/version` (torch writes 3).
  int format_version() const {
    const ZipRecord* r = find(".data/version");
    if (!r) r = find("version");
    if (!r) fail(name_, ": no 'version' record");
    const std::string t = text_of(*r);
    std::int64_t v = 0;
    std::size_t i = 0;
    for (; i < t.size() && t[i] >= '0' && t[i] <= '9' && v < 1000000; ++i) v = v * 10 + (t[i] - '0');
    if (i == 0) fail(name_, ": record '", r->name, "' does not hold a version number");
    return static_cast<int>(v);
  }
  bool little_endian() const {
    const ZipRecord* r = find("byteorder");
    return !r || text_of(*r) == "little";
  }

private:
  std::string text_of(const ZipRecord& r) const {
    auto b = bytes(r);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }
  std::span<const std::byte> at(std::uint64_t off, std::uint64_t len, const char* what) const {
    if (off > size_ || len > size_ - off)
      fail(name_, ": ", what, " at offset ", off, " (", len, " bytes) runs past the end of the file (", size_, " bytes)");
    return {data_ + off, static_cast<std::size_t>(len)};
  }

  void index(const ZipReadOptions& opts) {
    static constexpr unsigned char kLegacyMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20};
    if (size_ < 22) fail(name_, ": ", size_, " bytes is too short for a torch.save zip archive");
    if (detail::rd32(data_) != 0x04034b50) {
      if (size_ >= sizeof kLegacyMagic && std::equal(kLegacyMagic, kLegacyMagic + sizeof kLegacyMagic,
                                                     reinterpret_cast<const unsigned char*>(data_)))
        fail(name_, ": legacy (pre-1.6) torch.save format is not supported; re-save it with a newer torch");
      if (size_ >= 8 && std::string_view(reinterpret_cast<const char*>(data_), 8) == "PYTORCH1")
        fail(name_, ": TorchScript/PYTORCH1 archive is not a torch.save checkpoint");
      fail(name_, ": not a torch.save zip archive (no 'PK\\x03\\x04' at offset 0)");
    }
    // 1. End of central directory: scan back over at most a maximal comment.
    const std::uint64_t scan_lo = size_ >= 22 + 65535 ? size_ - 22 - 65535 : 0;
    std::uint64_t eocd = UINT64_MAX;
    for (std::uint64_t p = size_ - 22 + 1; p-- > scan_lo;) {
      if (detail::rd32(data_ + p) == 0x06054b50) {
        eocd = p;
        break;
      }
    }
    if (eocd == UINT64_MAX)
      fail(name_, ": no zip end-of-central-directory record in the last ", size_ - scan_lo, " bytes (truncated file?)");
    const std::byte* e = data_ + eocd;
    std::uint64_t entries = detail::rd16(e + 10);
    std::uint64_t cd_size = detail::rd32(e + 12);
    std::uint64_t cd_off = detail::rd32(e + 16);
    if (detail::rd16(e + 4) != 0 || detail::rd16(e + 6) != 0)
      fail(name_, ": multi-disk zip archives are not supported (end record at offset ", eocd, ")");
    const bool has_locator = eocd >= 20 && detail::rd32(data_ + eocd - 20) == 0x07064b50;
    if (has_locator || entries == 0xFFFF || cd_size == 0xFFFFFFFF || cd_off == 0xFFFFFFFF) {
      if (!has_locator) fail(name_, ": zip64 end record needed but no zip64 locator before offset ", eocd);
      const std::uint64_t z64 = detail::rd64(data_ + eocd - 20 + 8);
      auto r = at(z64, 56, "zip64 end-of-central-directory record");
      if (detail::rd32(r.data()) != 0x06064b50) fail(name_, ": bad zip64 end record signature at offset ", z64);
      entries = detail::rd64(r.data() + 32);
      cd_size = detail::rd64(r.data() + 40);
      cd_off = detail::rd64(r.data() + 48);
    }
    at(cd_off, cd_size, "central directory");
    if (entries > cd_size / 46)
      fail(name_, ": central directory at offset ", cd_off, " claims ", entries, " entries in ", cd_size, " bytes");

    // 2. Central directory entries.
    records_.reserve(static_cast<std::size_t>(entries));
    std::uint64_t p = cd_off;
    const std::uint64_t cd_end = cd_off + cd_size;
    for (std::uint64_t i = 0; i < entries; ++i) {
      if (cd_end - p < 46) fail(name_, ": central directory entry ", i, " at offset ", p, " is truncated");
      const std::byte* c = data_ + p;
      if (detail::rd32(c) != 0x02014b50) fail(name_, ": bad central directory signature at offset ", p, " (entry ", i, ")");
      ZipRecord rec;
      rec.flags = detail::rd16(c + 8);
      rec.method = detail::rd16(c + 10);
      rec.crc32 = detail::rd32(c + 16);
      std::uint64_t csize = detail::rd32(c + 20);
      rec.size = detail::rd32(c + 24);
      const std::uint16_t nlen = detail::rd16(c + 28), xlen = detail::rd16(c + 30), clen = detail::rd16(c + 32);
      rec.header_offset = detail::rd32(c + 42);
      const std::uint64_t total = 46ull + nlen + xlen + clen;
      if (cd_end - p < total) fail(name_, ": central directory entry ", i, " at offset ", p, " runs past the directory");
      rec.name.assign(reinterpret_cast<const char*>(c + 46), nlen);
      // zip64 extra: only the fields that overflowed, in the order usize, csize, offset.
      const std::byte* x = c + 46 + nlen;
      for (std::uint32_t q = 0; q + 4 <= xlen;) {
        const std::uint16_t id = detail::rd16(x + q), len = detail::rd16(x + q + 2);
        if (q + 4u + len > xlen) fail(name_, ": extra field of '", rec.name, "' overruns its entry at offset ", p);
        if (id == 1) {
          std::uint32_t k = q + 4;
          auto take = [&](std::uint64_t& v) {
            if (k + 8 > q + 4u + len) fail(name_, ": zip64 extra of '", rec.name, "' is too short (offset ", p, ")");
            v = detail::rd64(x + k);
            k += 8;
          };
          if (rec.size == 0xFFFFFFFF) take(rec.size);
          if (csize == 0xFFFFFFFF) take(csize);
          if (rec.header_offset == 0xFFFFFFFF) take(rec.header_offset);
        }
        q += 4u + len;
      }
      if (rec.flags & 1) fail(name_, ": record '", rec.name, "' (central directory offset ", p, ") is encrypted");
      if (rec.method != 0)
        fail(name_, ": record '", rec.name, "' (central directory offset ", p, ") is compressed (method ", rec.method,
             "); only stored records are supported, as torch.save writes them");
      if (csize != rec.size)
        fail(name_, ": stored record '", rec.name, "' (central directory offset ", p, ") has compressed size ", csize,
             " != size ", rec.size);
      // 3. Local header: its own name/extra lengths locate the data.
      auto lh = at(rec.header_offset, 30, "local file header");
      if (detail::rd32(lh.data()) != 0x04034b50)
        fail(name_, ": no local file header for '", rec.name, "' at offset ", rec.header_offset);
      const std::uint16_t lnlen = detail::rd16(lh.data() + 26), lxlen = detail::rd16(lh.data() + 28);
      auto ln = at(rec.header_offset + 30, lnlen, "local file name");
      if (std::string_view(reinterpret_cast<const char*>(ln.data()), lnlen) != rec.name)
        fail(name_, ": local header at offset ", rec.header_offset, " names a different record than '", rec.name, "'");
      rec.data_offset = rec.header_offset + 30 + lnlen + lxlen;
      at(rec.data_offset, rec.size, ("data of record '" + rec.name + "'").c_str());
      if (rec.data_offset + rec.size > cd_off && rec.data_offset < cd_off + cd_size)
        fail(name_, ": data of record '", rec.name, "' at offset ", rec.data_offset, " overlaps the central directory");
      records_.push_back(std::move(rec));
      p += total;
    }
    if (records_.empty()) fail(name_, ": empty zip archive");

    // 4. Prefix = first name up to '/', and every record must live under it.
    const std::string& first = records_.front().name;
    const auto slash = first.find('/');
    if (slash == std::string::npos || slash == 0) {
      if (opts.require_torch_layout) fail(name_, ": record '", first, "' is not inside a top-level folder");
    } else {
      prefix_ = first.substr(0, slash);
    }
    for (std::size_t i = 0; i < records_.size(); ++i) {
      const std::string& n = records_[i].name;
      std::string rel = n;
      if (!prefix_.empty()) {
        if (n.size() <= prefix_.size() || n.compare(0, prefix_.size(), prefix_) != 0 || n[prefix_.size()] != '/') {
          if (opts.require_torch_layout) fail(name_, ": record '", n, "' is outside the archive folder '", prefix_, "/'");
          continue;
        }
        rel = n.substr(prefix_.size() + 1);
      }
      if (!by_name_.emplace(rel, i).second)
        fail(name_, ": duplicate record '", n, "' (local header at offset ", records_[i].header_offset, ")");
    }
    if (opts.require_torch_layout) {
      if (has("constants.pkl")) fail(name_, ": TorchScript archive (constants.pkl) is not a torch.save checkpoint");
      if (!has("data.pkl")) fail(name_, ": no '", prefix_, "/data.pkl' record: not a torch.save archive");
      if (!has("version") && !has(".data/version")) fail(name_, ": no '", prefix_, "/version' record");
      if (!little_endian()) fail(name_, ": big-endian torch.save archives are not supported");
    }
    if (opts.verify_crc) verify_all_crcs();
  }

  std::unique_ptr<MappedFile> file_;
  std::string name_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::string prefix_;
  std::vector<ZipRecord> records_;
  std::unordered_map<std::string, std::size_t> by_name_;
};

}  // namespace ckbridge::format

#pragma once
// `ckbridge-manifest.json`: what a conversion wrote, to be checked later without the source.
// For every output file its size and SHA-256, and for every tensor in it the SHA-256 of its
// bytes (safetensors: each tensor's byte range; torch.save rank files: each tensor's elements in
// C order, a TE FP8 tensor as its `:data` and `:scale_inv`), plus the tool version, the
// arguments, the run fingerprint and a fingerprint of the source.
//
// Every file also carries its XXH3-128 (xxHash): checking a checkpoint for accidental damage
// (truncated, flipped, swapped files) runs at the speed of reading it, where SHA-256 is bound
// to ~1.5 GB/s per core; SHA-256 stays for checks against deliberate change and for `sha256sum`.
//
// Hashing uses OpenSSL's libcrypto (SHA-256 with the CPU's SHA extensions where present) and
// libxxhash: link the `ckbridge::manifest` CMake target, which adds both; nothing else in ckbridge
// needs them.
#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include "ckbridge/core/error.hpp"
#include "ckbridge/core/mapped_file.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/format/megatron_reader.hpp"
#include "ckbridge/format/safetensors_file.hpp"

namespace ckbridge::manifest {

inline constexpr const char* kFileName = "ckbridge-manifest.json";
inline constexpr const char* kVersion = "0.1.0";

class Sha256 {
public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) fail("SHA-256: cannot initialise libcrypto");
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* p, std::size_t n) {
    if (n && EVP_DigestUpdate(ctx_, p, n) != 1) fail("SHA-256: update failed");
  }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx_, md, &len) != 1) fail("SHA-256: final failed");
    static const char* d = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < len; ++i) s += d[md[i] >> 4], s += d[md[i] & 15];
    return s;
  }

private:
  EVP_MD_CTX* ctx_;
};

// XXH3-128 (xxHash), as its canonical big-endian hex (what `xxhsum -H2` and Python's
// xxhash.xxh3_128_hexdigest print).
class Xxh3 {
public:
  Xxh3() : st_(XXH3_createState()) {
    if (!st_ || XXH3_128bits_reset(st_) != XXH_OK) fail("XXH3-128: cannot initialise libxxhash");
  }
  ~Xxh3() { XXH3_freeState(st_); }
  Xxh3(const Xxh3&) = delete;
  Xxh3& operator=(const Xxh3&) = delete;
  void update(const void* p, std::size_t n) {
    if (n && XXH3_128bits_update(st_, p, n) != XXH_OK) fail("XXH3-128: update failed");
  }
  std::string hex() {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st_));
    static const char* d = "0123456789abcdef";
    std::string s;
    for (unsigned char b : c.digest) s += d[b >> 4], s += d[b & 15];
    return s;
  }

private:
  XXH3_state_t* st_;
};

// SHA-256 of a byte range, fed in 16 MiB pieces (memory-mapped pages are read once).
inline std::string sha256_hex(std::span<const std::byte> b) {
  Sha256 h;
  constexpr std::size_t kStep = 16u << 20;
  for (std::size_t o = 0; o < b.size(); o += kStep) h.update(b.data() + o, std::min(kStep, b.size() - o));
  return h.hex();
}

// SHA-256 of a view's elements in C order.
inline std::string sha256_hex(const AnyConstView& v) {
  if (v.is_contiguous()) return sha256_hex(std::span<const std::byte>(v.data, v.size_bytes()));
  const Tensor t = Tensor::copy_of(v);
  return sha256_hex(std::span<const std::byte>(t.data(), t.size_bytes()));
}

struct TensorHash {
  std::string name, sha256;
  std::uint64_t bytes = 0;
};

struct FileEntry {
  std::string rel;  // relative to the checkpoint root, '/'-separated
  std::uint64_t size = 0;
  std::string sha256;
  std::string xxh3;  // XXH3-128; empty in manifests written before it was added
  std::vector<TensorHash> tensors;
};

// Which digests of a whole file to take.
enum class Digests { sha256 = 1, xxh3 = 2, both = 3 };

struct FileDigests {
  std::string sha256, xxh3;  // empty where not asked for
};

// Feeds the same bytes to the digests asked for.
class FileHasher {
public:
  explicit FileHasher(Digests which) {
    if (static_cast<int>(which) & 1) s_.emplace();
    if (static_cast<int>(which) & 2) x_.emplace();
  }
  void update(const void* p, std::size_t n) {
    if (s_) s_->update(p, n);
    if (x_) x_->update(p, n);
  }
  FileDigests result() { return {s_ ? s_->hex() : std::string(), x_ ? x_->hex() : std::string()}; }

private:
  std::optional<Sha256> s_;
  std::optional<Xxh3> x_;
};

// Bytes hashed at a time: each piece goes to every digest while it is in the CPU's cache.
inline constexpr std::size_t kPiece = 1u << 20;

// The digests of a whole file, read front to back with read(2) into one piece-sized buffer (a
// warm page cache is copied at memory speed, as `cat` does; a cold one is read ahead by the
// kernel, told the access is sequential).
inline FileDigests file_digests(const std::filesystem::path& path, Digests which) {
  FileHasher h(which);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path.string(), ": cannot open: ", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  const std::unique_ptr<std::byte[]> buf(new std::byte[kPiece]);
  for (;;) {
    const ssize_t n = ::read(fd, buf.get(), kPiece);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(path.string(), ": read failed: ", std::strerror(errno));
    }
    if (n == 0) break;
    h.update(buf.get(), static_cast<std::size_t>(n));
  }
  return h.result();
}

// The manifest entry of a file with no tensors whose bytes the caller holds (e.g. the tracker).
inline FileEntry bytes_entry(std::string rel, std::span<const std::byte> b) {
  FileHasher h(Digests::both);
  h.update(b.data(), b.size());
  FileDigests d = h.result();
  return {std::move(rel), b.size(), std::move(d.sha256), std::move(d.xxh3), {}};
}

namespace detail {

// A tensor of a file as the manifest names it: its bytes where the file's mapping holds them in
// C order (`span`), else a view of them to hash through a copy.
struct TensorSource {
  std::string name;
  std::uint64_t bytes = 0;
  std::span<const std::byte> span;
  std::optional<AnyConstView> view;
};

// Opens `path` and calls fn(map, tensors): the file's mapping (null when it is not mapped) and the
// tensors it holds, as the manifest names them, while the file is open. Files that are neither
// safetensors nor torch.save (by extension) have none and no mapping; a torch.save file that does
// not parse as a Megatron rank file throws.
template <class Fn>
void with_file_tensors(const std::filesystem::path& path, Fn&& fn) {
  std::vector<TensorSource> ts;
  auto add = [&](std::string name, const AnyConstView& v) {
    TensorSource t{std::move(name), v.size_bytes(), {}, std::nullopt};
    if (v.is_contiguous()) t.span = std::span<const std::byte>(v.data, v.size_bytes());
    else t.view = v;
    ts.push_back(std::move(t));
  };
  const std::string ext = path.extension().string();
  if (ext == ".safetensors") {
    const safetensors::File f(path);
    for (const auto& t : f.tensors()) ts.push_back({t.name, t.size_bytes(), f.bytes(t), std::nullopt});
    fn(&f.mapped(), ts);
  } else if (ext == ".pt") {
    const format::MegatronRankFile f = format::load_megatron_rank_file(path);
    for (const auto& md : f.models)
      for (const auto& en : md.entries) {
        using K = format::ModelEntry::Kind;
        const std::string name = md.key + "/" + en.name;
        if (en.kind == K::Tensor && en.tensor) {
          add(name, f.view(*en.tensor, name, false));  // a damaged record shows as a differing hash
        } else if (en.kind == K::TeFp8Blockwise && en.fp8) {
          const auto tv = f.file->te_fp8_views(*en.fp8, name, false);
          add(name + ":data", tv.data);
          add(name + ":scale_inv", tv.scale_inv);
        }
      }
    fn(f.file->zip().mapped_file(), ts);
  } else {
    fn(static_cast<const MappedFile*>(nullptr), ts);
  }
}

inline std::string sha256_of(const TensorSource& t) { return t.view ? sha256_hex(*t.view) : sha256_hex(t.span); }

// The tensors a file holds, as the manifest names them, with their sizes; with `hash` also each
// one's SHA-256.
inline std::vector<TensorHash> file_tensors(const std::filesystem::path& path, bool hash) {
  std::vector<TensorHash> out;
  with_file_tensors(path, [&](const MappedFile* m, const std::vector<TensorSource>& ts) {
    for (const auto& t : ts) out.push_back({t.name, hash ? sha256_of(t) : std::string(), t.bytes});
    if (hash && m) m->release(0, m->size());
  });
  return out;
}

// One pass over a mapped file, front to back in cache-sized pieces: each piece goes to the file's
// SHA-256 and XXH3-128 and to the SHA-256 of every tensor whose bytes it holds (a tensor's bytes in
// the mapping are contiguous and in C order). Tensors outside the mapping or stored as strided
// views are hashed on their own. Returns the file's digests; fills each tensor's hash.
inline FileDigests hash_mapped(const MappedFile& m, const std::vector<TensorSource>& ts, std::vector<TensorHash>& out) {
  const std::byte* base = m.data();
  const std::size_t size = m.size();
  out.clear();
  for (const auto& t : ts) out.push_back({t.name, std::string(), t.bytes});
  std::vector<std::size_t> swept;  // tensors inside the mapping, by start
  for (std::size_t i = 0; i < ts.size(); ++i) {
    const auto& sp = ts[i].span;
    if (!ts[i].view && sp.data() >= base && sp.data() + sp.size() <= base + size) swept.push_back(i);
  }
  std::stable_sort(swept.begin(), swept.end(), [&](std::size_t a, std::size_t b) { return ts[a].span.data() < ts[b].span.data(); });
  FileHasher fh(Digests::both);
  std::vector<std::unique_ptr<Sha256>> th(ts.size());
  std::vector<std::size_t> active;
  std::size_t next = 0;
  // No read-ahead advice and no release per piece: the file was just written (its pages are in the
  // page cache), and each madvise(MADV_DONTNEED) would flush the TLBs of every thread of the
  // process; the whole mapping is released once at the end.
  for (std::size_t a = 0; a < size; a += kPiece) {
    const std::size_t b = std::min(a + kPiece, size);
    fh.update(base + a, b - a);
    for (; next < swept.size() && static_cast<std::size_t>(ts[swept[next]].span.data() - base) < b; ++next) {
      th[swept[next]] = std::make_unique<Sha256>();
      active.push_back(swept[next]);
    }
    for (std::size_t k = 0; k < active.size();) {
      const std::size_t i = active[k];
      const std::size_t s0 = static_cast<std::size_t>(ts[i].span.data() - base), s1 = s0 + ts[i].span.size();
      const std::size_t lo = std::max(a, s0), hi = std::min(b, s1);
      if (hi > lo) th[i]->update(base + lo, hi - lo);
      if (s1 <= b) {
        out[i].sha256 = th[i]->hex();
        th[i].reset();
        active[k] = active.back();
        active.pop_back();
      } else {
        ++k;
      }
    }
  }
  m.release(0, size);
  for (std::size_t i = 0; i < ts.size(); ++i)  // not swept (or empty at the very end of the file)
    if (out[i].sha256.empty()) out[i].sha256 = sha256_of(ts[i]);
  return fh.result();
}

// Runs job(i) for i in `order` on `threads` workers (the calling thread is one); the first
// exception is rethrown after all have stopped.
template <class Job>
void for_each_parallel(const std::vector<std::size_t>& order, int threads, Job&& job) {
  std::atomic<std::size_t> next{0};
  std::exception_ptr err;
  std::mutex mu;
  auto work = [&] {
    for (std::size_t k; (k = next++) < order.size();) {
      try {
        job(order[k]);
      } catch (...) {
        std::lock_guard lk(mu);
        if (!err) err = std::current_exception();
        next = order.size();
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  const int n = std::max(1, std::min(threads, static_cast<int>(order.size())));
  for (int t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (err) std::rethrow_exception(err);
}

// Indices of `sizes`, largest first (SHA-256 is sequential within a file, so files are the unit
// of parallel work; the largest first keeps the workers busy to the end).
inline std::vector<std::size_t> largest_first(const std::vector<std::uint64_t>& sizes) {
  std::vector<std::size_t> order(sizes.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sizes[a] > sizes[b]; });
  return order;
}

}  // namespace detail

// Hashes one file of a checkpoint: the whole file, and its tensors when it is a safetensors or a
// torch.save file (by extension).
inline FileEntry hash_file(const std::filesystem::path& root, const std::filesystem::path& rel) {
  FileEntry e;
  e.rel = rel.generic_string();
  const std::filesystem::path path = root / rel;
  std::error_code ec;
  e.size = std::filesystem::file_size(path, ec);
  if (ec) fail(path.string(), ": cannot stat: ", ec.message());
  if (e.size == 0) {
    FileDigests d = file_digests(path, Digests::both);
    e.sha256 = std::move(d.sha256);
    e.xxh3 = std::move(d.xxh3);
    return e;
  }
  // One pass over the file's pages for the file's digests and its tensors' (the file was just
  // written: its pages are in the page cache). A file the reader did not map whole (or that has no
  // tensors) is mapped here; its tensors outside that mapping are hashed on their own.
  detail::with_file_tensors(path, [&](const MappedFile* m, const std::vector<detail::TensorSource>& ts) {
    std::optional<MappedFile> own;
    if (!m || m->size() != e.size) m = &own.emplace(path);
    FileDigests d = detail::hash_mapped(*m, ts, e.tensors);
    e.sha256 = std::move(d.sha256);
    e.xxh3 = std::move(d.xxh3);
  });
  return e;
}

// Hashes `rels` with `threads` workers, largest files first; the result is in the order of `rels`.
// Files that `known` (optional) holds, by their '/'-separated path, are taken from it instead
// (hashed earlier, e.g. by the process that wrote them).
inline std::vector<FileEntry> hash_files(const std::filesystem::path& root, const std::vector<std::filesystem::path>& rels,
                                         int threads, const std::map<std::string, FileEntry>* known = nullptr) {
  std::vector<FileEntry> out(rels.size());
  std::vector<std::uint64_t> sizes(rels.size());
  for (std::size_t i = 0; i < rels.size(); ++i) {
    std::error_code ec;
    sizes[i] = std::filesystem::file_size(root / rels[i], ec);
    if (ec) sizes[i] = 0;  // hash_file reports it
  }
  detail::for_each_parallel(detail::largest_first(sizes), threads, [&](std::size_t i) {
    if (known)
      if (auto it = known->find(rels[i].generic_string()); it != known->end()) {
        out[i] = it->second;
        return;
      }
    out[i] = hash_file(root, rels[i]);
  });
  return out;
}

struct Manifest {
  std::string tool = "ckbridge";
  std::string version = kVersion;
  std::string fingerprint;                 // the run fingerprint (what the arguments and plan make)
  std::vector<std::string> arguments;      // the command line as given
  std::string source;                      // the source path
  std::string source_fingerprint;          // SHA-256 of the run's source description (sizes, mtimes, content samples)
  std::vector<FileEntry> files;

  std::string to_json() const {
    rapidjson::StringBuffer sb;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
    w.SetIndent(' ', 1);
    w.StartObject();
    w.Key("tool"); w.String(tool.c_str());
    w.Key("version"); w.String(version.c_str());
    w.Key("fingerprint"); w.String(fingerprint.c_str());
    w.Key("arguments"); w.StartArray();
    for (const auto& a : arguments) w.String(a.c_str(), static_cast<rapidjson::SizeType>(a.size()));
    w.EndArray();
    w.Key("source"); w.String(source.c_str());
    w.Key("source_fingerprint"); w.String(source_fingerprint.c_str());
    w.Key("files"); w.StartArray();
    for (const auto& f : files) {
      w.StartObject();
      w.Key("path"); w.String(f.rel.c_str());
      w.Key("size"); w.Uint64(f.size);
      w.Key("sha256"); w.String(f.sha256.c_str());
      if (!f.xxh3.empty()) { w.Key("xxh3_128"); w.String(f.xxh3.c_str()); }
      w.Key("tensors"); w.StartArray();
      for (const auto& t : f.tensors) {
        w.StartObject();
        w.Key("name"); w.String(t.name.c_str());
        w.Key("bytes"); w.Uint64(t.bytes);
        w.Key("sha256"); w.String(t.sha256.c_str());
        w.EndObject();
      }
      w.EndArray();
      w.EndObject();
    }
    w.EndArray();
    w.EndObject();
    return std::string(sb.GetString(), sb.GetSize()) + "\n";
  }

  static Manifest parse(std::string_view json, const std::string& source_name) {
    rapidjson::Document d;
    d.Parse(json.data(), json.size());
    if (d.HasParseError())
      fail(source_name, ": invalid JSON at offset ", d.GetErrorOffset(), ": ", rapidjson::GetParseError_En(d.GetParseError()));
    auto str = [&](const rapidjson::Value& o, const char* k) -> std::string {
      if (!o.IsObject() || !o.HasMember(k) || !o[k].IsString()) fail(source_name, ": key '", k, "' missing or not a string");
      return {o[k].GetString(), o[k].GetStringLength()};
    };
    Manifest m;
    m.tool = str(d, "tool");
    if (m.tool != "ckbridge") fail(source_name, ": not a ckbridge manifest (tool '", m.tool, "')");
    m.version = str(d, "version");
    m.fingerprint = str(d, "fingerprint");
    m.source = str(d, "source");
    m.source_fingerprint = str(d, "source_fingerprint");
    if (d.HasMember("arguments") && d["arguments"].IsArray())
      for (const auto& a : d["arguments"].GetArray())
        if (a.IsString()) m.arguments.emplace_back(a.GetString(), a.GetStringLength());
    if (!d.HasMember("files") || !d["files"].IsArray()) fail(source_name, ": key 'files' missing or not a list");
    for (const auto& f : d["files"].GetArray()) {
      FileEntry e;
      e.rel = str(f, "path");
      if (e.rel.empty() || e.rel.front() == '/' || e.rel.find("..") != std::string::npos)
        fail(source_name, ": file path '", e.rel, "' leaves the checkpoint");
      if (!f.HasMember("size") || !f["size"].IsUint64()) fail(source_name, ": '", e.rel, "': size missing");
      e.size = f["size"].GetUint64();
      e.sha256 = str(f, "sha256");
      if (f.HasMember("xxh3_128")) e.xxh3 = str(f, "xxh3_128");
      if (f.HasMember("tensors") && f["tensors"].IsArray())
        for (const auto& t : f["tensors"].GetArray()) {
          TensorHash th{str(t, "name"), str(t, "sha256"), 0};
          if (t.HasMember("bytes") && t["bytes"].IsUint64()) th.bytes = t["bytes"].GetUint64();
          e.tensors.push_back(std::move(th));
        }
      m.files.push_back(std::move(e));
    }
    return m;
  }
};

// Every regular file below `root` (relative, sorted), except the manifest itself and a run's
// private state directory.
inline std::vector<std::filesystem::path> checkpoint_files(const std::filesystem::path& root) {
  std::vector<std::filesystem::path> out;
  for (auto it = std::filesystem::recursive_directory_iterator(root); it != std::filesystem::recursive_directory_iterator(); ++it) {
    const auto rel = std::filesystem::relative(it->path(), root);
    if (it->is_directory() && rel.filename() == ".ckbridge-run") {
      it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file() || rel == kFileName) continue;
    out.push_back(rel);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A problem found by check().
struct Finding {
  std::string path, what;
};

// How check() compares a file with its manifest entry.
enum class CheckBy {
  xxh3,    // XXH3-128 (at the speed of reading; catches any accidental change), SHA-256 where the
           // manifest has no XXH3-128 (written before it was added)
  sha256,  // SHA-256 (also catches a deliberate change made to keep the XXH3-128)
};

// Re-hashes the files a manifest lists under `root`; returns what differs (empty: all match).
// A truncated file, a changed or swapped file, a missing file and a file the manifest does not
// list are each reported, a changed file with the tensors whose bytes changed.
//
// Each byte is hashed once: a file whose size and digest match holds exactly the bytes the
// manifest was made from, so its tensors match too; only its header is read, to check that the
// manifest's tensor list (names and sizes) is the file's. The tensors of a file whose digest
// differs are hashed (SHA-256) to name the ones that changed. Files are hashed in parallel,
// largest first.
inline std::vector<Finding> check(const std::filesystem::path& root, const Manifest& m, int threads,
                                  std::size_t* verified = nullptr, CheckBy by = CheckBy::xxh3) {
  std::vector<Finding> out;
  std::map<std::string, const FileEntry*> listed;
  for (const auto& f : m.files) listed[f.rel] = &f;
  for (const auto& rel : checkpoint_files(root))
    if (!listed.count(rel.generic_string())) out.push_back({rel.generic_string(), "not listed in the manifest"});
  std::vector<const FileEntry*> want;
  std::vector<std::uint64_t> sizes;
  for (const auto& f : m.files) {
    std::error_code ec;
    const auto sz = std::filesystem::file_size(root / f.rel, ec);
    if (ec) {
      out.push_back({f.rel, "missing"});
      continue;
    }
    if (sz != f.size) {
      out.push_back({f.rel, "size " + std::to_string(sz) + " bytes, the manifest says " + std::to_string(f.size) +
                                (sz < f.size ? " (truncated)" : "")});
      continue;
    }
    want.push_back(&f);
    sizes.push_back(sz);
  }
  // Per file: empty when it matches, else what differs.
  std::vector<std::string> what(want.size());
  detail::for_each_parallel(detail::largest_first(sizes), threads, [&](std::size_t i) {
    const FileEntry& w = *want[i];
    const std::filesystem::path path = root / w.rel;
    const bool by_xxh3 = by == CheckBy::xxh3 && !w.xxh3.empty();
    const std::string digest = by_xxh3 ? "XXH3-128" : "SHA-256";
    const FileDigests d = file_digests(path, by_xxh3 ? Digests::xxh3 : Digests::sha256);
    const bool same = by_xxh3 ? d.xxh3 == w.xxh3 : d.sha256 == w.sha256;
    std::vector<TensorHash> got;
    try {
      if (w.size > 0) got = detail::file_tensors(path, !same);
    } catch (const std::exception& e) {
      what[i] = same ? digest + " matches, but the file cannot be read as its tensors: " + e.what()
                     : digest + " differs; its tensors cannot be read: " + e.what();
      return;
    }
    if (same) {  // the bytes are the manifest's: its tensor list must be the file's
      std::map<std::string, std::uint64_t> have;
      for (const auto& t : got) have[t.name] = t.bytes;
      std::string bad;
      std::size_t n = 0;
      auto note = [&](const std::string& s) {
        if (++n <= 4) bad += (bad.empty() ? "" : ", ") + s;
      };
      for (const auto& t : w.tensors) {
        auto it = have.find(t.name);
        if (it == have.end()) note(t.name + " (not in the file)");
        else if (it->second != t.bytes)
          note(t.name + " (" + std::to_string(it->second) + " bytes, the manifest says " + std::to_string(t.bytes) + ")");
        if (it != have.end()) have.erase(it);
      }
      for (const auto& [name, bytes] : have) note(name + " (not in the manifest)");
      if (n > 4) bad += ", ... (" + std::to_string(n) + " in all)";
      if (n) what[i] = digest + " matches, but the manifest's tensor list is not the file's: " + bad;
      return;
    }
    std::map<std::string, std::string> have;
    for (const auto& t : got) have[t.name] = t.sha256;
    std::string tensors;
    std::size_t n = 0;
    for (const auto& t : w.tensors) {
      auto it = have.find(t.name);
      if (it != have.end() && it->second == t.sha256) continue;
      if (++n <= 4) tensors += (tensors.empty() ? "" : ", ") + t.name + (it == have.end() ? " (absent)" : "");
    }
    if (n > 4) tensors += ", ... (" + std::to_string(n) + " in all)";
    what[i] = digest + " differs" + (tensors.empty() ? std::string() : "; tensors whose bytes differ: " + tensors);
  });
  std::size_t ok = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (what[i].empty()) ++ok;
    else out.push_back({want[i]->rel, what[i]});
  }
  if (verified) *verified = ok;
  return out;
}

}  // namespace ckbridge::manifest

#pragma once
// Writes a Megatron-Core `torch_dist` checkpoint directory (docs/torch-dist-format.md) from a list
// of entries whose tensor chunks are produced on demand, so memory stays bounded by the chunks in
// flight (one per data file being written), never by the model.
//
// Files, as Megatron-Core's dist_checkpointing.save (torch_dist strategy, one process) writes them:
//   common.pt        torch.save of the common (non-sharded) state, archive name "common"
//   __0_<i>.distcp   data files: every item is a complete torch.save archive (archive name
//                    "archive") of a chunk tensor, or of the list of a ShardedObject's data
//   .metadata        pickled DCP Metadata (torch_dist.hpp)
//   metadata.json    the backend config, written last: its presence marks a complete checkpoint
// Items go to data files exactly as Megatron's FileSystemWriterAsync buckets them
// (torch's _split_by_size_and_type): bytes items round-robin in plan order, tensor chunks sorted
// by size (largest first, stable) each into the currently smallest bucket; within a file the
// bytes items come first, then the tensors in bucket order. With `files` = 2 (Megatron's default
// thread_count) and the same entries in the same order the data files are byte-identical to
// Megatron-Core's.
//
// Every file is written under a temporary name and renamed when complete; the data files are
// written in parallel, one thread per file. An existing complete checkpoint is never touched:
// the target directory must be empty or missing (leftover temporaries of a killed run excepted).
//
// Resumable writing (WriteOptions::progress_dir set; the caller owns that directory and makes sure
// the target holds only an earlier attempt of the same write, e.g. convert/resume.hpp's RunState):
// a data file is written as `<name>.ckb-partial`; every `sync_bytes` (and at its end) the writer
// fsyncs it and appends the items it has made durable since to `<progress_dir>/<name>.items`
// ("<item> <offset> <length>" per line, "complete <size>" once renamed). A run started again with
// the same entries truncates each partial file to its last recorded item and continues after it,
// skips completed files, and writes the same bytes an uninterrupted run writes (item offsets are
// taken from the records, so `.metadata` is the same too; give `save_id` to make it deterministic).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <atomic>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ckbridge/core/error.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/format/pickle_writer.hpp"
#include "ckbridge/format/torch_dist.hpp"
#include "ckbridge/format/torch_save.hpp"
#include "ckbridge/format/zip_writer.hpp"

namespace ckbridge::format::torch_dist {

// Produces the bytes of one chunk: fill `scratch` or return a view of memory that outlives the
// call; the view must have the chunk's dtype and sizes (any strides).
using ChunkProducer = std::function<AnyConstView(Tensor& scratch)>;

struct WriteChunk {
  Shape offsets, sizes;
  std::optional<std::int64_t> index;  // MetadataIndex.index (see Chunk)
  ChunkProducer produce;
};

struct WriteEntry {
  std::string fqn;
  bool bytes = false;
  // tensors
  DType dtype = DType::BF16;
  Shape size;
  std::optional<Shape> strides;
  std::vector<WriteChunk> chunks;
  // bytes items: the object torch.save stores (Megatron: the list of a ShardedObject's data,
  // `[None]` for a local-spec linear's _extra_state)
  pickle::Value object;

  static WriteEntry extra_state_none(std::string unique_key) {
    WriteEntry e;
    e.fqn = std::move(unique_key);
    e.bytes = true;
    e.object = pickle::Value::list({pickle::Value()});
    return e;
  }
};

struct WriteOptions {
  unsigned files = 2;            // data files (= writer threads); Megatron's default is 2
  std::string checkpoint_id;     // StorageMeta.checkpoint_id; default: the directory path
  std::string save_id;           // StorageMeta.save_id; default: a random uuid4
  std::optional<pickle::Value> common;  // common.pt content; default: an empty dict
  bool fsync = true;
  std::filesystem::path progress_dir;  // resumable writing (see above); empty: a fresh directory is required
  std::uint64_t sync_bytes = std::uint64_t(256) << 20;  // progress granularity of resumable writing
  bool strides_field = false;  // Metadata::strides_field: the 6-field TensorProperties state of recent torch
};

struct WriteReport {
  Metadata metadata;
  std::vector<std::string> files;  // data files written, in order
  std::uint64_t bytes = 0;         // data file bytes
  std::uint64_t resumed_bytes = 0; // of which kept from an earlier attempt (resumable writing)
};

namespace writer_detail {

inline std::string uuid4() {
  std::random_device rd;
  std::mt19937_64 g((static_cast<std::uint64_t>(rd()) << 32) ^ rd());
  unsigned char b[16];
  for (int i = 0; i < 16; i += 8) {
    const std::uint64_t v = g();
    for (int k = 0; k < 8; ++k) b[i + k] = static_cast<unsigned char>(v >> (8 * k));
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0F) | 0x40);
  b[8] = static_cast<unsigned char>((b[8] & 0x3F) | 0x80);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += hex[b[i] >> 4];
    s += hex[b[i] & 15];
  }
  return s;
}

// Counts the bytes passed on to another sink (item offsets inside a data file).
class CountingSink final : public ByteSink {
public:
  explicit CountingSink(ByteSink& inner) : inner_(inner) {}
  void write(const void* d, std::size_t n) override {
    inner_.write(d, n);
    count_ += n;
  }
  void write_zeros(std::uint64_t n) override {
    inner_.write_zeros(n);
    count_ += n;
  }
  std::string describe() const override { return inner_.describe(); }
  std::uint64_t count() const { return count_; }

private:
  ByteSink& inner_;
  std::uint64_t count_ = 0;
};

struct Item {
  std::size_t entry, chunk;  // chunk index (0 for bytes)
  bool bytes;
  std::uint64_t nbytes;      // tensor chunk bytes (bucketing key)
};

// torch's _split_by_size_and_type.
inline std::vector<std::vector<Item>> bucket_items(const std::vector<Item>& items, unsigned bins) {
  std::vector<std::vector<Item>> buckets(bins);
  if (bins == 1) {
    buckets[0] = items;
    return buckets;
  }
  std::vector<Item> bytes_w, tensor_w;
  for (const auto& it : items) (it.bytes ? bytes_w : tensor_w).push_back(it);
  std::stable_sort(tensor_w.begin(), tensor_w.end(), [](const Item& a, const Item& b) { return a.nbytes > b.nbytes; });
  for (std::size_t i = 0; i < bytes_w.size(); ++i) buckets[i % bins].push_back(bytes_w[i]);
  std::vector<std::uint64_t> sizes(bins, 0);
  for (const auto& it : tensor_w) {
    const auto k = static_cast<std::size_t>(std::min_element(sizes.begin(), sizes.end()) - sizes.begin());
    buckets[k].push_back(it);
    sizes[k] += it.nbytes;
  }
  return buckets;
}

// A data file written as "<path>.ckb-partial", possibly continuing an earlier attempt: opened at
// `start` (the file is truncated there), renamed onto `path` by commit().
class PartialFileSink final : public ByteSink {
public:
  PartialFileSink(std::string path, std::uint64_t start, bool fsync) : path_(std::move(path)), fsync_(fsync) {
    tmp_ = path_ + ".ckb-partial";
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd_ < 0) fail(tmp_, ": cannot open: ", std::strerror(errno));
    if (::ftruncate(fd_, static_cast<off_t>(start)) != 0 || ::lseek(fd_, static_cast<off_t>(start), SEEK_SET) < 0) {
      const int e = errno;
      ::close(fd_);
      fd_ = -1;
      fail(tmp_, ": cannot continue at byte ", start, ": ", std::strerror(e));
    }
    buf_.reserve(kBuf);
  }
  PartialFileSink(const PartialFileSink&) = delete;
  PartialFileSink& operator=(const PartialFileSink&) = delete;
  ~PartialFileSink() override {
    if (fd_ >= 0) ::close(fd_);  // the partial file stays for the next attempt
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
    if (::lseek(fd_, static_cast<off_t>(n), SEEK_CUR) < 0) fail(tmp_, ": seek failed: ", std::strerror(errno));
  }
  std::string describe() const override { return path_; }
  // Everything written so far is on disk (before its items are recorded as done).
  void sync() {
    flush();
    if (fsync_ && ::fdatasync(fd_) != 0) fail(tmp_, ": fdatasync failed: ", std::strerror(errno));
  }
  void commit(std::uint64_t size) {
    sync();
    // a hole at the end (write_zeros) would not extend the file
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) fail(tmp_, ": cannot set the size: ", std::strerror(errno));
    if (fsync_ && ::fsync(fd_) != 0) fail(tmp_, ": fsync failed: ", std::strerror(errno));
    if (::close(fd_) != 0) {
      fd_ = -1;
      fail(tmp_, ": close failed: ", std::strerror(errno));
    }
    fd_ = -1;
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail(path_, ": rename from ", tmp_, " failed: ", std::strerror(errno));
  }

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
        fail(tmp_, ": write failed: ", std::strerror(errno));
      }
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }
  std::string path_, tmp_;
  bool fsync_;
  int fd_ = -1;
  std::vector<char> buf_;
};

// What an earlier attempt recorded for one data file: the byte ranges of its first items, and
// whether the file was completed (renamed) with `size` bytes. A torn or malformed line ends the
// records (what follows is redone).
struct FileProgress {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> items;  // (offset, length), from item 0
  bool complete = false;
  std::uint64_t size = 0;
};

inline FileProgress read_progress(const std::filesystem::path& p) {
  FileProgress fp;
  std::ifstream in(p);
  std::string line;
  std::uint64_t end = 0;
  while (std::getline(in, line) && !in.eof()) {  // a last line without '\n' may be torn
    std::istringstream ls(line);
    std::string head;
    ls >> head;
    if (head == "complete") {
      std::uint64_t n = 0;
      if (!(ls >> n) || n != end) break;
      fp.complete = true;
      fp.size = n;
      break;
    }
    std::uint64_t off = 0, len = 0;
    if (head != std::to_string(fp.items.size()) || !(ls >> off >> len) || off != end) break;
    fp.items.emplace_back(off, len);
    end = off + len;
  }
  return fp;
}

// Appends lines to a progress file and makes them durable.
inline void append_progress(const std::filesystem::path& p, const std::string& lines, bool fsync) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) fail(p.string(), ": cannot open: ", std::strerror(errno));
  const bool ok = ::write(fd, lines.data(), lines.size()) == static_cast<ssize_t>(lines.size()) && (!fsync || ::fsync(fd) == 0);
  const int e = errno;
  ::close(fd);
  if (!ok) fail(p.string(), ": cannot record progress: ", std::strerror(e));
}

inline void check_target_dir(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) fail(dir.string(), ": exists and is not a directory");
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string n = e.path().filename().string();
      if (n.find(".ckb-tmp-") != std::string::npos) continue;  // a killed run's temporary
      fail(dir.string(), ": torch_dist output directory is not empty (found '", n,
           "'); Megatron-Core saves into an empty directory, and ckbridge never overwrites a checkpoint");
    }
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().filename().string().find(".ckb-tmp-") != std::string::npos) fs::remove(e.path(), ec);
  } else {
    fs::create_directories(dir, ec);
    if (ec) fail(dir.string(), ": cannot create directory: ", ec.message());
  }
}

}  // namespace writer_detail

// Writes the checkpoint into `dir` (created if missing; must be empty).
inline WriteReport write_checkpoint(const std::filesystem::path& dir, const std::vector<WriteEntry>& entries,
                                    const WriteOptions& opt = {}) {
  using namespace writer_detail;
  if (opt.files == 0) fail("torch_dist writer: the number of data files must be at least 1");
  // 1. Plan (validates shapes before anything is written).
  WriteReport rep;
  Metadata& md = rep.metadata;
  md.checkpoint_id = opt.checkpoint_id.empty() ? dir.string() : opt.checkpoint_id;
  md.save_id = opt.save_id.empty() ? uuid4() : opt.save_id;
  md.strides_field = opt.strides_field;
  std::vector<Item> items;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const WriteEntry& w = entries[i];
    Entry e;
    e.fqn = w.fqn;
    e.bytes = w.bytes;
    if (w.bytes) {
      e.chunks.emplace_back();
      items.push_back({i, 0, true, 0});
    } else {
      e.dtype = w.dtype;
      e.size = w.size;
      e.strides = w.strides;
      for (std::size_t c = 0; c < w.chunks.size(); ++c) {
        if (!w.chunks[c].produce) fail("torch_dist writer: chunk ", shape_str(w.chunks[c].offsets), " of '", w.fqn, "' has no producer");
        e.chunks.push_back(Chunk{w.chunks[c].offsets, w.chunks[c].sizes, {}, 0, 0, w.chunks[c].index});
        items.push_back({i, c, false, static_cast<std::uint64_t>(numel(w.chunks[c].sizes)) * dtype_size(w.dtype)});
      }
    }
    md.entries.push_back(std::move(e));
  }
  validate(md, dir.string());
  const bool resumable = !opt.progress_dir.empty();
  if (resumable) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) fail(dir.string(), ": cannot create directory: ", ec.message());
    std::filesystem::create_directories(opt.progress_dir, ec);
    if (ec) fail(opt.progress_dir.string(), ": cannot create directory: ", ec.message());
  } else {
    check_target_dir(dir);
  }

  // 2. Buckets -> data files. Items in a file: bytes first, then tensors (bucket order).
  auto buckets = bucket_items(items, opt.files);
  std::vector<std::vector<Item>> files;
  for (auto& b : buckets) {
    if (b.empty()) continue;
    std::stable_partition(b.begin(), b.end(), [](const Item& it) { return it.bytes; });
    files.push_back(std::move(b));
  }
  for (std::size_t f = 0; f < files.size(); ++f) rep.files.push_back("__0_" + std::to_string(f) + ".distcp");

  // 3. Data files, one thread each.
  std::vector<std::exception_ptr> errors(files.size());
  std::vector<std::uint64_t> sizes(files.size(), 0), kept(files.size(), 0);
  std::atomic<bool> stop{false};
  std::mutex md_mu;
  auto record = [&](std::size_t f, const Item& it, std::uint64_t start, std::uint64_t end) {
    std::lock_guard<std::mutex> lk(md_mu);
    Chunk& ch = md.entries[it.entry].chunks[it.chunk];
    ch.file = rep.files[f];
    ch.offset = start;
    ch.length = end - start;
  };
  auto write_items = [&](std::size_t f, ByteSink& sink, std::size_t first, std::uint64_t base,
                         const std::function<void(std::size_t, std::uint64_t)>& item_done) {
    const std::string path = (dir / rep.files[f]).string();
    CountingSink cs(sink);
    TorchSaveOptions so;
    so.archive_name = "archive";
    so.crc_threads = 1;
    so.bounce_bytes = std::size_t(1) << 20;
    for (std::size_t k = first; k < files[f].size(); ++k) {
      if (stop.load(std::memory_order_relaxed)) return false;
      const Item& it = files[f][k];
      const WriteEntry& w = entries[it.entry];
      const std::uint64_t start = base + cs.count();
      if (it.bytes) {
        save_torch(cs, w.object, so);
      } else {
        const WriteChunk& c = w.chunks[it.chunk];
        const std::string what = "'" + w.fqn + "' chunk " + shape_str(c.offsets);
        pickle::Value t = pickle::Value::lazy_tensor(w.dtype, c.sizes, [&c, &what, &w](Tensor& scratch) {
          AnyConstView v = c.produce(scratch);
          if (v.dtype != w.dtype || v.shape != c.sizes)
            fail(what, ": producer made ", shape_str(v.shape), " ", safetensors_name(v.dtype), ", expected ",
                 shape_str(c.sizes), " ", safetensors_name(w.dtype));
          return v;
        });
        try {
          save_torch(cs, t, so);
        } catch (const Error& e) {
          fail(path, ": writing ", what, ": ", e.what());
        }
      }
      record(f, it, start, base + cs.count());
      if (item_done) item_done(k, base + cs.count());
    }
    sizes[f] = base + cs.count();
    return true;
  };
  auto write_file = [&](std::size_t f) {
    try {
      const std::string path = (dir / rep.files[f]).string();
      if (!resumable) {
        AtomicFileSink sink(path, opt.fsync);
        if (write_items(f, sink, 0, 0, {})) sink.commit();
        return;
      }
      const std::filesystem::path prog = opt.progress_dir / (rep.files[f] + ".items");
      FileProgress fp = read_progress(prog);
      if (fp.items.size() > files[f].size()) fp = {};  // not this write's records
      std::error_code ec;
      if (fp.complete && fp.items.size() == files[f].size() && std::filesystem::file_size(path, ec) == fp.size && !ec) {
        for (std::size_t k = 0; k < fp.items.size(); ++k)
          record(f, files[f][k], fp.items[k].first, fp.items[k].first + fp.items[k].second);
        sizes[f] = fp.size;
        kept[f] = fp.size;
        return;
      }
      std::uint64_t base = 0;
      if (fp.complete) fp = {};
      const auto psize = std::filesystem::file_size(path + ".ckb-partial", ec);
      if (!fp.items.empty() && !ec && psize >= fp.items.back().first + fp.items.back().second) {
        for (std::size_t k = 0; k < fp.items.size(); ++k)
          record(f, files[f][k], fp.items[k].first, fp.items[k].first + fp.items[k].second);
        base = fp.items.back().first + fp.items.back().second;
        kept[f] = base;
      } else {
        fp.items.clear();
        std::filesystem::remove(prog);
      }
      std::filesystem::remove(path, ec);  // a completed file not recorded as such: redone
      PartialFileSink sink(path, base, opt.fsync);
      std::string pending;
      std::uint64_t synced = base, last_start = base;
      const bool done = write_items(f, sink, fp.items.size(), base, [&](std::size_t k, std::uint64_t end) {
        pending += std::to_string(k) + " " + std::to_string(last_start) + " " + std::to_string(end - last_start) + "\n";
        last_start = end;
        if (end - synced >= opt.sync_bytes) {
          sink.sync();
          append_progress(prog, pending, opt.fsync);
          pending.clear();
          synced = end;
        }
      });
      if (!done) return;
      sink.commit(sizes[f]);
      append_progress(prog, pending + "complete " + std::to_string(sizes[f]) + "\n", opt.fsync);
    } catch (...) {
      errors[f] = std::current_exception();
      stop = true;
    }
  };
  std::vector<std::thread> threads;
  for (std::size_t f = 1; f < files.size(); ++f) threads.emplace_back(write_file, f);
  if (!files.empty()) write_file(0);
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  for (auto s : sizes) rep.bytes += s;
  for (auto k : kept) rep.resumed_bytes += k;

  // 4. common.pt, .metadata, then metadata.json (the completion mark).
  {
    TorchSaveOptions so;
    so.fsync = opt.fsync;
    save_torch((dir / std::string(kCommonFile)).string(), opt.common ? *opt.common : pickle::Value::dict(), so);
  }
  const std::vector<std::uint8_t> pk = pickle_metadata(md);
  auto small_file = [&](std::string_view name, const void* p, std::size_t n) {
    AtomicFileSink s((dir / std::string(name)).string(), opt.fsync);
    s.write(p, n);
    s.commit();
  };
  small_file(kMetadataFile, pk.data(), pk.size());
  small_file(kConfigFile, kConfigJson.data(), kConfigJson.size());
  return rep;
}

}  // namespace ckbridge::format::torch_dist

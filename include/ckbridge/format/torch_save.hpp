#pragma once
// torch.save without libtorch: pickle a `pickle::Value` tree and write the ZIP archive torch
// writes, streaming every storage record straight from its source view (strided sources are
// packed through a small bounce buffer). The CRC is computed while writing; the file appears
// atomically under its final name only when complete.
//
// Record set and order (TorchFlavor::Torch2, torch >= 2.4):
//   data.pkl, .format_version ("1"), .storage_alignment ("64"), byteorder ("little"),
//   data/0 .. data/N-1, version ("3\n"), .data/serialization_id
// TorchFlavor::Torch1 (torch 1.13): data.pkl, data/<key> in string order of the keys, version.
// Every prefix is "<archive_name>/", by default the file name without its last extension.
// For the same object graph (see pickle_writer.hpp on object identity) the files are
// byte-identical to torch.save's: Torch1 checked against torch 1.13, Torch2 against torch 2.11
// (tests/python/test_torch_load_interop.py).
#include <algorithm>
#include <cstdint>
#include <functional>
#include <iomanip>
#include <unordered_set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/copy.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/format/pickle_writer.hpp"
#include "ckbridge/format/zip_writer.hpp"

namespace ckbridge::format {

enum class TorchFlavor { Torch2, Torch1 };

struct TorchSaveOptions {
  TorchFlavor flavor = TorchFlavor::Torch2;
  std::string archive_name;     // empty: from the file name (torch's rule); "archive" for sinks
  std::uint32_t alignment = 64;
  bool crc = true;
  bool fsync = true;            // file saves: fsync before the atomic rename
  pickle::PickleOptions pickle{};
  std::size_t bounce_bytes = std::size_t(4) << 20;  // packing buffer for strided sources
  // Threads that compute the CRC of large contiguous storages while the main thread writes them
  // (0: hardware concurrency, at most 8; 1: CRC inline with the write).
  unsigned crc_threads = 0;
};

// torch's archive name: the base name with its last extension removed ("a.b.pt" -> "a.b").
inline std::string torch_archive_name(const std::string& path) {
  auto slash = path.find_last_of('/');
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  auto dot = base.find_last_of('.');
  if (dot != std::string::npos) base = base.substr(0, dot);
  if (base.empty()) fail(path, ": cannot derive a torch archive name from this path");
  return base;
}

namespace torch_save_detail {
inline AnyConstView drop_dim0(const AnyConstView& v, std::int64_t i) {
  AnyConstView s;
  s.data = v.data + i * v.strides[0] * static_cast<std::int64_t>(v.element_size());
  s.dtype = v.dtype;
  s.shape.assign(v.shape.begin() + 1, v.shape.end());
  s.strides.assign(v.strides.begin() + 1, v.strides.end());
  return s;
}

// Writes a contiguous range; big ones get their CRC computed on other threads during the write.
inline void write_bytes(ZipWriter& zw, const void* p, std::size_t n, unsigned crc_threads) {
  if (!zw.crc_enabled() || crc_threads <= 1 || n < (std::size_t(32) << 20)) {
    zw.write(p, n);
    return;
  }
  std::uint32_t crc = 0;
  std::thread t([&] { crc = parallel_crc32(p, n, crc_threads); });
  try {
    zw.write_deferred_crc(p, n);
  } catch (...) {
    t.join();
    throw;
  }
  t.join();
  zw.fold_crc(crc, n);
}

// Streams the elements of `v` in row-major order into the open record.
inline void write_view(ZipWriter& zw, const AnyConstView& v, std::vector<std::byte>& bounce,
                       unsigned crc_threads = 1) {
  if (v.numel() == 0) return;
  if (v.is_contiguous()) {
    write_bytes(zw, v.data, v.size_bytes(), crc_threads);
    return;
  }
  if (v.size_bytes() <= bounce.size()) {
    AnyView dst(bounce.data(), v.dtype, v.shape);
    copy(v, dst);
    zw.write(bounce.data(), v.size_bytes());
    return;
  }
  // Too big for one pack: blocks of whole dim-0 rows, or recurse into one row.
  const std::size_t row_bytes = v.size_bytes() / static_cast<std::size_t>(v.shape[0]);
  if (row_bytes > bounce.size()) {
    for (std::int64_t i = 0; i < v.shape[0]; ++i) write_view(zw, drop_dim0(v, i), bounce, crc_threads);
    return;
  }
  const auto rows = static_cast<std::int64_t>(bounce.size() / row_bytes);
  for (std::int64_t r = 0; r < v.shape[0]; r += rows) {
    const AnyConstView blk = v.slice(0, r, std::min(v.shape[0], r + rows));
    AnyView dst(bounce.data(), blk.dtype, blk.shape);
    copy(blk, dst);
    zw.write(bounce.data(), blk.size_bytes());
  }
}

// PyTorchStreamWriter's serialization id: 20 digits of a combined hash of the record names, then
// 20 digits of the combined descriptor CRCs. torch keeps the names in a std::unordered_set and
// hashes them in its iteration order; inserting the same names in the same order into libstdc++'s
// unordered_set reproduces that order (verified equal to torch 2.11's ids; a libc++ build differs).
// Informational only: torch.load never reads it.
inline std::string serialization_id(const std::vector<ZipWriter::Entry>& entries, std::size_t prefix_len,
                                    std::uint64_t combined_crc) {
  std::unordered_set<std::string> names;
  for (const auto& e : entries) names.insert(e.name.substr(prefix_len));
  std::uint64_t h = 0;
  for (const auto& n : names) h = ZipWriter::hash_combine(h, std::hash<std::string>{}(n));
  std::ostringstream os;
  os << std::setfill('0') << std::setw(20) << h << std::setfill('0') << std::setw(20) << combined_crc;
  return os.str();
}
}  // namespace torch_save_detail

// Writes the archive for `obj` to `sink`. Returns the record list (for tests and manifests).
inline std::vector<ZipWriter::Entry> save_torch(ByteSink& sink, const pickle::Value& obj,
                                                const TorchSaveOptions& opt = {}) {
  const std::string name = opt.archive_name.empty() ? std::string("archive") : opt.archive_name;
  if (name.find('/') != std::string::npos)
    fail(sink.describe(), ": torch archive name '", name, "' must not contain '/' (torch reads one folder level)");
  const std::string pre = name + "/";
  pickle::Pickled p;
  try {
    p = pickle::dumps(obj, opt.pickle);
  } catch (const Error& e) {
    fail(sink.describe(), ": ", e.what());
  }

  ZipWriter zw(sink, ZipWriter::Options{opt.alignment, opt.crc});
  zw.add_record(pre + "data.pkl", std::as_bytes(std::span<const std::uint8_t>(p.bytes)));
  const bool t2 = opt.flavor == TorchFlavor::Torch2;
  if (t2) {
    zw.add_record(pre + ".format_version", std::string_view("1"));
    zw.add_record(pre + ".storage_alignment", std::to_string(opt.alignment));
    zw.add_record(pre + "byteorder", std::string_view("little"));
  }
  std::vector<std::byte> bounce(std::max<std::size_t>(opt.bounce_bytes, 64));
  const unsigned crc_threads =
      opt.crc_threads ? opt.crc_threads : std::min(8u, std::max(1u, std::thread::hardware_concurrency()));
  // torch >= 2.4 writes data/<key> in numeric key order; older torch sorted the keys as strings
  // ("10" before "2").
  std::vector<std::size_t> order(p.storages.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  if (!t2)
    std::sort(order.begin(), order.end(),
              [](std::size_t a, std::size_t b) { return std::to_string(a) < std::to_string(b); });
  for (std::size_t k : order) {
    const auto& st = *p.storages[k];
    const std::string rec = pre + "data/" + std::to_string(k);
    zw.begin_record(rec, st.nbytes());
    try {
      if (st.zeros) {
        zw.write_zeros(st.nbytes());
      } else if (st.produce) {
        Tensor scratch;
        const AnyConstView v = st.produce(scratch);
        if (v.size_bytes() != st.nbytes() || (v.numel() > 0 && !v.data))
          fail("producer made ", v.size_bytes(), " bytes (", shape_str(v.shape), " ", safetensors_name(v.dtype),
               "), the pickle declares ", st.nbytes());
        torch_save_detail::write_view(zw, v, bounce, crc_threads);
      } else {
        torch_save_detail::write_view(zw, st.source, bounce, crc_threads);
      }
    } catch (const Error& e) {
      fail(sink.describe(), ": writing storage record '", rec, "' (", shape_str(st.source.shape), " ",
           safetensors_name(st.dtype()), "): ", e.what());
    }
    zw.end_record();
  }
  zw.add_record(pre + "version", std::string_view("3\n"));
  if (t2)
    zw.add_record(pre + ".data/serialization_id",
                  torch_save_detail::serialization_id(zw.entries(), pre.size(), zw.combined_crc_hash()));
  zw.finish();
  return zw.entries();
}

// Writes `path` atomically (temporary file + rename). The archive name follows torch's rule.
inline std::vector<ZipWriter::Entry> save_torch(const std::string& path, const pickle::Value& obj,
                                                TorchSaveOptions opt = {}) {
  if (opt.archive_name.empty()) opt.archive_name = torch_archive_name(path);
  AtomicFileSink sink(path, opt.fsync);
  auto entries = save_torch(sink, obj, opt);
  sink.commit();
  return entries;
}

}  // namespace ckbridge::format

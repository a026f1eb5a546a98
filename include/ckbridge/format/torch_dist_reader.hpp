#pragma once
// Reads a Megatron-Core `torch_dist` checkpoint directory (docs/torch-dist-format.md) without
// torch: metadata.json and `.metadata` are parsed, the data files are mapped read-only and every
// item's byte range is checked against its file when the checkpoint is opened, so a missing data
// file, a truncated `.distcp` or metadata pointing outside a file is refused up front with the
// file, key and range named. Tensors are read as whole global tensors or as any box of them
// (e.g. one expert of a stacked expert tensor), assembled from the chunks that intersect it.
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/copy.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/mapped_file.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/format/json.hpp"
#include "ckbridge/format/megatron_reader.hpp"
#include "ckbridge/format/torch_dist.hpp"

namespace ckbridge::format::torch_dist {

// True when `dir` holds a torch_dist checkpoint (metadata.json naming the torch_dist backend).
inline bool is_torch_dist_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(dir / std::string(kConfigFile), ec)) return false;
  const std::string t = format::detail::read_small_text(dir / std::string(kConfigFile));
  return t.find("\"torch_dist\"") != std::string::npos;
}

class Reader {
public:
  explicit Reader(std::filesystem::path dir) : dir_(std::move(dir)) {
    namespace fs = std::filesystem;
    const fs::path cfg = dir_ / std::string(kConfigFile);
    std::error_code ec;
    if (!fs::is_regular_file(cfg, ec))
      fail(dir_.string(), ": no ", kConfigFile, " (not a Megatron-Core distributed checkpoint, or an incomplete save)");
    const std::string t = format::detail::read_small_text(cfg);
    check_config(t, cfg.string());
    const fs::path mp = dir_ / std::string(kMetadataFile);
    if (!fs::is_regular_file(mp, ec)) fail(dir_.string(), ": no ", kMetadataFile, " file (PyTorch distributed-checkpoint metadata)");
    {
      MappedFile m(mp);
      md_ = parse_metadata(std::span<const std::byte>(m.data(), m.size()), mp.string());
    }
    // Map every data file once; check each item's range lies inside its file.
    for (const auto& e : md_.entries)
      for (const auto& c : e.chunks) {
        const MappedFile& f = file(c.file, e.fqn);
        if (c.offset > f.size() || c.length > f.size() - c.offset)
          fail((dir_ / c.file).string(), ": ", f.size(), " bytes, but ", kMetadataFile, " places '", e.fqn, "'",
               e.bytes ? std::string() : " chunk " + shape_str(c.offsets), " at bytes [", c.offset, ", ",
               c.offset + c.length, ") (truncated data file, or metadata pointing outside it)");
        if (c.length < 22)
          fail((dir_ / c.file).string(), ": item '", e.fqn, "' at offset ", c.offset, " is ", c.length,
               " bytes, too short for a torch.save archive");
      }
  }

  const std::filesystem::path& dir() const { return dir_; }
  const Metadata& metadata() const { return md_; }
  const Entry& entry(std::string_view fqn) const {
    if (const Entry* e = md_.find(fqn)) return *e;
    fail(dir_.string(), ": no key '", fqn, "' in the checkpoint");
  }

  // The torch.save archive of one item (zero-copy over the mapped data file).
  TorchFile item(const Entry& e, const Chunk& c) const {
    const MappedFile& f = file(c.file, e.fqn);
    const std::string name = (dir_ / c.file).string() + "@" + std::to_string(c.offset) + " ('" + e.fqn +
                             (e.bytes ? std::string() : "' chunk " + shape_str(c.offsets)) + (e.bytes ? "')" : ")");
    return TorchFile(std::span<const std::byte>(f.data() + c.offset, static_cast<std::size_t>(c.length)), name);
  }

  // Copies chunk `c` of tensor `e` into `dst` (shape = c.sizes).
  void read_chunk(const Entry& e, const Chunk& c, const AnyView& dst) const {
    TorchFile tf = item(e, c);
    const pickle::ObjectPtr& r = tf.root();
    if (!r || !r->is(pickle::Kind::Tensor)) fail(tf.file_name(), ": item is not a tensor");
    const pickle::TensorRef& t = *r->tensor;
    if (!t.dtype || *t.dtype != e.dtype)
      fail(tf.file_name(), ": holds torch.", t.dtype_name, ", the metadata says ", torch_dtype_name(e.dtype));
    if (t.shape != c.sizes)
      fail(tf.file_name(), ": holds a tensor of shape ", shape_str(t.shape), ", the metadata says ", shape_str(c.sizes));
    auto bytes = tf.storage_bytes(t.storage);
    const std::size_t es = dtype_size(e.dtype);
    // Stored items sit at arbitrary offsets in the data file: copy through an aligned buffer
    // unless the storage happens to be aligned.
    const std::byte* p = bytes.data() + static_cast<std::size_t>(t.storage_offset) * es;
    std::unique_ptr<std::byte[]> tmp;
    if (reinterpret_cast<std::uintptr_t>(p) % es != 0) {
      tmp = std::make_unique<std::byte[]>(bytes.size() + es);
      std::byte* a = tmp.get();
      while (reinterpret_cast<std::uintptr_t>(a) % es) ++a;
      std::memcpy(a, bytes.data(), bytes.size());
      p = a + static_cast<std::size_t>(t.storage_offset) * es;
    }
    copy(AnyConstView(p, e.dtype, t.shape, t.strides), dst);
  }

  // The box [offsets, offsets + sizes) of tensor `fqn`, assembled from its chunks; every element
  // must be covered by some chunk.
  Tensor read_region(std::string_view fqn, const Shape& offsets, const Shape& sizes) const {
    const Entry& e = entry(fqn);
    if (e.bytes) fail(dir_.string(), ": '", fqn, "' is a bytes object, not a tensor");
    const std::size_t r = e.size.size();
    if (offsets.size() != r || sizes.size() != r) fail(dir_.string(), ": '", fqn, "': region rank does not match ", shape_str(e.size));
    for (std::size_t d = 0; d < r; ++d)
      if (offsets[d] < 0 || sizes[d] < 0 || offsets[d] + sizes[d] > e.size[d])
        fail(dir_.string(), ": '", fqn, "': region at ", shape_str(offsets), " of ", shape_str(sizes), " lies outside ",
             shape_str(e.size));
    Tensor out(e.dtype, sizes);
    std::int64_t covered = 0;
    for (const auto& c : e.chunks) {
      Shape lo(r), hi(r);
      bool hit = true;
      for (std::size_t d = 0; d < r; ++d) {
        lo[d] = std::max(offsets[d], c.offsets[d]);
        hi[d] = std::min(offsets[d] + sizes[d], c.offsets[d] + c.sizes[d]);
        if (hi[d] <= lo[d]) hit = false;
      }
      if (!hit) continue;
      Tensor ct(e.dtype, c.sizes);
      read_chunk(e, c, ct.view());
      AnyConstView src = ct.cview();
      AnyView dst = out.view();
      std::int64_t n = 1;
      for (std::size_t d = 0; d < r; ++d) {
        src = src.slice(d, lo[d] - c.offsets[d], hi[d] - c.offsets[d]);
        dst = dst.slice(d, lo[d] - offsets[d], hi[d] - offsets[d]);
        n *= hi[d] - lo[d];
      }
      copy(src, dst);
      covered += n;
    }
    if (covered != numel(sizes))
      fail(dir_.string(), ": '", fqn, "' ", shape_str(e.size), ": its chunks cover ", covered, " of the ", numel(sizes),
           " elements of region at ", shape_str(offsets), " of ", shape_str(sizes),
           covered > numel(sizes) ? " (overlapping chunks)" : " (missing chunks)");
    return out;
  }
  Tensor read(std::string_view fqn) const {
    const Entry& e = entry(fqn);
    return read_region(fqn, Shape(e.size.size(), 0), e.size);
  }

  // The unpickled object of a bytes item (Megatron: the list of a ShardedObject's data).
  pickle::ObjectPtr read_object(std::string_view fqn) const {
    const Entry& e = entry(fqn);
    if (!e.bytes) fail(dir_.string(), ": '", fqn, "' is a tensor, not a bytes object");
    return item(e, e.chunks.front()).root();
  }

  // common.pt (args, iteration, ... as the saver put them); null when the file is absent.
  std::unique_ptr<TorchFile> common() const {
    const auto p = dir_ / std::string(kCommonFile);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(p, ec)) return nullptr;
    return std::make_unique<TorchFile>(p);
  }

private:
  static void check_config(const std::string& text, const std::string& where) {
    rapidjson::Document doc;
    json::parse(doc, text, where);
    if (!doc.IsObject()) fail(where, ": not a JSON object");
    const rapidjson::Value* b = json::find_member(doc, "sharded_backend");
    if (!b || !b->IsString()) fail(where, ": no \"sharded_backend\"");
    if (json::str(*b) != "torch_dist")
      fail(where, ": sharded backend \"", json::str(*b), "\" is not supported (only torch_dist)");
    if (const rapidjson::Value* c = json::find_member(doc, "common_backend"); c && c->IsString() && json::str(*c) != "torch")
      fail(where, ": common backend \"", json::str(*c), "\" is not supported (only torch)");
  }
  const MappedFile& file(const std::string& rel, const std::string& fqn) const {
    auto it = files_.find(rel);
    if (it != files_.end()) return *it->second;
    if (rel.empty() || rel.find('/') != std::string::npos || rel == "." || rel == "..")
      fail(dir_.string(), ": ", kMetadataFile, " names data file '", rel, "' for '", fqn, "' (not a plain file name)");
    const auto p = dir_ / rel;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(p, ec))
      fail(p.string(), ": data file missing (", kMetadataFile, " stores '", fqn, "' in it)");
    auto m = std::make_unique<MappedFile>(p);
    return *files_.emplace(rel, std::move(m)).first->second;
  }

  std::filesystem::path dir_;
  Metadata md_;
  mutable std::map<std::string, std::unique_ptr<MappedFile>> files_;
};

}  // namespace ckbridge::format::torch_dist

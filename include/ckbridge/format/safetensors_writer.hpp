#pragma once
// Writing safetensors files byte-identical to Python safetensors' `save_file`, and HF sharded
// checkpoints (shard plan + model.safetensors.index.json as transformers writes it).
//
// FileWriter fixes the whole layout up front (the header depends only on names, dtypes and
// shapes), so tensor data can then arrive in pieces, in any order, from any thread: each piece
// is one pwrite at a known offset. commit() refuses unless every byte was written exactly once.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/format/atomic_file.hpp"
#include "ckbridge/format/json.hpp"
#include "ckbridge/format/safetensors_header.hpp"

namespace ckbridge::safetensors {

// transformers and huggingface_hub refuse (4.x) or warn about files without this entry.
inline Metadata default_metadata() { return Metadata{{"format", "pt"}}; }

class FileWriter {
public:
  // Pass std::nullopt as metadata to write no `__metadata__` (safetensors' own default).
  FileWriter(std::filesystem::path path, std::vector<TensorSpec> specs,
             std::optional<Metadata> metadata = default_metadata())
      : layout_(plan_layout(std::move(specs), metadata, path.string())) {
    index_.reserve(layout_.tensors.size());
    for (std::size_t i = 0; i < layout_.tensors.size(); ++i) index_.emplace(layout_.tensors[i].name, i);
    progress_.resize(layout_.tensors.size());
    file_ = AtomicFile(std::move(path), layout_.file_size);
    file_.pwrite(std::string_view(layout_.header), 0);
  }

  const std::filesystem::path& path() const { return file_.path(); }
  const Layout& layout() const { return layout_; }
  const TensorInfo& info(std::string_view name) const { return layout_.tensors[slot(name)]; }

  // Thread-safe. Writes `bytes` at `offset_in_tensor` within tensor `name`.
  void write(std::string_view name, std::span<const std::byte> bytes, std::uint64_t offset_in_tensor = 0) {
    const std::size_t i = slot(name);
    const TensorInfo& t = layout_.tensors[i];
    const std::uint64_t n = bytes.size();
    if (offset_in_tensor > t.size_bytes() || n > t.size_bytes() - offset_in_tensor)
      fail(path().string(), ": tensor '", t.name, "': write of ", n, " bytes at offset ", offset_in_tensor,
           " runs past its ", t.size_bytes(), " bytes");
    if (n == 0) return;
    record(i, offset_in_tensor, offset_in_tensor + n);
    try {
      file_.pwrite(bytes, layout_.data_offset() + t.begin + offset_in_tensor);
    } catch (...) {
      std::lock_guard lk(mu_);
      failed_ = true;
      throw;
    }
  }

  // Thread-safe. Copies `len` bytes at `src_offset` of the open file `src_fd` into tensor `name`
  // at `offset_in_tensor`, inside the kernel where possible (for tensors passed through as they
  // are, e.g. from a safetensors or torch.save input; see File::file_offset).
  void write_from_fd(std::string_view name, int src_fd, std::uint64_t src_offset, std::uint64_t len,
                     std::uint64_t offset_in_tensor = 0) {
    const std::size_t i = slot(name);
    const TensorInfo& t = layout_.tensors[i];
    if (offset_in_tensor > t.size_bytes() || len > t.size_bytes() - offset_in_tensor)
      fail(path().string(), ": tensor '", t.name, "': copy of ", len, " bytes at offset ", offset_in_tensor,
           " runs past its ", t.size_bytes(), " bytes");
    if (len == 0) return;
    record(i, offset_in_tensor, offset_in_tensor + len);
    try {
      file_.copy_from(src_fd, src_offset, len, layout_.data_offset() + t.begin + offset_in_tensor);
    } catch (...) {
      std::lock_guard lk(mu_);
      failed_ = true;
      throw;
    }
  }

  // Writes a whole tensor from a view of the declared dtype and shape (strided views are
  // gathered into a contiguous buffer first).
  void write(std::string_view name, const AnyConstView& v) {
    const TensorInfo& t = info(name);
    if (v.dtype != t.dtype || v.shape != t.shape)
      fail(path().string(), ": tensor '", t.name, "' is declared ", t.dtype, " ", shape_str(t.shape), ", got ", v.dtype,
           " ", shape_str(v.shape));
    if (v.is_contiguous()) {
      write(name, std::span<const std::byte>(v.data, v.size_bytes()));
    } else {
      const Tensor c = Tensor::copy_of(v);
      write(name, std::span<const std::byte>(c.data(), c.size_bytes()));
    }
  }

  // Checks that every byte was written exactly once, then fsyncs and renames into place.
  void commit() {
    std::lock_guard lk(mu_);
    if (failed_) fail(path().string(), ": a write failed earlier; refusing to commit");
    for (std::size_t i = 0; i < progress_.size(); ++i) {
      const TensorInfo& t = layout_.tensors[i];
      if (progress_[i].written != t.size_bytes()) {
        // report the first hole
        std::uint64_t pos = 0;
        for (const auto& [b, e] : progress_[i].ranges) {
          if (b != pos) break;
          pos = e;
        }
        fail(path().string(), ": tensor '", t.name, "' is incomplete: ", progress_[i].written, " of ", t.size_bytes(),
             " bytes written (first missing byte at offset ", pos, ")");
      }
    }
    file_.commit();
  }

private:
  struct Progress {
    std::map<std::uint64_t, std::uint64_t> ranges;  // written [begin, end), merged when adjacent
    std::uint64_t written = 0;
  };

  std::size_t slot(std::string_view name) const {
    const auto it = index_.find(std::string(name));
    if (it == index_.end()) fail(path().string(), ": tensor '", name, "' was not declared for this file");
    return it->second;
  }

  void record(std::size_t i, std::uint64_t b, std::uint64_t e) {
    std::lock_guard lk(mu_);
    auto& r = progress_[i].ranges;
    auto next = r.upper_bound(b);
    const auto overlap = [&](std::uint64_t ob, std::uint64_t oe) {
      fail(path().string(), ": tensor '", layout_.tensors[i].name, "': bytes [", b, ", ", e,
           ") overlap bytes already written [", ob, ", ", oe, ")");
    };
    if (next != r.begin()) {
      const auto prev = std::prev(next);
      if (prev->second > b) overlap(prev->first, prev->second);
    }
    if (next != r.end() && next->first < e) overlap(next->first, next->second);
    std::uint64_t nb = b, ne = e;
    if (next != r.end() && next->first == e) {
      ne = next->second;
      next = r.erase(next);
    }
    if (next != r.begin()) {
      const auto prev = std::prev(next);
      if (prev->second == b) {
        nb = prev->first;
        r.erase(prev);
      }
    }
    r.emplace(nb, ne);
    progress_[i].written += e - b;
  }

  Layout layout_;
  std::unordered_map<std::string, std::size_t> index_;
  AtomicFile file_;
  std::mutex mu_;
  std::vector<Progress> progress_;
  bool failed_ = false;
};

// One-call save of whole tensors (the equivalent of safetensors' save_file).
inline void save_file(const std::filesystem::path& path, const std::vector<std::pair<std::string, AnyConstView>>& tensors,
                      std::optional<Metadata> metadata = default_metadata()) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& [name, v] : tensors) specs.push_back({name, v.dtype, v.shape});
  FileWriter w(path, std::move(specs), std::move(metadata));
  for (const auto& [name, v] : tensors) w.write(name, v);
  w.commit();
}

// ------------------------------------------------------------------------- sharded checkpoints

inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";
inline constexpr std::string_view kSingleFileName = "model.safetensors";

struct ShardPlan {
  std::string file_name;
  std::vector<TensorSpec> tensors;  // in the order given
  std::uint64_t size_bytes = 0;     // sum of tensor byte sizes
};

// HF shard name: model-00001-of-00006.safetensors (1-based; 5 digits or more).
inline std::string shard_file_name(std::size_t i, std::size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

// huggingface_hub's split_state_dict_into_shards: greedy in the given order, a new shard when
// the next tensor would push the current one past `max_bytes` (decimal, 5 GB default); a tensor
// larger than `max_bytes` gets a shard of its own, placed before the shard being filled. One
// shard is named model.safetensors (as HF does) unless `single_file_model_safetensors` is false.
inline std::vector<ShardPlan> plan_shards(const std::vector<TensorSpec>& specs, std::uint64_t max_bytes = 5'000'000'000,
                                          bool single_file_model_safetensors = true) {
  std::vector<ShardPlan> shards;
  ShardPlan cur;
  for (const TensorSpec& s : specs) {
    const std::uint64_t n = byte_size(s);
    if (n > max_bytes) {
      shards.push_back(ShardPlan{{}, {s}, n});
      continue;
    }
    if (cur.size_bytes + n > max_bytes) {
      shards.push_back(std::move(cur));
      cur = ShardPlan{};
    }
    cur.tensors.push_back(s);
    cur.size_bytes += n;
  }
  if (!cur.tensors.empty()) shards.push_back(std::move(cur));
  for (std::size_t i = 0; i < shards.size(); ++i)
    shards[i].file_name = shards.size() == 1 && single_file_model_safetensors ? std::string(kSingleFileName)
                                                                              : shard_file_name(i, shards.size());
  return shards;
}

// Shards from an explicit tensor -> file assignment; shards in order of first appearance.
inline std::vector<ShardPlan> plan_shards(const std::vector<TensorSpec>& specs,
                                          const std::map<std::string, std::string>& assignment) {
  std::vector<ShardPlan> shards;
  std::map<std::string, std::size_t> pos;
  for (const TensorSpec& s : specs) {
    const auto a = assignment.find(s.name);
    if (a == assignment.end()) fail("shard assignment: tensor '", s.name, "' is not assigned to a file");
    auto [it, fresh] = pos.emplace(a->second, shards.size());
    if (fresh) shards.push_back(ShardPlan{a->second, {}, 0});
    ShardPlan& p = shards[it->second];
    p.tensors.push_back(s);
    p.size_bytes += byte_size(s);
  }
  if (assignment.size() != specs.size()) {
    std::map<std::string_view, int> have;
    for (const TensorSpec& s : specs)
      if (++have[s.name] > 1) fail("shard assignment: tensor '", s.name, "' is listed twice");
    for (const auto& [name, file] : assignment)
      if (!have.count(name)) fail("shard assignment: tensor '", name, "' (file '", file, "') is not in the tensor list");
  }
  return shards;
}

inline std::map<std::string, std::string> weight_map(const std::vector<ShardPlan>& shards) {
  std::map<std::string, std::string> m;
  for (const ShardPlan& p : shards)
    for (const TensorSpec& s : p.tensors)
      if (!m.emplace(s.name, p.file_name).second) fail("weight map: tensor '", s.name, "' is in two shards");
  return m;
}

inline std::uint64_t total_size(const std::vector<ShardPlan>& shards) {
  std::uint64_t n = 0;
  for (const ShardPlan& p : shards) n += p.size_bytes;
  return n;
}

// The index as transformers writes it: json.dumps(index, indent=2, sort_keys=True) + "\n",
// with {"metadata": {["total_parameters": P,] "total_size": S}, "weight_map": {...}}.
// LoongForge's final merge uses indent=4.
inline std::string index_json(const std::map<std::string, std::string>& weight_map, std::uint64_t total_size,
                              std::optional<std::uint64_t> total_parameters = std::nullopt, int indent = 2) {
  const std::string i1(indent, ' '), i2(2 * indent, ' ');
  std::string s = "{\n" + i1 + "\"metadata\": {\n";
  if (total_parameters) s += i2 + "\"total_parameters\": " + std::to_string(*total_parameters) + ",\n";
  s += i2 + "\"total_size\": " + std::to_string(total_size) + "\n" + i1 + "},\n" + i1 + "\"weight_map\": {";
  bool first = true;
  for (const auto& [name, file] : weight_map) {
    s += first ? "\n" : ",\n";
    first = false;
    s += i2;
    json::append_string_python(s, name);
    s += ": ";
    json::append_string_python(s, file);
  }
  s += first ? "}\n}\n" : "\n" + i1 + "}\n}\n";
  return s;
}

// Writes <dir>/model.safetensors.index.json atomically.
inline void write_index(const std::filesystem::path& dir, const std::map<std::string, std::string>& weight_map,
                        std::uint64_t total_size, std::optional<std::uint64_t> total_parameters = std::nullopt,
                        int indent = 2) {
  AtomicFile::write_all(dir / kIndexFileName, index_json(weight_map, total_size, total_parameters, indent));
}

}  // namespace ckbridge::safetensors

#pragma once
// safetensors::Checkpoint: a HF model directory. With model.safetensors.index.json the file of
// each tensor comes from `weight_map` only (never reconstructed: DeepSeek-V3 ships
// model-00001-of-000163 names); without it, every *.safetensors file in the directory is read.
// Shards are opened lazily, on first use, and stay open (mapped).
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ckbridge/format/json.hpp"
#include "ckbridge/format/safetensors_file.hpp"
#include "ckbridge/format/safetensors_writer.hpp"

namespace ckbridge::safetensors {

struct Index {
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> file, in index order
  std::optional<std::uint64_t> total_size;                      // metadata.total_size, if present
};

namespace detail {
// A shard name must stay inside the checkpoint directory: relative, no "..", no empty name.
inline void check_relative_name(std::string_view label, std::string_view tensor, std::string_view file) {
  const std::filesystem::path p(file);
  bool bad = file.empty() || p.is_absolute() || file.find('\0') != std::string_view::npos;
  for (const auto& part : p)
    if (part == "..") bad = true;
  if (bad) fail(label, ": tensor '", tensor, "' maps to file '", file, "', which is not a name inside the checkpoint directory");
}
}  // namespace detail

// Parses and validates an index file's text; `label` names it in errors.
inline Index parse_index(std::string_view text, std::string_view label) {
  rapidjson::Document doc;
  json::parse(doc, text, label);
  if (!doc.IsObject()) fail(label, ": index is not a JSON object");
  Index idx;
  const rapidjson::Value* wm = json::find_member(doc, "weight_map");
  if (!wm || !wm->IsObject()) fail(label, ": index has no \"weight_map\" object");
  std::set<std::string_view> seen;
  json::for_each_member(*wm, [&](const rapidjson::Value& k, const rapidjson::Value& v) {
    const std::string_view name = json::str(k);
    if (!v.IsString()) fail(label, ": weight_map entry of tensor '", name, "' is not a file name string");
    const std::string_view file = json::str(v);
    if (!seen.insert(name).second) fail(label, ": tensor '", name, "' is listed twice in weight_map");
    detail::check_relative_name(label, name, file);
    idx.weight_map.emplace_back(std::string(name), std::string(file));
  });
  const rapidjson::Value* md = json::find_member(doc, "metadata");
  if (md && md->IsObject()) {
    const rapidjson::Value* ts = json::find_member(*md, "total_size");
    std::uint64_t v;
    if (ts && json::get_u64(*ts, v)) idx.total_size = v;
  }
  return idx;
}

class Checkpoint {
public:
  struct Options {
    // HF hub cache snapshots link every file to ../../blobs/; allow that explicitly.
    bool allow_external_symlinks = false;
  };
  struct Located {
    const File& file;
    const TensorInfo& info;
  };

  explicit Checkpoint(std::filesystem::path dir) : Checkpoint(std::move(dir), Options{}) {}
  Checkpoint(std::filesystem::path dir, Options opt) : dir_(std::move(dir)), opt_(opt) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir_, ec)) fail(dir_.string(), ": not a directory");
    root_ = std::filesystem::canonical(dir_, ec);
    if (ec) fail(dir_.string(), ": cannot resolve: ", ec.message());
    const auto index_path = dir_ / kIndexFileName;
    if (std::filesystem::exists(index_path, ec)) {
      load_index(index_path);
    } else {
      scan_directory();
    }
  }
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const std::filesystem::path& directory() const { return dir_; }
  bool has_index() const { return has_index_; }
  // Tensor names: index order with an index; else file by file (files sorted by name), data order.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(std::string_view name) const { return where_.count(std::string(name)) != 0; }
  // Shard files (paths under directory()).
  std::vector<std::filesystem::path> files() const {
    std::vector<std::filesystem::path> v;
    for (const auto& s : shards_) v.push_back(s->path);
    return v;
  }
  std::size_t num_files() const { return shards_.size(); }
  // Opens shard i if needed.
  const File& file(std::size_t i) const { return open(*shards_.at(i)); }

  Located locate(std::string_view name) const {
    const auto it = where_.find(std::string(name));
    if (it == where_.end()) fail(dir_.string(), ": checkpoint has no tensor '", name, "'");
    const File& f = open(*shards_[it->second]);
    const TensorInfo* t = f.find(name);
    if (!t)
      fail(f.path().string(), ": has no tensor '", name, "', but ", kIndexFileName, " maps it to this file");
    return {f, *t};
  }
  AnyConstView view(std::string_view name) const {
    const Located l = locate(name);
    return l.file.view(l.info);
  }

  // Sum of tensor byte sizes (opens every shard); what index metadata.total_size should say.
  std::uint64_t total_size() const {
    std::uint64_t n = 0;
    for (const auto& name : names_) n += locate(name).info.size_bytes();
    return n;
  }
  std::optional<std::uint64_t> declared_total_size() const { return declared_total_size_; }

  // Opens every shard and checks that each indexed tensor is where the index says.
  void verify() const {
    for (const auto& name : names_) (void)locate(name);
  }

private:
  struct Shard {
    std::filesystem::path path;
    mutable std::mutex mu;
    mutable std::unique_ptr<File> file;
  };

  const File& open(const Shard& s) const {
    std::lock_guard lk(s.mu);
    if (!s.file) s.file = std::make_unique<File>(s.path);
    return *s.file;
  }

  // Resolves a shard name under the directory: it must exist and, unless allowed, not be a
  // symlink that leads out of the directory.
  std::filesystem::path resolve(std::string_view label, std::string_view tensor, const std::string& name) const {
    const auto p = dir_ / name;
    std::error_code ec;
    const auto real = std::filesystem::canonical(p, ec);
    if (ec)
      fail(label, ": shard '", name, "' (first tensor '", tensor, "') is missing: ", p.string(), ": ", ec.message());
    if (!opt_.allow_external_symlinks) {
      const auto rel = real.lexically_relative(root_);
      if (rel.empty() || *rel.begin() == "..")
        fail(label, ": shard '", name, "' (tensor '", tensor, "') resolves to ", real.string(),
             ", outside the checkpoint directory (symlink; for a HF hub cache snapshot set "
             "Checkpoint::Options::allow_external_symlinks)");
    }
    if (!std::filesystem::is_regular_file(real, ec)) fail(label, ": shard '", name, "' is not a regular file");
    return p;
  }

  void load_index(const std::filesystem::path& index_path) {
    has_index_ = true;
    std::ifstream in(index_path, std::ios::binary);
    if (!in) fail(index_path.string(), ": cannot open");
    std::ostringstream ss;
    ss << in.rdbuf();
    const std::string label = index_path.string();
    Index idx = parse_index(ss.str(), label);
    declared_total_size_ = idx.total_size;
    std::unordered_map<std::string, std::size_t> by_name;
    for (auto& [tensor, file] : idx.weight_map) {
      auto [it, fresh] = by_name.emplace(file, shards_.size());
      if (fresh) {
        auto s = std::make_unique<Shard>();
        s->path = resolve(label, tensor, file);
        shards_.push_back(std::move(s));
      }
      where_.emplace(tensor, it->second);
      names_.push_back(std::move(tensor));
    }
  }

  void scan_directory() {
    std::vector<std::string> found;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) {
      const std::string fn = e.path().filename().string();
      if (fn.size() > 12 && fn.ends_with(".safetensors")) found.push_back(fn);
    }
    if (ec) fail(dir_.string(), ": cannot list: ", ec.message());
    if (found.empty()) fail(dir_.string(), ": no ", kIndexFileName, " and no *.safetensors files");
    std::sort(found.begin(), found.end());
    for (const auto& fn : found) {
      auto s = std::make_unique<Shard>();
      s->path = resolve(dir_.string(), "(any)", fn);
      const File& f = open(*s);
      const std::size_t i = shards_.size();
      for (const TensorInfo& t : f.tensors()) {
        const auto [it, fresh] = where_.emplace(t.name, i);
        if (!fresh)
          fail(dir_.string(), ": tensor '", t.name, "' is in both ", shards_[it->second]->path.filename().string(),
               " and ", fn, " (and there is no index to choose)");
        names_.push_back(t.name);
      }
      shards_.push_back(std::move(s));
    }
  }

  std::filesystem::path dir_, root_;
  Options opt_;
  bool has_index_ = false;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::unordered_map<std::string, std::size_t> where_;
  std::vector<std::string> names_;
  std::optional<std::uint64_t> declared_total_size_;
};

}  // namespace ckbridge::safetensors

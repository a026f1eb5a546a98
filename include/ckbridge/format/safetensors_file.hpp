#pragma once
// safetensors::File: one .safetensors file, memory-mapped and validated on open. Views point
// straight into the mapping (zero copy); pages are read from disk when first touched.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/mapped_file.hpp"
#include "ckbridge/format/safetensors_header.hpp"

namespace ckbridge::safetensors {

class File {
public:
  explicit File(std::filesystem::path path) : map_(path) {
    // Opening reads only the header: without read-ahead of the tensor data behind it (the block
    // device's read-ahead, often MBs per file), then normal access for streaming the tensors.
    map_.advise_random(0, map_.size());
    header_ = parse_header({map_.data(), map_.size()}, map_.path().string());
    map_.advise_normal(0, map_.size());
    index_.reserve(header_.tensors.size());
    for (std::size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  File(File&&) noexcept = default;
  File& operator=(File&&) noexcept = default;

  const std::filesystem::path& path() const { return map_.path(); }
  const MappedFile& mapped() const { return map_; }
  const Header& header() const { return header_; }
  // Tensors in data order (ascending offsets).
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  std::size_t size() const { return header_.tensors.size(); }
  // `__metadata__` (empty if the file has none; header().metadata tells the two apart).
  const Metadata& metadata() const {
    static const Metadata empty;
    return header_.metadata ? *header_.metadata : empty;
  }

  const TensorInfo* find(std::string_view name) const {
    const auto it = index_.find(std::string(name));
    return it == index_.end() ? nullptr : &header_.tensors[it->second];
  }
  const TensorInfo& at(std::string_view name) const {
    const TensorInfo* t = find(name);
    if (!t) fail(path().string(), ": no tensor '", name, "' in this file");
    return *t;
  }

  // Absolute byte offset of a tensor's data in the file.
  std::uint64_t file_offset(const TensorInfo& t) const { return header_.data_offset() + t.begin; }
  std::span<const std::byte> bytes(const TensorInfo& t) const {
    return map_.bytes(static_cast<std::size_t>(file_offset(t)), static_cast<std::size_t>(t.size_bytes()));
  }
  std::span<const std::byte> bytes(std::string_view name) const { return bytes(at(name)); }

  // Zero-copy view into the mapping. Files from the reference writer keep every tensor aligned
  // to its element size; a hand-made file may not (see is_aligned) - typed access to such a
  // view must go through memcpy (e.g. Tensor::copy_of).
  AnyConstView view(const TensorInfo& t) const { return AnyConstView(bytes(t).data(), t.dtype, t.shape); }
  AnyConstView view(std::string_view name) const { return view(at(name)); }

  bool is_aligned(const TensorInfo& t) const {
    return reinterpret_cast<std::uintptr_t>(map_.data() + file_offset(t)) % dtype_size(t.dtype) == 0;
  }

private:
  MappedFile map_;
  Header header_;
  std::unordered_map<std::string, std::size_t> index_;
};

}  // namespace ckbridge::safetensors

#pragma once
// A conversion plan: every output file, every tensor in it, and how its bytes are produced from
// the source, decided before any data moves. The executor only runs producers and writers, so
// `--dry-run` can print exact file counts, bytes and the memory the run will need.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/tensor.hpp"

namespace ckbridge::convert {

// Makes one output tensor's bytes. Either returns a view of source memory (zero copy: `scratch`
// untouched, scratch_bytes 0) or fills `scratch` and returns a view of it.
struct Producer {
  DType dtype = DType::U8;
  Shape shape;
  std::size_t scratch_bytes = 0;  // working memory while it runs (planner's estimate)
  std::function<AnyConstView(Tensor& scratch)> run;
  // Optional, for checking a checkpoint (verify): whether the tensor's bytes equal `other`'s (same
  // dtype and shape, contiguous), compared against the stored pieces in place, without assembling
  // the tensor; does what `run` does besides (record CRC checks, copy checks). Empty where the
  // tensor is computed (dequantized, quantized, padded): then compare what `run` returns.
  std::function<bool(const AnyConstView& other)> equals = {};

  std::uint64_t bytes() const { return static_cast<std::uint64_t>(numel(shape)) * dtype_size(dtype); }
};

enum class EntryKind { Tensor, Fp8, None };

// One key of an output file: a plain tensor, a blockwise-FP8 tensor (data + scale_inv: two
// tensors on the HF side, one TE object on the MCore side), or None (`_extra_state`).
struct OutEntry {
  EntryKind kind = EntryKind::Tensor;
  std::string key;
  std::string dict;          // MCore: "model" / "model<s>"; HF: empty
  Producer data;             // the tensor, or the FP8 data
  Producer scale;            // FP8 only: scale_inv (TE-padded on the MCore side)
  std::string scale_key;     // HF FP8: the `weight_scale_inv` key
  bool pow2 = false;         // FP8: scales are powers of two (TE quantizer's force_pow_2_scales)
  std::string how;           // e.g. "split rows 1/2", "fp8 direct", "requant te" (for --dry-run)
  // Where the element at an index of the output tensor (of its scale when `scale`) is stored in
  // the source ("<file>: <key>"); empty when unknown. For messages (verify names the source file).
  std::function<std::string(const Shape& index, bool scale)> locate;
};

enum class FileFormat { Safetensors, TorchSave };

struct OutFile {
  std::filesystem::path rel;  // relative to the output root
  FileFormat format = FileFormat::Safetensors;
  std::vector<OutEntry> entries;
  int tp = 0, pp = 0, ep = 0;  // MCore rank indices (informational)

  std::uint64_t bytes() const {
    std::uint64_t n = 0;
    for (const auto& e : entries) {
      if (e.kind == EntryKind::None) continue;
      n += e.data.bytes();
      if (e.kind == EntryKind::Fp8) n += e.scale.bytes();
    }
    return n;
  }
  std::size_t peak_scratch() const {
    std::size_t m = 0;
    for (const auto& e : entries) m = std::max({m, e.data.scratch_bytes, e.data.scratch_bytes + e.scale.scratch_bytes});
    return m;
  }
};

using ArgValue = std::variant<std::monostate, bool, std::int64_t, double, std::string>;
using ArgList = std::vector<std::pair<std::string, ArgValue>>;

struct Plan {
  std::vector<OutFile> files;
  ArgList mcore_args;  // MCore outputs: the `args` Namespace of every file
  // Small text files written after all tensors (tracker, index, config.json), relative path -> content.
  std::vector<std::pair<std::filesystem::path, std::string>> small_files;
  // Coverage: every source tensor must be consumed exactly once by the plan.
  std::set<std::string> source_tensors;
  std::map<std::string, int> consumed;
  std::vector<std::string> notes;  // decisions worth telling the user (deviations, requantization)
  std::uint64_t source_bytes = 0;
  std::uint64_t largest_source_tensor = 0;  // bytes of the largest source tensor (0: unknown)
  std::vector<std::shared_ptr<const void>> keep_alive;  // source files the producers read from
  // Drops the source mappings' resident pages (they re-fault from the page cache if read again),
  // so the process's RSS tracks its working memory, not the bytes it has streamed.
  std::function<void()> release_sources;

  void consume(const std::string& name) { ++consumed[name]; }

  std::uint64_t output_bytes() const {
    std::uint64_t n = 0;
    for (const auto& f : files) n += f.bytes();
    return n;
  }
  std::size_t tensor_count() const {
    std::size_t n = 0;
    for (const auto& f : files)
      for (const auto& e : f.entries) n += e.kind == EntryKind::None ? 0 : (e.kind == EntryKind::Fp8 ? 2 : 1);
    return n;
  }
  // Peak working memory with `workers` files in flight: the largest per-file scratch needs.
  std::uint64_t peak_memory(int workers) const {
    std::vector<std::size_t> s;
    for (const auto& f : files) s.push_back(f.peak_scratch());
    std::sort(s.rbegin(), s.rend());
    std::uint64_t n = 0;
    for (std::size_t i = 0; i < s.size() && i < static_cast<std::size_t>(std::max(1, workers)); ++i) n += s[i];
    return n;
  }

  // The bytes of the largest tensor read or written (the memory bound is stated in it).
  std::uint64_t largest_tensor() const {
    std::uint64_t m = largest_source_tensor;
    for (const auto& f : files)
      for (const auto& e : f.entries) m = std::max(m, e.kind == EntryKind::None ? 0 : e.data.bytes());
    return m;
  }
  // What a run may use in anonymous memory (heap and scratch; mapped source pages are page cache,
  // not counted): 1 GB of fixed overhead plus twice the largest tensor.
  std::uint64_t anon_memory_bound() const { return 1000000000ull + 2 * largest_tensor(); }

  // Throws unless every source tensor is consumed exactly once.
  void check_coverage() const {
    std::vector<std::string> missing, twice, unknown;
    for (const auto& s : source_tensors) {
      auto it = consumed.find(s);
      if (it == consumed.end()) missing.push_back(s);
      else if (it->second > 1) twice.push_back(s);
    }
    for (const auto& [s, n] : consumed)
      if (!source_tensors.count(s)) unknown.push_back(s);
    auto list = [](const std::vector<std::string>& v) {
      std::string out;
      for (std::size_t i = 0; i < v.size() && i < 8; ++i) out += (i ? ", " : "") + v[i];
      if (v.size() > 8) out += ", ... (" + std::to_string(v.size()) + " in all)";
      return out;
    };
    if (!missing.empty())
      fail("the source has tensors the model config does not account for: ", list(missing),
           " (wrong config file, or a checkpoint of another model?)");
    if (!twice.empty()) fail("internal: plan consumes source tensors more than once: ", list(twice));
    if (!unknown.empty()) fail("internal: plan consumes tensors the source does not have: ", list(unknown));
  }
};

// Shares one computation (a quantization yielding data + scale) between two producers: the data
// producer runs it, the scale producer takes the stored second half. Memory is released as soon
// as both halves were taken.
class PairCache {
public:
  explicit PairCache(std::function<std::pair<Tensor, Tensor>()> compute) : compute_(std::move(compute)) {}
  Tensor take_first() {
    std::lock_guard lk(mu_);
    ensure();
    return std::move(first_);
  }
  Tensor take_second() {
    std::lock_guard lk(mu_);
    ensure();
    Tensor t = std::move(second_);
    done_ = false;  // a later take_first recomputes (only if a file asks again)
    return t;
  }

private:
  void ensure() {
    if (!done_) {
      auto p = compute_();
      first_ = std::move(p.first);
      second_ = std::move(p.second);
      done_ = true;
    }
  }
  std::mutex mu_;
  std::function<std::pair<Tensor, Tensor>()> compute_;
  Tensor first_, second_;
  bool done_ = false;
};

}  // namespace ckbridge::convert

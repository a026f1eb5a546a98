#pragma once
// MCore output in the `torch_dist` format: the single-rank (tp1 pp1 ep1) legacy plan's tensors,
// re-keyed and chunked as Megatron-Core saves them (torch_dist_keys.hpp), written with the
// streaming torch_dist writer into <out>/release/ (+ latest_checkpointed_iteration.txt), with
// common.pt holding what a legacy rank file holds besides the model (args with
// ckpt_format='torch_dist', checkpoint_version, iteration). A torch_dist checkpoint does not depend
// on the parallel layout, so no TP/PP/EP choice enters it.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ckbridge/convert/mcore_writer.hpp"
#include "ckbridge/convert/plan.hpp"
#include "ckbridge/convert/torch_dist_keys.hpp"
#include "ckbridge/format/torch_dist_writer.hpp"

namespace ckbridge::convert {

struct TorchDistOutOptions {
  std::int64_t num_experts = 0;
  bool gated = true;
  std::int64_t stacked_layers = 0;  // the layer count when decoder layers are stacked (homogeneous model)
  unsigned files = 2;  // data files (writer threads); Megatron-Core's default layout with 2
  bool fsync = true;
  // `.metadata` TensorProperties with the strides field (format::torch_dist::Metadata::strides_field):
  // as torch >= 2.1x writes it; default: the 5-field state that every torch version reads.
  bool strides_field = false;
  // Resumable writing (torch_dist_writer.hpp): where the writer keeps its progress (the run state
  // directory of convert/resume.hpp), how often it records it, and a fixed StorageMeta.save_id so
  // that a resumed run writes the same `.metadata` (empty: random).
  std::filesystem::path progress_dir;
  std::uint64_t sync_bytes = std::uint64_t(256) << 20;
  std::string save_id;
  bool write_small_files = true;  // the tracker; false: the caller writes plan.small_files (finish_run)
  // Called with the bytes of each chunk before it is written (progress, test seams).
  std::function<void(std::uint64_t)> on_chunk;
};

// A uuid4-formatted id derived from a string (a run fingerprint): the same run, the same id.
inline std::string uuid_from(const std::string& s) {
  std::uint64_t h1 = 1469598103934665603ull, h2 = 0x9e3779b97f4a7c15ull;
  for (unsigned char c : s) {
    h1 = (h1 ^ c) * 1099511628211ull;
    h2 = (h2 ^ c) * 0x100000001b3ull + 0x9e3779b9u;
  }
  unsigned char b[16];
  for (int k = 0; k < 8; ++k) b[k] = static_cast<unsigned char>(h1 >> (8 * k)), b[8 + k] = static_cast<unsigned char>(h2 >> (8 * k));
  b[6] = static_cast<unsigned char>((b[6] & 0x0F) | 0x40);
  b[8] = static_cast<unsigned char>((b[8] & 0x3F) | 0x80);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += hex[b[i] >> 4];
    out += hex[b[i] & 15];
  }
  return out;
}

// The write entries for the model dict of a single-rank legacy plan file.
inline std::vector<format::torch_dist::WriteEntry> torch_dist_entries(const OutFile& f, const TorchDistOutOptions& o) {
  namespace td = format::torch_dist;
  std::vector<const OutEntry*> tensors;
  for (const auto& e : f.entries) {
    if (e.dict != "model")
      fail("torch_dist output: entry '", e.dict, "/", e.key, "' is not in the model dict (virtual pipeline chunks have no torch_dist form here)");
    if (e.kind == EntryKind::None) continue;  // _extra_state: derived from the linears below
    if (e.kind == EntryKind::Fp8)
      fail("torch_dist output: '", e.key, "' is a blockwise-FP8 weight; ckbridge does not write FP8 into torch_dist yet "
           "(Megatron-Core saves and loads such weights in their high-precision form): pass --dequantize_fp8 to store "
           "it as --torch_dtype (bfloat16 by default)");
    tensors.push_back(&e);
  }
  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const OutEntry* a, const OutEntry* b) { return torch_dist_order(a->key, b->key); });
  std::vector<td::WriteEntry> out;
  std::map<std::string, std::size_t> pos;
  for (const OutEntry* e : tensors) {
    const TorchDistTarget t = torch_dist_target(e->key, e->data.shape, o.num_experts, o.gated, o.stacked_layers);
    auto it = pos.find(t.key);
    if (it == pos.end()) {
      td::WriteEntry w;
      w.fqn = t.key;
      w.dtype = e->data.dtype;
      w.size = t.global;
      if (!t.stacked) w.strides = contiguous_strides(t.pieces.front().sizes);
      it = pos.emplace(t.key, out.size()).first;
      out.push_back(std::move(w));
    }
    td::WriteEntry& w = out[it->second];
    if (w.dtype != e->data.dtype || w.size != t.global)
      fail("torch_dist output: '", e->key, "' (", shape_str(e->data.shape), " ", e->data.dtype, ") does not stack into '",
           t.key, "' ", shape_str(w.size), " ", w.dtype);
    for (const auto& p : t.pieces) {
      td::WriteChunk c;
      c.offsets = p.offsets;
      c.sizes = p.sizes;
      c.index = p.index;
      const Producer prod = e->data;
      const Shape src_off = p.source_offsets;
      Shape src_sizes = p.sizes;
      src_sizes.erase(src_sizes.begin(), src_sizes.begin() + static_cast<std::ptrdiff_t>(t.prepended));
      const std::size_t prepended = t.prepended;
      const auto on_chunk = o.on_chunk;
      const std::uint64_t chunk_bytes = static_cast<std::uint64_t>(numel(p.sizes)) * dtype_size(e->data.dtype);
      // The legacy producer's tensor (a view of the source, or made in `scratch`), cut to the chunk.
      c.produce = [prod, src_off, src_sizes, prepended, on_chunk, chunk_bytes](Tensor& scratch) {
        if (on_chunk) on_chunk(chunk_bytes);
        AnyConstView v = prod.run(scratch);
        if (v.shape != prod.shape) fail("torch_dist output: producer made ", shape_str(v.shape), ", expected ", shape_str(prod.shape));
        for (std::size_t d = 0; d < src_off.size(); ++d) v = v.slice(d, src_off[d], src_off[d] + src_sizes[d]);
        for (std::size_t a = 0; a < prepended; ++a) {  // leading layer / expert axes of 1
          v.strides.insert(v.strides.begin(), v.shape.empty() ? 1 : v.strides[0] * v.shape[0]);
          v.shape.insert(v.shape.begin(), 1);
        }
        return v;
      };
      w.chunks.push_back(std::move(c));
    }
    if (t.extra_state && !pos.count(*t.extra_state)) {
      pos.emplace(*t.extra_state, out.size());
      out.push_back(td::WriteEntry::extra_state_none(*t.extra_state));
    }
  }
  return out;
}

// The write entries of a single-rank MCore plan (refuses what torch_dist cannot hold, e.g. FP8
// weights, before anything is written).
inline std::vector<format::torch_dist::WriteEntry> torch_dist_entries(const Plan& plan, const TorchDistOutOptions& o) {
  if (plan.files.size() != 1 || plan.files.front().format != FileFormat::TorchSave)
    fail("internal: torch_dist output needs a single-rank MCore plan, got ", plan.files.size(), " files");
  return torch_dist_entries(plan.files.front(), o);
}

// The iteration directory a plan's torch_dist output goes to, relative to the output root.
inline std::filesystem::path torch_dist_iteration_dir(const Plan& plan) {
  return plan.files.at(0).rel.parent_path().parent_path();  // release/mp_rank_00/x.pt -> release
}

// Writes the entries (torch_dist_entries of the plan) as a torch_dist checkpoint under `out`.
inline format::torch_dist::WriteReport write_torch_dist(const Plan& plan,
                                                        const std::vector<format::torch_dist::WriteEntry>& entries,
                                                        const std::filesystem::path& out, const TorchDistOutOptions& o) {
  const std::filesystem::path iter_dir = out / torch_dist_iteration_dir(plan);
  // common.pt: what a legacy rank file holds besides the model
  std::vector<std::pair<std::string, pickle::Value>> ns;
  std::int64_t iteration = 0;
  for (const auto& [k, v] : plan.mcore_args) {
    if (k == "ckpt_format") ns.push_back({k, pickle::Value(std::string("torch_dist"))});
    else ns.push_back({k, arg_value(v)});
    if (k == "iteration" && std::holds_alternative<std::int64_t>(v)) iteration = std::get<std::int64_t>(v);
  }
  pickle::Value common = pickle::Value::dict();
  common.set("args", pickle::Value::namespace_(std::move(ns)));
  common.set("checkpoint_version", 3.0);
  common.set("iteration", iteration);
  format::torch_dist::WriteOptions wo;
  wo.files = o.files;
  wo.common = common;
  wo.fsync = o.fsync;
  wo.checkpoint_id = iter_dir.string();
  wo.progress_dir = o.progress_dir;
  wo.sync_bytes = o.sync_bytes;
  wo.save_id = o.save_id;
  wo.strides_field = o.strides_field;
  auto rep = format::torch_dist::write_checkpoint(iter_dir, entries, wo);
  if (!o.write_small_files) return rep;
  for (const auto& [rel, text] : plan.small_files) {  // the tracker file
    format::AtomicFileSink s((out / rel).string(), o.fsync);
    s.write(text.data(), text.size());
    s.commit();
  }
  return rep;
}

// The same, entries made from the plan.
inline format::torch_dist::WriteReport write_torch_dist(const Plan& plan, const std::filesystem::path& out,
                                                        const TorchDistOutOptions& o) {
  return write_torch_dist(plan, torch_dist_entries(plan, o), out, o);
}

}  // namespace ckbridge::convert

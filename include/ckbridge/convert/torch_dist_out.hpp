#pragma once
// MCore output in the `torch_dist` format: the single-rank (tp1 pp1 ep1) legacy plan's tensors,
// re-keyed and chunked as Megatron-Core saves them (torch_dist_keys.hpp), written with the
// streaming torch_dist writer into <out>/release/ (+ latest_checkpointed_iteration.txt), with
// common.pt holding what a legacy rank file holds besides the model (args with
// ckpt_format='torch_dist', checkpoint_version, iteration). A torch_dist checkpoint does not depend
// on the parallel layout, so no TP/PP/EP choice enters it.
#include <filesystem>
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
};

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
           "(pass --dequantize_fp8 to store it as ", "bfloat16)");
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
      // The legacy producer's tensor (a view of the source, or made in `scratch`), cut to the chunk.
      c.produce = [prod, src_off, src_sizes, prepended](Tensor& scratch) {
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

// Writes the plan's single rank file as a torch_dist checkpoint under `out`.
inline format::torch_dist::WriteReport write_torch_dist(const Plan& plan, const std::filesystem::path& out,
                                                        const TorchDistOutOptions& o) {
  if (plan.files.size() != 1 || plan.files.front().format != FileFormat::TorchSave)
    fail("internal: torch_dist output needs a single-rank MCore plan, got ", plan.files.size(), " files");
  const OutFile& f = plan.files.front();
  const std::filesystem::path iter_dir = out / f.rel.parent_path().parent_path();  // <out>/release
  auto entries = torch_dist_entries(f, o);
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
  auto rep = format::torch_dist::write_checkpoint(iter_dir, entries, wo);
  for (const auto& [rel, text] : plan.small_files) {  // the tracker file
    format::AtomicFileSink s((out / rel).string(), o.fsync);
    s.write(text.data(), text.size());
    s.commit();
  }
  return rep;
}

}  // namespace ckbridge::convert

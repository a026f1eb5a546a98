#pragma once
// Plans MCore (legacy torch checkpoint) -> HF (safetensors): every parameter instance is
// assembled from its TP shards (views into the memory-mapped rank files), merged by the inverse
// of its layout map, and written under its HF name in the canonical HF layout, keeping FP8 data
// and scales without re-quantization where the blocks allow it.
#include <map>
#include <set>
#include <memory>
#include <string>
#include <vector>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/convert/hf_files.hpp"
#include "ckbridge/convert/hf_layout.hpp"
#include "ckbridge/convert/hf_to_mcore.hpp"
#include "ckbridge/convert/mcore_source.hpp"

namespace ckbridge::convert {

// Reads parameter instances from an MCore legacy checkpoint of a known layout: validates the
// file set, registers every stored tensor for the coverage check, and assembles each instance
// from its TP shards (zero-copy views). The checkpoint's files stay mapped while the plan lives.
class McoreSources {
public:
  McoreSources(McoreCheckpoint& ck, const NameMap& nm, const ModelShape& shape, const ConvertOptions& o, Plan& plan)
      : ck_(ck), nm_(nm), shape_(shape), o_(o), dims_(run_dims(shape, o)), pp_(pipeline(shape, o)),
        files_(ParallelOptions{o.tp, o.pipeline.pp, shape.num_experts > 0 ? o.ep : 1, o.etp, shape.num_experts}) {
    shape.validate();
    std::set<std::string> want, have;
    for (const auto& f : files_.all_files()) want.insert(f.dir);
    for (const auto& r : ck.dir().ranks) have.insert(r.name);
    if (want != have) {
      std::string w, h;
      for (const auto& x : want) w += (w.empty() ? "" : " ") + x;
      for (const auto& x : have) h += (h.empty() ? "" : " ") + x;
      fail(ck.dir().iter_dir.string(), ": the parallel flags (TP ", o.tp, ", PP ", o.pipeline.pp, ", EP ",
           shape.num_experts > 0 ? o.ep : 1, ", ETP ", files_.etp(), ") imply rank directories {", w,
           "} but the checkpoint has {", h, "}");
    }
    std::vector<const MappedFile*> maps;
    for (auto& [name, f] : ck.all_files()) {
      plan.keep_alive.push_back(f);
      maps.push_back(f->file->zip().mapped_file());
      for (const auto& m : f->models)
        for (const auto& e : m.entries) {
          using K = format::ModelEntry::Kind;
          if (e.kind == K::Tensor || e.kind == K::TeFp8Blockwise) {
            plan.source_tensors.insert(mcore_source_id(name, m.key, e.name));
            if (e.fp8 && e.fp8->rowwise_data) plan.source_bytes += static_cast<std::uint64_t>(numel(e.fp8->shape));
            else if (e.tensor && e.tensor->dtype)
              plan.source_bytes += static_cast<std::uint64_t>(numel(e.tensor->shape)) * dtype_size(*e.tensor->dtype);
          }
        }
    }
    plan.release_sources = [maps] {
      for (const MappedFile* m : maps)
        if (m) m->release(0, m->size());
    };
    // Planning reads only FP8 scales (power-of-two check): no read-ahead around those small reads
    // while any copy of this object lives; afterwards normal access, and the pages read dropped.
    for (const MappedFile* m : maps)
      if (m) m->advise_random(0, m->size());
    random_access_ = std::shared_ptr<int>(new int(0), [maps](int* token) {
      delete token;
      for (const MappedFile* m : maps)
        if (m) {
          m->advise_normal(0, m->size());
          m->release(0, m->size());
        }
    });
  }

  bool any_fp8() const { return any_fp8_; }
  // Copies of an instance stored in later pipeline stages (the MTP stage's embedding).
  const std::vector<std::shared_ptr<const LogicalSource>>& copies_of(const LogicalSource* src) const {
    static const std::vector<std::shared_ptr<const LogicalSource>> none;
    auto it = copies_.find(src);
    return it == copies_.end() ? none : it->second;
  }
  bool all_pow2() const { return all_pow2_; }

  std::shared_ptr<const LogicalSource> operator()(const Instance& in, Plan& plan) {
    const ConvertOptions& o = o_;
    const PipelinePlan& pp = pp_;
    const McoreFileLayout& files = files_;
    const NameMap& nm = nm_;
    McoreCheckpoint& ck = ck_;
    const bool expert = in.kind.where == model::Where::Expert;
    const int size = expert ? files.etp() : o.tp;
    // stages holding the instance: the first one is read, the others (embedding copies on MTP
    // stages) are duplicates that only count as consumed
    std::vector<std::pair<int, int>> stages = stages_holding(pp, in);
    std::shared_ptr<const LogicalSource> tied_to;  // a tied output layer: the embedding it copies
    if (!in.kind.tied_to.empty()) {
      auto it = first_stage_.find(in.kind.tied_to);
      if (it == first_stage_.end())
        fail("internal: '", in.kind.common, "' is tied to '", in.kind.tied_to, "', which the model does not have");
      if (stages.empty()) return it->second;  // not stored in this layout: the embedding itself
      tied_to = it->second;
    }
    if (in.kind.where == model::Where::FirstStage)  // read from the first partition (vp 0)
      std::stable_sort(stages.begin(), stages.end(), [&](auto a, auto b) {
        return pp.has_embedding(a.first, a.second) > pp.has_embedding(b.first, b.second);
      });
    McoreSlot slot = layer_slot(pp, in, o.grouped_gemm);

    // shards[si][r]: the stage holding the instance first is read; later stages hold copies
    // (the MTP stage's embedding), kept to be checked equal while the data streams
    std::vector<std::vector<McoreShard>> shards(stages.size(), std::vector<McoreShard>(static_cast<std::size_t>(size)));
    std::vector<std::vector<bool>> got(stages.size(), std::vector<bool>(static_cast<std::size_t>(size), false));
    std::string key0;
    for (std::size_t si = 0; si < stages.size(); ++si) {
      const auto [p, s] = stages[si];
      const std::string dict = pp.model_key(s);
      for (const auto& f : files.stage_files(p)) {
        int r = 0;
        if (!shard_in_file(f, in, expert, r, slot)) continue;
        const McoreKey mk = mcore_key(nm, in, slot);
        if (key0.empty()) key0 = mk.key;
        plan.consume(mcore_source_id(f.dir, dict, mk.key));
        if (!got[si][static_cast<std::size_t>(r)]) {
          auto rf = ck.rank_file(f.tp_rank, f.pp_rank, f.ep_rank);
          shards[si][static_cast<std::size_t>(r)] = read_mcore_shard(*rf, dict, mk.key);
          got[si][static_cast<std::size_t>(r)] = true;
        }
      }
    }
    for (int r = 0; r < size; ++r)
      if (!got[0][static_cast<std::size_t>(r)]) fail("no file of the checkpoint holds shard ", r, " of ", in.label());
    const McoreEntry& me = nm.mcore_entry(names_detail::split_keys(in.kind.common).back());
    const bool fp8 = shards[0].front().scale.has_value();
    const bool replicate = me.ignore_tp || (fp8 && me.fp8_ignore_tp);
    const Shape full = in.kind.shape(dims_);
    const auto maps = kind_maps(in.kind, dims_, replicate, key0, full, size);
    auto src = mcore_logical_source(key0, full, shards[0], maps);
    for (std::size_t si = 1; si < stages.size(); ++si) {
      bool all = true;
      for (int r = 0; r < size; ++r) all = all && got[si][static_cast<std::size_t>(r)];
      if (all) copies_[src.get()].push_back(mcore_logical_source(key0, full, shards[si], maps));
    }
    any_fp8_ = any_fp8_ || src->fp8;
    if (src->fp8) all_pow2_ = all_pow2_ && src->pow2;
    if (in.kind.where == model::Where::FirstStage) first_stage_[std::string(in.kind.common)] = src;
    if (tied_to) copies_[tied_to.get()].push_back(src);  // checked equal to the embedding on MCore -> HF
    return src;
  }

private:
  static PipelinePlan pipeline(const ModelShape& shape, const ConvertOptions& o) {
    PipelineOptions po = o.pipeline;
    po.num_layers = shape.num_layers;
    po.mtp_num_layers = shape.mtp_num_layers;
    return PipelinePlan(po);
  }
  McoreCheckpoint& ck_;
  const NameMap& nm_;
  const ModelShape& shape_;
  ConvertOptions o_;
  model::Dims dims_;
  PipelinePlan pp_;
  McoreFileLayout files_;
  bool any_fp8_ = false, all_pow2_ = true;
  std::map<const LogicalSource*, std::vector<std::shared_ptr<const LogicalSource>>> copies_;
  std::map<std::string, std::shared_ptr<const LogicalSource>, std::less<>> first_stage_;  // by kind
  std::shared_ptr<int> random_access_;  // restores normal access when the last copy goes
};

// Wraps `e`'s producer so that every copy of its source (held by other pipeline stages) is
// compared with the original while the data streams: a copy that differs fails the run naming
// both places. Plans read no data; this check costs one read of each copy.
inline void check_copies_while_streaming(OutEntry& e, const std::shared_ptr<const LogicalSource>& src,
                                         const std::vector<std::shared_ptr<const LogicalSource>>& copies) {
  if (copies.empty()) return;
  auto inner = e.data.run;
  e.data.equals = {};  // the copies are compared where the data is assembled
  e.data.run = [inner, src, copies](Tensor& scratch) {
    const AnyConstView v = inner(scratch);
    const layout::Box all{Shape(src->full.size(), 0), src->full};
    Tensor a;
    const AnyConstView va = produce_detail::gather_into(*src, src->data, src->dtype, region_map(all), a);
    const Tensor ca = va.is_contiguous() ? Tensor() : Tensor::copy_of(va);
    const AnyConstView da = va.is_contiguous() ? va : ca.cview();
    for (const auto& c : copies) {
      for (const auto& v : c->verify_reads) v();
      Tensor b;
      const AnyConstView vb = produce_detail::gather_into(*c, c->data, c->dtype, region_map(all), b);
      const Tensor cb = vb.is_contiguous() ? Tensor() : Tensor::copy_of(vb);
      const AnyConstView db = vb.is_contiguous() ? vb : cb.cview();
      if (c->dtype != src->dtype || std::memcmp(da.data, db.data, da.size_bytes()) != 0) {
        // name the stored pieces that hold the first differing element
        const std::size_t es = dtype_size(src->dtype);
        std::size_t i = 0;
        while (c->dtype == src->dtype && i + es <= da.size_bytes() && std::memcmp(da.data + i, db.data + i, es) == 0) i += es;
        Shape idx(src->full.size(), 0);
        std::int64_t flat = static_cast<std::int64_t>(i / es);
        for (std::size_t d = idx.size(); d-- > 0;) {
          idx[d] = src->full[d] ? flat % src->full[d] : 0;
          flat = src->full[d] ? flat / src->full[d] : 0;
        }
        const std::string wa = placed_origin(src->data, idx), wb = placed_origin(c->data, idx);
        fail("'", wb.empty() ? c->name : wb, "' is a copy of '", wa.empty() ? src->name : wa,
             "' (the same parameter held by another pipeline stage) but differs at ", shape_str(idx),
             "; the checkpoint is inconsistent");
      }
    }
    return v;
  };
}

// MCore -> MCore: read one layout, write another (no HF files, no full model in memory; FP8
// blocks move without re-quantization where the new boundaries allow).
inline Plan plan_mcore_to_mcore(const model::ModelSpec& spec, McoreCheckpoint& ck, const NameMap& nm,
                                const ModelShape& shape, const ConvertOptions& source_layout,
                                const ConvertOptions& target) {
  Plan plan;
  McoreSources read(ck, nm, shape, source_layout, plan);
  plan_to_mcore(spec, plan, nm, shape, target, [&](const Instance& in, Plan& pl) { return read(in, pl); });
  plan.check_coverage();
  return plan;
}

inline Plan plan_mcore_to_hf(const model::ModelSpec& spec, McoreCheckpoint& ck, const NameMap& nm,
                             const ModelShape& shape, const config::ModelConfig& mc, const ConvertOptions& o) {
  Plan plan;
  McoreSources read(ck, nm, shape, o, plan);
  const std::vector<Instance> inst = enumerate_instances(spec, shape);
  std::vector<std::shared_ptr<const LogicalSource>> sources;
  for (const Instance& in : inst) sources.push_back(read(in, plan));
  // FP8 sources make an FP8 HF checkpoint, except kinds the YAML keeps BF16 in HF (`dtype: bf16`,
  // Kimi K2's FP8-training q_down / kv_down: dequantized)
  bool any_fp8 = false;
  for (std::size_t i = 0; i < inst.size(); ++i)
    any_fp8 = any_fp8 ||
              (sources[i]->fp8 && !nm.hf_bf16_mcore_fp8(names_detail::split_keys(inst[i].kind.common).back()));
  plan.check_coverage();

  // HF side: the canonical layout, dtypes decided per tensor.
  const bool hf_fp8 = (any_fp8 && !o.dequantize_fp8) || o.convert_to_fp8;
  std::vector<HfTensor> layout = hf_layout(spec, nm, shape, {hf_fp8, o.torch_dtype});
  auto inst_float32 = [&](const HfTensor& t) { return inst[t.instance].kind.hf_float32; };
  std::map<std::string, std::size_t> by_key;
  for (std::size_t k = 0; k < layout.size(); ++k) by_key[layout[k].key] = k;
  std::map<std::string, OutEntry> entries;  // HF key -> entry (weights and scales separately)
  std::vector<safetensors::TensorSpec> specs;
  bool written_pow2 = true;
  std::set<DType> weight_dtypes;  // of the tensors written unquantized (not float32 kinds): config.json's torch_dtype
  for (const HfTensor& t : layout) {
    if (t.is_scale) continue;  // made with its weight
    const HfTensor& orig = t.is_copy ? layout[by_key.at(t.copy_of)] : t;
    const auto& src = sources[orig.instance];
    const bool target_fp8 = orig.dtype == DType::F8_E4M3 && !(o.dequantize_fp8 && src->fp8);
    layout::Box region{Shape(src->full.size(), 0), src->full};
    if (!region.extent.empty() && orig.shape != src->full) {  // one part of [gate; up] or [q; k; v]
      region.extent = orig.shape;
      region.begin[0] = orig.row0;
    }
    const Fp8Settings fs = fp8_settings(o, *src, quant::ScaleLayout::Unpadded);
    OutEntry e = make_entry(src, region_map(region), target_fp8, fs);
    if (!t.is_copy) check_copies_while_streaming(e, src, read.copies_of(src.get()));
    if (e.how == "fp8 requantize" || e.how == "quantize")
      plan.notes.push_back((e.how == "quantize" ? "quantizing " : "re-quantizing ") + t.key);
    if (e.kind == EntryKind::Fp8) {
      written_pow2 = written_pow2 && e.pow2;
      OutEntry s;
      s.kind = EntryKind::Tensor;
      s.key = hf_scale_key(nm, t.key);
      s.data = e.scale;
      s.how = e.how;
      if (e.locate) s.locate = [l = e.locate](const Shape& idx, bool) { return l(idx, true); };
      specs.push_back({t.key, e.data.dtype, e.data.shape});
      specs.push_back({s.key, s.data.dtype, s.data.shape});
      entries[s.key] = std::move(s);
      e.kind = EntryKind::Tensor;
      e.scale = {};
    } else {
      specs.push_back({t.key, e.data.dtype, e.data.shape});
      if (!inst_float32(orig)) weight_dtypes.insert(e.data.dtype);
    }
    e.key = t.key;
    entries[t.key] = std::move(e);
  }
  const HfFileSet fset = hf_file_set(specs, o.hf_max_shard_bytes);
  for (const auto& sh : fset.shards) {
    OutFile of;
    of.rel = sh.file_name;
    of.format = FileFormat::Safetensors;
    for (const auto& spec : sh.tensors) of.entries.push_back(std::move(entries.at(spec.name)));
    plan.files.push_back(std::move(of));
  }
  if (!fset.index_json.empty()) plan.small_files.push_back({std::string(safetensors::kIndexFileName), fset.index_json});
  config::HfJsonOptions jo;
  jo.fp8_quantization_config = hf_fp8;
  if (hf_fp8 && written_pow2) jo.scale_fmt = "ue8m0";
  // the dtype the weights keep (a float16 Llama 2 stays float16); --torch_dtype when they are FP8 or mixed
  jo.dtype = std::string(torch_dtype_name(weight_dtypes.size() == 1 ? *weight_dtypes.begin() : o.torch_dtype));
  plan.small_files.push_back({"config.json", hf_config_json(spec, mc, jo) + "\n"});
  return plan;
}

}  // namespace ckbridge::convert

#pragma once
// Plans HF (safetensors) -> MCore (legacy torch checkpoint): every parameter instance of the model
// spec is read from the HF checkpoint (zero-copy views), cut by its kind's layout into shards, and
// placed into the files of its pipeline stage (and EP rank, for experts) under its MCore name.
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "ckbridge/convert/instances.hpp"
#include "ckbridge/convert/names.hpp"
#include "ckbridge/convert/options.hpp"
#include "ckbridge/convert/parallel_layout.hpp"
#include "ckbridge/convert/plan.hpp"
#include "ckbridge/convert/produce.hpp"
#include "ckbridge/convert/kind_maps.hpp"
#include "ckbridge/layout/vocab_pad.hpp"
#include "ckbridge/format/safetensors_checkpoint.hpp"

namespace ckbridge::convert {

// Reads the HF tensors of one instance (several keys = parts concatenated along dim 0) and their
// FP8 scales, and marks them consumed.
inline std::shared_ptr<LogicalSource> hf_source(const safetensors::Checkpoint& ck, const NameMap& nm,
                                                const std::vector<std::string>& keys, Plan& plan) {
  auto src = std::make_shared<LogicalSource>();
  src->name = keys.front();
  std::vector<AnyConstView> parts;
  for (const auto& k : keys) {
    if (!ck.contains(k))
      fail(ck.directory().string(), ": tensor '", k, "' required by the model config is missing from the checkpoint");
    parts.push_back(ck.view(k));
    plan.consume(k);
  }
  const AnyConstView& p0 = parts.front();
  for (std::size_t i = 1; i < parts.size(); ++i) {
    if (parts[i].dtype != p0.dtype || parts[i].rank() != p0.rank() ||
        !std::equal(parts[i].shape.begin() + 1, parts[i].shape.end(), p0.shape.begin() + 1))
      fail(ck.directory().string(), ": tensors '", keys[0], "' ", shape_str(p0.shape), " ", p0.dtype, " and '",
           keys[i], "' ", shape_str(parts[i].shape), " ", parts[i].dtype, " cannot be concatenated along dim 0");
  }
  src->dtype = p0.dtype;
  src->data = place_rows(parts);
  src->full = placed_extent(src->data);
  if (p0.dtype == DType::F8_E4M3) {
    src->fp8 = true;
    src->pow2 = true;
    std::vector<AnyConstView> scales;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      const std::string sk = hf_scale_key(nm, keys[i]);
      if (!ck.contains(sk))
        fail(ck.directory().string(), ": FP8 tensor '", keys[i], "' has no scale tensor '", sk, "'");
      const AnyConstView s = ck.view(sk);
      const auto mn = quant::as_matrix(parts[i].shape);
      quant::check_scale_shape(sk, mn.m, mn.n, s.shape);
      if (s.dtype != DType::F32) fail(ck.directory().string(), ": scale '", sk, "' is ", s.dtype, ", expected F32");
      const AnyConstView trimmed = s.slice(1, 0, quant::block_count(mn.n));
      if (src->pow2) {
        src->pow2 = quant::is_power_of_two(trimmed, mn.m, mn.n, sk);
        ck.locate(sk).file.mapped().release_at(s.data, s.size_bytes());  // the plan keeps no source pages
      }
      scales.push_back(trimmed);
      src->fp8_pieces.push_back({parts[i], trimmed, region_map(layout::Box{src->data[i].origin, parts[i].shape})});
      plan.consume(sk);
      if (i + 1 < keys.size() && parts[i].shape[0] % quant::kBlock != 0) src->blocks_tile = false;
    }
    if (p0.rank() != 2) fail(ck.directory().string(), ": FP8 tensor '", keys[0], "' must be 2-D, is ", shape_str(p0.shape));
    if (src->blocks_tile) {
      std::int64_t row = 0;
      for (const auto& s : scales) {
        src->scale.push_back({s, Shape{row, 0}, {}});
        row += s.shape[0];
      }
    }
  } else {
    for (const auto& k : keys)
      if (k.size() >= 6 && k.compare(k.size() - 6, 6, "weight") == 0 && ck.contains(hf_scale_key(nm, k)))
        fail(ck.directory().string(), ": tensor '", k, "' is ", p0.dtype, " but has an FP8 scale '", hf_scale_key(nm, k),
             "'");
  }
  return src;
}

// MCore-side settings a plan needs beyond ConvertOptions.
struct McoreTarget {
  std::string iteration_dir() const { return iteration < 0 ? "release" : iter_name(); }
  std::int64_t iteration = -1;

private:
  std::string iter_name() const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "iter_%07lld", static_cast<long long>(iteration));
    return buf;
  }
};

// Decides the FP8 treatment of one instance. `src_fp8`: the source holds FP8 data.
// A BF16 source is quantized with --convert_to_fp8, or where the YAML says BF16 in HF and FP8 in
// MCore for a kind that is FP8 in FP8 checkpoints (Kimi K2's FP8-training q_down / kv_down; DeepSeek
// V3's eh_proj stays BF16 unless asked, docs/loongforge-deviations.md).
inline bool target_is_fp8(const model::ParamKind& k, const McoreEntry& me, bool src_fp8, const ConvertOptions& o,
                          bool hf_bf16_mcore_fp8 = false) {
  if (src_fp8) return !o.dequantize_fp8;
  if (!o.convert_to_fp8)
    return hf_bf16_mcore_fp8 && (k.fp8 == model::Fp8::Blockwise || k.fp8 == model::Fp8::BlockwiseNoTp);
  return k.fp8 != model::Fp8::Never || me.fp8 || me.dtype == "fp8";
}

// The `args` Namespace Megatron's check_checkpoint_args compares, plus the layout we wrote.
inline ArgList mcore_args(const ModelShape& shape, const ConvertOptions& o, const PipelinePlan& pp, int etp) {
  ArgList a(shape.args.begin(), shape.args.end());
  auto set = [&](const std::string& k, ArgValue v) {
    for (auto& [key, val] : a)
      if (key == k) {
        val = std::move(v);
        return;
      }
    a.emplace_back(k, std::move(v));
  };
  set("num_layers", std::int64_t{shape.num_layers});
  set("tensor_model_parallel_size", std::int64_t{o.tp});
  set("pipeline_model_parallel_size", std::int64_t{pp.pp()});
  if (pp.vpp() > 1) set("num_virtual_stages_per_pipeline_rank", std::int64_t{pp.vpp()});
  if (shape.num_experts > 0) {
    set("num_experts", std::int64_t{shape.num_experts});
    set("expert_model_parallel_size", std::int64_t{o.ep});
    set("expert_tensor_parallel_size", std::int64_t{etp});
    set("moe_grouped_gemm", o.grouped_gemm);
  }
  set("mtp_num_layers", std::int64_t{shape.mtp_num_layers});
  set("vocab_size", shape.vocab_size);
  set("make_vocab_size_divisible_by", o.make_vocab_size_divisible_by);
  set("padded_vocab_size",
      layout::padded_vocab_size(shape.vocab_size, o.make_vocab_size_divisible_by, o.tp, o.pad_vocab_size_to));
  set("add_position_embedding", false);
  set("ckpt_format", std::string("torch"));
  set("iteration", std::int64_t{o.iteration < 0 ? 0 : o.iteration});
  // The pipeline layout flags, so a later run can read the layout back from the checkpoint.
  if (o.pipeline.custom) {
    std::string c;
    for (int v : *o.pipeline.custom) c += (c.empty() ? "" : ",") + std::to_string(v);
    set("custom_pipeline_layers", c);
  }
  if (o.pipeline.layout) set("pipeline_model_parallel_layout", *o.pipeline.layout);
  if (o.pipeline.dualpipev) set("vpp_scheduler", std::string("dualpipev"));
  if (o.pipeline.first) set("decoder_first_pipeline_num_layers", std::int64_t{*o.pipeline.first});
  if (o.pipeline.last) set("decoder_last_pipeline_num_layers", std::int64_t{*o.pipeline.last});
  return a;
}

// The (pp rank, virtual stage) pairs whose state dicts hold an instance: its layer's stage; the
// embedding on the first partition and on every partition with MTP blocks (MTP needs it); final
// norm and output layer where the last decoder layer is, a tied output layer only there when that
// partition does not also hold the embedding (Megatron: with pre- and post-process in one model
// chunk the output layer uses the embedding's weight, otherwise it keeps a copy).
inline std::vector<std::pair<int, int>> stages_holding(const PipelinePlan& pp, const Instance& in) {
  std::vector<std::pair<int, int>> st;
  for (int p = 0; p < pp.pp(); ++p)
    for (int s = 0; s < pp.vpp(); ++s) {
      bool here = false;
      switch (in.kind.where) {
        case model::Where::FirstStage: here = pp.has_embedding(p, s) || pp.has_mtp(p, s); break;
        case model::Where::LastStage:
          here = pp.has_final_layers(p, s) && (in.kind.tied_to.empty() || !pp.has_embedding(p, s));
          break;
        default: {
          const LayerPlacement& lp = pp.placement(in.layer);
          here = lp.pp_rank == p && lp.vp_stage == s;
        }
      }
      if (here) st.push_back({p, s});
    }
  return st;
}

// FP8 settings for one instance's producers, from the run's options and the source's scale kind.
inline Fp8Settings fp8_settings(const ConvertOptions& o, const LogicalSource& src, quant::ScaleLayout layout) {
  Fp8Settings fs;
  fs.method = o.quant_method;
  fs.amax_epsilon = o.amax_epsilon;
  fs.pow2 = o.force_pow_2_scales.value_or(src.fp8 ? src.pow2 : true);
  fs.force_no_requant = o.fp8_force_no_requant;
  fs.device = o.device;
  fs.layout = layout;
  fs.dequant_dtype = o.torch_dtype;
  fs.allow_nonfinite = o.allow_nonfinite;
  fs.nonfinite = o.nonfinite_count;
  return fs;
}

// Where an instance's layer sits in the MCore state dict (local layer or MTP index).
inline McoreSlot layer_slot(const PipelinePlan& pp, const Instance& in, bool grouped_gemm) {
  McoreSlot slot;
  if (in.layer >= 0) {
    const LayerPlacement& lp = pp.placement(in.layer);
    slot.local_layer = lp.is_mtp ? -1 : lp.local_index;
    slot.mtp = lp.is_mtp ? lp.local_index : -1;
  }
  slot.grouped_gemm = grouped_gemm;
  return slot;
}

// The TP shard of an instance a rank file holds (expert TP shard and local expert index for
// experts), or false if the file does not hold the instance.
inline bool shard_in_file(const McoreFile& f, const Instance& in, bool expert, int& shard, McoreSlot& slot) {
  shard = f.tp_rank;
  if (!expert) return true;
  auto it = std::find(f.experts.begin(), f.experts.end(), in.expert);
  if (it == f.experts.end()) return false;
  slot.local_expert = static_cast<int>(it - f.experts.begin());
  shard = f.expert_tp_rank;
  return true;
}

// The source of one parameter instance (HF tensors, or MCore shards), marking what it consumes.
using SourceFn = std::function<std::shared_ptr<const LogicalSource>(const Instance&, Plan&)>;

// Plans the MCore target (files of every TP/PP/EP rank, each instance cut by its kind's layout
// and placed under its MCore name) from any source. Fills plan.files, plan.mcore_args and the
// tracker.
inline void plan_to_mcore(const model::ModelSpec& spec, Plan& plan, const NameMap& nm, const ModelShape& shape,
                          const ConvertOptions& o, const SourceFn& source) {
  shape.validate();
  shape.check_tensor_parallel(o.tp);
  PipelineOptions po = o.pipeline;
  po.num_layers = shape.num_layers;
  po.mtp_num_layers = shape.mtp_num_layers;
  const PipelinePlan pp(po);
  ParallelOptions par{o.tp, po.pp, shape.num_experts > 0 ? o.ep : 1, o.etp, shape.num_experts};
  if (shape.num_experts == 0 && o.ep != 1)
    fail("--expert_parallel_size ", o.ep, " given, but the model has no experts");
  const McoreFileLayout files(par);
  const McoreTarget tgt{o.iteration};
  const std::string iter_dir = tgt.iteration_dir();

  // Output files, stage by stage.
  std::map<std::tuple<int, int, int>, std::size_t> file_index;  // (pp, tp, ep) -> files[]
  for (const auto& f : files.all_files()) {
    OutFile of;
    of.rel = std::filesystem::path(iter_dir) / f.dir / "model_optim_rng.pt";
    of.format = FileFormat::TorchSave;
    of.tp = f.tp_rank;
    of.pp = f.pp_rank;
    of.ep = f.ep_rank;
    file_index[{f.pp_rank, f.tp_rank, f.ep_rank}] = plan.files.size();
    plan.files.push_back(std::move(of));
  }
  std::vector<std::set<std::string>> extra_done(plan.files.size());  // _extra_state keys per file

  const model::Dims dims = run_dims(shape, o);
  const int etp = files.etp();

  auto stages_of = [&](const Instance& in) { return stages_holding(pp, in); };
  // The files of each stage, made once (stage_files names every directory; at full scale the loop
  // below visits them once per parameter instance).
  std::vector<std::vector<McoreFile>> stage_files;
  for (int p = 0; p < po.pp; ++p) stage_files.push_back(files.stage_files(p));

  std::vector<Instance> inst = enumerate_instances(spec, shape);
  for (const Instance& in : inst) {
    const std::shared_ptr<const LogicalSource> src = source(in, plan);
    const Shape want = in.kind.shape(dims);
    if (src->full != want)
      fail("source tensor '", src->name, "' has shape ", shape_str(src->full), " but the model config implies ",
           shape_str(want), " for ", in.label());
    const McoreEntry& me = nm.mcore_entry(names_detail::split_keys(in.kind.common).back());
    const bool tfp8 =
        target_is_fp8(in.kind, me, src->fp8, o, nm.hf_bf16_mcore_fp8(names_detail::split_keys(in.kind.common).back()));
    const bool expert = in.kind.where == model::Where::Expert;
    const int size = expert ? etp : o.tp;
    const bool replicate = me.ignore_tp || (tfp8 && me.fp8_ignore_tp);
    std::vector<layout::ShardMap> maps;
    try {
      maps = kind_maps(in.kind, dims, replicate, src->name, src->full, size);
    } catch (const Error& err) {  // name the flag that set the parallel size
      fail(expert ? "--expert_tensor_parallel_size " : "--tensor_model_parallel_size ", size, ": ", err.what());
    }

    const Fp8Settings fs = fp8_settings(o, *src, quant::ScaleLayout::TePadded);

    for (auto [p, s] : stages_of(in)) {
      McoreSlot slot = layer_slot(pp, in, o.grouped_gemm);
      for (const auto& f : stage_files[static_cast<std::size_t>(p)]) {
        int shard = 0;
        if (!shard_in_file(f, in, expert, shard, slot)) continue;
        const McoreKey mk = mcore_key(nm, in, slot);
        OutEntry e = make_entry(src, maps[static_cast<std::size_t>(shard)], tfp8, fs);
        e.key = mk.key;
        e.dict = pp.model_key(s);
        const std::size_t fi = file_index.at({p, f.tp_rank, f.ep_rank});
        OutFile& of = plan.files[fi];
        if (e.how == "fp8 requantize")
          plan.notes.push_back("re-quantizing " + src->name + " for " + of.rel.string() +
                               " (blocks not aligned or scale kind differs)");
        of.entries.push_back(std::move(e));
        if (!mk.module.empty() && extra_done[fi].insert(pp.model_key(s) + "/" + mk.module).second) {
          OutEntry x;
          x.kind = EntryKind::None;
          x.key = mk.module + "._extra_state";
          x.dict = pp.model_key(s);
          of.entries.push_back(std::move(x));
        }
      }
    }
  }
  plan.mcore_args = mcore_args(shape, o, pp, files.etp());
  plan.small_files.push_back({"latest_checkpointed_iteration.txt",
                              o.iteration < 0 ? std::string("release") : std::to_string(o.iteration)});
}

inline Plan plan_hf_to_mcore(const model::ModelSpec& spec, const safetensors::Checkpoint& ck, const NameMap& nm,
                             const ModelShape& shape, const ConvertOptions& o) {
  Plan plan;
  // Planning reads only FP8 scales (is their every block a power of two?): small scattered reads,
  // which must not pull in the read-ahead around each (MBs of weights per scale tensor).
  struct RandomAccess {
    const safetensors::Checkpoint& ck;
    explicit RandomAccess(const safetensors::Checkpoint& c) : ck(c) {
      for (std::size_t i = 0; i < ck.num_files(); ++i) ck.file(i).mapped().advise_random(0, ck.file(i).mapped().size());
    }
    ~RandomAccess() {
      for (std::size_t i = 0; i < ck.num_files(); ++i) {
        ck.file(i).mapped().advise_normal(0, ck.file(i).mapped().size());
        ck.file(i).mapped().release(0, ck.file(i).mapped().size());  // the scale pages read
      }
    }
  } random_access(ck);
  // Ask for every scale's pages at once (asynchronous reads of exactly those ranges), so the checks
  // below take page-cache hits instead of one synchronous read per scale tensor.
  for (const auto& n : ck.names())
    if (n.size() > nm.weight_scale_key.size() &&
        n.compare(n.size() - nm.weight_scale_key.size(), nm.weight_scale_key.size(), nm.weight_scale_key) == 0) {
      const auto l = ck.locate(n);
      l.file.mapped().advise_willneed(static_cast<std::size_t>(l.file.file_offset(l.info)),
                                      static_cast<std::size_t>(l.info.size_bytes()));
    }
  for (const auto& n : ck.names()) plan.source_tensors.insert(n);
  plan.source_bytes = ck.total_size();
  for (const auto& n : ck.names()) plan.largest_source_tensor = std::max<std::uint64_t>(plan.largest_source_tensor, ck.view(n).size_bytes());
  // DeepSeek's MTP blocks carry copies of the embedding and output layer in HF; MCore uses the
  // main ones. The copies must equal the originals (else information would be lost): dtype and
  // shape are checked here, the bytes while the originals stream (LogicalSource::must_equal), so
  // planning reads no tensor data.
  std::map<std::string, std::vector<std::string>> copies_of;  // original -> its copies
  for (const auto& [copy_key, orig_key] : mtp_copy_keys(spec, nm, shape)) {
    if (!ck.contains(copy_key)) continue;
    if (!ck.contains(orig_key))
      fail(ck.directory().string(), ": '", copy_key, "' is a copy of '", orig_key, "', which is missing");
    const AnyConstView a = ck.view(copy_key), b = ck.view(orig_key);
    if (a.dtype != b.dtype || a.shape != b.shape)
      fail(ck.directory().string(), ": '", copy_key, "' (", a.dtype, " ", shape_str(a.shape), ") differs from '",
           orig_key, "' (", b.dtype, " ", shape_str(b.shape), "); MCore keeps only one copy, so converting would lose it");
    copies_of[orig_key].push_back(copy_key);
    plan.consume(copy_key);
  }
  std::set<std::string> checked;  // originals whose copies some producer compares
  std::map<std::string, std::shared_ptr<const LogicalSource>, std::less<>> first_stage;  // by kind
  plan_to_mcore(spec, plan, nm, shape, o, [&](const Instance& in, Plan& pl) -> std::shared_ptr<const LogicalSource> {
    if (!in.kind.tied_to.empty()) {  // the tied output layer: the embedding's HF tensor, read once
      auto it = first_stage.find(in.kind.tied_to);
      if (it == first_stage.end())
        fail("internal: '", in.kind.common, "' is tied to '", in.kind.tied_to, "', which the model does not have");
      return it->second;
    }
    const std::vector<std::string> keys = hf_keys(nm, in);
    auto src = hf_source(ck, nm, keys, pl);
    for (const auto& k : keys) {
      auto it = copies_of.find(k);
      if (it == copies_of.end()) continue;
      if (keys.size() != 1 || src->fp8)
        fail("internal: tensor '", k, "' has MTP copies but is read as part of ", keys.size(), " tensors",
             src->fp8 ? " (FP8)" : "");
      for (const auto& c : it->second) src->must_equal.push_back({c, ck.view(c)});
      checked.insert(k);
    }
    if (in.kind.where == model::Where::FirstStage) first_stage[std::string(in.kind.common)] = src;
    return std::shared_ptr<const LogicalSource>(src);
  });
  for (const auto& [orig, copies] : copies_of)
    if (!checked.count(orig))
      fail("internal: no output tensor reads '", orig, "', so its copy '", copies.front(), "' would go unchecked");
  plan.check_coverage();
  plan.release_sources = [&ck] {
    for (std::size_t i = 0; i < ck.num_files(); ++i) ck.file(i).mapped().release(0, ck.file(i).mapped().size());
  };
  return plan;
}

}  // namespace ckbridge::convert

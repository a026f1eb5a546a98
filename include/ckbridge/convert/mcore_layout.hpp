#pragma once
// The parallel layout of an existing MCore legacy checkpoint, inferred from the checkpoint
// itself, in this order of authority:
//   1. rank directory names (mp_rank_TT[_PPP][_EEE]): the numbers of TP, PP and EP ranks;
//   2. tensor names and shapes: virtual stages (model0, model1, ...), grouped or sequential
//      experts, decoder layers per stage, expert-TP size (from an expert's column count), and
//      whether a two-number name mp_rank_TT_NNN counts PP stages or EP ranks;
//   3. the `args` Namespace, in Megatron-LM's names (expert_model_parallel_size,
//      virtual_pipeline_model_parallel_size) or LoongForge's (expert_parallel_size,
//      num_virtual_stages_per_pipeline_rank).
// Two sources that disagree are an error naming both; `args` alone fills in what the files
// cannot show (the DualPipeV order, a layout string's MTP placement). No flag is needed to read
// a checkpoint; flags a user gives are compared against the result by the caller.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ckbridge/convert/names.hpp"
#include "ckbridge/convert/options.hpp"
#include "ckbridge/convert/pipeline_layout.hpp"
#include "ckbridge/format/megatron_reader.hpp"

namespace ckbridge::convert {

// What the caller knows of the model (all optional); used to cross-check and to read ETP.
struct McoreLayoutHints {
  std::string layer_prefix = "decoder.layers";  // MCore decoder layer prefix (convert YAML)
  std::string mtp_layer_prefix = "mtp.layers";  // MCore MTP layer prefix
  std::optional<int> num_layers;                // decoder layers of the model config
  std::optional<std::int64_t> moe_ffn_hidden_size;  // per-expert intermediate size (ETP from shapes)
};

struct McoreLayout {
  int tp = 1, pp = 1, ep = 1;
  std::optional<int> etp;
  int vpp = 1;
  bool grouped_gemm = false;
  bool dualpipev = false;
  std::optional<std::vector<int>> custom;
  std::optional<std::string> layout;
  std::optional<int> first, last;
  std::optional<int> num_layers, mtp_num_layers;
  std::optional<std::int64_t> padded_vocab_size;  // embedding rows x TP (args.padded_vocab_size must agree)
  bool second_index_is_ep = false;  // mp_rank_TT_NNN names carry the EP rank (PP 1, EP > 1)
  bool has_experts = false;
  std::vector<int> vp_decoder_layers;  // decoder layers per virtual partition (vp order), from tensor names
  std::vector<int> vp_mtp_layers;      // MTP layers per virtual partition
  std::vector<std::vector<int>> stage_decoder_layers;  // [PP rank][chunk] decoder layers, as stored
  std::string args_naming = "none";    // "Megatron-LM", "LoongForge" or "none" (no args stored)
  std::vector<std::string> other_keys; // top-level entries that are not weights (optimizer, rng_state, ...)
  std::map<std::string, std::string> source;  // axis ("TP", "PP", "EP", "ETP", "VPP", ...) -> where it was read
  std::vector<std::string> missing;    // facts neither the files nor args carry (defaults assumed)

  // The source pipeline as the planners take it.
  PipelineOptions pipeline() const {
    PipelineOptions p;
    p.pp = pp;
    p.vpp = vpp;
    p.custom = custom;
    p.layout = layout;
    p.dualpipev = dualpipev;
    p.first = first;
    p.last = last;
    return p;
  }
};

namespace mcore_layout_detail {

inline std::optional<std::string> arg_str(const format::MegatronRankFile& f, const char* k) {
  auto v = f.arg(k);
  if (!v || v->kind != pickle::Kind::Str) return std::nullopt;
  return v->s;
}
inline std::optional<bool> arg_bool(const format::MegatronRankFile& f, const char* k) {
  auto v = f.arg(k);
  if (!v || v->kind != pickle::Kind::Bool) return std::nullopt;
  return v->b;
}
// The first of several names (Megatron-LM's, LoongForge's) present as an int; `used` names it.
inline std::optional<std::int64_t> arg_int_any(const format::MegatronRankFile& f, std::initializer_list<const char*> names,
                                               std::string* used = nullptr) {
  for (const char* n : names)
    if (auto v = f.arg_int(n)) {
      if (used) *used = n;
      return v;
    }
  return std::nullopt;
}

inline std::string list_str(const std::vector<int>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// Layer index after `prefix.` in a state-dict key, or -1.
inline int layer_index(const std::string& key, const std::string& prefix) {
  if (key.size() <= prefix.size() + 1 || key.compare(0, prefix.size(), prefix) != 0 || key[prefix.size()] != '.')
    return -1;
  std::size_t i = prefix.size() + 1, j = i;
  while (j < key.size() && key[j] >= '0' && key[j] <= '9') ++j;
  if (j == i || j - i > 7 || (j < key.size() && key[j] != '.')) return -1;
  return std::stoi(key.substr(i, j - i));
}

inline bool is_expert_key(const std::string& k) { return k.find(".experts.") != std::string::npos; }

inline int maxi_of(const format::MegatronCheckpointDir& d, std::size_t k) {
  int m = 0;
  for (const auto& r : d.ranks)
    if (r.indices.size() > k) m = std::max(m, r.indices[k]);
  return m;
}

// "<chunk>/<key>" of every non-expert weight (extra states included).
inline std::set<std::string> non_expert_keys(const format::MegatronRankFile& f) {
  std::set<std::string> out;
  for (const auto& m : f.models)
    for (const auto& e : m.entries)
      if (!is_expert_key(e.name)) out.insert(m.key + "/" + e.name);
  return out;
}

inline std::string first_difference(const std::set<std::string>& a, const std::set<std::string>& b) {
  for (const auto& k : a)
    if (!b.count(k)) return k;
  for (const auto& k : b)
    if (!a.count(k)) return k;
  return {};
}

}  // namespace mcore_layout_detail

// `path`: the checkpoint root (with latest_checkpointed_iteration.txt), its iteration directory
// (release/, iter_NNNNNNN/) or a directory holding the mp_rank_* directories.
inline McoreLayout read_mcore_layout(const std::filesystem::path& path, const McoreLayoutHints& hints = {}) {
  using namespace mcore_layout_detail;
  format::MegatronCheckpointDir dir = format::open_megatron_checkpoint_at(path, false);
  const std::string where = dir.iter_dir.string();
  std::map<std::string, std::shared_ptr<format::MegatronRankFile>> loaded;
  auto load = [&](const format::MpRankDir& r) -> const format::MegatronRankFile& {
    auto& p = loaded[r.name];
    if (!p) p = std::make_shared<format::MegatronRankFile>(format::load_megatron_rank_file(r.model_file()));
    return *p;
  };
  auto by_indices = [&](auto pred) -> const format::MpRankDir* {
    const format::MpRankDir* best = nullptr;
    for (const auto& r : dir.ranks)
      if (pred(r.indices) && (!best || r.indices < best->indices)) best = &r;
    return best;
  };
  const format::MpRankDir* r0 = by_indices([](const std::vector<int>&) { return true; });
  const format::MegatronRankFile& f0 = load(*r0);

  McoreLayout l;
  l.other_keys = f0.other_keys;
  if (!f0.args.empty())
    l.args_naming = f0.arg("expert_model_parallel_size") || f0.arg("virtual_pipeline_model_parallel_size")
                        ? "Megatron-LM"
                        : (f0.arg("expert_parallel_size") || f0.arg("num_virtual_stages_per_pipeline_rank") ? "LoongForge"
                                                                                                              : "Megatron-LM");
  const std::size_t arity = r0->indices.size();
  // experts may sit only in later stages (a dense first stage): look at one file per PP stage
  auto stage_files = [&](int pp_count, bool second_is_ep) {
    std::vector<const format::MegatronRankFile*> out;
    for (int p = 0; p < pp_count; ++p) {
      const format::MpRankDir* rp = by_indices([&](const std::vector<int>& i) {
        return i.size() == 3 ? i[1] == p : (i.size() == 2 && !second_is_ep ? i[1] == p : p == 0);
      });
      if (rp) out.push_back(&load(*rp));
    }
    return out;
  };
  {
    const int pp_guess = arity >= 2 ? maxi_of(dir, 1) + 1 : 1;
    for (const auto* f : stage_files(pp_guess, false))
      for (const auto& m : f->models)
        for (const auto& e : m.entries) l.has_experts = l.has_experts || is_expert_key(e.name);
  }

  // ---- 1. rank directory names
  std::vector<int> maxi(arity, 0);
  for (const auto& r : dir.ranks)
    for (std::size_t k = 0; k < arity; ++k) maxi[k] = std::max(maxi[k], r.indices[k]);
  const std::string names = dir.ranks.front().name + " .. " + dir.ranks.back().name;
  const std::string dir_src = "the rank directories (" + std::to_string(dir.ranks.size()) + ": " + names + ")";
  l.tp = maxi[0] + 1;
  l.source["TP"] = dir_src;
  if (arity == 3) {
    l.pp = maxi[1] + 1;
    l.ep = maxi[2] + 1;
    l.source["PP"] = l.source["EP"] = dir_src;
  } else if (arity == 2) {
    // mp_rank_TT_NNN: PP stages differ in their non-expert tensors (embedding, output layer,
    // layers), EP ranks hold the same ones.
    const format::MpRankDir* a = by_indices([](const std::vector<int>& i) { return i[1] == 0; });
    const format::MpRankDir* b = by_indices([](const std::vector<int>& i) { return i[1] == 1; });
    const auto ka = non_expert_keys(load(*a)), kb = non_expert_keys(load(*b));
    bool experts_b = false;
    for (const auto& m : load(*b).models)
      for (const auto& e : m.entries) experts_b = experts_b || is_expert_key(e.name);
    const bool names_say_ep = (l.has_experts || experts_b) && ka == kb;
    const std::string why = names_say_ep
                                ? a->name + " and " + b->name + " hold the same non-expert tensors (EP ranks)"
                                : a->name + " and " + b->name + " hold different tensors (e.g. '" +
                                      first_difference(ka, kb) + "': pipeline stages)";
    // args, where present, must agree
    std::string pp_name, ep_name;
    const auto app = arg_int_any(f0, {"pipeline_model_parallel_size"}, &pp_name);
    const auto aep = arg_int_any(f0, {"expert_model_parallel_size", "expert_parallel_size"}, &ep_name);
    if (app && (*app > 1) == names_say_ep)
      fail(where, ": the tensors say the second number of mp_rank_TT_NNN counts ", names_say_ep ? "EP ranks" : "PP stages",
           " (", why, ") but args.", pp_name, " is ", *app);
    if (!app && aep && names_say_ep && *aep == 1)
      fail(where, ": the tensors say the second number of mp_rank_TT_NNN counts EP ranks (", why, ") but args.", ep_name,
           " is 1");
    l.second_index_is_ep = names_say_ep;
    (names_say_ep ? l.ep : l.pp) = maxi[1] + 1;
    l.source[names_say_ep ? "EP" : "PP"] = dir_src + ", " + why;
    if (names_say_ep) l.source["PP"] = dir_src;
    else l.source["EP"] = dir_src;
  } else {
    l.source["PP"] = l.source["EP"] = dir_src;
  }
  format::resolve_rank_axes(dir, l.second_index_is_ep);

  // ---- 3 (checks). args, in either naming, must agree with the directory names
  auto check_arg = [&](const char* axis, int have, std::initializer_list<const char*> arg_names) {
    std::string used;
    if (auto v = arg_int_any(f0, arg_names, &used); v && *v != have)
      fail(where, ": ", l.source[axis], " give ", axis, " ", have, " but args.", used, " in ", f0.file_name(), " is ",
           *v);
  };
  check_arg("TP", l.tp, {"tensor_model_parallel_size"});
  check_arg("PP", l.pp, {"pipeline_model_parallel_size"});
  if (l.has_experts) check_arg("EP", l.ep, {"expert_model_parallel_size", "expert_parallel_size"});

  // the padded vocabulary: the first stage's embedding rows x TP (a replicated embedding is
  // refused by the planner's shape check)
  for (const auto& m : f0.models)
    for (const auto& e : m.entries)
      if (!l.padded_vocab_size && e.kind == format::ModelEntry::Kind::Tensor && e.tensor &&
          e.name.size() >= 22 && e.name.compare(e.name.size() - 22, 22, "word_embeddings.weight") == 0 &&
          e.tensor->shape.size() == 2) {
        l.padded_vocab_size = e.tensor->shape[0] * l.tp;
        l.source["vocab"] = f0.file_name() + ": '" + e.name + "' has " + std::to_string(e.tensor->shape[0]) +
                            " rows at TP " + std::to_string(l.tp);
      }
  if (auto v = f0.arg_int("padded_vocab_size"); v && l.padded_vocab_size && *v != *l.padded_vocab_size)
    fail(where, ": ", l.source["vocab"], " (padded vocabulary ", *l.padded_vocab_size, ") but args.padded_vocab_size is ",
         *v);
  if (!l.padded_vocab_size)
    if (auto v = f0.arg_int("padded_vocab_size")) l.padded_vocab_size = *v;

  // ---- 2. tensor names: virtual stages, experts, layers per stage
  // model chunks: the most any stage's file holds (a trailing chunk without tensors is not saved)
  const format::MegatronRankFile* fv = &f0;
  for (const auto* sf : stage_files(l.pp, l.second_index_is_ep))
    if (sf->models.size() > fv->models.size()) fv = sf;
  l.vpp = static_cast<int>(fv->models.size());
  l.source["VPP"] = fv->file_name() + " (" + std::to_string(fv->models.size()) + " model chunk" +
                    (fv->models.size() == 1 ? ")" : "s)");
  {
    std::string used;
    std::optional<std::int64_t> avpp = arg_int_any(f0, {"num_virtual_stages_per_pipeline_rank",
                                                        "virtual_pipeline_model_parallel_size"}, &used);
    if (!avpp) {
      if (auto n = arg_int_any(f0, {"num_layers_per_virtual_pipeline_stage"}, &used); n && *n > 0)
        if (auto nl = f0.arg_int("num_layers"); nl && l.pp > 0 && *nl % (*n * l.pp) == 0) avpp = *nl / (*n * l.pp);
    }
    if (avpp && *avpp != l.vpp && !(*avpp <= 1 && l.vpp == 1))
      fail(where, ": ", l.source["VPP"], " gives ", l.vpp, " virtual stage(s) per pipeline rank but args.", used, " says ",
           *avpp);
  }
  bool grouped = false, sequential = false;
  const format::ModelEntry* fc2 = nullptr;
  const format::MegatronRankFile* fc2_file = nullptr;
  for (const auto* sf : stage_files(l.pp, l.second_index_is_ep))
  for (const auto& m : sf->models)
    for (const auto& e : m.entries) {
      if (e.name.find(".local_experts.") != std::string::npos) sequential = true;
      else if (is_expert_key(e.name) && e.name.find(".weight") != std::string::npos &&
               e.name.find("_extra_state") == std::string::npos)
        grouped = true;
      if (!fc2 && is_expert_key(e.name) && e.name.find("fc2") != std::string::npos &&
          (e.kind == format::ModelEntry::Kind::Tensor || e.kind == format::ModelEntry::Kind::TeFp8Blockwise)) {
        fc2 = &e;
        fc2_file = sf;
      }
    }
  if (grouped && sequential)
    fail(where, ": has both grouped (weight<i>) and sequential (local_experts) expert tensors");
  if (l.has_experts) {
    l.grouped_gemm = grouped;
    if (auto g = arg_bool(f0, "moe_grouped_gemm"); g && *g != grouped)
      fail(where, ": the expert tensors are ", grouped ? "grouped (weight<i>)" : "sequential (local_experts)",
           " but args.moe_grouped_gemm is ", *g ? "True" : "False");
  } else {
    l.grouped_gemm = arg_bool(f0, "moe_grouped_gemm").value_or(false);
  }
  // expert-TP size: the model's expert intermediate size over an expert fc2's columns
  std::optional<int> etp_names;
  if (fc2 && hints.moe_ffn_hidden_size && *hints.moe_ffn_hidden_size > 0) {
    const Shape& s = fc2->kind == format::ModelEntry::Kind::Tensor ? fc2->tensor->shape : fc2->fp8->shape;
    if (s.size() == 2 && s[1] > 0 && *hints.moe_ffn_hidden_size % s[1] == 0) {
      etp_names = static_cast<int>(*hints.moe_ffn_hidden_size / s[1]);
      l.source["ETP"] = "the tensor shapes ('" + fc2->name + "' in " + fc2_file->file_name() + ": " +
                        std::to_string(s[1]) + " columns of moe_ffn_hidden_size " +
                        std::to_string(*hints.moe_ffn_hidden_size) + ")";
    }
  }
  if (auto v = f0.arg_int("expert_tensor_parallel_size")) {
    if (etp_names && *etp_names != *v)
      fail(where, ": ", l.source["ETP"], " give expert TP ", *etp_names, " but args.expert_tensor_parallel_size is ", *v);
    l.etp = static_cast<int>(*v);
    if (!etp_names) l.source["ETP"] = "args.expert_tensor_parallel_size in " + f0.file_name();
  } else if (etp_names) {
    l.etp = etp_names;
  }

  // decoder / MTP layers per (stage, chunk), from every pipeline stage's first rank file, and the
  // chunk holding the final norm / output layer (it tells the DualPipeV order from the standard one)
  std::vector<std::vector<int>> dec_ps(static_cast<std::size_t>(l.pp)), mtp_ps(static_cast<std::size_t>(l.pp));
  std::optional<std::pair<int, int>> final_chunk;
  std::string final_key;
  for (int p = 0; p < l.pp; ++p) {
    const format::MpRankDir* rp = nullptr;
    for (const auto& r : dir.ranks)
      if (r.pp == p && (!rp || std::tie(r.tp, r.ep) < std::tie(rp->tp, rp->ep))) rp = &r;
    if (!rp) fail(where, ": no rank directory for pipeline stage ", p, " of ", l.pp);
    const format::MegatronRankFile& f = load(*rp);
    // a trailing virtual chunk without tensors has no modelN entry (LoongForge and ckbridge write none)
    if (static_cast<int>(f.models.size()) > l.vpp || f.models.empty())
      fail(where, ": ", f.file_name(), " has ", f.models.size(), " model chunks but ", fv->file_name(), " has ", l.vpp);
    for (int s = 0; s < l.vpp; ++s) {
      std::set<int> dec, mtp;
      format::ModelStateDict absent;
      absent.key = "model" + std::to_string(s);
      const format::ModelStateDict& md = s < static_cast<int>(f.models.size()) ? f.models[static_cast<std::size_t>(s)] : absent;
      for (const auto& e : md.entries) {
        const int di = layer_index(e.name, hints.layer_prefix), mi = layer_index(e.name, hints.mtp_layer_prefix);
        if (di >= 0) dec.insert(di);
        if (mi >= 0) mtp.insert(mi);
        if (di < 0 && mi < 0 && !final_chunk &&
            (e.name.find("final_layernorm") != std::string::npos || e.name.find("final_norm") != std::string::npos ||
             e.name.rfind("output_layer.", 0) == 0)) {
          final_chunk = std::pair(p, s);
          final_key = f.file_name() + ": " + md.key + "/" + e.name;
        }
      }
      if (!dec.empty() && (*dec.begin() != 0 || *dec.rbegin() != static_cast<int>(dec.size()) - 1))
        fail(f.file_name(), ": ", md.key, " holds decoder layers ", *dec.begin(),
             " .. ", *dec.rbegin(), " with gaps (", dec.size(), " distinct); expected local indices 0 .. n-1");
      dec_ps[static_cast<std::size_t>(p)].push_back(static_cast<int>(dec.size()));
      mtp_ps[static_cast<std::size_t>(p)].push_back(static_cast<int>(mtp.size()));
    }
  }
  // the chunk order: standard (vp = p + pp*s) or DualPipeV; the final layers sit in the last
  // partition that has decoder layers
  auto vp_lists = [&](bool dualpipev) {
    std::vector<int> d(static_cast<std::size_t>(l.pp * l.vpp)), m(d.size());
    for (int p = 0; p < l.pp; ++p)
      for (int s = 0; s < l.vpp; ++s) {
        const auto vp = static_cast<std::size_t>(virtual_partition(dualpipev, s, p, l.pp));
        d[vp] = dec_ps[static_cast<std::size_t>(p)][static_cast<std::size_t>(s)];
        m[vp] = mtp_ps[static_cast<std::size_t>(p)][static_cast<std::size_t>(s)];
      }
    return std::pair(d, m);
  };
  auto order_fits = [&](bool dualpipev) {
    if (!final_chunk) return true;
    const auto d = vp_lists(dualpipev).first;
    int last = -1;
    for (std::size_t vp = 0; vp < d.size(); ++vp)
      if (d[vp] > 0) last = static_cast<int>(vp);
    return virtual_partition(dualpipev, final_chunk->second, final_chunk->first, l.pp) == last;
  };
  const bool can_dualpipev = l.vpp == 2 && l.pp > 1;
  if (auto v = arg_str(f0, "vpp_scheduler")) {
    l.dualpipev = *v == "dualpipev";
    if (l.dualpipev && l.vpp != 2)
      fail(where, ": args.vpp_scheduler is dualpipev but ", l.source["VPP"], " gives ", l.vpp, " virtual stages, not 2");
    if (!order_fits(l.dualpipev))
      fail(where, ": args.vpp_scheduler is '", *v, "' but the final layers ('", final_key, "') are not in the last "
           "virtual partition of that order");
    l.source["order"] = "args.vpp_scheduler";
  } else if (!order_fits(false) && can_dualpipev && order_fits(true)) {
    l.dualpipev = true;
    l.source["order"] = "the final layers' chunk ('" + final_key + "'): DualPipeV order";
  } else if (!order_fits(false)) {
    fail(where, ": the final layers ('", final_key, "') are not in the last virtual partition holding decoder layers "
         "in any known stage order");
  }
  std::tie(l.vp_decoder_layers, l.vp_mtp_layers) = vp_lists(l.dualpipev);
  l.stage_decoder_layers = dec_ps;
  int total = 0, total_mtp = 0;
  for (int c : l.vp_decoder_layers) total += c;
  for (int c : l.vp_mtp_layers) total_mtp += c;
  l.num_layers = total;
  l.mtp_num_layers = total_mtp;
  const std::string layers_src = "the tensor names ('" + hints.layer_prefix + ".<i>' per model chunk: " +
                                 list_str(l.vp_decoder_layers) + " in virtual-partition order)";
  l.source["layers"] = layers_src;
  if (auto n = f0.arg_int("num_layers"); n && *n != total)
    fail(where, ": ", layers_src, " hold ", total, " decoder layers but args.num_layers is ", *n);
  if (hints.num_layers && *hints.num_layers != total)
    fail(where, ": ", layers_src, " hold ", total, " decoder layers but the model config says num_layers ",
         *hints.num_layers);
  if (auto n = f0.arg_int("mtp_num_layers"); n && *n != total_mtp)
    fail(where, ": the tensor names hold ", total_mtp, " MTP layers ('", hints.mtp_layer_prefix,
         ".<i>') but args.mtp_num_layers is ", *n);

  // the pipeline split: what args say, checked against the tensors; else the tensors' counts
  auto decoder_counts = [&](const PipelineOptions& po) {
    PipelineOptions q = po;
    q.num_layers = total;
    q.mtp_num_layers = total_mtp;
    q.allow_empty_partitions = true;
    const PipelinePlan plan(q);
    std::vector<int> dec = plan.vp_counts();
    for (std::size_t i = 0; i < dec.size(); ++i) dec[i] -= plan.vp_mtp_counts()[i];
    return std::pair(dec, plan.vp_mtp_counts());
  };
  PipelineOptions from_args = l.pipeline();
  std::string split_arg;
  if (auto v = arg_str(f0, "custom_pipeline_layers"); v && !v->empty()) {
    from_args.custom = parse_custom_pipeline_layers(*v);
    split_arg = "args.custom_pipeline_layers '" + *v + "'";
  }
  if (auto v = arg_str(f0, "pipeline_model_parallel_layout"); v && !v->empty()) {
    // LoongForge records the custom_pipeline_layers it derives from a layout string next to it
    std::optional<std::vector<int>> derived = from_args.custom;
    from_args.custom.reset();
    from_args.layout = *v;
    split_arg = "args.pipeline_model_parallel_layout '" + *v + "'";
    if (derived) {
      std::optional<std::pair<std::vector<int>, std::vector<int>>> d;
      try {
        d = decoder_counts(from_args);
      } catch (const Error&) {  // the layout string itself is checked below, with its own message
      }
      if (d && d->first != *derived)
        fail(where, ": ", split_arg, " gives decoder layers per virtual partition ", list_str(d->first),
             " but args.custom_pipeline_layers is ", list_str(*derived));
    }
  }
  std::string used;
  if (auto v = arg_int_any(f0, {"decoder_first_pipeline_num_layers"}, &used)) from_args.first = static_cast<int>(*v);
  if (auto v = arg_int_any(f0, {"decoder_last_pipeline_num_layers"}, &used)) from_args.last = static_cast<int>(*v);
  if (from_args.first || from_args.last) split_arg = "args.decoder_first/last_pipeline_num_layers";
  if (total == 0) fail(where, ": no decoder layer tensors ('", hints.layer_prefix, ".<i>.*') in any model chunk");
  if (!split_arg.empty()) {
    std::pair<std::vector<int>, std::vector<int>> want;
    try {
      want = decoder_counts(from_args);
    } catch (const Error& e) {
      fail(where, ": ", split_arg, " does not describe this checkpoint: ", e.what());
    }
    if (want.first != l.vp_decoder_layers)
      fail(where, ": ", split_arg, " gives decoder layers per virtual partition ", list_str(want.first), " but ",
           layers_src, " hold ", list_str(l.vp_decoder_layers));
    l.custom = from_args.custom;
    l.layout = from_args.layout;
    l.first = from_args.first;
    l.last = from_args.last;
    l.source["split"] = split_arg + " (agrees with the tensor names)";
    return l;
  }
  // no split recorded: the default split if it matches, else the observed counts
  std::optional<std::pair<std::vector<int>, std::vector<int>>> dflt;
  try {
    dflt = decoder_counts(l.pipeline());
  } catch (const Error&) {
  }
  const bool mtp_last = total_mtp == 0 || l.vp_mtp_layers.back() == total_mtp;
  if (dflt && dflt->first == l.vp_decoder_layers && mtp_last) {
    l.source["split"] = "the tensor names (the default balanced split)";
    return l;
  }
  l.source["split"] = layers_src;
  if (mtp_last) {
    l.custom = l.vp_decoder_layers;
    return l;
  }
  // MTP away from the last partition: only a layout string can say where
  std::string s;
  for (std::size_t vp = 0; vp < l.vp_decoder_layers.size(); ++vp) {
    if (vp) s += "|";
    if (vp == 0) s += "E";
    s += std::string(static_cast<std::size_t>(l.vp_decoder_layers[vp]), 't');
    s += std::string(static_cast<std::size_t>(l.vp_mtp_layers[vp]), 'm');
    if (vp + 1 == l.vp_decoder_layers.size()) s += "L";
  }
  l.layout = s;
  return l;
}

// Decoder layers per virtual partition (vp order) that a pipeline description gives for a
// checkpoint of `l`'s layer counts; a message when they differ from what the checkpoint holds.
inline std::optional<std::string> pipeline_contradiction(const McoreLayout& l, const PipelineOptions& given,
                                                         const std::string& what) {
  using mcore_layout_detail::list_str;
  PipelineOptions q = given;
  q.num_layers = l.num_layers.value_or(0);
  q.mtp_num_layers = l.mtp_num_layers.value_or(0);
  q.allow_empty_partitions = true;
  // global decoder layer ids per (stage, chunk): the same layers in the same places is no
  // contradiction, whatever order or split flags describe them
  auto placement = [](const PipelinePlan& plan) {
    std::vector<std::vector<std::vector<int>>> out(static_cast<std::size_t>(plan.pp()));
    for (int p = 0; p < plan.pp(); ++p)
      for (int s = 0; s < plan.vpp(); ++s) {
        out[static_cast<std::size_t>(p)].emplace_back();
        for (const auto& lp : plan.stage_layers(p, s))
          if (!lp.is_mtp) out[static_cast<std::size_t>(p)].back().push_back(lp.global_id);
      }
    return out;
  };
  std::vector<int> dec;
  bool same = false;
  try {
    const PipelinePlan plan(q);
    dec = plan.vp_counts();
    for (std::size_t i = 0; i < dec.size(); ++i) dec[i] -= plan.vp_mtp_counts()[i];
    if (plan.pp() != l.pp || plan.vpp() != l.vpp)
      return what + " give " + std::to_string(plan.pp()) + " pipeline stages x " + std::to_string(plan.vpp()) +
             " virtual stages but the checkpoint has " + std::to_string(l.pp) + " x " + std::to_string(l.vpp);
    PipelineOptions c = l.pipeline();
    c.num_layers = q.num_layers;
    c.mtp_num_layers = q.mtp_num_layers;
    c.allow_empty_partitions = true;
    same = placement(plan) == placement(PipelinePlan(c));
  } catch (const Error& e) {
    return what + " do not describe the checkpoint: " + e.what();
  }
  if (!same) {
    if (given.dualpipev != l.dualpipev)
      return what + " give " + (given.dualpipev ? "the DualPipeV" : "the standard") +
             " virtual-stage order but the checkpoint uses the " + (l.dualpipev ? "DualPipeV" : "standard") +
             " one (" + (l.source.count("order") ? l.source.at("order") : std::string("no vpp_scheduler in args")) + ")";
    return what + " give decoder layers per virtual partition " + list_str(dec) + " but the checkpoint holds " +
           list_str(l.vp_decoder_layers) + " (" + l.source.at("layers") + ")";
  }
  return std::nullopt;
}

// The hints a model gives the reader: MCore names from the convert YAML's name map, sizes from
// the model config (`moe_ffn_hidden_size` 0 for a dense model).
inline McoreLayoutHints mcore_layout_hints(const NameMap& nm, int num_layers, std::int64_t moe_ffn_hidden_size) {
  McoreLayoutHints h;
  h.layer_prefix = nm.mcore_layer_prefix;
  h.mtp_layer_prefix = nm.mcore_mtp_layer_prefix;
  h.num_layers = num_layers;
  if (moe_ffn_hidden_size > 0) h.moe_ffn_hidden_size = moe_ffn_hidden_size;
  return h;
}

// `o` with the checkpoint's layout as the MCore side (the source of MCore -> HF / MCore -> MCore):
// parallel sizes, expert naming, pipeline split and the vocabulary padding it was written with.
inline ConvertOptions source_options(const McoreLayout& l, ConvertOptions o = {}) {
  if (l.padded_vocab_size) o.pad_vocab_size_to = *l.padded_vocab_size;
  o.tp = l.tp;
  o.ep = l.ep;
  o.etp = l.etp;
  o.grouped_gemm = l.grouped_gemm;
  o.pipeline = l.pipeline();
  return o;
}

}  // namespace ckbridge::convert

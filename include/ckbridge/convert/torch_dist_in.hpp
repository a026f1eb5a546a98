#pragma once
// torch_dist as a conversion source, first version: the checkpoint is unpacked, streaming with
// bounded memory, into a single-rank (tp1 pp1 ep1) legacy MCore checkpoint (the inverse of
// torch_dist_keys.hpp: stacked experts back to `local_experts.<e>`, `_extra_state` objects to None
// entries), which the legacy readers then convert. It costs one extra write of the model; reading
// the torch_dist chunks directly in the planners is left for later (docs/torch-dist-format.md §8).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "ckbridge/convert/executor.hpp"
#include "ckbridge/convert/mcore_writer.hpp"
#include "ckbridge/convert/plan.hpp"
#include "ckbridge/format/torch_dist_reader.hpp"

namespace ckbridge::convert {

// The torch_dist iteration directory of `path` (the directory itself, or <path>/<tracker's iteration>),
// or nothing when `path` is not a torch_dist checkpoint.
inline std::optional<std::filesystem::path> find_torch_dist_dir(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  if (format::torch_dist::is_torch_dist_dir(path)) return path;
  std::error_code ec;
  const fs::path tracker = path / "latest_checkpointed_iteration.txt";
  if (!fs::is_regular_file(tracker, ec)) return std::nullopt;
  std::string t = format::detail::read_small_text(tracker);
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ' || t.back() == '\r')) t.pop_back();
  fs::path it = t == "release" ? path / "release" : path;
  if (t != "release") {
    char buf[32];
    std::snprintf(buf, sizeof buf, "iter_%07lld", std::atoll(t.c_str()));
    it = path / buf;
  }
  return format::torch_dist::is_torch_dist_dir(it) ? std::optional<fs::path>(it) : std::nullopt;
}

// Writes <out>/release/mp_rank_00/model_optim_rng.pt (+ tracker) holding the torch_dist model as a
// legacy single-rank checkpoint; `args` from common.pt with the parallel sizes set to 1.
inline void unpack_torch_dist(const std::filesystem::path& src_iter, const std::filesystem::path& out, bool fsync = true) {
  namespace fs = std::filesystem;
  auto reader = std::make_shared<format::torch_dist::Reader>(src_iter);
  OutFile f;
  f.rel = fs::path("release") / "mp_rank_00" / "model_optim_rng.pt";
  f.format = FileFormat::TorchSave;
  // Prepended axes of a key (no strides: torch's ShardedTensor path): decoder layers stacked
  // (`decoder.layers.<not a number>...`, a homogeneous model) then experts (`.experts.experts.`).
  static const std::regex layers_re(R"(decoder\.layers\.([^0-9].*))");
  static const std::regex expert_re(R"((.*)\.experts\.experts\.(.*))");
  static const std::regex extra_re(R"((.*)\._extra_state/shard_([0-9.]+)_([0-9.]+))");
  // The legacy key of `fqn` at prepended offsets `idx` (layer first, then expert).
  auto legacy_key = [](std::string fqn, bool layer, bool expert, const std::vector<std::int64_t>& idx) {
    std::size_t a = 0;
    std::smatch m;
    if (layer) {
      std::regex_match(fqn, m, layers_re);
      fqn = "decoder.layers." + std::to_string(idx[a++]) + "." + m[1].str();
    }
    if (expert && std::regex_match(fqn, m, expert_re))
      fqn = m[1].str() + ".experts.local_experts." + std::to_string(idx[a++]) + "." + m[2].str();
    return fqn;
  };
  for (const auto& e : reader->metadata().entries) {
    std::smatch m;
    if (e.bytes) {
      if (!std::regex_match(e.fqn, m, extra_re)) continue;  // other objects have no legacy form
      const std::string mod = m[1];
      std::vector<std::int64_t> idx;
      const std::string offs = m[2];
      for (std::size_t p = 0; p <= offs.size();) {
        const std::size_t q = std::min(offs.find('.', p), offs.size());
        idx.push_back(std::stoll(offs.substr(p, q - p)));
        p = q + 1;
      }
      const bool layer = std::regex_match(mod, layers_re), expert = std::regex_match(mod, expert_re);
      if (idx.size() != std::size_t(layer) + std::size_t(expert) && !(idx.size() == 1 && !layer && !expert))
        fail(src_iter.string(), ": object '", e.fqn, "' has ", idx.size(), " offsets for ", int(layer) + int(expert),
             " stacked axes");
      OutEntry oe;
      oe.kind = EntryKind::None;
      oe.dict = "model";
      oe.key = legacy_key(mod, layer, expert, idx) + "._extra_state";
      f.entries.push_back(std::move(oe));
      continue;
    }
    const bool plain = e.strides.has_value();
    const bool layer = !plain && std::regex_match(e.fqn, layers_re);
    const bool expert = !plain && std::regex_match(e.fqn, expert_re);
    const std::size_t np = std::size_t(layer) + std::size_t(expert);
    if (e.size.size() < np + 1)
      fail(src_iter.string(), ": tensor '", e.fqn, "' of shape ", shape_str(e.size), " has too few axes for ", np,
           " stacked axes");
    const Shape counts(e.size.begin(), e.size.begin() + static_cast<std::ptrdiff_t>(np));
    const Shape shape(e.size.begin() + static_cast<std::ptrdiff_t>(np), e.size.end());
    std::int64_t total = 1;
    for (auto c : counts) total *= c;
    for (std::int64_t i = 0; i < total; ++i) {
      std::vector<std::int64_t> idx(np);
      for (std::size_t a = np, r = static_cast<std::size_t>(i); a-- > 0;) {
        idx[a] = static_cast<std::int64_t>(r % static_cast<std::size_t>(counts[a]));
        r /= static_cast<std::size_t>(counts[a]);
      }
      OutEntry oe;
      oe.kind = EntryKind::Tensor;
      oe.dict = "model";
      oe.key = legacy_key(e.fqn, layer, expert, idx);
      Shape off(e.size.size(), 0), sz = e.size;
      for (std::size_t a = 0; a < np; ++a) {
        off[a] = idx[a];
        sz[a] = 1;
      }
      oe.data.dtype = e.dtype;
      oe.data.shape = shape;
      oe.data.scratch_bytes = static_cast<std::size_t>(numel(shape)) * dtype_size(e.dtype);
      const std::string fqn = e.fqn;
      oe.data.run = [reader, fqn, off, sz, shape](Tensor& scratch) {
        scratch = reader->read_region(fqn, off, sz);
        scratch.reshape(shape);
        return scratch.cview();
      };
      f.entries.push_back(std::move(oe));
    }
  }
  // args from common.pt, as a layout of one rank
  ArgList args;
  if (auto c = reader->common(); c && c->root()) {
    if (auto a = c->root()->get("args"); a && (a->is(pickle::Kind::Namespace) || a->is(pickle::Kind::Dict)))
      for (const auto& [k, v] : a->dict) {
        const std::string key = k->s;
        if (v->is(pickle::Kind::Int)) args.push_back({key, v->i});
        else if (v->is(pickle::Kind::Bool)) args.push_back({key, v->b});
        else if (v->is(pickle::Kind::Float)) args.push_back({key, v->f});
        else if (v->is(pickle::Kind::Str)) args.push_back({key, v->s});
        else if (v->is_none()) args.push_back({key, std::monostate{}});
      }
  }
  auto set = [&](const std::string& k, ArgValue v) {
    for (auto& [key, val] : args)
      if (key == k) {
        val = v;
        return;
      }
    args.push_back({k, v});
  };
  for (const char* k : {"tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size",
                        "expert_tensor_parallel_size"})
    set(k, std::int64_t{1});
  set("ckpt_format", std::string("torch"));
  set("virtual_pipeline_model_parallel_size", std::monostate{});
  set("num_layers_per_virtual_pipeline_stage", std::monostate{});
  fs::create_directories(out / f.rel.parent_path());
  Progress prog;
  prog.quiet = true;
  McoreWriteOptions mo;
  mo.fsync = fsync;
  write_mcore_file(f, out / f.rel, prog, args, mo);
  format::AtomicFileSink t((out / "latest_checkpointed_iteration.txt").string(), fsync);
  t.write("release", 7);
  t.commit();
}

}  // namespace ckbridge::convert

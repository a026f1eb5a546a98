#pragma once
// Reading side of an MCore legacy checkpoint for conversion: the rank files of a checkpoint
// (memory-mapped, parsed once), and the logical source of one parameter instance assembled from
// its TP shards (zero-copy views into the storage records).
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ckbridge/convert/names.hpp"
#include "ckbridge/convert/parallel_layout.hpp"
#include "ckbridge/convert/plan.hpp"
#include "ckbridge/convert/produce.hpp"
#include "ckbridge/convert/kind_maps.hpp"
#include "ckbridge/format/megatron_reader.hpp"

namespace ckbridge::convert {

class McoreCheckpoint {
public:
  // `path`: the root, an iteration directory or a directory of mp_rank_* directories.
  // `second_index_is_ep`: names like mp_rank_TT_NNN carry the EP rank (PP 1, EP > 1), not the PP rank.
  explicit McoreCheckpoint(const std::filesystem::path& path, bool second_index_is_ep = false)
      : dir_(format::open_megatron_checkpoint_at(path, second_index_is_ep)) {}

  const format::MegatronCheckpointDir& dir() const { return dir_; }

  // The parsed rank file (tp, pp, ep), loaded on first use.
  std::shared_ptr<const format::MegatronRankFile> rank_file(int tp, int pp, int ep) {
    const auto& r = dir_.rank(tp, pp, ep);
    auto it = files_.find(r.name);
    if (it != files_.end()) return it->second;
    auto f = std::make_shared<format::MegatronRankFile>(format::load_megatron_rank_file(r.model_file()));
    files_[r.name] = f;
    return f;
  }
  // Every rank file (for coverage accounting and argument checks).
  std::vector<std::pair<std::string, std::shared_ptr<const format::MegatronRankFile>>> all_files() {
    std::vector<std::pair<std::string, std::shared_ptr<const format::MegatronRankFile>>> out;
    for (const auto& r : dir_.ranks) out.push_back({r.name, rank_file(r.tp, r.pp, r.ep)});
    return out;
  }

private:
  format::MegatronCheckpointDir dir_;
  std::map<std::string, std::shared_ptr<const format::MegatronRankFile>> files_;
};

// A consumption key for coverage: "<mp_rank dir>/<model dict>/<tensor key>".
inline std::string mcore_source_id(const std::string& rank_dir, const std::string& dict, const std::string& key) {
  return rank_dir + "/" + dict + "/" + key;
}

// One stored shard: plain tensor, or TE FP8 (data + trimmed scale).
struct McoreShard {
  AnyConstView data;
  std::optional<AnyConstView> scale;  // F32 [ceil(m/128), ceil(n/128)] (TE padding trimmed)
  std::string where;                  // for messages
  std::vector<std::function<void()>> verify;  // CRC checks of the records behind the views (run when read)
};

// The CRC check of one stored record, naming the tensor it holds when it fails.
inline std::function<void()> verify_record(const format::MegatronRankFile& f, const pickle::StorageRef& st,
                                           const std::string& where) {
  return [&f, st, where] {
    try {
      f.file->verify_storage(st);
    } catch (const Error& e) {
      fail(where, ": ", e.what());
    }
  };
}

inline McoreShard read_mcore_shard(const format::MegatronRankFile& f, const std::string& dict, const std::string& key) {
  const std::string where = f.file_name() + ": " + dict + "/" + key;
  const format::ModelStateDict* md = nullptr;
  for (const auto& m : f.models)
    if (m.key == dict) md = &m;
  if (!md) fail(f.file_name(), ": has no model state dict '", dict, "' (needed for '", key, "')");
  const format::ModelEntry* e = md->find(key);
  if (!e)
    fail(f.file_name(), ": tensor '", dict, "/", key,
         "' required by the model config is missing (do --moe-grouped-gemm, the pipeline split flags and "
         "--mtp_num_layers match the ones the checkpoint was written with?)");
  McoreShard s;
  s.where = where;
  using K = format::ModelEntry::Kind;
  if (e->kind == K::Tensor && e->tensor) {
    s.data = f.view(*e->tensor, where, false);
    s.verify.push_back(verify_record(f, e->tensor->storage, where));
  } else if (e->kind == K::TeFp8Blockwise && e->fp8) {
    const auto& t = *e->fp8;
    if (!t.rowwise_data || !t.rowwise_scale_inv) fail(where, ": TE FP8 tensor without rowwise data or scale_inv");
    if (t.fp8_dtype != DType::F8_E4M3) fail(where, ": TE FP8 tensor is ", t.fp8_dtype, ", only E4M3 is supported");
    if (t.block_len() != 128) fail(where, ": TE FP8 block length ", t.block_len(), ", expected 128");
    AnyConstView d = f.view(*t.rowwise_data, where, false);
    s.verify.push_back(verify_record(f, t.rowwise_data->storage, where));
    d.dtype = DType::F8_E4M3;  // TE keeps the codes in a uint8 tensor
    const AnyConstView sc = f.view(*t.rowwise_scale_inv, where);
    const auto mn = quant::as_matrix(d.shape);
    quant::check_scale_shape(where, mn.m, mn.n, sc.shape);
    s.data = d;
    s.scale = sc.slice(1, 0, quant::block_count(mn.n));
  } else {
    fail(where, ": expected a tensor, found another object");
  }
  return s;
}

// Builds the logical source of one instance from its shards (one per TP rank) and their maps.
inline std::shared_ptr<LogicalSource> mcore_logical_source(const std::string& name, const Shape& full,
                                                           const std::vector<McoreShard>& shards,
                                                           const std::vector<layout::ShardMap>& maps) {
  auto src = std::make_shared<LogicalSource>();
  src->name = name;
  src->full = full;
  src->dtype = shards.front().data.dtype;
  src->fp8 = shards.front().scale.has_value();
  src->pow2 = src->fp8;
  for (std::size_t r = 0; r < shards.size(); ++r) {
    const McoreShard& s = shards[r];
    if (s.data.dtype != src->dtype || s.scale.has_value() != src->fp8)
      fail(s.where, ": shard dtype ", s.data.dtype, s.scale ? " (FP8)" : "", " differs from shard 0's ", src->dtype);
    if (s.data.shape != maps[r].shard_shape)
      fail(s.where, ": shard shape ", shape_str(s.data.shape), " but the layout expects ",
           shape_str(maps[r].shard_shape), " for full shape ", shape_str(full), " (shard ", r, " of ", shards.size(),
           ": parallel sizes or model config differ from the checkpoint's)");
    // Replicated shards: only rank 0 carries the data into the merge.
    bool dup = false;
    for (std::size_t q = 0; q < r; ++q)
      if (maps[q].pieces == maps[r].pieces) dup = true;
    if (dup) continue;
    place_shard(maps[r], s.data, src->data, s.where);
    src->verify_reads.insert(src->verify_reads.end(), s.verify.begin(), s.verify.end());
    if (src->fp8) {
      const auto mn = quant::as_matrix(s.data.shape);
      src->pow2 = src->pow2 && quant::is_power_of_two(*s.scale, mn.m, mn.n, s.where);
      src->fp8_pieces.push_back({s.data, *s.scale, maps[r]});
      if (layout::fp8_why_not(name, full, maps[r], static_cast<int>(r), static_cast<int>(shards.size())))
        src->blocks_tile = false;
      else
        place_shard(layout::fp8_scale_map(name, full, maps[r], 0, 1), *s.scale, src->scale);
    }
  }
  if (!src->blocks_tile) src->scale.clear();
  return src;
}

}  // namespace ckbridge::convert

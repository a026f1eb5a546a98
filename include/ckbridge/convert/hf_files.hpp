#pragma once
// HF output file set: tensors assigned to shards the way transformers names them
// (model-0000i-of-0000N.safetensors + model.safetensors.index.json; a single shard is
// model.safetensors without an index), shared by the MCore -> HF writer and the generator.
#include <map>
#include <string>
#include <vector>

#include "ckbridge/format/safetensors_writer.hpp"

namespace ckbridge::convert {

struct HfFileSet {
  std::vector<safetensors::ShardPlan> shards;  // file name + tensors, in write order
  std::string index_json;                      // empty for a single model.safetensors
};

inline HfFileSet hf_file_set(const std::vector<safetensors::TensorSpec>& specs, std::uint64_t max_shard_bytes) {
  HfFileSet fs;
  fs.shards = safetensors::plan_shards(specs, max_shard_bytes);
  if (fs.shards.size() == 1) {
    fs.shards[0].file_name = std::string(safetensors::kSingleFileName);
  } else {
    fs.index_json = safetensors::index_json(safetensors::weight_map(fs.shards), safetensors::total_size(fs.shards));
  }
  return fs;
}

}  // namespace ckbridge::convert

#pragma once
// Megatron-LM legacy `torch` checkpoints, write side: directory and file names, the tracker file,
// the `args` Namespace that Megatron's check_checkpoint_args compares, and the top-level dict of
// each rank's `model_optim_rng.pt` (references: file-formats.md section 3, loongforge-converter.md
// sections 5.4, 6.4, 7).
//
//   <save>/latest_checkpointed_iteration.txt    "release" or "<iteration>" (no newline)
//   <save>/release/ | <save>/iter_%07d/
//       mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt
// PPP is present iff pipeline size > 1, EEE iff expert-parallel size > 1 (so TP+EP without PP is
// mp_rank_TT_EEE).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ckbridge/core/error.hpp"
#include "ckbridge/format/pickle_writer.hpp"
#include "ckbridge/format/torch_save.hpp"
#include "ckbridge/format/zip_writer.hpp"

namespace ckbridge::format::megatron {

struct ParallelSizes {
  int tp = 1, pp = 1, ep = 1;
};
struct RankCoord {
  int tp = 0, pp = 0, ep = 0;
};

// Which checkpoint a save belongs to. LoongForge always writes `release` (iteration 0).
struct CheckpointTag {
  bool release = true;
  std::int64_t iteration = 0;
  static CheckpointTag release_tag() { return {true, 0}; }
  static CheckpointTag at(std::int64_t it) { return {false, it}; }
};

inline std::string iteration_dir_name(const CheckpointTag& t) {
  if (t.release) return "release";
  if (t.iteration < 0) fail("megatron: negative iteration ", t.iteration);
  char buf[32];
  std::snprintf(buf, sizeof buf, "iter_%07lld", static_cast<long long>(t.iteration));
  return buf;
}

inline std::string tracker_text(const CheckpointTag& t) {
  return t.release ? std::string("release") : std::to_string(t.iteration);
}

inline std::string rank_dir_name(RankCoord r, ParallelSizes s) {
  if (s.tp < 1 || s.pp < 1 || s.ep < 1)
    fail("megatron: parallel sizes must be >= 1 (tp=", s.tp, " pp=", s.pp, " ep=", s.ep, ")");
  if (r.tp < 0 || r.tp >= s.tp || r.pp < 0 || r.pp >= s.pp || r.ep < 0 || r.ep >= s.ep)
    fail("megatron: rank (tp=", r.tp, ", pp=", r.pp, ", ep=", r.ep, ") outside sizes (", s.tp, ", ", s.pp, ", ", s.ep, ")");
  char buf[64];
  int n = std::snprintf(buf, sizeof buf, "mp_rank_%02d", r.tp);
  if (s.pp > 1) n += std::snprintf(buf + n, sizeof buf - n, "_%03d", r.pp);
  if (s.ep > 1) std::snprintf(buf + n, sizeof buf - n, "_%03d", r.ep);
  return buf;
}

// Relative path of one rank's file inside the save directory.
inline std::string rank_file_path(const CheckpointTag& t, RankCoord r, ParallelSizes s) {
  return iteration_dir_name(t) + "/" + rank_dir_name(r, s) + "/model_optim_rng.pt";
}

// The `args` fields Megatron's load_checkpoint reads without a default (check_checkpoint_args,
// TP/PP for checkpoint_version >= 3.0) plus the sample counters it reads with defaults. Anything
// else (ffn_hidden_size, num_experts, ...) goes into `extra`, in order.
struct CheckpointArgs {
  std::int64_t num_layers = 0;
  std::int64_t hidden_size = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t tensor_model_parallel_size = 1;
  std::int64_t pipeline_model_parallel_size = 1;
  std::int64_t expert_model_parallel_size = 1;
  std::optional<std::int64_t> expert_tensor_parallel_size;
  std::optional<std::int64_t> num_layers_per_virtual_pipeline_stage;
  std::optional<std::int64_t> virtual_pipeline_model_parallel_size;
  std::int64_t max_position_embeddings = 0;
  std::int64_t make_vocab_size_divisible_by = 128;
  std::int64_t padded_vocab_size = 0;
  bool add_position_embedding = false;  // Megatron-Core GPT with RoPE
  std::optional<std::string> vocab_file;
  std::optional<std::string> tokenizer_type;
  bool data_parallel_random_init = false;
  std::int64_t consumed_train_samples = 0, skipped_train_samples = 0, consumed_valid_samples = 0;
  std::vector<std::pair<std::string, pickle::Value>> extra;

  pickle::Value to_namespace() const {
    auto opt_int = [](const std::optional<std::int64_t>& v) { return v ? pickle::Value(*v) : pickle::Value(); };
    auto opt_str = [](const std::optional<std::string>& v) { return v ? pickle::Value(*v) : pickle::Value(); };
    std::vector<std::pair<std::string, pickle::Value>> a{
        {"num_layers", num_layers},
        {"hidden_size", hidden_size},
        {"num_attention_heads", num_attention_heads},
        {"tensor_model_parallel_size", tensor_model_parallel_size},
        {"pipeline_model_parallel_size", pipeline_model_parallel_size},
        {"expert_model_parallel_size", expert_model_parallel_size},
        {"expert_tensor_parallel_size", opt_int(expert_tensor_parallel_size)},
        {"num_layers_per_virtual_pipeline_stage", opt_int(num_layers_per_virtual_pipeline_stage)},
        {"virtual_pipeline_model_parallel_size", opt_int(virtual_pipeline_model_parallel_size)},
        {"max_position_embeddings", max_position_embeddings},
        {"make_vocab_size_divisible_by", make_vocab_size_divisible_by},
        {"padded_vocab_size", padded_vocab_size},
        {"add_position_embedding", add_position_embedding},
        {"vocab_file", opt_str(vocab_file)},
        {"tokenizer_type", opt_str(tokenizer_type)},
        {"data_parallel_random_init", data_parallel_random_init},
        {"consumed_train_samples", consumed_train_samples},
        {"skipped_train_samples", skipped_train_samples},
        {"consumed_valid_samples", consumed_valid_samples},
    };
    for (const auto& [k, v] : extra) {
      for (const auto& [k0, v0] : a)
        if (k0 == k) fail("megatron args: extra field '", k, "' duplicates a standard field");
      a.emplace_back(k, v);
    }
    return pickle::Value::namespace_(std::move(a));
  }
};

// `_extra_state` values: LoongForge writes None for every TE module's key; TE >= 2.0 itself
// saves an empty uint8 tensor when no FP8 delayed-scaling state is carried.
enum class ExtraState { None, EmptyUint8 };
inline pickle::Value extra_state(ExtraState k) {
  if (k == ExtraState::None) return pickle::Value();
  return pickle::Value::tensor(AnyConstView(nullptr, DType::U8, Shape{0}));
}

// The top-level dict of one rank file. One model chunk is stored as `model`, several (virtual
// pipeline stages) as `model0`, `model1`, ...
struct RankState {
  pickle::Value args;                      // usually CheckpointArgs::to_namespace(); None to omit
  std::vector<pickle::Value> model_chunks; // each a dict / OrderedDict name -> tensor
  std::optional<std::int64_t> iteration = 0;
  std::vector<std::pair<std::string, pickle::Value>> extra;  // e.g. rng_state, appended last

  pickle::Value to_value() const {
    using pickle::Value;
    if (model_chunks.empty()) fail("megatron: a rank file needs at least one model chunk");
    Value d = Value::dict();
    if (!args.is_none()) d.set("args", args);
    d.set("checkpoint_version", 3.0);
    if (iteration) d.set("iteration", *iteration);
    if (model_chunks.size() == 1) d.set("model", model_chunks[0]);
    else
      for (std::size_t i = 0; i < model_chunks.size(); ++i) d.set("model" + std::to_string(i), model_chunks[i]);
    for (const auto& [k, v] : extra) d.set(k, v);
    return d;
  }
};

// Writes the tracker file atomically.
inline void write_tracker(const std::string& save_dir, const CheckpointTag& t) {
  std::filesystem::create_directories(save_dir);
  AtomicFileSink s(save_dir + "/latest_checkpointed_iteration.txt");
  const std::string text = tracker_text(t);
  s.write(text.data(), text.size());
  s.commit();
}

// Writes one rank's model_optim_rng.pt (directories created as needed); returns its path.
inline std::string save_rank(const std::string& save_dir, const CheckpointTag& t, RankCoord r, ParallelSizes s,
                             const RankState& state, TorchSaveOptions opt = {}) {
  const std::string path = save_dir + "/" + rank_file_path(t, r, s);
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) fail(path, ": cannot create directory: ", ec.message());
  save_torch(path, state.to_value(), std::move(opt));
  return path;
}

}  // namespace ckbridge::format::megatron

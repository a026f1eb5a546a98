#pragma once
// Writes one MCore rank file of a plan: the state dict (args Namespace, checkpoint_version,
// iteration, model / model<s> dicts) is pickled first, then every storage record is streamed from
// its producer as torch.save would lay it out. FP8 entries become TE Float8BlockwiseQTensor objects
// in the pickle form of the chosen TE version.
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "ckbridge/convert/executor.hpp"
#include "ckbridge/convert/plan.hpp"
#include "ckbridge/format/megatron_layout.hpp"
#include "ckbridge/format/te_fp8_pickle.hpp"
#include "ckbridge/format/torch_save.hpp"

namespace ckbridge::convert {

struct McoreWriteOptions {
  format::TeVersion te{};
  DType fake_dtype = DType::BF16;  // the dtype TE FP8 tensors pose as (--torch_dtype)
  float amax_epsilon = 0.0f;       // stored in every TE quantizer
  bool fsync = true;
};

inline pickle::Value arg_value(const ArgValue& v) {
  return std::visit(
      [](const auto& x) -> pickle::Value {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) return pickle::Value();
        else return pickle::Value(x);
      },
      v);
}

// A lazily produced storage that reports its bytes to the progress counter.
inline pickle::Value lazy_tensor(const Producer& p, Progress& prog, std::optional<DType> as = std::nullopt) {
  const DType dt = as.value_or(p.dtype);
  auto run = p.run;
  Progress* pr = &prog;
  return pickle::Value::lazy_tensor(dt, p.shape, [run, pr, dt](Tensor& scratch) {
    AnyConstView v = run(scratch);
    v.dtype = dt;  // FP8 codes travel as uint8 in TE tensors (same size)
    pr->add(v.size_bytes());
    return v;
  });
}

inline void write_mcore_file(const OutFile& f, const std::filesystem::path& path, Progress& prog,
                             const ArgList& args, const McoreWriteOptions& o) {
  using pickle::Value;
  std::vector<std::string> dict_order;
  std::map<std::string, Value> dicts;
  for (const auto& e : f.entries) {
    if (!dicts.count(e.dict)) {
      dicts[e.dict] = Value::dict();
      dict_order.push_back(e.dict);
    }
    Value& d = dicts[e.dict];
    switch (e.kind) {
      case EntryKind::None: d.set(e.key, Value()); break;
      case EntryKind::Tensor: d.set(e.key, lazy_tensor(e.data, prog)); break;
      case EntryKind::Fp8: {
        format::TeQuantizerConfig q;
        q.force_pow_2_scales = e.pow2;
        q.amax_epsilon = o.amax_epsilon;
        d.set(e.key, format::te_fp8_blockwise_value(e.data.shape, lazy_tensor(e.data, prog, DType::U8),
                                                    lazy_tensor(e.scale, prog), o.fake_dtype, q, o.te));
        break;
      }
    }
  }
  std::sort(dict_order.begin(), dict_order.end());  // "model", or "model0", "model1", ...
  // Megatron's save_checkpoint order: args, checkpoint_version, iteration, model chunks.
  std::vector<std::pair<std::string, Value>> ns;
  std::int64_t iteration = 0;
  for (const auto& [k, v] : args) {
    ns.push_back({k, arg_value(v)});
    if (k == "iteration" && std::holds_alternative<std::int64_t>(v)) iteration = std::get<std::int64_t>(v);
  }
  Value top = Value::dict();
  top.set("args", Value::namespace_(std::move(ns)));
  top.set("checkpoint_version", 3.0);
  top.set("iteration", iteration);
  for (const auto& k : dict_order) top.set(k, dicts[k]);
  format::TorchSaveOptions to;
  to.fsync = o.fsync;
  format::save_torch(path.string(), top, to);
}

inline FileWriterFn mcore_file_writer(const ArgList& args, const McoreWriteOptions& o) {
  return [args, o](const OutFile& f, const std::filesystem::path& path, Progress& prog) {
    write_mcore_file(f, path, prog, args, o);
  };
}

}  // namespace ckbridge::convert

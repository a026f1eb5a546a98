#pragma once
// The canonical HF checkpoint layout of a model: every tensor (weights, FP8 scales, MTP copies)
// with its dtype and shape, in the order ckbridge writes them. The built-in checkpoint generator
// and the MCore -> HF writer share it, so a round trip reproduces the same files.
#include <string>
#include <vector>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/convert/instances.hpp"
#include "ckbridge/core/dtype.hpp"
#include "ckbridge/convert/names.hpp"
#include "ckbridge/quant/fp8_blocks.hpp"

namespace ckbridge::convert {

struct HfTensor {
  std::string key;
  DType dtype = DType::BF16;
  Shape shape;
  std::size_t instance = 0;  // index into enumerate_instances (npos-like for copies)
  int part = 0;              // [gate, up] part
  bool is_scale = false;
  bool is_copy = false;      // MTP-block duplicate of a global
  std::string copy_of;       // its original's key
  std::int64_t row0 = 0;     // first row of this part in the instance's full tensor (dim 0)
};

struct HfLayoutOptions {
  bool fp8 = false;                 // FP8-able weights as F8_E4M3 + weight_scale_inv
  DType float_dtype = DType::BF16;  // everything else (float32 kinds stay float32)
};

// The HF config.json of a model: its family's own writer.
inline std::string hf_config_json(const model::ModelSpec& spec, const config::ModelConfig& mc,
                                  const config::HfJsonOptions& jo) {
  if (!spec.hf_config_json) fail(spec.name, ": the model spec has no config.json writer");
  return spec.hf_config_json(mc, jo);
}

inline bool hf_fp8_kind(const model::ParamKind& k) {
  return k.fp8 == model::Fp8::Blockwise || k.fp8 == model::Fp8::BlockwiseNoTp;
}

inline std::vector<HfTensor> hf_layout(const model::ModelSpec& spec, const NameMap& nm, const ModelShape& shape,
                                       const HfLayoutOptions& o) {
  const std::vector<Instance> inst = enumerate_instances(spec, shape);
  const auto copies = mtp_copy_keys(spec, nm, shape);
  std::vector<HfTensor> out;
  int last_mtp = -1;
  auto flush_copies = [&](int mtp) {
    if (mtp < 0) return;
    for (const auto& [ck, ok] : copies) {
      // copies are listed block by block; pick this block's by its layer prefix
      const std::string pre = names_detail::join({nm.hf_transformer, nm.hf_mtp_layer_prefix,
                                                  std::to_string(nm.hf_mtp_layer_id + mtp)}) + ".";
      if (ck.rfind(pre, 0) != 0) continue;
      HfTensor t;
      t.key = ck;
      t.is_copy = true;
      t.copy_of = ok;
      out.push_back(t);
    }
  };
  for (std::size_t i = 0; i < inst.size(); ++i) {
    const Instance& in = inst[i];
    if (!in.kind.tied_to.empty()) continue;  // no HF tensor of its own (the tied output layer)
    if (in.mtp != last_mtp) {
      flush_copies(last_mtp);
      last_mtp = in.mtp;
    }
    const std::vector<std::string> keys = hf_keys(nm, in);
    const Shape full = in.kind.shape(shape.dims);
    const std::vector<std::int64_t> rows =
        keys.size() > 1 ? in.kind.part_rows(shape.dims, keys.size()) : std::vector<std::int64_t>{};
    const bool fp8 = o.fp8 && hf_fp8_kind(in.kind) &&
                     !nm.hf_bf16_mcore_fp8(names_detail::split_keys(in.kind.common).back());
    const DType dt = fp8 ? DType::F8_E4M3 : (in.kind.hf_float32 ? DType::F32 : o.float_dtype);
    std::int64_t row0 = 0;
    for (std::size_t p = 0; p < keys.size(); ++p) {
      Shape part = full;
      if (!rows.empty()) part[0] = rows[p];
      out.push_back({keys[p], dt, part, i, static_cast<int>(p), false, false, {}, row0});
      if (fp8) {
        const auto mn = quant::as_matrix(part);
        out.push_back({hf_scale_key(nm, keys[p]), DType::F32, quant::scale_shape(mn.m, mn.n, quant::ScaleLayout::Unpadded),
                       i, static_cast<int>(p), true, false, {}, row0});
      }
      if (!rows.empty()) row0 += rows[p];
    }
  }
  flush_copies(last_mtp);
  for (auto& t : out) {  // copies take their original's dtype and shape
    if (!t.is_copy) continue;
    bool found = false;
    for (const auto& g : out)
      if (!g.is_copy && g.key == t.copy_of) {
        t.dtype = g.dtype;
        t.shape = g.shape;
        found = true;
      }
    if (!found) fail("hf_layout: '", t.key, "' copies '", t.copy_of, "', which the layout does not contain");
  }
  return out;
}

}  // namespace ckbridge::convert

#pragma once
// TransformerEngine `Float8BlockwiseQTensor` objects (128x128 blockwise E4M3, rowwise only, as
// LoongForge writes FP8 weights) as pickle trees, in the form each TE release pickles them
// (reference: fp8-blockwise.md section 2):
//
//   TE        rebuild callable                                   args  enums
//   2.3       getattr(Float8BlockwiseQTensor, '_make_in_reduce_ex')  9   pybind DType (E4M3 = 6)
//   2.4       same                                                   9   pybind DType (E4M3 = 7)
//   2.5-2.11  same                                                  10   + Float8BlockScaleTensorFormat.GEMM_READY
//   2.12-2.15 same                                                  10   10th arg None
//   2.16      module function _make_float8_blockwise_tensor_in_reduce_ex 10   DType pickled as DType(7)
//   2.17+     same                                                  10   IntEnum constants.DType(7)
//                                                          (Python 3.11: getattr(DType, 'kFloat8E4M3'))
//
// The args are (torch.Size([M, N]), rowwise_data uint8 [M, N], rowwise_scale_inv f32
// [ceil(M/128), roundup(ceil(N/128), 4)], None, None, fp8_dtype, fake dtype, quantizer, True
// [, data_format]). The quantizer is a Float8BlockQuantizer built by NEWOBJ + BUILD(__dict__),
// whose `dtype` is the very enum object passed as fp8_dtype (a memo hit in the pickle).
// Scale padding columns (uninitialised in TE) are written as +0.0.
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/copy.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/format/pickle_writer.hpp"

namespace ckbridge::format {

struct TeVersion {
  int major = 2, minor = 9;  // LoongForge's reference environment
  // TE >= 2.17 uses a Python IntEnum; Python 3.12+ pickles its members by value (REDUCE
  // DType((7,))), Python 3.11 by name (getattr(DType, 'kFloat8E4M3')). Set for a 3.11 stack.
  bool intenum_by_name = false;
};

// The distinct pickle forms.
enum class TeForm { V2_3, V2_4, V2_5_to_2_11, V2_12_to_2_15, V2_16, V2_17_plus };

inline TeForm te_form(TeVersion v) {
  if (v.major != 2 || v.minor < 3)
    fail("TransformerEngine ", v.major, ".", v.minor, " has no Float8BlockwiseQTensor (blockwise FP8 needs TE >= 2.3)");
  if (v.minor == 3) return TeForm::V2_3;
  if (v.minor == 4) return TeForm::V2_4;
  if (v.minor <= 11) return TeForm::V2_5_to_2_11;
  if (v.minor <= 15) return TeForm::V2_12_to_2_15;
  if (v.minor == 16) return TeForm::V2_16;
  return TeForm::V2_17_plus;
}

// transformer_engine DType code of kFloat8E4M3 (kInt16 was inserted in 2.4).
inline int te_e4m3_code(TeVersion v) { return te_form(v) == TeForm::V2_3 ? 6 : 7; }

struct TeQuantizerConfig {
  bool force_pow_2_scales = true;
  double amax_epsilon = 0.0;
  std::int64_t block_len = 128;
  std::int64_t block_scaling_dim = 2;
  bool rowwise_usage = true, columnwise_usage = false, internal = false;
};

struct TeFp8Tensor {
  AnyConstView data;       // [M, N] E4M3 codes, dtype F8_E4M3 or U8 (may be strided)
  AnyConstView scale_inv;  // F32 [ceil(M/128), C] with C = ceil(N/128) or its multiple-of-4 padding
  std::shared_ptr<const void> owner;  // keeps data/scale_inv memory alive
  DType fake_dtype = DType::BF16;     // the high-precision dtype the tensor poses as
  TeQuantizerConfig quantizer{};
};

namespace te_detail {
inline const std::string kModule = "transformer_engine.pytorch.tensor.float8_blockwise_tensor";

// Objects that are one Python object in a TE process (enum members, interned attribute names)
// are one node here, so repeated uses become memo hits like in CPython.
inline pickle::Value shared_str(const char* s) {
  static std::mutex mu;
  static std::vector<std::pair<std::string, pickle::Value>> pool;
  std::lock_guard<std::mutex> lock(mu);
  for (auto& [k, v] : pool)
    if (k == s) return v;
  pool.emplace_back(s, pickle::Value(s));
  return pool.back().second;
}

inline pickle::Value e4m3_enum(TeForm f, bool by_name) {
  using pickle::Value;
  static const Value intenum_name =
      Value::reduce(Value::global("builtins", "getattr"),
                    Value::tuple({Value::global("transformer_engine.pytorch.constants", "DType"), Value("kFloat8E4M3")}));
  static const Value pybind23 = Value::newobj(Value::global("transformer_engine_torch", "DType"), Value::tuple(), Value(6));
  static const Value pybind24 = Value::newobj(Value::global("transformer_engine_torch", "DType"), Value::tuple(), Value(7));
  static const Value reduce216 = Value::reduce(Value::global("transformer_engine_torch", "DType"), Value::tuple({7}));
  static const Value intenum = Value::reduce(Value::global("transformer_engine.pytorch.constants", "DType"), Value::tuple({7}));
  switch (f) {
    case TeForm::V2_3: return pybind23;
    case TeForm::V2_4:
    case TeForm::V2_5_to_2_11:
    case TeForm::V2_12_to_2_15: return pybind24;
    case TeForm::V2_16: return reduce216;
    case TeForm::V2_17_plus: return by_name ? intenum_name : intenum;
  }
  fail("invalid TE form");
}

inline pickle::Value gemm_ready() {
  using pickle::Value;
  static const Value v =
      Value::newobj(Value::global("transformer_engine_torch", "Float8BlockScaleTensorFormat"), Value::tuple(), Value(0));
  return v;
}

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
}  // namespace te_detail

// Float8BlockQuantizer object with the attribute order of the given TE release.
inline pickle::Value te_fp8_quantizer(const TeQuantizerConfig& q, TeVersion v, const pickle::Value& fp8_dtype) {
  using pickle::Value;
  using te_detail::shared_str;
  const TeForm f = te_form(v);
  Value st = Value::dict();
  st.set(shared_str("rowwise_usage"), q.rowwise_usage);
  st.set(shared_str("columnwise_usage"), q.columnwise_usage);
  st.set(shared_str("internal"), q.internal);
  if (f >= TeForm::V2_12_to_2_15) st.set(shared_str("optimize_for_gemm"), false);
  st.set(shared_str("dtype"), fp8_dtype);
  st.set(shared_str("block_len"), q.block_len);
  st.set(shared_str("force_pow_2_scales"), q.force_pow_2_scales);
  st.set(shared_str("amax_epsilon"), q.amax_epsilon);
  st.set(shared_str("block_scaling_dim"), q.block_scaling_dim);
  if (f == TeForm::V2_5_to_2_11) st.set(shared_str("all_gather_usage"), false);
  return Value::newobj(Value::global(te_detail::kModule, "Float8BlockQuantizer"), Value::tuple(), st);
}

// The TE object from already-built tensor values: `data` a uint8 [M, N] tensor, `scale_inv` a float32
// [ceil(M/128), roundup(ceil(N/128), 4)] tensor (lazy tensors allowed: bytes made at write time).
inline pickle::Value te_fp8_blockwise_value(const Shape& shape, pickle::Value data, pickle::Value scale_inv,
                                            DType fake_dtype, const TeQuantizerConfig& quantizer, TeVersion v = {}) {
  using pickle::Value;
  const TeForm f = te_form(v);
  const Value fp8 = te_detail::e4m3_enum(f, v.intenum_by_name);
  const Value quant = te_fp8_quantizer(quantizer, v, fp8);
  std::vector<Value> args{Value::torch_size(shape),
                          std::move(data),
                          std::move(scale_inv),
                          Value(),
                          Value(),
                          fp8,
                          Value::dtype(fake_dtype),
                          quant,
                          true};
  if (f == TeForm::V2_5_to_2_11) args.push_back(te_detail::gemm_ready());
  else if (f >= TeForm::V2_12_to_2_15) args.push_back(Value());

  Value rebuild = f >= TeForm::V2_16
                      ? Value::global(te_detail::kModule, "_make_float8_blockwise_tensor_in_reduce_ex")
                      : Value::reduce(Value::global("builtins", "getattr"),
                                      Value::tuple({Value::global(te_detail::kModule, "Float8BlockwiseQTensor"),
                                                    te_detail::shared_str("_make_in_reduce_ex")}));
  return Value::reduce(rebuild, Value::tuple(std::move(args)));
}

// `name` is only used in error messages.
inline pickle::Value te_fp8_blockwise_tensor(const TeFp8Tensor& t, TeVersion v = {}, const std::string& name = "") {
  using pickle::Value;
  te_form(v);  // rejects TE versions without blockwise FP8 up front
  const std::string what = name.empty() ? std::string("TE FP8 tensor") : "TE FP8 tensor '" + name + "'";
  if (t.data.dtype != DType::F8_E4M3 && t.data.dtype != DType::U8)
    fail(what, ": data must be F8_E4M3 or U8 codes, got ", safetensors_name(t.data.dtype));
  if (t.data.rank() != 2) fail(what, ": blockwise FP8 data must be 2-D, got shape ", shape_str(t.data.shape));
  if (t.scale_inv.dtype != DType::F32)
    fail(what, ": scale_inv must be F32, got ", safetensors_name(t.scale_inv.dtype));
  if (t.quantizer.block_len <= 0) fail(what, ": block_len must be positive");
  const std::int64_t M = t.data.shape[0], N = t.data.shape[1], B = t.quantizer.block_len;
  const std::int64_t rows = te_detail::ceil_div(M, B), cols = te_detail::ceil_div(N, B);
  const std::int64_t padded = te_detail::ceil_div(cols, 4) * 4;
  if (t.scale_inv.rank() != 2 || t.scale_inv.shape[0] != rows ||
      (t.scale_inv.shape[1] != cols && t.scale_inv.shape[1] != padded))
    fail(what, ": scale_inv shape ", shape_str(t.scale_inv.shape), " does not match data shape ", shape_str(t.data.shape),
         " (expected [", rows, ", ", cols, "] or [", rows, ", ", padded, "])");

  // Padded scale with +0.0 in the padding columns (small: one float per 128x128 tile).
  Tensor scale(DType::F32, {rows, padded});
  if (scale.size_bytes()) std::memset(scale.data(), 0, scale.size_bytes());
  copy(t.scale_inv.slice(1, 0, cols), scale.view().slice(1, 0, cols));

  AnyConstView codes = t.data;
  codes.dtype = DType::U8;  // TE keeps the E4M3 bits in a uint8 tensor
  return te_fp8_blockwise_value(t.data.shape, Value::tensor(codes, t.owner), Value::tensor(std::move(scale)),
                                t.fake_dtype, t.quantizer, v);
}

}  // namespace ckbridge::format

#pragma once
// Interprets the pickled form of a TransformerEngine Float8BlockwiseQTensor (fp8-blockwise.md §2)
// from the opaque call tree the unpickler leaves, for every TE version that has one (2.3+):
//   TE <= 2.15: builtins.getattr(Float8BlockwiseQTensor, '_make_in_reduce_ex')(*args)
//   TE >= 2.16: float8_blockwise_tensor._make_float8_blockwise_tensor_in_reduce_ex(*args)
// args = (shape, rowwise_data, rowwise_scale_inv, columnwise_data, columnwise_scale_inv, fp8_dtype,
//         dtype, quantizer, is_2D_scaled[, data_format | None]).
// The fp8 dtype enum comes as pybind state (NEWOBJ + BUILD int, TE <= 2.15), pybind reduce
// (TE 2.16) or IntEnum reduce (TE >= 2.17).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/format/pickle_reader.hpp"

namespace ckbridge::format {

struct TeFp8Quantizer {
  bool present = false;
  std::optional<bool> rowwise_usage, columnwise_usage, internal, force_pow_2_scales;
  std::optional<std::int64_t> block_len, block_scaling_dim, te_dtype_code;
  std::optional<double> amax_epsilon;
  std::optional<bool> all_gather_usage;   // TE 2.5 - 2.11 (pickled as [False])
  std::optional<bool> optimize_for_gemm;  // TE >= 2.12
  std::string class_name;
};

struct TeFp8BlockwiseRef {
  Shape shape;                                    // logical [M, N]
  std::optional<pickle::TensorRef> rowwise_data;  // uint8 [M, N]
  std::optional<pickle::TensorRef> rowwise_scale_inv;  // float32 [ceil(M/B), roundup(ceil(N/B), 4)]
  std::optional<pickle::TensorRef> columnwise_data, columnwise_scale_inv;
  DType fp8_dtype = DType::F8_E4M3;
  std::int64_t te_dtype_code = -1;  // the enum value as pickled
  bool dtype_code_ambiguous = false;  // 7 is E4M3 in TE >= 2.4 but E5M2 in TE 2.3 (assumed >= 2.4)
  std::optional<DType> fake_dtype;    // high-precision dtype the tensor pretends to be
  bool is_2d_scaled = true;
  std::optional<std::int64_t> data_format;  // TE 2.5 - 2.11: GEMM_READY = 0
  std::size_t num_args = 0;                 // 9 or 10
  bool module_level_rebuild = false;        // TE >= 2.16 form
  TeFp8Quantizer quantizer;
  std::int64_t block_len() const { return quantizer.block_len.value_or(128); }
};

// Which TE numbering to assume for the pickled C++ DType enum.
enum class TeDTypeNumbering { Auto /* >= 2.4 unless impossible */, V2_3 };

namespace detail {

inline bool is_blockwise_module(std::string_view m) {
  return m.size() >= 23 && m.substr(m.size() - 23) == "float8_blockwise_tensor";
}

// Enum value of a pickled TE enum object, or nullopt when `o` is not one. `by_name` is set when
// the pickle names the member (Python <= 3.11 pickles IntEnum members as getattr(cls, name)).
inline std::optional<std::int64_t> te_enum_value(const pickle::Object& o, bool* by_name = nullptr) {
  using pickle::Kind;
  if (by_name) *by_name = false;
  if (o.kind == Kind::Int) return o.i;
  const pickle::Object* cls = o.callable.get();
  if (!cls || cls->kind != Kind::Global) return std::nullopt;
  if (o.kind == Kind::NewObj && o.state && o.state->kind == Kind::Int) return o.state->i;  // pybind11 state
  if (o.kind == Kind::Call && o.args && o.args->items.size() == 1 && o.args->items[0]->kind == Kind::Int)
    return o.args->items[0]->i;  // (type, (value,)) reduce
  if (o.kind == Kind::Call && cls->is_global("builtins", "getattr") && o.args && o.args->items.size() == 2 &&
      o.args->items[0]->kind == Kind::Global && o.args->items[1]->kind == Kind::Str) {
    // TE >= 2.4 numbering (the IntEnum exists from TE 2.17 on)
    static constexpr std::pair<std::string_view, int> kNames[] = {
        {"kByte", 0},     {"kInt16", 1},     {"kInt32", 2},       {"kInt64", 3},       {"kFloat32", 4},
        {"kFloat16", 5},  {"kBFloat16", 6},  {"kFloat8E4M3", 7},  {"kFloat8E5M2", 8},  {"GEMM_READY", 0},
        {"COMPACT", 1}};
    for (const auto& [n, v] : kNames)
      if (o.args->items[1]->s == n) {
        if (by_name) *by_name = true;
        return v;
      }
  }
  return std::nullopt;
}

inline DType te_code_to_fp8(std::int64_t code, TeDTypeNumbering num, bool& ambiguous, std::string_view where) {
  ambiguous = false;
  if (num == TeDTypeNumbering::V2_3) {
    if (code == 6) return DType::F8_E4M3;
    if (code == 7) return DType::F8_E5M2;
  } else {
    if (code == 6) return DType::F8_E4M3;  // only a TE 2.3 pickle has an fp8 type at 6
    if (code == 7) { ambiguous = true; return DType::F8_E4M3; }
    if (code == 8) return DType::F8_E5M2;
  }
  fail(where, ": TE fp8_dtype enum value ", code, " is not an FP8 type");
}

}  // namespace detail

// True when `o` looks like a pickled Float8BlockwiseQTensor (any TE version).
inline bool is_te_fp8_blockwise(const pickle::Object& o) {
  using pickle::Kind;
  if (o.kind != Kind::Call || !o.callable) return false;
  const pickle::Object& c = *o.callable;
  if (c.kind == Kind::Global)
    return detail::is_blockwise_module(c.s) && c.name == "_make_float8_blockwise_tensor_in_reduce_ex";
  if (c.kind == Kind::Call && c.callable && c.callable->is_global("builtins", "getattr") && c.args &&
      c.args->items.size() == 2) {
    const pickle::Object& cls = *c.args->items[0];
    const pickle::Object& attr = *c.args->items[1];
    return cls.kind == Kind::Global && detail::is_blockwise_module(cls.s) && cls.name == "Float8BlockwiseQTensor" &&
           attr.kind == Kind::Str && attr.s == "_make_in_reduce_ex";
  }
  return false;
}

// Decodes the record. `where` names the file and tensor in errors.
inline TeFp8BlockwiseRef read_te_fp8_blockwise(const pickle::Object& o, std::string_view where,
                                               TeDTypeNumbering numbering = TeDTypeNumbering::Auto) {
  using pickle::Kind;
  if (!is_te_fp8_blockwise(o)) fail(where, ": not a TE Float8BlockwiseQTensor: ", pickle::describe(o));
  TeFp8BlockwiseRef r;
  r.module_level_rebuild = o.callable->kind == Kind::Global;
  const auto& a = o.args->items;
  r.num_args = a.size();
  if (a.size() != 9 && a.size() != 10)
    fail(where, ": Float8BlockwiseQTensor pickle has ", a.size(), " arguments, expected 9 or 10");
  // shape
  if (a[0]->kind != Kind::Tuple) fail(where, ": shape argument is a ", pickle::kind_name(a[0]->kind));
  for (const auto& d : a[0]->items) r.shape.push_back(d->as_int(std::string(where) + " shape"));
  auto tensor_or_none = [&](std::size_t k, const char* what) -> std::optional<pickle::TensorRef> {
    if (a[k]->is_none()) return std::nullopt;
    if (a[k]->kind != Kind::Tensor) fail(where, ": ", what, " is a ", pickle::kind_name(a[k]->kind), ", not a tensor");
    return *a[k]->tensor;
  };
  r.rowwise_data = tensor_or_none(1, "rowwise_data");
  r.rowwise_scale_inv = tensor_or_none(2, "rowwise_scale_inv");
  r.columnwise_data = tensor_or_none(3, "columnwise_data");
  r.columnwise_scale_inv = tensor_or_none(4, "columnwise_scale_inv");
  // fp8 dtype
  bool by_name = false;
  const auto code = detail::te_enum_value(*a[5], &by_name);
  if (!code) fail(where, ": fp8_dtype is not a TE DType enum: ", pickle::describe(*a[5]));
  r.te_dtype_code = *code;
  // 10 arguments or a named member => TE >= 2.4 numbering for sure
  const bool known_new = r.num_args == 10 || by_name;
  r.fp8_dtype = detail::te_code_to_fp8(*code, known_new ? TeDTypeNumbering::Auto : numbering, r.dtype_code_ambiguous, where);
  if (known_new) {
    r.dtype_code_ambiguous = false;
    if (*code == 6) fail(where, ": fp8_dtype enum value 6 is kBFloat16 in this TE version, not an FP8 type");
  }
  // fake dtype
  if (a[6]->kind == Kind::Global && a[6]->s == "torch") r.fake_dtype = dtype_from_torch_dtype(a[6]->name);
  else if (!a[6]->is_none()) fail(where, ": dtype argument is not a torch dtype: ", pickle::describe(*a[6]));
  // quantizer (NEWOBJ + BUILD of its __dict__)
  const pickle::Object& q = *a[7];
  if (!q.is_none()) {
    if (q.kind != Kind::NewObj || !q.state || q.state->kind != Kind::Dict)
      fail(where, ": quantizer is not a pickled object with a state dict: ", pickle::describe(q));
    r.quantizer.present = true;
    r.quantizer.class_name = q.callable->kind == Kind::Global ? q.callable->qualified_name() : "";
    auto flag = [&](const char* key) -> std::optional<bool> {
      auto v = q.state->get(key);
      if (!v) return std::nullopt;
      if (v->kind == Kind::List && v->items.size() == 1) v = v->items[0];  // TE keeps some flags in [bool]
      return v->as_bool(std::string(where) + " quantizer." + key);
    };
    auto integer = [&](const char* key) -> std::optional<std::int64_t> {
      auto v = q.state->get(key);
      if (!v) return std::nullopt;
      return v->as_int(std::string(where) + " quantizer." + key);
    };
    r.quantizer.rowwise_usage = flag("rowwise_usage");
    r.quantizer.columnwise_usage = flag("columnwise_usage");
    r.quantizer.internal = flag("internal");
    r.quantizer.force_pow_2_scales = flag("force_pow_2_scales");
    r.quantizer.all_gather_usage = flag("all_gather_usage");
    r.quantizer.optimize_for_gemm = flag("optimize_for_gemm");
    r.quantizer.block_len = integer("block_len");
    r.quantizer.block_scaling_dim = integer("block_scaling_dim");
    if (auto e = q.state->get("amax_epsilon")) r.quantizer.amax_epsilon = e->as_float(std::string(where) + " quantizer.amax_epsilon");
    if (auto d = q.state->get("dtype")) r.quantizer.te_dtype_code = detail::te_enum_value(*d);
    if (r.quantizer.block_len && *r.quantizer.block_len <= 0)
      fail(where, ": quantizer.block_len ", *r.quantizer.block_len, " is not positive");
  }
  if (a[8]->kind == Kind::Bool) r.is_2d_scaled = a[8]->b;
  else fail(where, ": is_2D_scaled is a ", pickle::kind_name(a[8]->kind), ", not a bool");
  if (r.num_args == 10 && !a[9]->is_none()) {
    r.data_format = detail::te_enum_value(*a[9]);
    if (!r.data_format) fail(where, ": data_format is not a TE enum: ", pickle::describe(*a[9]));
  }

  // Consistency of the rowwise buffers with the logical shape (2-D block scaling).
  if (r.rowwise_data) {
    const auto& d = *r.rowwise_data;
    if (d.dtype != DType::U8) fail(where, ": rowwise_data is ", d.dtype_name, ", expected uint8");
    if (d.shape != r.shape)
      fail(where, ": rowwise_data shape ", shape_str(d.shape), " differs from the tensor shape ", shape_str(r.shape));
  }
  if (r.rowwise_scale_inv) {
    const auto& s = *r.rowwise_scale_inv;
    if (s.dtype != DType::F32) fail(where, ": rowwise_scale_inv is ", s.dtype_name, ", expected float32");
    if (r.is_2d_scaled && r.shape.size() >= 1) {
      const std::int64_t b = r.block_len();
      std::int64_t rows = 1;
      for (std::size_t k = 0; k + 1 < r.shape.size(); ++k) rows *= r.shape[k];
      const std::int64_t cols = r.shape.back();
      if (s.shape.size() != 2 || s.shape[0] != (rows + b - 1) / b || s.shape[1] < (cols + b - 1) / b)
        fail(where, ": rowwise_scale_inv shape ", shape_str(s.shape), " does not cover ", shape_str(r.shape),
             " in ", b, "x", b, " blocks");
    }
  }
  return r;
}

}  // namespace ckbridge::format

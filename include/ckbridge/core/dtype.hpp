#pragma once
// Element types. Each dtype has a compile-time tag (for typed views and kernels) and run-time
// metadata (for files, where the dtype is only known after parsing a header).
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string_view>
#include <type_traits>

#include "ckbridge/core/error.hpp"

namespace ckbridge {

// Storage types for the narrow floats: raw bits, so that a view over file bytes is exact.
struct bf16_t { std::uint16_t bits; friend constexpr bool operator==(bf16_t, bf16_t) = default; };
struct f16_t { std::uint16_t bits; friend constexpr bool operator==(f16_t, f16_t) = default; };
struct e4m3_t { std::uint8_t bits; friend constexpr bool operator==(e4m3_t, e4m3_t) = default; };
struct e5m2_t { std::uint8_t bits; friend constexpr bool operator==(e5m2_t, e5m2_t) = default; };
struct e8m0_t { std::uint8_t bits; friend constexpr bool operator==(e8m0_t, e8m0_t) = default; };

enum class DType : std::uint8_t { BF16, F16, F32, F64, F8_E4M3, F8_E5M2, F8_E8M0, I8, U8, I16, I32, I64, Bool };
inline constexpr std::size_t kNumDTypes = 13;

// Run-time facts about a dtype. `torch_storage` is the legacy typed-storage class torch.save
// pickles (torch.<Name>), `torch_dtype` the attribute name of torch.<dtype>.
struct DTypeInfo {
  DType dtype;
  std::string_view safetensors;
  std::string_view torch_storage;
  std::string_view torch_dtype;
  std::size_t size;
};

inline constexpr std::array<DTypeInfo, kNumDTypes> kDTypeInfo{{
    {DType::BF16, "BF16", "BFloat16Storage", "bfloat16", 2},
    {DType::F16, "F16", "HalfStorage", "float16", 2},
    {DType::F32, "F32", "FloatStorage", "float32", 4},
    {DType::F64, "F64", "DoubleStorage", "float64", 8},
    // float8 has no legacy typed storage class: torch pickles it with _rebuild_tensor_v3 and
    // torch.storage.UntypedStorage (empty name here).
    {DType::F8_E4M3, "F8_E4M3", "", "float8_e4m3fn", 1},
    {DType::F8_E5M2, "F8_E5M2", "", "float8_e5m2", 1},
    {DType::F8_E8M0, "F8_E8M0", "", "float8_e8m0fnu", 1},
    {DType::I8, "I8", "CharStorage", "int8", 1},
    {DType::U8, "U8", "ByteStorage", "uint8", 1},
    {DType::I16, "I16", "ShortStorage", "int16", 2},
    {DType::I32, "I32", "IntStorage", "int32", 4},
    {DType::I64, "I64", "LongStorage", "int64", 8},
    {DType::Bool, "BOOL", "BoolStorage", "bool", 1},
}};

constexpr const DTypeInfo& info(DType d) { return kDTypeInfo[static_cast<std::size_t>(d)]; }
constexpr std::size_t dtype_size(DType d) { return info(d).size; }
constexpr std::string_view safetensors_name(DType d) { return info(d).safetensors; }
constexpr std::string_view torch_storage_name(DType d) { return info(d).torch_storage; }
constexpr std::string_view torch_dtype_name(DType d) { return info(d).torch_dtype; }
constexpr bool is_fp8(DType d) { return d == DType::F8_E4M3 || d == DType::F8_E5M2 || d == DType::F8_E8M0; }
constexpr bool is_float(DType d) { return d <= DType::F8_E8M0; }

inline std::ostream& operator<<(std::ostream& os, DType d) { return os << safetensors_name(d); }

constexpr std::optional<DType> dtype_from_safetensors(std::string_view s) {
  for (const auto& i : kDTypeInfo)
    if (i.safetensors == s) return i.dtype;
  return std::nullopt;
}
constexpr std::optional<DType> dtype_from_torch_storage(std::string_view s) {
  if (s.empty()) return std::nullopt;
  for (const auto& i : kDTypeInfo)
    if (i.torch_storage == s) return i.dtype;
  return std::nullopt;
}
constexpr std::optional<DType> dtype_from_torch_dtype(std::string_view s) {
  for (const auto& i : kDTypeInfo)
    if (i.torch_dtype == s) return i.dtype;
  // torch's aliases
  if (s == "half") return DType::F16;
  if (s == "float") return DType::F32;
  if (s == "double") return DType::F64;
  if (s == "long") return DType::I64;
  if (s == "int") return DType::I32;
  if (s == "short") return DType::I16;
  return std::nullopt;
}

// ---- compile-time tags
template <DType D> struct dtype_traits;
#define CKB_DTYPE_TRAIT(D, T)                          \
  template <> struct dtype_traits<DType::D> {          \
    using type = T;                                    \
    static constexpr DType dtype = DType::D;           \
  };
CKB_DTYPE_TRAIT(BF16, bf16_t)
CKB_DTYPE_TRAIT(F16, f16_t)
CKB_DTYPE_TRAIT(F32, float)
CKB_DTYPE_TRAIT(F64, double)
CKB_DTYPE_TRAIT(F8_E4M3, e4m3_t)
CKB_DTYPE_TRAIT(F8_E5M2, e5m2_t)
CKB_DTYPE_TRAIT(F8_E8M0, e8m0_t)
CKB_DTYPE_TRAIT(I8, std::int8_t)
CKB_DTYPE_TRAIT(U8, std::uint8_t)
CKB_DTYPE_TRAIT(I16, std::int16_t)
CKB_DTYPE_TRAIT(I32, std::int32_t)
CKB_DTYPE_TRAIT(I64, std::int64_t)
CKB_DTYPE_TRAIT(Bool, bool)
#undef CKB_DTYPE_TRAIT

template <DType D> using dtype_t = typename dtype_traits<D>::type;

static_assert(sizeof(bf16_t) == 2 && sizeof(f16_t) == 2 && sizeof(e4m3_t) == 1 && sizeof(e5m2_t) == 1 &&
              sizeof(e8m0_t) == 1 && sizeof(bool) == 1, "element types must match their file sizes");

template <class T>
inline constexpr DType dtype_of = [] {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, bf16_t>) return DType::BF16;
  else if constexpr (std::is_same_v<U, f16_t>) return DType::F16;
  else if constexpr (std::is_same_v<U, float>) return DType::F32;
  else if constexpr (std::is_same_v<U, double>) return DType::F64;
  else if constexpr (std::is_same_v<U, e4m3_t>) return DType::F8_E4M3;
  else if constexpr (std::is_same_v<U, e5m2_t>) return DType::F8_E5M2;
  else if constexpr (std::is_same_v<U, e8m0_t>) return DType::F8_E8M0;
  else if constexpr (std::is_same_v<U, std::int8_t>) return DType::I8;
  else if constexpr (std::is_same_v<U, std::uint8_t>) return DType::U8;
  else if constexpr (std::is_same_v<U, std::int16_t>) return DType::I16;
  else if constexpr (std::is_same_v<U, std::int32_t>) return DType::I32;
  else if constexpr (std::is_same_v<U, std::int64_t>) return DType::I64;
  else {
    static_assert(std::is_same_v<U, bool>, "not a ckbridge element type");
    return DType::Bool;
  }
}();

// Calls f(std::type_identity<T>{}) with T the element type of `d`.
template <class F>
decltype(auto) dispatch_dtype(DType d, F&& f) {
  switch (d) {
    case DType::BF16: return f(std::type_identity<bf16_t>{});
    case DType::F16: return f(std::type_identity<f16_t>{});
    case DType::F32: return f(std::type_identity<float>{});
    case DType::F64: return f(std::type_identity<double>{});
    case DType::F8_E4M3: return f(std::type_identity<e4m3_t>{});
    case DType::F8_E5M2: return f(std::type_identity<e5m2_t>{});
    case DType::F8_E8M0: return f(std::type_identity<e8m0_t>{});
    case DType::I8: return f(std::type_identity<std::int8_t>{});
    case DType::U8: return f(std::type_identity<std::uint8_t>{});
    case DType::I16: return f(std::type_identity<std::int16_t>{});
    case DType::I32: return f(std::type_identity<std::int32_t>{});
    case DType::I64: return f(std::type_identity<std::int64_t>{});
    case DType::Bool: return f(std::type_identity<bool>{});
  }
  fail("invalid dtype code ", static_cast<int>(d));
}

}  // namespace ckbridge

#pragma once
// Dequantization of 128x128 blockwise E4M3 (y = RN(f32(q) * s[i/128, j/128]), to fp32 or to bf16
// by RNE with NaN -> 0x7FFF, the bits CUDA produces), the power-of-two test LoongForge uses to
// decide between direct copy and re-quantization, and re-quantization itself.
#include <algorithm>
#include <cstdint>
#include <string_view>
#include <type_traits>
#include <utility>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/quant/cpu_isa.hpp"
#include "ckbridge/quant/quantize.hpp"

namespace ckbridge::quant {

struct DequantOptions {
  Device device = Device::Auto;
  unsigned threads = 0;
  std::string_view name = {};
};

namespace detail {
// Blocks per CPU task along a row: a task covers one block row and a run of block columns, so
// each input row is read as one contiguous stretch (hardware prefetchers like long runs).
inline constexpr std::int64_t kDequantGroup = 8;

// The 256 possible outputs of one block (one per code, the scale fixed): an exact table, since
// dequantization is a pure function of (code, scale). The element loop becomes one load + store.
template <class Out>
CKB_CPU_INLINE void dequant_table(float sc, Out* tab) {
  for (std::uint32_t c = 0; c < 256; ++c) {
    if constexpr (std::is_same_v<Out, float>) tab[c] = dequant_f32(static_cast<std::uint8_t>(c), sc);
    else tab[c] = bf16_t{dequant_bf16_bits(static_cast<std::uint8_t>(c), sc)};
  }
}

// Block row `bi`, block columns [b0, b1) (at most kDequantGroup).
template <class Out>
CKB_CPU_INLINE void dequant_group_cpu(const TensorView<const e4m3_t, 2>& q, const TensorView<const float, 2>& s,
                                      const TensorView<Out, 2>& y, std::int64_t bi, std::int64_t b0,
                                      std::int64_t b1) {
  const std::int64_t m = q.extent(0), n = q.extent(1);
  const bool dense = q.stride(1) == 1 && y.stride(1) == 1;
  alignas(64) Out tabs[kDequantGroup][256];
  for (std::int64_t b = b0; b < b1; ++b) dequant_table(s(bi, b), tabs[b - b0]);
  const std::int64_t r1 = std::min(m, (bi + 1) * kBlock);
  for (std::int64_t r = bi * kBlock; r < r1; ++r) {
    for (std::int64_t b = b0; b < b1; ++b) {
      const Out* tab = tabs[b - b0];
      const std::int64_t c0 = b * kBlock, c1 = std::min(n, c0 + kBlock);
      if (dense) {
        const std::uint8_t* in = reinterpret_cast<const std::uint8_t*>(&q(r, c0));
        Out* out = &y(r, c0);
        for (std::int64_t j = 0; j < c1 - c0; ++j) out[j] = tab[in[j]];
      } else {
        for (std::int64_t j = c0; j < c1; ++j) y(r, j) = tab[q(r, j).bits];
      }
    }
  }
}

// The group kernel compiled for each instruction set (cpu_isa.hpp).
template <class Out>
using DequantGroupFn = void (*)(const TensorView<const e4m3_t, 2>&, const TensorView<const float, 2>&,
                                const TensorView<Out, 2>&, std::int64_t, std::int64_t, std::int64_t);
#define CKB_DEQUANT_GROUP_VARIANT(NAME, ATTR)                                                                     \
  template <class Out>                                                                                           \
  ATTR void NAME(const TensorView<const e4m3_t, 2>& q, const TensorView<const float, 2>& s,                        \
                 const TensorView<Out, 2>& y, std::int64_t bi, std::int64_t b0, std::int64_t b1) {                \
    dequant_group_cpu<Out>(q, s, y, bi, b0, b1);                                                                 \
  }
CKB_DEQUANT_GROUP_VARIANT(dequant_group_baseline, )
#if CKB_X86_DISPATCH
CKB_DEQUANT_GROUP_VARIANT(dequant_group_avx2, CKB_TARGET_AVX2)
CKB_DEQUANT_GROUP_VARIANT(dequant_group_avx512, CKB_TARGET_AVX512)
#endif
#undef CKB_DEQUANT_GROUP_VARIANT

template <class Out>
DequantGroupFn<Out> dequant_group_kernel() {
#if CKB_X86_DISPATCH
  switch (cpu_isa()) {
    case CpuIsa::Avx512: return &dequant_group_avx512<Out>;
    case CpuIsa::Avx2: return &dequant_group_avx2<Out>;
    default: break;
  }
#endif
  return &dequant_group_baseline<Out>;
}
}  // namespace detail

// CPU kernel. `s` has ceil(M/128) rows and >= ceil(N/128) columns (padding ignored).
template <class Out>
void dequantize_cpu(TensorView<const e4m3_t, 2> q, TensorView<const float, 2> s, TensorView<Out, 2> y,
                    unsigned threads = 0) {
  static_assert(std::is_same_v<Out, float> || std::is_same_v<Out, bf16_t>, "dequantize to float or bf16_t");
  const std::int64_t bm = block_count(q.extent(0)), bn = block_count(q.extent(1));
  const std::int64_t groups = (bn + detail::kDequantGroup - 1) / detail::kDequantGroup;
  const auto kernel = detail::dequant_group_kernel<Out>();
  detail::parallel_for_sum(bm * groups, threads, [&](std::int64_t task, std::int64_t&) {
    const std::int64_t bi = task / groups, b0 = (task % groups) * detail::kDequantGroup;
    kernel(q, s, y, bi, b0, std::min(bn, b0 + detail::kDequantGroup));
  });
}

namespace detail {
// Data (F8_E4M3, or U8 as TE stores it) as a 2-D e4m3 view, scales as a 2-D float view; checks
// that the scale shape fits the data.
inline std::pair<TensorView<const e4m3_t, 2>, TensorView<const float, 2>> fp8_views(const AnyConstView& data,
                                                                                  const AnyConstView& scale,
                                                                                  std::string_view name,
                                                                                  Tensor& storage) {
  if (data.dtype != DType::F8_E4M3 && data.dtype != DType::U8)
    fail("FP8 tensor '", tensor_label(name), "' ", shape_str(data.shape), ": dtype ", safetensors_name(data.dtype),
         " is not F8_E4M3 (or U8)");
  if (scale.dtype != DType::F32)
    fail("FP8 tensor '", tensor_label(name), "': scale_inv dtype ", safetensors_name(scale.dtype), " is not F32");
  AnyConstView d = data;
  d.dtype = DType::F8_E4M3;  // same bytes
  d = as_2d(d, storage);
  check_scale_shape(tensor_label(name), d.shape[0], d.shape[1], scale.shape);
  return {d.as<e4m3_t, 2>(), scale.as<float, 2>()};
}
}  // namespace detail

// Dequantizes to `out` = F32 or BF16; the result has the data's shape.
inline Tensor dequantize(const AnyConstView& data, const AnyConstView& scale_inv, DType out,
                         const DequantOptions& o = {}) {
  if (out != DType::F32 && out != DType::BF16)
    fail("dequantize '", detail::tensor_label(o.name), "': output dtype ", safetensors_name(out),
         " is not F32 or BF16");
  Tensor storage;
  auto [q, s] = detail::fp8_views(data, scale_inv, o.name, storage);
  Tensor y(out, data.shape);
  const std::int64_t m = q.extent(0), n = q.extent(1);
  if (m == 0 || n == 0) return y;
  if (resolve_device(o.device) == Device::Cuda) {
    Tensor qs, ss;  // the backend wants dense rows
    if (!q.is_contiguous()) {
      qs = Tensor::copy_of(AnyConstView(reinterpret_cast<const std::byte*>(q.data()), DType::F8_E4M3, {m, n},
                                        {q.stride(0), q.stride(1)}));
      q = qs.typed<e4m3_t, 2>();
    }
    if (s.stride(1) != 1) {
      ss = Tensor::copy_of(AnyConstView(reinterpret_cast<const std::byte*>(s.data()), DType::F32,
                                        {s.extent(0), s.extent(1)}, {s.stride(0), s.stride(1)}));
      s = ss.typed<float, 2>();
    }
    cuda_backend()->dequantize(out, &q.data()->bits, m, n, s.data(), s.stride(0), y.data());
    return y;
  }
  if (out == DType::F32)
    dequantize_cpu<float>(q, s, AnyView(y.data(), out, {m, n}).as<float, 2>(), o.threads);
  else
    dequantize_cpu<bf16_t>(q, s, AnyView(y.data(), out, {m, n}).as<bf16_t, 2>(), o.threads);
  return y;
}

// LoongForge's is_power_of_two for one value: > 0 and an exact power of two (frexp mantissa 0.5;
// fp32 subnormal powers of two count).
inline bool is_power_of_two(float v) {
  const std::uint32_t u = f32_bits(v);
  if (u == 0 || (u >> 31) || u >= detail::kF32Inf) return false;
  const std::uint32_t e = u >> 23, man = u & 0x7FFFFFu;
  return e ? man == 0 : (man & (man - 1)) == 0;
}

// True iff every MEANINGFUL scale of an [m, n] FP8 tensor is a positive power of two. Unlike
// LoongForge, TE padding columns are not looked at (they are undefined in TE output).
inline bool is_power_of_two(const AnyConstView& scale_inv, std::int64_t m, std::int64_t n,
                            std::string_view name = {}) {
  if (scale_inv.dtype != DType::F32)
    fail("is_power_of_two '", detail::tensor_label(name), "': scale dtype ", safetensors_name(scale_inv.dtype),
         " is not F32");
  check_scale_shape(detail::tensor_label(name), m, n, scale_inv.shape);
  const auto s = scale_inv.as<float, 2>();
  for (std::int64_t i = 0; i < block_count(m); ++i)
    for (std::int64_t j = 0; j < block_count(n); ++j)
      if (!is_power_of_two(s(i, j))) return false;
  return true;
}

// Dequantize to fp32, then quantize with `Method` and the new options (LoongForge's re-quant
// path, used when source and target scale kinds differ).
template <class Method>
QuantResult requantize(const AnyConstView& data, const AnyConstView& scale_inv, const QuantOptions& o = {}) {
  const Tensor w = dequantize(data, scale_inv, DType::F32, DequantOptions{o.device, o.threads, o.name});
  return quantize<Method>(w.view(), o);
}

// LoongForge's decision (mcore_base get_chunked_weight): keep the FP8 bits iff the source scales'
// power-of-two-ness equals the target's force_pow_2_scales (or the caller forces no re-quant).
inline bool needs_requantize(const AnyConstView& scale_inv, std::int64_t m, std::int64_t n, bool target_pow2,
                             std::string_view name = {}) {
  return is_power_of_two(scale_inv, m, n, name) != target_pow2;
}

}  // namespace ckbridge::quant

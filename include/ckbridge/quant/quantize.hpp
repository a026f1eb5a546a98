#pragma once
// Blockwise (128x128) E4M3 quantization of a bf16 / fp16 / fp32 tensor.
//
//   auto r = ckbridge::quant::quantize<ckbridge::quant::te>(view, {.amax_epsilon = 0.0f,
//                                                                 .force_pow_2_scales = true,
//                                                                 .layout = ScaleLayout::TePadded});
//   r.data       F8_E4M3, the input's shape
//   r.scale_inv  F32 [ceil(M/128), ceil(N/128)] (Unpadded) or TE-padded columns (+0.0 fill)
//   r.fallback_blocks  pt: blocks where LoongForge would produce NaN weights and the te result was
//                      emitted instead (see fp8_math.hpp); warn once per tensor if > 0.
//                      pt_loongforge_raw: the same blocks, left as LoongForge's NaN output. te: 0.
//
// Methods are the policies of fp8_math.hpp (te, pt, pt_loongforge_raw). The CPU path is always
// available (multi-threaded over blocks); Device::Auto uses the CUDA kernels when they are
// compiled into the program and a GPU is visible (device.hpp). Both give identical bytes.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/core/tensor_view.hpp"
#include "ckbridge/quant/cpu_isa.hpp"
#include "ckbridge/quant/device.hpp"
#include "ckbridge/quant/fp8_blocks.hpp"
#include "ckbridge/quant/fp8_math.hpp"
#include "ckbridge/quant/parallel.hpp"

namespace ckbridge::quant {

struct QuantOptions {
  float amax_epsilon = 0.0f;        // amax floor (LoongForge --amax_epsilon)
  bool force_pow_2_scales = false;  // LoongForge --force_pow_2_scales (CLI default false)
  ScaleLayout layout = ScaleLayout::Unpadded;
  Device device = Device::Auto;
  unsigned threads = 0;       // CPU worker threads; 0 = hardware concurrency
  std::string_view name = {};  // tensor name for error messages
};

struct QuantResult {
  Tensor data;       // F8_E4M3
  Tensor scale_inv;  // F32, dequantization multipliers
  std::int64_t fallback_blocks = 0;
  Device device = Device::Cpu;  // where the work ran
};

namespace detail {

inline std::string tensor_label(std::string_view name) { return name.empty() ? std::string("<unnamed>") : std::string(name); }

inline void check_quant_options(const QuantOptions& o) {
  const float e = o.amax_epsilon;
  if (!(e >= 0.0f) || !is_finite_f(e))
    fail("quantize '", tensor_label(o.name), "': amax_epsilon must be finite and >= 0, got ", e);
}

// ---- CPU kernel internals. A task is one block row times a run of block columns (about 256 KiB
// of input): every input row is then read as one long contiguous stretch, which the hardware
// prefetchers follow (one 128x128 block alone is 128 short runs, and its loads stall), and the
// encode pass finds the group still in L2.
template <class T>
inline constexpr std::int64_t kQuantGroup = std::max<std::int64_t>(1, (256 * 1024) / (kBlock * kBlock * std::int64_t(sizeof(T))));

// Magnitude bits of an element in its own format, as a signed int (bf16 / f16 / fp32 magnitudes
// order like their values, NaNs above `nan_above`): the amax reduction runs on 16-bit lanes for
// 2-byte inputs, and x86 vector max / compare are signed. `abs_bits32` maps a non-NaN magnitude to
// fp32 |x| bits (monotone, so it commutes with max).
template <class T> struct Mag;
template <> struct Mag<bf16_t> {
  using type = std::int16_t;
  static constexpr type nan_above = 0x7F80;
  CKB_CPU_INLINE static type of(bf16_t x) { return static_cast<type>(x.bits & 0x7FFFu); }
  CKB_CPU_INLINE static std::uint32_t abs_bits32(type m) { return std::uint32_t(static_cast<std::uint16_t>(m)) << 16; }
  CKB_CPU_INLINE static float to_f32(bf16_t x) { return f32_from_bits(std::uint32_t{x.bits} << 16); }
};
template <> struct Mag<f16_t> {
  using type = std::int16_t;
  static constexpr type nan_above = 0x7C00;
  CKB_CPU_INLINE static type of(f16_t x) { return static_cast<type>(x.bits & 0x7FFFu); }
  CKB_CPU_INLINE static std::uint32_t abs_bits32(type m) { return Elem<f16_t>::abs_bits(f16_t{static_cast<std::uint16_t>(m)}); }
  // Branch-free f16 -> f32 (f16_bits_to_f32 normalises subnormals with a loop): a subnormal is
  // m * 2^-24, exact in fp32 as int -> float and a multiply by a power of two.
  CKB_CPU_INLINE static float to_f32(f16_t x) {
    const std::uint32_t h = x.bits, sign = (h & 0x8000u) << 16, a = h & 0x7FFFu, e = a >> 10, m = h & 0x3FFu;
    const std::uint32_t sub = f32_bits(static_cast<float>(static_cast<std::int32_t>(m)) * 5.9604644775390625e-08f);
    const std::uint32_t norm = (a << 13) + (112u << 23), special = kF32Inf | (m << 13);
    return f32_from_bits(sign | sel(e == 0x1Fu, special, sel(e == 0u, sub, norm)));
  }
};
template <> struct Mag<float> {
  using type = std::int32_t;
  static constexpr type nan_above = 0x7F800000;
  CKB_CPU_INLINE static type of(float x) { return as_i32(f32_bits(x) & 0x7FFFFFFFu); }
  CKB_CPU_INLINE static std::uint32_t abs_bits32(type m) { return static_cast<std::uint32_t>(m); }
  CKB_CPU_INLINE static float to_f32(float x) { return x; }
};

// Running maxima over a dense row segment: of all magnitudes (NaN iff it ends above nan_above)
// and of the non-NaN ones.
template <class T>
CKB_CPU_INLINE void row_amax(const T* p, std::int64_t w, typename Mag<T>::type& raw, typename Mag<T>::type& nonnan) {
  using M = typename Mag<T>::type;
  M r = raw, k = nonnan;
  for (std::int64_t j = 0; j < w; ++j) {
    const M a = Mag<T>::of(p[j]);
    r = r > a ? r : a;
    const M b = a > Mag<T>::nan_above ? M(0) : a;
    k = k > b ? k : b;
  }
  raw = r;
  nonnan = k;
}

// Encodes a dense row segment: out[j] = encode(RN(x[j] * mul)), with te's cast or the method's.
template <class Method, bool TeCast, class T>
CKB_CPU_INLINE void row_encode(const T* p, std::int64_t w, float mul, std::uint8_t* out) {
  for (std::int64_t j = 0; j < w; ++j) {
    const float v = mul_rn(Mag<T>::to_f32(p[j]), mul);
    if constexpr (TeCast) out[j] = te::encode(v);
    else out[j] = Method::encode(v);
  }
}

// Block row `bi`, block columns [b0, b1) (at most kQuantGroup<T>): statistics pass over the
// group, block scales, then the encode pass. Returns the number of fallback blocks.
template <class Method, class T>
CKB_CPU_INLINE std::int64_t quantize_group_cpu(const TensorView<const T, 2>& x, const TensorView<e4m3_t, 2>& q,
                                const TensorView<float, 2>& scale_inv, std::int64_t bi, std::int64_t b0,
                                std::int64_t b1, float eps, bool pow2) {
  using M = typename Mag<T>::type;
  constexpr std::int64_t G = kQuantGroup<T>;
  const std::int64_t r0 = bi * kBlock, r1 = std::min(r0 + kBlock, x.extent(0)), n = x.extent(1);
  const bool dense = x.stride(1) == 1 && q.stride(1) == 1;
  M raw[G] = {}, nonnan[G] = {};
  for (std::int64_t r = r0; r < r1; ++r) {
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t c0 = b * kBlock, c1 = std::min(c0 + kBlock, n);
      if (dense) {
        row_amax(&x(r, c0), c1 - c0, raw[b - b0], nonnan[b - b0]);
      } else {
        for (std::int64_t j = c0; j < c1; ++j) row_amax(&x(r, j), 1, raw[b - b0], nonnan[b - b0]);
      }
    }
  }
  BlockScale bs[G];
  std::int64_t fallbacks = 0;
  for (std::int64_t b = b0; b < b1; ++b) {
    const BlockStats st{Mag<T>::abs_bits32(nonnan[b - b0]), raw[b - b0] > Mag<T>::nan_above};
    bs[b - b0] = Method::block_scale(st, eps, pow2, Elem<T>::vmax_bits);
    scale_inv(bi, b) = bs[b - b0].scale_inv;
    fallbacks += bs[b - b0].fallback ? 1 : 0;
  }
  for (std::int64_t r = r0; r < r1; ++r) {
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t c0 = b * kBlock, c1 = std::min(c0 + kBlock, n);
      const BlockScale& s = bs[b - b0];
      if (dense) {
        std::uint8_t* out = reinterpret_cast<std::uint8_t*>(&q(r, c0));  // the whole row, not one member
        if (s.te_cast) row_encode<Method, true>(&x(r, c0), c1 - c0, s.mul, out);
        else row_encode<Method, false>(&x(r, c0), c1 - c0, s.mul, out);
      } else {
        for (std::int64_t j = c0; j < c1; ++j) q(r, j).bits = encode_in_block<Method>(Mag<T>::to_f32(x(r, j)), s);
      }
    }
  }
  return fallbacks;
}

// The group kernel compiled for each instruction set (same source, same bytes; cpu_isa.hpp).
template <class Method, class T>
using QuantGroupFn = std::int64_t (*)(const TensorView<const T, 2>&, const TensorView<e4m3_t, 2>&,
                                      const TensorView<float, 2>&, std::int64_t, std::int64_t, std::int64_t, float,
                                      bool);
#define CKB_QUANT_GROUP_VARIANT(NAME, ATTR)                                                                       \
  template <class Method, class T>                                                                               \
  ATTR std::int64_t NAME(const TensorView<const T, 2>& x, const TensorView<e4m3_t, 2>& q,                          \
                         const TensorView<float, 2>& s, std::int64_t bi, std::int64_t b0, std::int64_t b1, float eps, \
                         bool pow2) {                                                                            \
    return quantize_group_cpu<Method, T>(x, q, s, bi, b0, b1, eps, pow2);                                        \
  }
CKB_QUANT_GROUP_VARIANT(quantize_group_baseline, )
#if CKB_X86_DISPATCH
CKB_QUANT_GROUP_VARIANT(quantize_group_avx2, CKB_TARGET_AVX2)
CKB_QUANT_GROUP_VARIANT(quantize_group_avx512, CKB_TARGET_AVX512)
#endif
#undef CKB_QUANT_GROUP_VARIANT

template <class Method, class T>
QuantGroupFn<Method, T> quantize_group_kernel() {
#if CKB_X86_DISPATCH
  switch (cpu_isa()) {
    case CpuIsa::Avx512: return &quantize_group_avx512<Method, T>;
    case CpuIsa::Avx2: return &quantize_group_avx2<Method, T>;
    default: break;
  }
#endif
  return &quantize_group_baseline<Method, T>;
}

}  // namespace detail

// CPU kernel on typed 2-D views. `scale_inv` has ceil(M/128) rows and >= ceil(N/128) columns;
// extra columns are set to +0.0. Returns the number of fallback blocks.
template <class Method, class T>
std::int64_t quantize_cpu(TensorView<const T, 2> x, TensorView<e4m3_t, 2> q, TensorView<float, 2> scale_inv,
                          float eps, bool pow2, unsigned threads = 0) {
  if (q.shape() != x.shape()) fail("quantize: output shape ", shape_str(q.shape()), " != input ", shape_str(x.shape()));
  const std::int64_t bm = block_count(x.extent(0)), bn = block_count(x.extent(1));
  if (scale_inv.extent(0) != bm || scale_inv.extent(1) < bn)
    fail("quantize: scale_inv shape ", shape_str(scale_inv.shape()), " too small for data ", shape_str(x.shape()));
  for (std::int64_t i = 0; i < bm; ++i)
    for (std::int64_t j = bn; j < scale_inv.extent(1); ++j) scale_inv(i, j) = 0.0f;
  constexpr std::int64_t G = detail::kQuantGroup<T>;
  const std::int64_t groups = (bn + G - 1) / G;
  const auto kernel = detail::quantize_group_kernel<Method, T>();
  return detail::parallel_for_sum(bm * groups, threads, [&](std::int64_t task, std::int64_t& acc) {
    const std::int64_t bi = task / groups, b0 = (task % groups) * G;
    acc += kernel(x, q, scale_inv, bi, b0, std::min(bn, b0 + G), eps, pow2);
  });
}

namespace detail {
// The input as a 2-D view [M, N]: rank-2 views keep their strides; other ranks must be
// contiguous (else they are copied into `storage`).
inline AnyConstView as_2d(const AnyConstView& x, Tensor& storage) {
  const Matrix2D mn = as_matrix(x.shape);
  if (x.rank() == 2) return x;
  AnyConstView src = x;
  if (!x.is_contiguous()) {
    storage = Tensor::copy_of(x);
    src = storage.view();
  }
  return AnyConstView(src.data, src.dtype, Shape{mn.m, mn.n});
}
template <class U>
std::uint64_t count_exp_all_ones(const U* base, std::int64_t m, std::int64_t n, std::int64_t rs, std::int64_t cs,
                                 U mask) {
  std::uint64_t bad = 0;
  for (std::int64_t i = 0; i < m; ++i) {
    const U* row = base + i * rs;
    if (cs == 1) {
      for (std::int64_t j = 0; j < n; ++j) bad += (row[j] & mask) == mask ? 1u : 0u;
    } else {
      for (std::int64_t j = 0; j < n; ++j) bad += (row[j * cs] & mask) == mask ? 1u : 0u;
    }
  }
  return bad;
}
}  // namespace detail

// The number of Inf and NaN values in a BF16, F16 or F32 tensor (0 for other dtypes): those
// whose exponent bits are all ones. FP8 E4M3 has no infinity, so quantizing them saturates to
// +-448 or gives NaN, and one of them in a block flushes the block's other values to zero.
inline std::uint64_t count_nonfinite(const AnyConstView& x) {
  if (x.dtype != DType::BF16 && x.dtype != DType::F16 && x.dtype != DType::F32) return 0;
  if (x.shape.empty() || numel(x.shape) == 0) {
    if (!x.shape.empty()) return 0;
  }
  Tensor storage;
  const AnyConstView v = x.shape.empty() ? AnyConstView(x.data, x.dtype, Shape{1, 1}) : detail::as_2d(x, storage);
  const std::int64_t m = v.shape[0], n = v.shape[1], rs = v.strides[0], cs = v.strides[1];
  switch (v.dtype) {
    case DType::F32:
      return detail::count_exp_all_ones<std::uint32_t>(reinterpret_cast<const std::uint32_t*>(v.data), m, n, rs, cs, 0x7F800000u);
    case DType::F16:
      return detail::count_exp_all_ones<std::uint16_t>(reinterpret_cast<const std::uint16_t*>(v.data), m, n, rs, cs, 0x7C00);
    default:
      return detail::count_exp_all_ones<std::uint16_t>(reinterpret_cast<const std::uint16_t*>(v.data), m, n, rs, cs, 0x7F80);
  }
}

// Quantizes `x` (BF16 / F16 / F32, any rank >= 1; leading dims are flattened into rows).
template <class Method>
QuantResult quantize(const AnyConstView& x, const QuantOptions& o = {}) {
  detail::check_quant_options(o);
  if (x.dtype != DType::BF16 && x.dtype != DType::F16 && x.dtype != DType::F32)
    fail("quantize '", detail::tensor_label(o.name), "' ", shape_str(x.shape), ": input dtype ",
         safetensors_name(x.dtype), " is not BF16, F16 or F32");
  Tensor storage;
  AnyConstView x2 = detail::as_2d(x, storage);
  const std::int64_t m = x2.shape[0], n = x2.shape[1];
  QuantResult r;
  r.data = Tensor(DType::F8_E4M3, x.shape);
  r.scale_inv = Tensor(DType::F32, scale_shape(m, n, o.layout));
  if (m == 0 || n == 0) {
    std::memset(r.scale_inv.data(), 0, r.scale_inv.size_bytes());
    return r;
  }
  auto q = AnyView(r.data.data(), DType::F8_E4M3, Shape{m, n}).as<e4m3_t, 2>();
  auto s = r.scale_inv.typed<float, 2>();
  r.device = resolve_device(o.device);
  if (r.device == Device::Cuda) {
    if (x2.strides[1] != 1) {  // the kernels read rows with 16-byte loads
      storage = Tensor::copy_of(x2);
      x2 = storage.view();
    }
    r.fallback_blocks = cuda_backend()->quantize(Method::id, x2.dtype, x2.data, m, n, x2.strides[0], &q(0, 0).bits,
                                                 s.data(), s.extent(1), o.amax_epsilon, o.force_pow_2_scales);
    return r;
  }
  r.fallback_blocks = x2.visit<2>([&](auto xv) -> std::int64_t {
    using T = std::remove_const_t<typename decltype(xv)::element_type>;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bf16_t> || std::is_same_v<T, f16_t>)
      return quantize_cpu<Method, T>(TensorView<const T, 2>(xv), q, s, o.amax_epsilon, o.force_pow_2_scales,
                                     o.threads);
    else
      return 0;  // unreachable: dtype checked above
  });
  return r;
}

// Run-time method selection (e.g. from a --quant_method flag).
inline QuantResult quantize(MethodId method, const AnyConstView& x, const QuantOptions& o = {}) {
  switch (method) {
    case MethodId::Te: return quantize<te>(x, o);
    case MethodId::Pt: return quantize<pt>(x, o);
    case MethodId::PtLoongForgeRaw: return quantize<pt_loongforge_raw>(x, o);
  }
  fail("quantize: invalid method code ", static_cast<int>(method));
}

// "te" / "pt" / "pt_loongforge_raw" -> MethodId (flag parsing).
inline MethodId method_from_string(std::string_view s) {
  if (s == "te") return MethodId::Te;
  if (s == "pt") return MethodId::Pt;
  if (s == "pt_loongforge_raw") return MethodId::PtLoongForgeRaw;
  fail("unknown FP8 quantization method '", s, "' (expected te, pt or pt_loongforge_raw)");
}

}  // namespace ckbridge::quant

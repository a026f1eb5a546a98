#pragma once
// Per-block arithmetic of 128x128 E4M3 quantization, shared verbatim by the CPU loops and the CUDA
// kernels (everything is CKB_HD and uses only integer logic plus single IEEE operations, so both
// produce the same bits). The normative math is the reference's "fp8-blockwise" section 9.
//
// Method policies (compile-time):
//   te                 TransformerEngine Float8BlockQuantizer (block_scaling_dim=2): NaN-ignoring
//                      amax, epsilon floor, scale 1 for amax 0/Inf, per-input-dtype overflow
//                      substitute, pow2 by clearing the mantissa, scale_inv = RN(1/scale),
//                      saturating RNE cast.
//   pt                 LoongForge's torch path ("pt") on CUDA bit for bit, EXCEPT on blocks where
//                      LoongForge produces NaN weights (all-zero block with epsilon 0, amax below
//                      ~1.3e-36, NaN or Inf in the block): there the te result of that block is
//                      emitted and the block is counted as a fallback (QuantResult::fallback_blocks;
//                      the caller warns once per tensor).
//   pt_loongforge_raw  LoongForge's pt including its NaN blocks (scale 0 / tiny / NaN / Inf, codes
//                      0x7F). For bit-exact comparison with LoongForge output only.
#include <cstdint>

#include "ckbridge/core/config.hpp"
#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/float_bits.hpp"

namespace ckbridge::quant {

enum class MethodId : std::uint8_t { Te, Pt, PtLoongForgeRaw };

// What one block needs: the multiplier applied before the cast, the stored dequantization
// multiplier (HF `weight_scale_inv`, TE `_rowwise_scale_inv`, pt's returned "scale"), whether
// LoongForge's pt yields NaN weights for this block (counted by the kernels as "fallback"
// blocks), and whether the te cast is used instead of the method's (pt's substitution).
struct BlockScale {
  float mul;
  float scale_inv;
  bool fallback;     // LoongForge-NaN block (pt and pt_loongforge_raw only)
  bool te_cast;      // encode with te::encode (te itself, and pt's substituted blocks)
};

// Block statistics: the largest |x| bit pattern over non-NaN elements (abs bits of non-NaN
// floats order like their values; Inf = 0x7F800000) and whether any element was NaN.
struct BlockStats {
  std::uint32_t amax_bits = 0;
  bool has_nan = false;
};

namespace detail {

inline constexpr std::uint32_t kF32Inf = 0x7F800000u;
inline constexpr std::uint32_t kCanonicalNaN = 0x7FFFFFFFu;  // what CUDA arithmetic produces
inline constexpr std::uint32_t kRcp448 = 0x3B124925u;        // RN(1/448): torch CUDA `t / 448.0`

CKB_HD_INLINE bool is_finite_f(float f) { return (f32_bits(f) & 0x7FFFFFFFu) < kF32Inf; }

// IEEE round-to-nearest division regardless of nvcc's -prec-div setting.
CKB_HD_INLINE float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
CKB_HD_INLINE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);  // never contracted into an FMA
#else
  return a * b;
#endif
}

// ---- element access: float value and |x| bit pattern, per input type
template <class T> struct Elem;
template <> struct Elem<float> {
  static constexpr std::uint32_t vmax_bits = 0x7F7FFFFFu;  // FLT_MAX
  CKB_HD_INLINE static float to_f32(float x) { return x; }
  CKB_HD_INLINE static std::uint32_t abs_bits(float x) { return f32_bits(x) & 0x7FFFFFFFu; }
};
template <> struct Elem<bf16_t> {
  static constexpr std::uint32_t vmax_bits = 0x7F7F0000u;  // bf16 max 0x1.FEp127
  CKB_HD_INLINE static float to_f32(bf16_t x) { return f32_from_bits(std::uint32_t{x.bits} << 16); }
  CKB_HD_INLINE static std::uint32_t abs_bits(bf16_t x) { return std::uint32_t(x.bits & 0x7FFFu) << 16; }
};
template <> struct Elem<f16_t> {
  static constexpr std::uint32_t vmax_bits = 0x477FE000u;  // 65504
  CKB_HD_INLINE static float to_f32(f16_t x) { return f16_bits_to_f32(x.bits); }
  CKB_HD_INLINE static std::uint32_t abs_bits(f16_t x) { return f32_bits(f16_bits_to_f32(x.bits)) & 0x7FFFFFFFu; }
};

// Branch-free select. Written with masks because GCC will not if-convert a ?: whose arms hold
// floating-point operations (-ftrapping-math), which would keep the CPU loops scalar.
CKB_HD_INLINE std::uint32_t sel(bool c, std::uint32_t a, std::uint32_t b) {
  const std::uint32_t m = 0u - static_cast<std::uint32_t>(c);
  return (a & m) | (b & ~m);
}
CKB_HD_INLINE std::uint32_t umax(std::uint32_t a, std::uint32_t b) { return a > b ? a : b; }

CKB_HD_INLINE void accumulate(BlockStats& s, std::uint32_t abs_bits) {
  const bool nan = abs_bits > kF32Inf;
  s.has_nan |= nan;
  s.amax_bits = umax(s.amax_bits, sel(nan, 0u, abs_bits));
}
CKB_HD_INLINE BlockStats merge(BlockStats a, BlockStats b) {
  return {a.amax_bits > b.amax_bits ? a.amax_bits : b.amax_bits, a.has_nan || b.has_nan};
}

// ---- E4M3 casts, branch-free so that loops vectorise. Equal to f32_to_e4m3_sat / _c10 in
// core/float_bits.hpp (tested), which are the readable definitions. Magnitude bit patterns
// (<= 0x7FFFFFFF) are compared as signed ints: same order, and x86 has signed vector compares
// only (an unsigned one costs two extra operations per vector).
CKB_HD_INLINE std::int32_t as_i32(std::uint32_t u) { return static_cast<std::int32_t>(u); }
CKB_HD_INLINE std::uint32_t e4m3_abs_code(std::uint32_t a) {
  const bool small = as_i32(a) < 0x3C800000;
  // normal range (|v| >= 2^-6): round the fp32 bits to 3 mantissa bits (RNE), rebias 127 -> 7
  const std::uint32_t norm = ((a + 0x7FFFFu + ((a >> 20) & 1u)) >> 20) - (120u << 3);
  // subnormal range: adding 2^14 puts the fp32 ulp at 2^-9 = the e4m3 subnormal step, so the
  // hardware add does the RNE (needs IEEE denormals: no FTZ / DAZ). Outside that range both arms
  // are computed and discarded by the select (wrapping unsigned / non-trapping float math).
  const std::uint32_t sub = f32_bits(f32_from_bits(a) + 16384.0f) - 0x46800000u;
  return sel(small, sub, norm);
}
// TE / cvt.rn.satfinite: |v| > 464 or Inf -> 448; NaN -> 0x7F (sign dropped, as the hardware).
CKB_HD_INLINE std::uint8_t e4m3_sat(float v) {
  const std::uint32_t u = f32_bits(v), a = u & 0x7FFFFFFFu;
  const bool big = as_i32(a) > 0x43E80000;
  const std::uint32_t c = sel(big, 0x7Eu, e4m3_abs_code(a)) | ((u >> 24) & 0x80u);
  return static_cast<std::uint8_t>(sel(as_i32(a) > as_i32(kF32Inf), 0x7Fu, c));
}
// PyTorch c10 cast on CUDA values: |v| > 464 or Inf -> 0x7F | sign; NaN is CUDA's canonical
// positive NaN -> 0x7F.
CKB_HD_INLINE std::uint8_t e4m3_c10_canon(float v) {
  const std::uint32_t u = f32_bits(v), a = u & 0x7FFFFFFFu;
  const bool big = as_i32(a) > 0x43E80000;
  const std::uint32_t c = sel(big, 0x7Fu, e4m3_abs_code(a)) | ((u >> 24) & 0x80u);
  return static_cast<std::uint8_t>(sel(as_i32(a) > as_i32(kF32Inf), 0x7Fu, c));
}

// 2^e as float32: exact, subnormal down to 2^-149, 0 below, +Inf from 2^128 (torch.pow(2, e)).
CKB_HD_INLINE float exp2i(int e) {
  if (e >= 128) return f32_from_bits(kF32Inf);
  if (e >= -126) return f32_from_bits(std::uint32_t(e + 127) << 23);
  if (e >= -149) return f32_from_bits(1u << (e + 149));
  return 0.0f;
}

// How many ulps above 2^k a float32 may lie and still have a correctly rounded float32 log2 equal
// to exactly k (so that ceil(log2) gives k, not k+1). Normal y; reference table "log2 windows".
CKB_HD_INLINE std::uint32_t log2_window_normal(int k) {
  // |k + offset| rounds to k iff offset < half an ulp of k; for negative k the neighbourhood
  // just above k lies in the lower binade when |k| is a power of two.
  const int ak = k < 0 ? -k - 1 : k;  // negative k: |k| in (2^p, 2^(p+1)] <=> |k|-1 in [2^p, 2^(p+1))
  if (ak < 4) return 0;
  if (ak < 8) return 1;
  if (ak < 16) return 2;
  if (ak < 32) return 5;
  if (ak < 64) return 11;
  return 22;
}
// Subnormal y, k = floor(log2 y) in [-149, -127]; counts 2^-149 steps above 2^k.
CKB_HD_INLINE std::uint32_t log2_window_subnormal(int k) {
  if (k == -127) return 11;
  if (k == -128 || k == -129) return 5;
  if (k == -130) return 2;
  if (k == -131) return 1;
  return 0;
}

// ceil(L(y)) where L = correctly rounded float32 log2, for finite y > 0.
CKB_HD_INLINE int ceil_log2_f32(float y) {
  const std::uint32_t u = f32_bits(y);
  const int be = int(u >> 23);
  const std::uint32_t man = u & 0x7FFFFFu;
  if (be != 0) {
    const int k = be - 127;
    if (man == 0 || man <= log2_window_normal(k)) return k;
    return k + 1;
  }
  int lead = 22;  // subnormal: y = man * 2^-149
  while (!(man >> lead)) --lead;
  const int k = lead - 149;
  const std::uint32_t rem = man - (1u << lead);
  return (rem <= log2_window_subnormal(k)) ? k : k + 1;
}

}  // namespace detail

// ------------------------------------------------------------------------------- policies
struct te {
  static constexpr MethodId id = MethodId::Te;
  static constexpr const char* name = "te";
  // TE compute_scale_from_amax + scale_inv = RN(1/scale).
  CKB_HD_INLINE static BlockScale block_scale(BlockStats st, float eps, bool pow2, std::uint32_t vmax_bits) {
    float a = f32_from_bits(st.amax_bits);  // NaN elements never reach the amax (fmaxf)
    if (a < eps) a = eps;
    float s = 1.0f;
    if (a != 0.0f && detail::is_finite_f(a)) {
      s = detail::div_rn(448.0f, a);
      if (!detail::is_finite_f(s)) s = f32_from_bits(vmax_bits);
      if (pow2) s = f32_from_bits(f32_bits(s) & 0xFF800000u);
    }
    return {s, detail::div_rn(1.0f, s), false, true};
  }
  CKB_HD_INLINE static std::uint8_t encode(float v) { return detail::e4m3_sat(v); }
};

struct pt_loongforge_raw {
  static constexpr MethodId id = MethodId::PtLoongForgeRaw;
  static constexpr const char* name = "pt_loongforge_raw";
  // LoongForge: a = amax (NaN-propagating), clamp(min=eps); pow2: scale = 2^ceil(log2(a/448)),
  // multiplier 2^-E; else scale = a/448 = RN(a*RN(1/448)), multiplier 448/a = RN(RN(1/a)*448).
  CKB_HD_INLINE static BlockScale block_scale(BlockStats st, float eps, bool pow2, std::uint32_t /*vmax_bits*/) {
    const float nan = f32_from_bits(detail::kCanonicalNaN);
    float a = st.has_nan ? nan : f32_from_bits(st.amax_bits);
    if (a < eps) a = eps;
    const float y = detail::mul_rn(a, f32_from_bits(detail::kRcp448));
    float scale, mul;
    if (pow2) {
      const std::uint32_t yb = f32_bits(y);
      if (yb > detail::kF32Inf) {
        scale = mul = nan;
      } else if (yb == 0) {  // log2(0) = -Inf
        scale = 0.0f;
        mul = f32_from_bits(detail::kF32Inf);
      } else if (yb == detail::kF32Inf) {
        scale = f32_from_bits(detail::kF32Inf);
        mul = 0.0f;
      } else {
        const int e = detail::ceil_log2_f32(y);
        scale = detail::exp2i(e);
        mul = detail::exp2i(-e);
      }
    } else {
      scale = y;
      mul = detail::mul_rn(detail::div_rn(1.0f, a), 448.0f);
    }
    if (!(scale == scale)) scale = nan;  // canonical NaN bits whatever the host produced
    const bool bad = !detail::is_finite_f(a) || !detail::is_finite_f(mul);
    return {mul, scale, bad, false};
  }
  // RN(x * mul), NaN -> CUDA's +NaN, c10 (non-saturating) cast.
  CKB_HD_INLINE static std::uint8_t encode(float v) { return detail::e4m3_c10_canon(v); }
};

struct pt {
  static constexpr MethodId id = MethodId::Pt;
  static constexpr const char* name = "pt";
  CKB_HD_INLINE static BlockScale block_scale(BlockStats st, float eps, bool pow2, std::uint32_t vmax_bits) {
    const BlockScale raw = pt_loongforge_raw::block_scale(st, eps, pow2, vmax_bits);
    if (!raw.fallback) return raw;
    BlockScale t = te::block_scale(st, eps, pow2, vmax_bits);
    t.fallback = true;  // te_cast stays true
    return t;
  }
  // In non-fallback blocks |x * mul| <= 448 (1 + 2^-21), so c10 and the saturating cast agree;
  // c10 is kept to mirror LoongForge literally.
  CKB_HD_INLINE static std::uint8_t encode(float v) { return detail::e4m3_c10_canon(v); }
};

// Encoding of one element in a block: the te cast in te / substituted blocks, the method's
// otherwise.
template <class Method>
CKB_HD_INLINE std::uint8_t encode_in_block(float x, const BlockScale& bs) {
  const float v = detail::mul_rn(x, bs.mul);
  return bs.te_cast ? te::encode(v) : Method::encode(v);
}

// ------------------------------------------------------------------------------- dequantization
namespace detail {
// e4m3 code -> float32, branch-free; NaN codes give a NaN (the product with the scale is
// canonicalised by the callers).
CKB_HD_INLINE float e4m3_to_f32_fast(std::uint32_t q) {
  const std::uint32_t sign = (q & 0x80u) << 24, a = q & 0x7Fu;
  const float sub = static_cast<float>(static_cast<std::int32_t>(a & 7u)) * 0.001953125f;  // m * 2^-9, exact
  const std::uint32_t norm = (a << 20) + (120u << 23);
  const std::uint32_t mag = sel(a == 0x7Fu, 0x7FC00000u, sel(a >= 8u, norm, f32_bits(sub)));
  return f32_from_bits(mag | sign);
}
}  // namespace detail

// y = RN(f32(q) * s); NaN -> 0x7FFFFFFF (CUDA's canonical NaN) so CPU and GPU agree bit for bit.
CKB_HD_INLINE float dequant_f32(std::uint8_t q, float s) {
  const std::uint32_t y = f32_bits(detail::mul_rn(detail::e4m3_to_f32_fast(q), s));
  return f32_from_bits(detail::sel((y & 0x7FFFFFFFu) > detail::kF32Inf, detail::kCanonicalNaN, y));
}
CKB_HD_INLINE std::uint16_t dequant_bf16_bits(std::uint8_t q, float s) { return f32_to_bf16_bits(dequant_f32(q, s)); }

}  // namespace ckbridge::quant

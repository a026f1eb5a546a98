#pragma once
// Bit-exact scalar conversions between float32 and the narrow formats ckbridge stores.
// Pure integer arithmetic: results do not depend on the FP environment (FTZ, rounding mode)
// and are identical on the host and in CUDA kernels.
#include <cstdint>
#include <cstring>

#include "ckbridge/core/config.hpp"

namespace ckbridge {

CKB_HD_INLINE std::uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
CKB_HD_INLINE float f32_from_bits(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
CKB_HD_INLINE bool f32_is_nan(std::uint32_t u) { return (u & 0x7FFFFFFFu) > 0x7F800000u; }

namespace detail {
// Round-to-nearest-even right shift of an unsigned integer (sh >= 1).
CKB_HD_INLINE std::uint64_t rne_shift(std::uint64_t m, int sh) {
  if (sh >= 64) return 0;
  const std::uint64_t q = m >> sh;
  const std::uint64_t rem = m & ((std::uint64_t{1} << sh) - 1);
  const std::uint64_t half = std::uint64_t{1} << (sh - 1);
  return (rem > half || (rem == half && (q & 1))) ? q + 1 : q;
}
}  // namespace detail

// ---------------------------------------------------------------- bfloat16
// fp32 -> bf16, round to nearest even; overflow to Inf; subnormals kept (no FTZ).
// NaN -> 0x7FFF, the canonical NaN that CUDA produces (fp8-blockwise.md section 6).
CKB_HD_INLINE std::uint16_t f32_to_bf16_bits(float f) {
  const std::uint32_t u = f32_bits(f);
  if (f32_is_nan(u)) return 0x7FFF;
  return static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
CKB_HD_INLINE float bf16_bits_to_f32(std::uint16_t b) { return f32_from_bits(std::uint32_t{b} << 16); }

// ---------------------------------------------------------------- float16 (IEEE binary16)
CKB_HD_INLINE float f16_bits_to_f32(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;
  if (e == 0x1F) return f32_from_bits(sign | 0x7F800000u | (m << 13));
  if (e != 0) return f32_from_bits(sign | ((e + 112) << 23) | (m << 13));
  if (m == 0) return f32_from_bits(sign);
  // subnormal: m * 2^-24, exact in fp32
  int shift = 0;
  std::uint32_t mm = m;
  while (!(mm & 0x400u)) { mm <<= 1; ++shift; }
  return f32_from_bits(sign | (std::uint32_t(113 - shift) << 23) | ((mm & 0x3FFu) << 13));
}
CKB_HD_INLINE std::uint16_t f32_to_f16_bits(float f) {
  const std::uint32_t u = f32_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7E00u;      // NaN (quiet)
  if (a >= 0x477FF000u) return sign | 0x7C00u;     // >= 65520 rounds to Inf
  const int E = int(a >> 23);
  const std::uint64_t M = E ? ((a & 0x7FFFFFu) | 0x800000u) : (a & 0x7FFFFFu);
  if (E >= 113) {  // normal half: exponent E-112, keep 10 mantissa bits (carry may bump exponent)
    const std::uint32_t r = static_cast<std::uint32_t>(detail::rne_shift(a, 13)) - (112u << 10);
    return sign | static_cast<std::uint16_t>(r);
  }
  // subnormal half: value / 2^-24 = M * 2^(E-150+24) (E=0: M*2^-149 -> shift 125)
  const int sh = E ? 126 - E : 125;
  return sign | static_cast<std::uint16_t>(detail::rne_shift(M, sh));
}

// ---------------------------------------------------------------- float8 e4m3fn
// s.eeee.mmm, bias 7, no Inf, NaN = 0x7F/0xFF, max 448 (0x7E).
CKB_HD_INLINE float e4m3_bits_to_f32(std::uint8_t q) {
  const std::uint32_t sign = std::uint32_t(q & 0x80u) << 24;
  const std::uint32_t e = (q >> 3) & 0xF, m = q & 0x7;
  if (e == 0xF && m == 0x7) return f32_from_bits(sign | 0x7FC00000u);  // NaN keeps its sign
  if (e != 0) return f32_from_bits(sign | ((e + 120) << 23) | (m << 20));
  if (m == 0) return f32_from_bits(sign);
  // subnormal m * 2^-9
  int shift = 0;
  std::uint32_t mm = m;
  while (!(mm & 0x8u)) { mm <<= 1; ++shift; }
  return f32_from_bits(sign | (std::uint32_t(121 - shift) << 23) | ((mm & 0x7u) << 20));
}

namespace detail {
// RNE of a finite |x| <= 464 onto the E4M3FN grid; returns the unsigned code (0..0x7E).
CKB_HD_INLINE std::uint8_t e4m3_round_abs(std::uint32_t a) {
  const int E = int(a >> 23);
  if (E >= 121) {  // |x| >= 2^-6: normal e4m3; 3 mantissa bits, carry bumps the exponent
    return static_cast<std::uint8_t>(static_cast<std::uint32_t>(rne_shift(a, 20)) - (120u << 3));
  }
  // subnormal e4m3: q = RNE(x / 2^-9); q == 8 lands on the smallest normal code 0x08
  const std::uint64_t M = E ? ((a & 0x7FFFFFu) | 0x800000u) : (a & 0x7FFFFFu);
  const int sh = E ? 141 - E : 140;
  return static_cast<std::uint8_t>(rne_shift(M, sh));
}
}  // namespace detail

// Saturating cast (TE, `cvt.rn.satfinite.e4m3`): |x| > 464 or Inf -> +-448; NaN -> 0x7F.
CKB_HD_INLINE std::uint8_t f32_to_e4m3_sat(float f) {
  const std::uint32_t u = f32_bits(f);
  const std::uint8_t sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  const std::uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7F;
  if (a > 0x43E80000u) return sign | 0x7E;  // > 464 (incl. Inf)
  return sign | detail::e4m3_round_abs(a);
}
// PyTorch c10 cast (non-saturating): |x| > 464, Inf or NaN -> 0x7F | sign.
CKB_HD_INLINE std::uint8_t f32_to_e4m3_c10(float f) {
  const std::uint32_t u = f32_bits(f);
  const std::uint8_t sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  const std::uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x43E80000u) return sign | 0x7F;  // > 464, Inf, NaN
  return sign | detail::e4m3_round_abs(a);
}

// ---------------------------------------------------------------- float8 e5m2
// s.eeeee.mm, bias 15, IEEE-like (Inf 0x7C, NaN 0x7D..0x7F): the top byte of a binary16.
CKB_HD_INLINE float e5m2_bits_to_f32(std::uint8_t q) { return f16_bits_to_f32(static_cast<std::uint16_t>(q) << 8); }
// RNE, non-saturating (overflow -> Inf, as PyTorch); NaN -> 0x7F | sign.
CKB_HD_INLINE std::uint8_t f32_to_e5m2(float f) {
  const std::uint32_t u = f32_bits(f);
  const std::uint8_t sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  if (f32_is_nan(u)) return sign | 0x7F;
  // Round fp32 straight to 2 mantissa bits (a double rounding through f16 would be wrong).
  const std::uint32_t a = u & 0x7FFFFFFFu;
  if (a >= 0x47700000u) return sign | 0x7C;  // >= 61440 (midpoint of 57344 and 65536) -> Inf
  const int E = int(a >> 23);
  if (E >= 113) return sign | static_cast<std::uint8_t>(static_cast<std::uint32_t>(detail::rne_shift(a, 21)) - (112u << 2));
  const std::uint64_t M = E ? ((a & 0x7FFFFFu) | 0x800000u) : (a & 0x7FFFFFu);
  const int sh = E ? 134 - E : 133;  // value / 2^-16
  return sign | static_cast<std::uint8_t>(detail::rne_shift(M, sh));
}

// ---------------------------------------------------------------- float8 e8m0 (scale format)
// 2^(b-127); 0xFF is NaN.
CKB_HD_INLINE float e8m0_bits_to_f32(std::uint8_t b) {
  if (b == 0xFF) return f32_from_bits(0x7FC00000u);
  if (b == 0) return f32_from_bits(0x00400000u);  // 2^-127 (fp32 subnormal)
  return f32_from_bits(std::uint32_t(b) << 23);
}

}  // namespace ckbridge

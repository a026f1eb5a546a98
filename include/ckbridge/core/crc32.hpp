#pragma once
// CRC-32 (the zip / zlib polynomial, reflected 0xEDB88320) at storage speed.
//
// zlib's table-driven crc32 runs at about 0.75 GB/s per core here, slower than the conversion
// itself, so checking every zip record would halve the converter's speed. On x86-64 CPUs with
// PCLMULQDQ the bulk of a buffer is folded 64 bytes at a time with carry-less multiplies (the
// method of Intel's paper "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ
// Instruction", Gopal et al., 2009; constants x^k mod P for the folding distances, and a Barrett
// reduction at the end), and the last < 16 bytes go through zlib. Same result as zlib's crc32
// (tests/unit/test_hostile.cpp compares them over random lengths and alignments); other CPUs,
// compilers and CUDA translation units use zlib only.
#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

#if !defined(CKBRIDGE_NO_ISA_DISPATCH) && !defined(__CUDACC__) && defined(__x86_64__) && \
    (defined(__GNUC__) || defined(__clang__))
#define CKB_CRC_PCLMUL 1
#include <immintrin.h>
#else
#define CKB_CRC_PCLMUL 0
#endif

namespace ckbridge {

namespace detail {

inline std::uint32_t crc32_zlib(std::uint32_t crc, const std::byte* p, std::size_t n) {
  uLong c = crc;
  while (n > 0) {  // zlib takes a uInt length: feed big buffers in chunks
    const std::size_t k = std::min<std::size_t>(n, std::size_t{1} << 30);
    c = ::crc32(c, reinterpret_cast<const Bytef*>(p), static_cast<uInt>(k));
    p += k;
    n -= k;
  }
  return static_cast<std::uint32_t>(c);
}

#if CKB_CRC_PCLMUL
__attribute__((target("pclmul,sse4.1"), always_inline)) inline __m128i crc32_fold16(__m128i x, __m128i k, __m128i next) {
  const __m128i lo = _mm_clmulepi64_si128(x, k, 0x00);
  const __m128i hi = _mm_clmulepi64_si128(x, k, 0x11);
  return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}
__attribute__((always_inline)) inline __m128i crc32_load16(const std::byte* q) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)); }

// Folds n (a multiple of 16, >= 64) bytes into the CRC register `state` (not inverted).
__attribute__((target("pclmul,sse4.1"))) inline std::uint32_t crc32_fold_pclmul(std::uint32_t state,
                                                                               const std::byte* p, std::size_t n) {
  // x^(4*128+32) and x^(4*128-32) mod P (fold by 64 bytes), x^(128+32) and x^(128-32) mod P (fold
  // by 16 bytes), x^64 mod P (64 -> 32 bits), and the Barrett constants mu = x^64 / P and P,
  // all bit-reflected.
  const __m128i k1k2 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL);
  const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL);
  const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124LL);
  const __m128i poly = _mm_set_epi64x(0x1f7011641LL, 0x1db710641LL);
  const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
  __m128i x0 = _mm_xor_si128(crc32_load16(p), _mm_cvtsi32_si128(static_cast<int>(state)));
  __m128i x1 = crc32_load16(p + 16), x2 = crc32_load16(p + 32), x3 = crc32_load16(p + 48);
  p += 64;
  n -= 64;
  while (n >= 64) {
    x0 = crc32_fold16(x0, k1k2, crc32_load16(p));
    x1 = crc32_fold16(x1, k1k2, crc32_load16(p + 16));
    x2 = crc32_fold16(x2, k1k2, crc32_load16(p + 32));
    x3 = crc32_fold16(x3, k1k2, crc32_load16(p + 48));
    p += 64;
    n -= 64;
  }
  x0 = crc32_fold16(x0, k3k4, x1);
  x0 = crc32_fold16(x0, k3k4, x2);
  x0 = crc32_fold16(x0, k3k4, x3);
  while (n >= 16) {
    x0 = crc32_fold16(x0, k3k4, crc32_load16(p));
    p += 16;
    n -= 16;
  }
  // 128 -> 64 bits (appending 32 zero bits), then 64 -> 32.
  x0 = _mm_xor_si128(_mm_srli_si128(x0, 8), _mm_clmulepi64_si128(k3k4, x0, 0x01));
  __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x0, mask32), k5, 0x00);
  x0 = _mm_xor_si128(_mm_srli_si128(x0, 4), t);
  // Barrett reduction.
  t = _mm_and_si128(_mm_clmulepi64_si128(_mm_and_si128(x0, mask32), poly, 0x10), mask32);
  t = _mm_clmulepi64_si128(t, poly, 0x00);
  x0 = _mm_xor_si128(x0, t);
  return static_cast<std::uint32_t>(_mm_extract_epi32(x0, 1));
}

inline bool crc32_has_pclmul() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  }();
  return yes;
}
#endif

}  // namespace detail

// zlib's crc32(crc, p, n): continue `crc` (0 to start) over n bytes.
inline std::uint32_t crc32_update(std::uint32_t crc, const std::byte* p, std::size_t n) {
#if CKB_CRC_PCLMUL
  if (n >= 64 && detail::crc32_has_pclmul()) {
    const std::size_t bulk = n & ~std::size_t{15};
    crc = ~detail::crc32_fold_pclmul(~crc, p, bulk);
    p += bulk;
    n -= bulk;
  }
#endif
  return detail::crc32_zlib(crc, p, n);
}

inline std::uint32_t crc32_of(std::span<const std::byte> s) { return crc32_update(0, s.data(), s.size()); }

}  // namespace ckbridge

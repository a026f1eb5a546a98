#pragma once
// Run-time choice of the vector instruction set for the CPU FP8 loops.
//
// The loops are plain C++ that the compiler vectorises; on x86-64 with GCC or Clang each hot loop
// is compiled three times (baseline SSE2, AVX2, AVX-512 F/BW/VL/DQ) through the `target` function
// attribute, and the widest one this CPU supports is called. No intrinsics: every variant is the
// same source, and since that source uses only integer logic and single IEEE operations (no a*b+c
// that could become an FMA, which these targets do not enable anyway), every variant gives the
// same bytes. Elsewhere (other CPUs, other compilers, CUDA translation units, or with
// CKBRIDGE_NO_ISA_DISPATCH defined) only the baseline exists.
//
// The environment variable CKBRIDGE_CPU_ISA = baseline | avx2 | avx512 caps the choice (read
// once); set_cpu_isa() caps it from code (tests compare the variants, benchmarks time them).
#include <atomic>
#include <cstdlib>
#include <cstring>

#if !defined(CKBRIDGE_NO_ISA_DISPATCH) && !defined(__CUDACC__) && defined(__x86_64__) && \
    (defined(__GNUC__) || defined(__clang__))
#define CKB_X86_DISPATCH 1
#define CKB_TARGET_AVX2 __attribute__((target("avx2")))
#if defined(__clang__)
#define CKB_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#else
// GCC otherwise keeps 256-bit vectors for AVX-512 code
#define CKB_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512")))
#endif
#else
#define CKB_X86_DISPATCH 0
#endif

#if defined(__GNUC__) || defined(__clang__)
// Forces the loop bodies into each ISA variant (a call into an out-of-line copy would run the
// baseline code).
#define CKB_CPU_INLINE __attribute__((always_inline)) inline
#else
#define CKB_CPU_INLINE inline
#endif

namespace ckbridge::quant {

enum class CpuIsa : int { Baseline = 0, Avx2 = 1, Avx512 = 2 };

inline const char* cpu_isa_name(CpuIsa i) {
  switch (i) {
    case CpuIsa::Avx2: return "avx2";
    case CpuIsa::Avx512: return "avx512";
    default: return "baseline";
  }
}

// The widest variant compiled in that this CPU runs.
inline CpuIsa cpu_isa_supported() {
#if CKB_X86_DISPATCH
  static const CpuIsa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return CpuIsa::Avx512;
    if (__builtin_cpu_supports("avx2")) return CpuIsa::Avx2;
    return CpuIsa::Baseline;
  }();
  return isa;
#else
  return CpuIsa::Baseline;
#endif
}

namespace detail {
inline int isa_cap_from_env() {
  const char* e = std::getenv("CKBRIDGE_CPU_ISA");
  if (!e) return int(CpuIsa::Avx512);
  if (!std::strcmp(e, "baseline")) return int(CpuIsa::Baseline);
  if (!std::strcmp(e, "avx2")) return int(CpuIsa::Avx2);
  return int(CpuIsa::Avx512);  // "avx512" or anything else: no cap
}
inline std::atomic<int>& isa_cap() {
  static std::atomic<int> cap{isa_cap_from_env()};
  return cap;
}
}  // namespace detail

// Caps the variant used by later calls (the supported one is used if it is narrower).
inline void set_cpu_isa(CpuIsa cap) { detail::isa_cap().store(int(cap), std::memory_order_relaxed); }

// The variant the CPU loops use now.
inline CpuIsa cpu_isa() {
  const int s = int(cpu_isa_supported()), c = detail::isa_cap().load(std::memory_order_relaxed);
  return CpuIsa(s < c ? s : c);
}

}  // namespace ckbridge::quant

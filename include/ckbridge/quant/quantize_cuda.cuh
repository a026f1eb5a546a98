#pragma once
// CUDA kernels for 128x128 blockwise E4M3 quantization and dequantization. Include this header
// in ONE .cu file of a program compiled with nvcc; it registers itself as the CUDA backend of the
// host dispatcher (device.hpp), so quant::quantize / dequantize with Device::Auto or Device::Cuda
// run here. The per-block math is fp8_math.hpp, shared with the CPU path: identical bytes.
//
// Compile with nvcc defaults (IEEE division, denormals kept). --use_fast_math / -ftz=true would
// flush subnormal inputs and scales and break bit-exactness (the reference notes the same pitfall
// for NVRTC/CuPy kernels).
//
// Kernels: one CUDA block per 128x128 data block, one launch per tensor.
//   quantize: each thread loads 8 16-byte vectors (consecutive threads, consecutive vectors) into
//   registers, reduces |x| (max of the abs bit patterns, packed 16x2 for 2-byte inputs, plus a
//   NaN flag) with warp shuffles and one shared-memory step (no atomics), computes the block
//   scale with fp8_math.hpp, and encodes with the sm_89+ cvt.rn.satfinite.e4m3x2 instruction
//   (= the te cast); codes are stored 8 (2-byte input) or 4 (fp32) per thread, warp-contiguous.
//   Rows not a multiple of 16 elements or misaligned pointers take a scalar kernel with the same
//   math.
//   dequantize: hardware e4m3x2 -> f16x2 (exact), one RN multiply, NaN canonicalised, and
//   cvt.rn.bf16x2 for bf16 output; one 16-byte streaming store per thread per step.
#include <cuda_runtime.h>

#include <type_traits>

#include <cstdint>
#include <vector>

#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/quant/device.hpp"
#include "ckbridge/quant/fp8_blocks.hpp"
#include "ckbridge/quant/fp8_math.hpp"

namespace ckbridge::quant::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in ", what, ": ", cudaGetErrorString(e));
}

namespace kernels {

constexpr int kThreads = 256;  // scalar kernels, and the vector kernels for 2-byte inputs

// ---- hardware conversions (sm_89+), with the bit-identical software definitions elsewhere
// cvt.rn.satfinite.e4m3x2.f32 = te's cast (fp8_math.hpp e4m3_sat): lo -> low byte.
__device__ __forceinline__ std::uint32_t e4m3x2_sat(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned short r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return std::uint32_t(te::encode(lo)) | (std::uint32_t(te::encode(hi)) << 8);
#endif
}
// two e4m3 codes (low byte first) -> two exact floats (NaN codes -> NaN)
__device__ __forceinline__ float2 e4m3x2_to_f32(std::uint32_t two) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned int h2;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(static_cast<unsigned short>(two)));
  float lo, hi;
  asm("cvt.f32.f16 %0, %1;" : "=f"(lo) : "h"(static_cast<unsigned short>(h2 & 0xFFFFu)));
  asm("cvt.f32.f16 %0, %1;" : "=f"(hi) : "h"(static_cast<unsigned short>(h2 >> 16)));
  return make_float2(lo, hi);
#else
  return make_float2(detail::e4m3_to_f32_fast(two & 0xFFu), detail::e4m3_to_f32_fast((two >> 8) & 0xFFu));
#endif
}
// RN product with NaN canonicalised, as dequant_f32
__device__ __forceinline__ float dq_mul(float v, float s) {
  const std::uint32_t y = __float_as_uint(__fmul_rn(v, s));
  return __uint_as_float(detail::sel((y & 0x7FFFFFFFu) > detail::kF32Inf, detail::kCanonicalNaN, y));
}
// two floats -> two bf16 by RNE (cvt.rn.bf16x2.f32; NaN inputs here are already 0x7FFFFFFF -> 0x7FFF)
__device__ __forceinline__ std::uint32_t bf16x2_rn(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned int r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return std::uint32_t(f32_to_bf16_bits(lo)) | (std::uint32_t(f32_to_bf16_bits(hi)) << 16);
#endif
}

// ---- input-type traits for the vector kernel: 16-bit types reduce |x| on packed halves
template <class T> struct VecIn;
template <> struct VecIn<bf16_t> {
  static constexpr int kThreads = 256;
  static constexpr std::uint32_t kNaNAbove = 0x7F80u;  // abs bits > this: NaN
  __device__ static std::uint32_t to_f32_abs_bits(std::uint32_t h) { return h << 16; }
  __device__ static float2 to_f32(std::uint32_t w) { return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u)); }
};
template <> struct VecIn<f16_t> {
  static constexpr int kThreads = 256;
  static constexpr std::uint32_t kNaNAbove = 0x7C00u;
  __device__ static std::uint32_t to_f32_abs_bits(std::uint32_t h) {
    return f32_bits(f16_bits_to_f32(static_cast<std::uint16_t>(h)));
  }
  __device__ static float2 to_f32(std::uint32_t w) {
    float lo, hi;
    asm("cvt.f32.f16 %0, %1;" : "=f"(lo) : "h"(static_cast<unsigned short>(w & 0xFFFFu)));
    asm("cvt.f32.f16 %0, %1;" : "=f"(hi) : "h"(static_cast<unsigned short>(w >> 16)));
    return make_float2(lo, hi);
  }
};
template <> struct VecIn<float> {
  static constexpr int kThreads = 512;  // 8 16-byte vectors per thread, like the 2-byte types
  static constexpr std::uint32_t kNaNAbove = detail::kF32Inf;
  __device__ static std::uint32_t to_f32_abs_bits(std::uint32_t a) { return a; }
};

// Block-wide reduction of BlockStats: warp shuffles, then one partial per warp in shared memory
// that every thread folds in the same order (all threads get the same result; no atomics).
template <int Threads>
__device__ __forceinline__ BlockStats block_reduce(BlockStats st) {
  __shared__ std::uint32_t s_max[Threads / 32];
  __shared__ std::uint32_t s_nan[Threads / 32];
  std::uint32_t mx = st.amax_bits, nan = st.has_nan ? 1u : 0u;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    mx = detail::umax(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, o));
    nan |= __shfl_xor_sync(0xFFFFFFFFu, nan, o);
  }
  if ((threadIdx.x & 31) == 0) {
    s_max[threadIdx.x >> 5] = mx;
    s_nan[threadIdx.x >> 5] = nan;
  }
  __syncthreads();
  BlockStats r;
#pragma unroll
  for (int w = 0; w < Threads / 32; ++w) r = quant::detail::merge(r, BlockStats{s_max[w], s_nan[w] != 0});
  return r;
}

__device__ __forceinline__ void write_scale(float* s, std::int64_t s_ld, std::int64_t bn, std::uint8_t* flags,
                                            const BlockScale& bs) {
  const std::int64_t bi = blockIdx.y, bj = blockIdx.x;
  s[bi * s_ld + bj] = bs.scale_inv;
  if (flags) flags[bi * bn + bj] = bs.fallback ? 1 : 0;
  if (bj == bn - 1)
    for (std::int64_t j = bn; j < s_ld; ++j) s[bi * s_ld + j] = 0.0f;  // TE padding
}

// Vectorised quantization: n % 16 == 0 and 16-byte aligned rows. Consecutive threads read
// consecutive 16-byte vectors of a row (a warp reads 512 contiguous bytes) and write their codes
// contiguously (8 or 4 bytes each); each thread keeps its 8 vectors in registers between the
// amax pass and the encode pass, so the input is read once.
template <class Method, class T>
__global__ void __launch_bounds__(VecIn<T>::kThreads, 1024 / VecIn<T>::kThreads)
    quantize_vec(const T* __restrict__ x, std::int64_t m, std::int64_t n, std::int64_t ld, std::uint8_t* __restrict__ q,
                 float* __restrict__ s, std::int64_t s_ld, std::int64_t bn, std::uint8_t* __restrict__ flags, float eps,
                 bool pow2) {
  using V = VecIn<T>;
  constexpr int kT = V::kThreads;
  constexpr int kEV = 16 / int(sizeof(T));     // elements per vector: 8 (2-byte) or 4 (fp32)
  constexpr int kVR = int(kBlock) / kEV;       // vectors per block row: 16 or 32
  constexpr int kNV = int(kBlock) * kVR / kT;  // vectors per thread: 8
  constexpr int kRS = kT / kVR;                // block rows advanced per step
  // a thread's column is the same in every step; its row advances by kRS
  const std::int64_t row = std::int64_t(blockIdx.y) * kBlock + threadIdx.x / kVR;
  const std::int64_t col = std::int64_t(blockIdx.x) * kBlock + (threadIdx.x % kVR) * kEV;
  const T* xp = x + row * ld + col;
  std::uint8_t* qp = q + row * n + col;
  const std::int64_t rows = m - row;  // step i is valid iff i * kRS < rows
  const bool col_ok = col < n;
  uint4 v[kNV];
#pragma unroll
  for (int i = 0; i < kNV; ++i)
    v[i] = (col_ok && i * kRS < rows) ? __ldg(reinterpret_cast<const uint4*>(xp + i * kRS * ld))
                                                     : make_uint4(0, 0, 0, 0);
  // amax: max of the raw |x| bit patterns (packed halves for 2-byte types); only if that max is a
  // NaN pattern (rare) is the NaN-free max recomputed element by element.
  std::uint32_t mraw = 0;
#pragma unroll
  for (int i = 0; i < kNV; ++i) {
    const std::uint32_t w[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if constexpr (sizeof(T) == 2) mraw = __vmaxu2(mraw, w[k] & 0x7FFF7FFFu);
      else mraw = detail::umax(mraw, w[k] & 0x7FFFFFFFu);
    }
  }
  if constexpr (sizeof(T) == 2) mraw = detail::umax(mraw & 0xFFFFu, mraw >> 16);
  BlockStats st{V::to_f32_abs_bits(mraw), false};
  if (mraw > V::kNaNAbove) {
    std::uint32_t mx = 0;
#pragma unroll
    for (int i = 0; i < kNV; ++i) {
      const std::uint32_t w[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if constexpr (sizeof(T) == 2) {
          const std::uint32_t lo = w[k] & 0x7FFFu, hi = (w[k] >> 16) & 0x7FFFu;
          mx = detail::umax(mx, detail::sel(lo > V::kNaNAbove, 0u, lo));
          mx = detail::umax(mx, detail::sel(hi > V::kNaNAbove, 0u, hi));
        } else {
          const std::uint32_t a = w[k] & 0x7FFFFFFFu;
          mx = detail::umax(mx, detail::sel(a > V::kNaNAbove, 0u, a));
        }
      }
    }
    st = BlockStats{V::to_f32_abs_bits(mx), true};
  }
  st = block_reduce<kT>(st);
  const BlockScale bs = Method::block_scale(st, eps, pow2, detail::Elem<T>::vmax_bits);
  if (threadIdx.x == 0) write_scale(s, s_ld, bn, flags, bs);
  // te_cast blocks use the hardware saturating cast. Non-te_cast blocks of pt / pt_loongforge_raw
  // that are not LoongForge-NaN blocks have |x * mul| <= 448 (1 + 2^-21) and no NaN, where the
  // c10 cast equals the saturating one; only raw NaN blocks need the c10 (software) cast.
  const bool soft = !bs.te_cast && bs.fallback;
#pragma unroll
  for (int i = 0; i < kNV; ++i) {
    if (!(col_ok && i * kRS < rows)) continue;
    std::uint8_t* out_p = qp + i * kRS * n;
    const std::uint32_t w[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
    if constexpr (sizeof(T) == 2) {
      std::uint32_t out[2];
#pragma unroll
      for (int k = 0; k < 4; k += 2) {
        const float2 a = V::to_f32(w[k]), b = V::to_f32(w[k + 1]);
        std::uint32_t c;
        if (!soft) {
          c = e4m3x2_sat(__fmul_rn(a.x, bs.mul), __fmul_rn(a.y, bs.mul)) |
              (e4m3x2_sat(__fmul_rn(b.x, bs.mul), __fmul_rn(b.y, bs.mul)) << 16);
        } else {
          c = std::uint32_t(encode_in_block<Method>(a.x, bs)) | (std::uint32_t(encode_in_block<Method>(a.y, bs)) << 8) |
              (std::uint32_t(encode_in_block<Method>(b.x, bs)) << 16) |
              (std::uint32_t(encode_in_block<Method>(b.y, bs)) << 24);
        }
        out[k / 2] = c;
      }
      *reinterpret_cast<uint2*>(out_p) = make_uint2(out[0], out[1]);
    } else {
      const float f[4] = {__uint_as_float(w[0]), __uint_as_float(w[1]), __uint_as_float(w[2]), __uint_as_float(w[3])};
      std::uint32_t c;
      if (!soft) {
        c = e4m3x2_sat(__fmul_rn(f[0], bs.mul), __fmul_rn(f[1], bs.mul)) |
            (e4m3x2_sat(__fmul_rn(f[2], bs.mul), __fmul_rn(f[3], bs.mul)) << 16);
      } else {
        c = std::uint32_t(encode_in_block<Method>(f[0], bs)) | (std::uint32_t(encode_in_block<Method>(f[1], bs)) << 8) |
            (std::uint32_t(encode_in_block<Method>(f[2], bs)) << 16) |
            (std::uint32_t(encode_in_block<Method>(f[3], bs)) << 24);
      }
      *reinterpret_cast<std::uint32_t*>(out_p) = c;
    }
  }
}

// Any shape / alignment: element-wise, two passes over global memory.
template <class Method, class T>
__global__ void __launch_bounds__(kThreads) quantize_scalar(const T* __restrict__ x, std::int64_t m, std::int64_t n,
                                                            std::int64_t ld, std::uint8_t* __restrict__ q,
                                                            float* __restrict__ s, std::int64_t s_ld, std::int64_t bn,
                                                            std::uint8_t* __restrict__ flags, float eps, bool pow2) {
  using E = detail::Elem<T>;
  const std::int64_t r0 = std::int64_t(blockIdx.y) * kBlock, c0 = std::int64_t(blockIdx.x) * kBlock;
  BlockStats st;
  for (int i = int(threadIdx.x); i < int(kBlock * kBlock); i += kThreads) {
    const std::int64_t r = r0 + i / kBlock, col = c0 + i % kBlock;
    if (r < m && col < n) detail::accumulate(st, E::abs_bits(x[r * ld + col]));
  }
  st = block_reduce<kThreads>(st);
  const BlockScale bs = Method::block_scale(st, eps, pow2, E::vmax_bits);
  if (threadIdx.x == 0) write_scale(s, s_ld, bn, flags, bs);
  for (int i = int(threadIdx.x); i < int(kBlock * kBlock); i += kThreads) {
    const std::int64_t r = r0 + i / kBlock, col = c0 + i % kBlock;
    if (r < m && col < n) q[r * n + col] = encode_in_block<Method>(E::to_f32(x[r * ld + col]), bs);
  }
}

// Vectorised dequantization (n % 16 == 0, aligned): per step a thread reads 4 (fp32 out) or 8
// (bf16 out) consecutive codes and writes one 16-byte vector; a warp's stores are 512 contiguous
// bytes.
// Threads and Streaming (st.global.cs stores) are tuning knobs; every combination gives the same
// bytes (checked by tests/cuda).
template <class Out, int Threads, bool Streaming>
__global__ void __launch_bounds__(Threads, 1024 / Threads)
    dequantize_vec(const std::uint8_t* __restrict__ q, std::int64_t m, std::int64_t n, const float* __restrict__ s,
                   std::int64_t s_ld, Out* __restrict__ y) {
  constexpr int kCE = std::is_same_v<Out, float> ? 4 : 8;  // codes per 16-byte output vector
  constexpr int kVR = int(kBlock) / kCE;
  constexpr int kNV = int(kBlock) * kVR / Threads;  // steps per thread
  constexpr int kRS = Threads / kVR;
  const std::int64_t row = std::int64_t(blockIdx.y) * kBlock + threadIdx.x / kVR;
  const std::int64_t col = std::int64_t(blockIdx.x) * kBlock + (threadIdx.x % kVR) * kCE;
  const std::uint8_t* qp = q + row * n + col;
  Out* yp = y + row * n + col;
  const std::int64_t rows = m - row;  // step i is valid iff i * kRS < rows
  const bool col_ok = col < n;
  const float sc = s[std::int64_t(blockIdx.y) * s_ld + blockIdx.x];
  std::uint32_t in[kNV][kCE / 4];
#pragma unroll
  for (int i = 0; i < kNV; ++i) {  // all loads first: more bytes in flight
    if (!(col_ok && i * kRS < rows)) continue;
    if constexpr (kCE == 4) {
      in[i][0] = __ldg(reinterpret_cast<const unsigned int*>(qp + i * kRS * n));
    } else {
      const uint2 u = __ldg(reinterpret_cast<const uint2*>(qp + i * kRS * n));
      in[i][0] = u.x;
      in[i][1] = u.y;
    }
  }
#pragma unroll
  for (int i = 0; i < kNV; ++i) {
    if (!(col_ok && i * kRS < rows)) continue;
    Out* out_p = yp + i * kRS * n;
    if constexpr (kCE == 4) {
      const float2 a = e4m3x2_to_f32(in[i][0] & 0xFFFFu), b = e4m3x2_to_f32(in[i][0] >> 16);
      const float4 o = make_float4(dq_mul(a.x, sc), dq_mul(a.y, sc), dq_mul(b.x, sc), dq_mul(b.y, sc));
      if constexpr (Streaming) __stcs(reinterpret_cast<float4*>(out_p), o);
      else *reinterpret_cast<float4*>(out_p) = o;
    } else {
      std::uint32_t o[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 a = e4m3x2_to_f32(in[i][k / 2] >> ((k & 1) * 16));
        o[k] = bf16x2_rn(dq_mul(a.x, sc), dq_mul(a.y, sc));
      }
      const uint4 ov = make_uint4(o[0], o[1], o[2], o[3]);
      if constexpr (Streaming) __stcs(reinterpret_cast<uint4*>(out_p), ov);
      else *reinterpret_cast<uint4*>(out_p) = ov;
    }
  }
}

template <class Out>
__global__ void __launch_bounds__(kThreads) dequantize_scalar(const std::uint8_t* __restrict__ q, std::int64_t m,
                                                              std::int64_t n, const float* __restrict__ s,
                                                              std::int64_t s_ld, Out* __restrict__ y) {
  const std::int64_t r0 = std::int64_t(blockIdx.y) * kBlock, c0 = std::int64_t(blockIdx.x) * kBlock;
  const float sc = s[std::int64_t(blockIdx.y) * s_ld + blockIdx.x];
  for (int i = int(threadIdx.x); i < int(kBlock * kBlock); i += kThreads) {
    const std::int64_t r = r0 + i / kBlock, col = c0 + i % kBlock;
    if (r >= m || col >= n) continue;
    if constexpr (std::is_same_v<Out, float>) y[r * n + col] = dequant_f32(q[r * n + col], sc);
    else y[r * n + col] = bf16_t{dequant_bf16_bits(q[r * n + col], sc)};
  }
}

}  // namespace kernels

// ------------------------------------------------------------------------- device-pointer API
inline dim3 grid_for(std::int64_t m, std::int64_t n) {
  if (block_count(m) > 65535) fail("CUDA quantize: ", m, " rows exceed the grid limit (", 65535 * kBlock, ")");
  return dim3(static_cast<unsigned>(block_count(n)), static_cast<unsigned>(block_count(m)));
}
inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

// Quantizes x (device, [m, n], row stride ld elements) into q (device, dense [m, n]) and
// scale_inv (device, [ceil(m/128), s_ld], padding columns zeroed). flags (optional, device,
// ceil(m/128)*ceil(n/128) bytes) receives 1 for LoongForge-NaN blocks.
template <class Method, class T>
void quantize_device(const T* x, std::int64_t m, std::int64_t n, std::int64_t ld, std::uint8_t* q, float* scale_inv,
                     std::int64_t s_ld, std::uint8_t* flags, float eps, bool pow2, cudaStream_t stream = nullptr) {
  if (m == 0 || n == 0) return;
  const dim3 grid = grid_for(m, n);
  const bool vec = n % 16 == 0 && (ld * std::int64_t(sizeof(T))) % 16 == 0 && aligned16(x) && aligned16(q);
  if (vec)
    kernels::quantize_vec<Method, T><<<grid, kernels::VecIn<T>::kThreads, 0, stream>>>(x, m, n, ld, q, scale_inv, s_ld,
                                                                           block_count(n), flags, eps, pow2);
  else
    kernels::quantize_scalar<Method, T><<<grid, kernels::kThreads, 0, stream>>>(x, m, n, ld, q, scale_inv, s_ld,
                                                                              block_count(n), flags, eps, pow2);
  check(cudaGetLastError(), "quantize kernel launch");
}

// Dequantizes q (device, dense [m, n]) with scale_inv (device, row stride s_ld) into y (device,
// dense [m, n], float or bf16_t). Threads / Streaming: tuning of the vector kernel. Defaults
// measured on H100 (16384 x 7168): 512 threads + streaming stores reach 0.98 (bf16 out) / 0.97
// (fp32 out) of a device-to-device memcpy, 256 threads with plain stores 0.92 / 0.82.
inline constexpr int kDequantThreads = 512;
inline constexpr bool kDequantStreaming = true;
template <class Out, int Threads = kDequantThreads, bool Streaming = kDequantStreaming>
void dequantize_device(const std::uint8_t* q, std::int64_t m, std::int64_t n, const float* scale_inv,
                       std::int64_t s_ld, Out* y, cudaStream_t stream = nullptr) {
  static_assert(Threads == 256 || Threads == 512, "dequantize kernel: 256 or 512 threads");
  if (m == 0 || n == 0) return;
  const dim3 grid = grid_for(m, n);
  if (n % 16 == 0 && aligned16(q) && aligned16(y))
    kernels::dequantize_vec<Out, Threads, Streaming><<<grid, Threads, 0, stream>>>(q, m, n, scale_inv, s_ld, y);
  else
    kernels::dequantize_scalar<Out><<<grid, kernels::kThreads, 0, stream>>>(q, m, n, scale_inv, s_ld, y);
  check(cudaGetLastError(), "dequantize kernel launch");
}

// ------------------------------------------------------------------------- host-buffer backend
namespace staging {
struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(std::size_t bytes) { check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T> T* as() const { return static_cast<T*>(p); }
};

template <class Method>
std::int64_t quantize_host_m(DType in, const void* x, std::int64_t m, std::int64_t n, std::int64_t ld,
                             std::uint8_t* q, float* s, std::int64_t s_ld, float eps, bool pow2) {
  const std::size_t es = dtype_size(in);
  const std::int64_t bm = block_count(m), bn = block_count(n);
  DeviceBuffer dx(std::size_t(m * n) * es), dq(std::size_t(m * n)), ds(std::size_t(bm * s_ld) * 4),
      df(std::size_t(bm * bn));
  // rows with stride ld on the host -> dense rows on the device
  check(cudaMemcpy2D(dx.p, std::size_t(n) * es, x, std::size_t(ld) * es, std::size_t(n) * es, std::size_t(m),
                     cudaMemcpyHostToDevice),
        "copy input to device");
  switch (in) {
    case DType::BF16:
      quantize_device<Method, bf16_t>(dx.as<bf16_t>(), m, n, n, dq.as<std::uint8_t>(), ds.as<float>(), s_ld,
                                      df.as<std::uint8_t>(), eps, pow2);
      break;
    case DType::F16:
      quantize_device<Method, f16_t>(dx.as<f16_t>(), m, n, n, dq.as<std::uint8_t>(), ds.as<float>(), s_ld,
                                     df.as<std::uint8_t>(), eps, pow2);
      break;
    case DType::F32:
      quantize_device<Method, float>(dx.as<float>(), m, n, n, dq.as<std::uint8_t>(), ds.as<float>(), s_ld,
                                     df.as<std::uint8_t>(), eps, pow2);
      break;
    default: fail("CUDA quantize: input dtype ", safetensors_name(in), " is not BF16, F16 or F32");
  }
  check(cudaMemcpy(q, dq.p, std::size_t(m * n), cudaMemcpyDeviceToHost), "copy codes to host");
  check(cudaMemcpy(s, ds.p, std::size_t(bm * s_ld) * 4, cudaMemcpyDeviceToHost), "copy scales to host");
  std::vector<std::uint8_t> flags(std::size_t(bm * bn));
  check(cudaMemcpy(flags.data(), df.p, flags.size(), cudaMemcpyDeviceToHost), "copy block flags to host");
  std::int64_t count = 0;
  for (auto f : flags) count += f;
  return count;
}
}  // namespace staging

inline bool available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

inline std::int64_t quantize_host(MethodId method, DType in, const void* x, std::int64_t m, std::int64_t n,
                                  std::int64_t ld, std::uint8_t* q, float* s, std::int64_t s_ld, float eps, bool pow2) {
  switch (method) {
    case MethodId::Te: return staging::quantize_host_m<te>(in, x, m, n, ld, q, s, s_ld, eps, pow2);
    case MethodId::Pt: return staging::quantize_host_m<pt>(in, x, m, n, ld, q, s, s_ld, eps, pow2);
    case MethodId::PtLoongForgeRaw:
      return staging::quantize_host_m<pt_loongforge_raw>(in, x, m, n, ld, q, s, s_ld, eps, pow2);
  }
  fail("CUDA quantize: invalid method code ", static_cast<int>(method));
}

inline void dequantize_host(DType out, const std::uint8_t* q, std::int64_t m, std::int64_t n, const float* s,
                            std::int64_t s_ld, void* y) {
  const std::int64_t bm = block_count(m);
  const std::size_t ob = std::size_t(m * n) * dtype_size(out);
  staging::DeviceBuffer dq(std::size_t(m * n)), ds(std::size_t(bm * s_ld) * 4), dy(ob);
  check(cudaMemcpy(dq.p, q, std::size_t(m * n), cudaMemcpyHostToDevice), "copy codes to device");
  check(cudaMemcpy(ds.p, s, std::size_t(bm * s_ld) * 4, cudaMemcpyHostToDevice), "copy scales to device");
  if (out == DType::F32) dequantize_device<float>(dq.as<std::uint8_t>(), m, n, ds.as<float>(), s_ld, dy.as<float>());
  else if (out == DType::BF16) dequantize_device<bf16_t>(dq.as<std::uint8_t>(), m, n, ds.as<float>(), s_ld, dy.as<bf16_t>());
  else fail("CUDA dequantize: output dtype ", safetensors_name(out), " is not F32 or BF16");
  check(cudaMemcpy(y, dy.p, ob, cudaMemcpyDeviceToHost), "copy output to host");
}

inline const CudaBackend kBackend{&available, &quantize_host, &dequantize_host};

// Registers the kernels with the host dispatcher (also done automatically at start-up).
inline void enable() { register_cuda_backend(&kBackend); }

namespace staging {
inline const bool kAutoRegistered = (enable(), true);
}

}  // namespace ckbridge::quant::cuda

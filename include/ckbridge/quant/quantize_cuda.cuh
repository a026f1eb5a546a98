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
// Kernels: one CUDA block (256 threads) per 128x128 data block, one launch per tensor.
//   quantize: each thread owns 4 chunks of 16 consecutive elements of a row, loads them with
//   16-byte loads into registers, reduces |x| (max of the abs bit patterns, plus a NaN flag) with
//   warp shuffles and one shared-memory step (no atomics), computes the block scale, and stores
//   16 codes per 16-byte store. Rows not multiple of 16 elements or misaligned pointers take a
//   scalar variant of the same kernel.
//   dequantize: 16 codes per thread per 16-byte load; fp32 out = 4 x 16 B, bf16 out = 2 x 16 B.
#include <cuda_runtime.h>

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

constexpr int kThreads = 256;
constexpr int kChunk = 16;                                      // elements per thread-chunk
constexpr int kChunksPerRow = static_cast<int>(kBlock) / kChunk;  // 8
constexpr int kChunksPerThread = static_cast<int>(kBlock) * kChunksPerRow / kThreads;  // 4

template <class T>
__device__ __forceinline__ T elem_from_words(const std::uint32_t* w, int e) {
  if constexpr (sizeof(T) == 4) {
    return __uint_as_float(w[e]);
  } else {
    const std::uint16_t b = static_cast<std::uint16_t>(w[e >> 1] >> ((e & 1) * 16));
    return T{b};
  }
}

// Block-wide reduction of BlockStats: warp shuffles, then 8 partials in shared memory that every
// thread folds in the same order (so all threads see the same result; no atomics).
__device__ __forceinline__ BlockStats block_reduce(BlockStats st) {
  __shared__ std::uint32_t s_max[kThreads / 32];
  __shared__ std::uint32_t s_nan[kThreads / 32];
  std::uint32_t mx = st.amax_bits, nan = st.has_nan ? 1u : 0u;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const std::uint32_t om = __shfl_xor_sync(0xFFFFFFFFu, mx, o);
    mx = om > mx ? om : mx;
    nan |= __shfl_xor_sync(0xFFFFFFFFu, nan, o);
  }
  if ((threadIdx.x & 31) == 0) {
    s_max[threadIdx.x >> 5] = mx;
    s_nan[threadIdx.x >> 5] = nan;
  }
  __syncthreads();
  BlockStats r;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) r = quant::detail::merge(r, BlockStats{s_max[w], s_nan[w] != 0});
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

// Vectorised: n % 16 == 0, 16-byte aligned rows for x and q.
template <class Method, class T>
__global__ void __launch_bounds__(kThreads) quantize_vec(const T* __restrict__ x, std::int64_t m, std::int64_t n,
                                                         std::int64_t ld, std::uint8_t* __restrict__ q,
                                                         float* __restrict__ s, std::int64_t s_ld, std::int64_t bn,
                                                         std::uint8_t* __restrict__ flags, float eps, bool pow2) {
  using E = detail::Elem<T>;
  constexpr int kWords = kChunk * int(sizeof(T)) / 4;  // 32-bit words per chunk
  const std::int64_t r0 = std::int64_t(blockIdx.y) * kBlock, c0 = std::int64_t(blockIdx.x) * kBlock;
  std::uint32_t w[kChunksPerThread][kWords];
  bool valid[kChunksPerThread];
  BlockStats st;
#pragma unroll
  for (int k = 0; k < kChunksPerThread; ++k) {
    const int c = int(threadIdx.x) + k * kThreads;
    const std::int64_t r = r0 + (c / kChunksPerRow), col = c0 + (c % kChunksPerRow) * kChunk;
    valid[k] = r < m && col < n;
    if (valid[k]) {
      const uint4* p = reinterpret_cast<const uint4*>(x + r * ld + col);
#pragma unroll
      for (int v = 0; v < kWords / 4; ++v) {
        const uint4 u = __ldg(p + v);
        w[k][4 * v] = u.x;
        w[k][4 * v + 1] = u.y;
        w[k][4 * v + 2] = u.z;
        w[k][4 * v + 3] = u.w;
      }
#pragma unroll
      for (int e = 0; e < kChunk; ++e) detail::accumulate(st, E::abs_bits(elem_from_words<T>(w[k], e)));
    }
  }
  st = block_reduce(st);
  const BlockScale bs = Method::block_scale(st, eps, pow2, E::vmax_bits);
  if (threadIdx.x == 0) write_scale(s, s_ld, bn, flags, bs);
#pragma unroll
  for (int k = 0; k < kChunksPerThread; ++k) {
    if (!valid[k]) continue;
    const int c = int(threadIdx.x) + k * kThreads;
    const std::int64_t r = r0 + (c / kChunksPerRow), col = c0 + (c % kChunksPerRow) * kChunk;
    std::uint32_t out[4] = {0, 0, 0, 0};
#pragma unroll
    for (int e = 0; e < kChunk; ++e)
      out[e >> 2] |= std::uint32_t(encode_in_block<Method>(E::to_f32(elem_from_words<T>(w[k], e)), bs))
                     << ((e & 3) * 8);
    *reinterpret_cast<uint4*>(q + r * n + col) = make_uint4(out[0], out[1], out[2], out[3]);
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
  st = block_reduce(st);
  const BlockScale bs = Method::block_scale(st, eps, pow2, E::vmax_bits);
  if (threadIdx.x == 0) write_scale(s, s_ld, bn, flags, bs);
  for (int i = int(threadIdx.x); i < int(kBlock * kBlock); i += kThreads) {
    const std::int64_t r = r0 + i / kBlock, col = c0 + i % kBlock;
    if (r < m && col < n) q[r * n + col] = encode_in_block<Method>(E::to_f32(x[r * ld + col]), bs);
  }
}

template <class Out>
__global__ void __launch_bounds__(kThreads) dequantize_vec(const std::uint8_t* __restrict__ q, std::int64_t m,
                                                           std::int64_t n, const float* __restrict__ s,
                                                           std::int64_t s_ld, Out* __restrict__ y) {
  const std::int64_t r0 = std::int64_t(blockIdx.y) * kBlock, c0 = std::int64_t(blockIdx.x) * kBlock;
  const float sc = s[std::int64_t(blockIdx.y) * s_ld + blockIdx.x];
#pragma unroll
  for (int k = 0; k < kChunksPerThread; ++k) {
    const int c = int(threadIdx.x) + k * kThreads;
    const std::int64_t r = r0 + (c / kChunksPerRow), col = c0 + (c % kChunksPerRow) * kChunk;
    if (r >= m || col >= n) continue;
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(q + r * n + col));
    const std::uint32_t in[4] = {u.x, u.y, u.z, u.w};
    if constexpr (std::is_same_v<Out, float>) {
      float4* p = reinterpret_cast<float4*>(y + r * n + col);
#pragma unroll
      for (int v = 0; v < 4; ++v)
        p[v] = make_float4(dequant_f32(in[v] & 0xFF, sc), dequant_f32((in[v] >> 8) & 0xFF, sc),
                           dequant_f32((in[v] >> 16) & 0xFF, sc), dequant_f32(in[v] >> 24, sc));
    } else {
      std::uint32_t o[8];
#pragma unroll
      for (int v = 0; v < 8; ++v) {
        const std::uint32_t w = in[v >> 1] >> ((v & 1) * 16);
        o[v] = std::uint32_t(dequant_bf16_bits(w & 0xFF, sc)) | (std::uint32_t(dequant_bf16_bits((w >> 8) & 0xFF, sc)) << 16);
      }
      uint4* p = reinterpret_cast<uint4*>(y + r * n + col);
      p[0] = make_uint4(o[0], o[1], o[2], o[3]);
      p[1] = make_uint4(o[4], o[5], o[6], o[7]);
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
  const bool vec = n % kernels::kChunk == 0 && (ld * std::int64_t(sizeof(T))) % 16 == 0 && aligned16(x) && aligned16(q);
  if (vec)
    kernels::quantize_vec<Method, T><<<grid, kernels::kThreads, 0, stream>>>(x, m, n, ld, q, scale_inv, s_ld,
                                                                           block_count(n), flags, eps, pow2);
  else
    kernels::quantize_scalar<Method, T><<<grid, kernels::kThreads, 0, stream>>>(x, m, n, ld, q, scale_inv, s_ld,
                                                                              block_count(n), flags, eps, pow2);
  check(cudaGetLastError(), "quantize kernel launch");
}

// Dequantizes q (device, dense [m, n]) with scale_inv (device, row stride s_ld) into y (device,
// dense [m, n], float or bf16_t).
template <class Out>
void dequantize_device(const std::uint8_t* q, std::int64_t m, std::int64_t n, const float* scale_inv,
                       std::int64_t s_ld, Out* y, cudaStream_t stream = nullptr) {
  if (m == 0 || n == 0) return;
  const dim3 grid = grid_for(m, n);
  if (n % kernels::kChunk == 0 && aligned16(q) && aligned16(y))
    kernels::dequantize_vec<Out><<<grid, kernels::kThreads, 0, stream>>>(q, m, n, scale_inv, s_ld, y);
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

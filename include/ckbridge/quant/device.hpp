#pragma once
// Run-time choice between the CPU loops and the CUDA kernels, without making host code depend on
// nvcc.
//
// Design: host headers only know a small table of function pointers (CudaBackend). The CUDA
// kernels live in quant/quantize_cuda.cuh; a program that wants them includes that header in ONE
// .cu file it compiles with nvcc. The .cuh fills the table at static-initialisation time (and
// `ckbridge::quant::cuda::enable()` does it explicitly). Programs without a .cu file link no CUDA
// at all and Device::Auto simply runs on the CPU.
#include <cstdint>

#include "ckbridge/core/dtype.hpp"
#include "ckbridge/quant/fp8_math.hpp"

namespace ckbridge::quant {

enum class Device : std::uint8_t { Auto, Cpu, Cuda };

constexpr const char* to_string(Device d) { return d == Device::Auto ? "auto" : d == Device::Cpu ? "cpu" : "cuda"; }

// Entry points of the CUDA backend, operating on HOST buffers (they stage through device memory).
// Strides are in elements; `scale_ld` is the scale row length (>= ceil(n/128)); padding columns
// [ceil(n/128), scale_ld) are written as +0.0.
struct CudaBackend {
  bool (*available)();  // a usable GPU is visible
  // Returns the number of fallback blocks (pt only).
  std::int64_t (*quantize)(MethodId method, DType in, const void* x, std::int64_t m, std::int64_t n, std::int64_t ld,
                           std::uint8_t* q, float* scale_inv, std::int64_t scale_ld, float eps, bool pow2);
  // out: DType::F32 or DType::BF16, dense [m, n].
  void (*dequantize)(DType out, const std::uint8_t* q, std::int64_t m, std::int64_t n, const float* scale_inv,
                     std::int64_t scale_ld, void* y);
};

namespace detail {
inline const CudaBackend*& cuda_backend_slot() {
  static const CudaBackend* slot = nullptr;  // function-local static: one per program
  return slot;
}
}  // namespace detail

inline void register_cuda_backend(const CudaBackend* b) { detail::cuda_backend_slot() = b; }
inline const CudaBackend* cuda_backend() { return detail::cuda_backend_slot(); }

// True if the CUDA kernels are compiled into this program and a GPU is visible.
inline bool cuda_usable() {
  const CudaBackend* b = cuda_backend();
  return b && b->available();
}

// Resolves Auto; throws if Cuda is requested but impossible.
inline Device resolve_device(Device d) {
  if (d == Device::Cpu) return Device::Cpu;
  if (d == Device::Auto) return cuda_usable() ? Device::Cuda : Device::Cpu;
  if (!cuda_backend())
    fail("quant: Device::Cuda requested but the CUDA kernels are not compiled into this program "
         "(include ckbridge/quant/quantize_cuda.cuh in a .cu file built with CKBRIDGE_CUDA)");
  if (!cuda_backend()->available()) fail("quant: Device::Cuda requested but no GPU is visible");
  return Device::Cuda;
}

}  // namespace ckbridge::quant

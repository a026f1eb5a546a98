// CUDA translation unit of ckbridge_convert_cuda: the same converter (deepseek_v3_convert.cpp)
// with the blockwise FP8 kernels linked in, so `--device cuda` (and `--device auto` on a machine
// with a GPU) quantizes on the GPU. The .cuh registers the kernels with the host dispatcher
// (quant/device.hpp); registering again here makes that independent of whether the toolchain
// keeps the header's inline registration variable.
#include "ckbridge/quant/quantize_cuda.cuh"

namespace {
[[maybe_unused]] const bool kCudaBackendRegistered = (ckbridge::quant::cuda::enable(), true);
}  // namespace

#pragma once
// Conversion settings: LoongForge's flags (same names and meanings) plus ckbridge's own.
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ckbridge/convert/pipeline_layout.hpp"
#include "ckbridge/core/dtype.hpp"
#include "ckbridge/quant/device.hpp"
#include "ckbridge/quant/fp8_math.hpp"

namespace ckbridge::convert {

struct TeVersionTag {
  int major = 2, minor = 9;
};

struct ConvertOptions {
  // parallel layout of the MCore side
  int tp = 1;                   // --tensor_model_parallel_size
  int ep = 1;                   // --expert_parallel_size
  std::optional<int> etp;       // --expert_tensor_parallel_size (unset: = tp)
  bool grouped_gemm = false;    // --moe-grouped-gemm: weight<i> instead of local_experts.<i>
  PipelineOptions pipeline;     // --pipeline_model_parallel_size, --custom_pipeline_layers, ...

  // vocabulary
  std::int64_t make_vocab_size_divisible_by = 128;  // --make_vocab_size_divisible_by
  std::int64_t pad_vocab_size_to = 0;               // --pad_vocab_size_to (0 = unset)

  // FP8
  bool convert_to_fp8 = false;                 // --convert_to_fp8 (both directions here)
  std::optional<bool> force_pow_2_scales;      // --force_pow_2_scales: unset = keep the source's kind
  float amax_epsilon = 0.0f;                   // --amax_epsilon
  quant::MethodId quant_method = quant::MethodId::Te;  // --quant_method te|pt
  bool fp8_force_no_requant = false;           // --fp8_force_no_requant
  bool dequantize_fp8 = false;                 // --dequantize_fp8: write BF16 instead of FP8
  bool allow_nonfinite = false;                // --allow_nonfinite: quantize Inf/NaN inputs (counted) instead of refusing
  std::atomic<std::uint64_t>* nonfinite_count = nullptr;  // where those are counted (caller-owned, optional)
  quant::Device device = quant::Device::Auto;  // --device auto|cpu|cuda
  DType torch_dtype = DType::BF16;             // --torch_dtype (TE fake dtype, dequantized output)

  // files
  std::uint64_t hf_max_shard_bytes = 5'000'000'000;  // HF output shard size
  int te_major = 2, te_minor = 9;                    // --te_version
  int max_workers = 1;                               // --max_workers
  std::int64_t iteration = -1;                       // MCore output: -1 = release
};

}  // namespace ckbridge::convert

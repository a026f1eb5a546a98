#pragma once
// Building blocks of a model policy. A parameter kind is a small type: it derives from
// Param<common name, placement, FP8 treatment> and carries its own layout and shape,
//   struct Qkv : Param<"attention.query_key_value", Where::Layer, Fp8::Blockwise> {
//     static layout::GroupedQkv layout(const Dims& d);  // how TP ranks cut the full tensor
//     static Shape shape(const Dims& d);                 // the full (HF-side) shape
//   };
// The common name is the key of the convert YAML's name_map (names are configuration, not code).
// A model policy is a type list of kinds; model/spec.hpp turns it once into a run-time ModelSpec.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/shape.hpp"

namespace ckbridge::model {

// A string usable as a template argument.
template <std::size_t N>
struct fixed_string {
  char s[N]{};
  constexpr fixed_string(const char (&a)[N]) {
    for (std::size_t i = 0; i < N; ++i) s[i] = a[i];
  }
  constexpr std::string_view view() const { return {s, N - 1}; }
};

// Where instances of a parameter live.
enum class Where : std::uint8_t {
  FirstStage,  // once, in the stage holding the first layer (embedding)
  LastStage,   // once, in the stage holding the last decoder layer (final norm, output layer)
  Layer,       // every decoder layer (and the inner layer of every MTP block)
  DenseLayer,  // decoder layers whose MLP is dense
  MoeLayer,    // decoder layers whose MLP is a mixture of experts
  Expert,      // every routed expert of a MoE layer
  MtpBlock,    // once per MTP block (enorm, hnorm, eh_proj, final norm)
};

// FP8 treatment in an FP8 MCore checkpoint.
enum class Fp8 : std::uint8_t {
  Never,            // never FP8 (norms, router, embeddings)
  Blockwise,        // 128x128 blockwise FP8 when the checkpoint is FP8
  BlockwiseNoTp,    // FP8 and then replicated instead of split (`fp8_ignore_tp`: TE duplicated linear)
  MtpProjection,    // BF16 in HF, FP8 in an FP8 MCore checkpoint only when asked (`eh_proj`)
};

// Which TP group splits the parameter: attention/dense TP, or expert TP.
enum class TpGroup : std::uint8_t { Tensor, Expert };

// What a kind's layout and shape rules read: the model's dims and the run's vocabulary padding.
struct Dims {
  config::ModelConfig model;                        // vocab_size is the unpadded vocabulary
  std::int64_t make_vocab_size_divisible_by = 128;  // per TP rank (--make_vocab_size_divisible_by)
  std::int64_t pad_vocab_size_to = 0;               // --pad_vocab_size_to (0: unset)
};

// The compile-time record every kind derives from. A kind may also declare
//   static std::vector<std::int64_t> hf_parts(const Dims&)  rows of each HF tensor it concatenates
//                                                           along dim 0 (default: equal parts)
//   static constexpr bool hf_float32 = true;                HF keeps it in float32
//   static bool present(const config::ModelConfig&)         whether the model has it (default: always)
//   static constexpr std::string_view tied_to = "...";      a LastStage kind with no HF tensor of its
//                                                           own: the HF tensor of that FirstStage kind
//                                                           (tied output layer = the embedding)
template <fixed_string Common, Where W, Fp8 F = Fp8::Never, TpGroup G = TpGroup::Tensor>
struct Param {
  static constexpr std::string_view common = Common.view();
  static constexpr Where where = W;
  static constexpr Fp8 fp8 = F;
  static constexpr TpGroup tp_group = G;
  static constexpr bool hf_float32 = false;
};

// An HF tensor of each MTP block that duplicates a global one (DeepSeek's MTP embedding and head
// copies): MCore keeps only the original, the HF writer re-creates the copy.
template <fixed_string Copy, fixed_string Of>
struct MtpCopy {
  static constexpr std::string_view copy = Copy.view();
  static constexpr std::string_view of = Of.view();
};

}  // namespace ckbridge::model

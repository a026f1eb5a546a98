#pragma once
// Building blocks of a model policy: a parameter kind is a compile-time record binding a
// common name (the key of the convert YAML's name_map) to its TP rule, its placement and its
// FP8 treatment. A model policy is a type list of these records; the planner walks it.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <tuple>
#include <utility>

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

// How a full tensor is cut across tensor-parallel ranks (layout/ implements each rule).
enum class TpRule : std::uint8_t {
  Replicate,  // same tensor on every rank
  Rows,       // split dim 0 in equal contiguous chunks
  Cols,       // split dim 1
  GateUp,     // [gate; up] along dim 0, each rank holds [gate_r; up_r] (SwiGLU fc1)
  VocabRows,  // pad rows to the padded vocabulary (copies of the last row), then Rows
  GroupedQkv, // [q; k; v] of GQA attention reordered by query group, whole groups per rank (linear_qkv)
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

template <fixed_string Common, TpRule Rule, Where W, Fp8 F = Fp8::Never, TpGroup G = TpGroup::Tensor>
struct Param {
  static constexpr std::string_view common = Common.view();
  static constexpr TpRule tp_rule = Rule;
  static constexpr Where where = W;
  static constexpr Fp8 fp8 = F;
  static constexpr TpGroup tp_group = G;
};

// An HF tensor of each MTP block that duplicates a global one (DeepSeek's MTP embedding and head
// copies): MCore keeps only the original, the HF writer re-creates the copy.
template <fixed_string Copy, fixed_string Of>
struct MtpCopy {
  static constexpr std::string_view copy = Copy.view();
  static constexpr std::string_view of = Of.view();
};

// Run-time copy of a Param record (what the planner stores per tensor).
struct ParamKind {
  std::string_view common;
  TpRule tp_rule;
  Where where;
  Fp8 fp8;
  TpGroup tp_group;
};

template <class P>
constexpr ParamKind kind_of() {
  return {P::common, P::tp_rule, P::where, P::fp8, P::tp_group};
}

// Calls f.template operator()<P>() for every Param P of a policy's `params` tuple, in order.
template <class Tuple, class F>
constexpr void for_each_param(F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (f.template operator()<std::tuple_element_t<I, Tuple>>(), ...);
  }(std::make_index_sequence<std::tuple_size_v<Tuple>>{});
}

template <class Tuple>
constexpr std::array<ParamKind, std::tuple_size_v<Tuple>> param_kinds() {
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return std::array<ParamKind, sizeof...(I)>{kind_of<std::tuple_element_t<I, Tuple>>()...};
  }(std::make_index_sequence<std::tuple_size_v<Tuple>>{});
}

}  // namespace ckbridge::model

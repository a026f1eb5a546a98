#pragma once
// ModelSpec: a model policy (a type list of parameter kinds plus the family's config writers)
// turned once into plain run-time data, so the planners are ordinary functions. spec_of<Policy>()
// checks at compile time that every kind has a layout and a shape rule and that the family
// brings its own MCore args and HF config.json writer (nothing is inherited from another family).
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/layout/any_policy.hpp"
#include "ckbridge/model/param.hpp"

namespace ckbridge::model {

// A value of the MCore `args` Namespace (the same type as convert::ArgValue).
using ArgValue = std::variant<std::monostate, bool, std::int64_t, double, std::string>;
using ArgList = std::vector<std::pair<std::string, ArgValue>>;

// One parameter kind at run time.
struct ParamKind {
  std::string_view common;
  Where where = Where::Layer;
  Fp8 fp8 = Fp8::Never;
  TpGroup tp_group = TpGroup::Tensor;
  bool hf_float32 = false;
  layout::AnyPolicy (*layout)(const Dims&) = nullptr;              // the kind's TP layout
  Shape (*shape)(const Dims&) = nullptr;                            // its full (HF-side) shape
  std::vector<std::int64_t> (*hf_parts)(const Dims&) = nullptr;     // rows per HF part; null: equal parts
  bool (*present)(const config::ModelConfig&) = nullptr;            // does the model have it? null: always
  // Tied: no tensor of its own in HF; the HF tensor of kind `tied_to` (a FirstStage kind) holds it,
  // and MCore stores it only in a stage that does not hold that kind (Megatron's tied output layer).
  std::string_view tied_to;

  // Rows of each of `parts` HF tensors concatenated along dim 0 into the full tensor.
  std::vector<std::int64_t> part_rows(const Dims& d, std::size_t parts) const {
    const Shape full = shape(d);
    if (hf_parts) {
      std::vector<std::int64_t> rows = hf_parts(d);
      std::int64_t sum = 0;
      for (auto r : rows) sum += r;
      if (rows.size() != parts || full.empty() || sum != full[0])
        fail("parameter '", common, "' of shape ", shape_str(full), " has ", rows.size(),
             " HF parts by its rule, but the convert config names ", parts);
      return rows;
    }
    const auto n = static_cast<std::int64_t>(parts);
    if (full.empty() || full[0] % n != 0)
      fail("parameter '", common, "' of shape ", shape_str(full), " does not split into ", parts, " parts");
    return std::vector<std::int64_t>(parts, full[0] / n);
  }
};

struct MtpCopyKind {
  std::string_view copy, of;
};

struct ModelSpec {
  std::string_view name;
  std::string_view hf_architecture;  // config.json `architectures[0]` of the family (empty: unknown)
  std::string_view hf_model_type;    // config.json `model_type` when it tells families apart (else empty)
  std::vector<std::string_view> aliases;  // other --model names of the same policy (Llama 2 / 3.1 -> llama3)
  std::vector<ParamKind> params;      // in policy order (the canonical tensor order)
  std::vector<MtpCopyKind> mtp_copies;
  void (*check)(const config::ModelConfig&) = nullptr;  // refuses configs the family cannot describe
  ArgList (*mcore_args)(const config::ModelConfig&) = nullptr;  // model fields of MCore's `args`
  std::string (*hf_config_json)(const config::ModelConfig&, const config::HfJsonOptions&) = nullptr;

  const ParamKind& param(std::string_view common) const {
    for (const auto& p : params)
      if (p.common == common) return p;
    fail(name, ": no parameter kind '", common, "'");
  }
};

namespace detail {
template <class K>
concept Kind = requires(const Dims& d) {
  { K::common } -> std::convertible_to<std::string_view>;
  K::where;
  K::fp8;
  K::tp_group;
  { layout::AnyPolicy(K::layout(d)) };
  { K::shape(d) } -> std::same_as<Shape>;
};

template <Kind K>
ParamKind kind_of() {
  ParamKind k;
  k.common = K::common;
  k.where = K::where;
  k.fp8 = K::fp8;
  k.tp_group = K::tp_group;
  k.hf_float32 = K::hf_float32;
  k.layout = +[](const Dims& d) { return layout::AnyPolicy(K::layout(d)); };
  k.shape = +[](const Dims& d) { return K::shape(d); };
  if constexpr (requires(const Dims& d) { K::hf_parts(d); })
    k.hf_parts = +[](const Dims& d) { return std::vector<std::int64_t>(K::hf_parts(d)); };
  if constexpr (requires(const config::ModelConfig& c) { { K::present(c) } -> std::same_as<bool>; })
    k.present = +[](const config::ModelConfig& c) { return K::present(c); };
  if constexpr (requires { K::tied_to; }) {
    static_assert(K::where == Where::LastStage, "a tied kind is a last-stage kind (the output layer)");
    k.tied_to = K::tied_to;
  }
  return k;
}
}  // namespace detail

// The run-time spec of a model policy:
//   struct Family {
//     static constexpr std::string_view name = "...";
//     static constexpr std::string_view hf_architecture = "...ForCausalLM";  // optional
//     static constexpr std::string_view hf_model_type = "...";             // optional
//     static constexpr std::array<std::string_view, N> aliases{...};       // optional other --model names
//     using params = std::tuple<Kind...>;                 // each a Param-derived kind
//     using mtp_copies = std::tuple<MtpCopy<...>...>;     // optional
//     static void check(const config::ModelConfig&);      // optional
//     static ArgList mcore_args(const config::ModelConfig&);
//     static std::string hf_config_json(const config::ModelConfig&, const config::HfJsonOptions&);
//   };
template <class Policy>
ModelSpec spec_of() {
  static_assert(requires(const config::ModelConfig& c) {
    { Policy::mcore_args(c) } -> std::same_as<ArgList>;
  }, "a model policy declares its MCore args: static ArgList mcore_args(const config::ModelConfig&)");
  static_assert(requires(const config::ModelConfig& c, const config::HfJsonOptions& o) {
    { Policy::hf_config_json(c, o) } -> std::same_as<std::string>;
  }, "a model policy writes its own HF config.json: static std::string hf_config_json(config, options)");
  ModelSpec s;
  s.name = Policy::name;
  if constexpr (requires { Policy::hf_architecture; }) s.hf_architecture = Policy::hf_architecture;
  if constexpr (requires { Policy::hf_model_type; }) s.hf_model_type = Policy::hf_model_type;
  if constexpr (requires { Policy::aliases; })
    for (std::string_view a : Policy::aliases) s.aliases.push_back(a);
  [&]<class... K>(std::type_identity<std::tuple<K...>>) {
    static_assert((detail::Kind<K> && ...), "every parameter kind needs static layout(const Dims&) and shape(const Dims&)");
    (s.params.push_back(detail::kind_of<K>()), ...);
  }(std::type_identity<typename Policy::params>{});
  if constexpr (requires { typename Policy::mtp_copies; })
    [&]<class... C>(std::type_identity<std::tuple<C...>>) {
      (s.mtp_copies.push_back({C::copy, C::of}), ...);
    }(std::type_identity<typename Policy::mtp_copies>{});
  if constexpr (requires(const config::ModelConfig& c) { Policy::check(c); })
    s.check = +[](const config::ModelConfig& c) { Policy::check(c); };
  s.mcore_args = +[](const config::ModelConfig& c) { return Policy::mcore_args(c); };
  s.hf_config_json = +[](const config::ModelConfig& c, const config::HfJsonOptions& o) {
    return Policy::hf_config_json(c, o);
  };
  return s;
}

// The one spec of a policy, built on first use.
template <class Policy>
const ModelSpec& spec() {
  static const ModelSpec s = spec_of<Policy>();
  return s;
}

}  // namespace ckbridge::model

#pragma once
// The model policies the example programs know, chosen at run time by --model. Adding a model
// to the programs = one include and one entry here (docs/adding-a-model.md).
#include <string>
#include <vector>

#include "ckbridge/core/error.hpp"
#include "ckbridge/model/deepseek_v3.hpp"
#include "ckbridge/model/llama3.hpp"
#include "ckbridge/model/qwen3.hpp"
#include "ckbridge/model/spec.hpp"

namespace ckbridge::examples {

// Every known model's spec, in --model order.
inline const std::vector<const model::ModelSpec*>& model_specs() {
  static const std::vector<const model::ModelSpec*> all{&model::spec<model::DeepSeekV3>(),
                                                         &model::spec<model::Llama3>(), &model::spec<model::Qwen3>()};
  return all;
}

inline std::vector<std::string> model_names() {
  std::vector<std::string> out;
  for (const auto* s : model_specs()) out.emplace_back(s->name);
  return out;
}
inline const std::vector<std::string> kModelNames = model_names();

// The spec of the model named `name`.
inline const model::ModelSpec& model_spec(const std::string& name) {
  std::string known;
  for (const auto* s : model_specs()) {
    if (s->name == name) return *s;
    known += (known.empty() ? "" : ", ") + std::string(s->name);
  }
  fail("--model: unknown model '", name, "' (known: ", known, ")");
}

}  // namespace ckbridge::examples

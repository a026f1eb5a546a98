#pragma once
// The model policies the example programs know, chosen at run time by --model. Adding a model
// to the programs = one include and one line here (docs/adding-a-model.md).
#include <string>
#include <vector>

#include "ckbridge/core/error.hpp"
#include "ckbridge/model/deepseek_v3.hpp"
#include "ckbridge/model/llama3.hpp"

namespace ckbridge::examples {

inline const std::vector<std::string> kModelNames{"deepseek_v3", "llama3"};

// Calls f.template operator()<Model>() for the policy named `name`; returns what it returns.
template <class F>
decltype(auto) with_model(const std::string& name, F&& f) {
  if (name == "deepseek_v3") return f.template operator()<model::DeepSeekV3>();
  if (name == "llama3") return f.template operator()<model::Llama3>();
  fail("--model: unknown model '", name, "' (known: deepseek_v3, llama3)");
}

}  // namespace ckbridge::examples

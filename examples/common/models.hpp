#pragma once
// The model policies the example programs know. A run names one with --model, or the programs
// choose it: the families whose HF architecture (config.json `architectures[0]`, and `model_type`
// where a family declares one) matches and whose check accepts the model YAML; the first of those
// in registry order wins, and the choice is reported. Adding a model to the programs = one include
// and one entry here (docs/adding-a-model.md).
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "ckbridge/config/model_config.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/deepseek_v2.hpp"
#include "ckbridge/model/deepseek_v3.hpp"
#include "ckbridge/model/kimi_k2.hpp"
#include "ckbridge/model/llama3.hpp"
#include "ckbridge/model/mimo.hpp"
#include "ckbridge/model/qwen2.hpp"
#include "ckbridge/model/qwen3.hpp"
#include "ckbridge/model/qwen3_moe.hpp"
#include "ckbridge/model/spec.hpp"

namespace ckbridge::examples {

// Every known model's spec, in registry order (the more specific family first where two share an
// HF architecture).
inline const std::vector<const model::ModelSpec*>& model_specs() {
  static const std::vector<const model::ModelSpec*> all{
      &model::spec<model::DeepSeekV3>(),     &model::spec<model::KimiK2>(), &model::spec<model::DeepSeekV2>(),
      &model::spec<model::DeepSeekV2Lite>(), &model::spec<model::Llama3>(), &model::spec<model::Qwen3>(),
      &model::spec<model::Qwen3Moe>(),       &model::spec<model::Qwen2>(),  &model::spec<model::MiMo>()};
  return all;
}

inline std::vector<std::string> model_names() {
  std::vector<std::string> out;
  for (const auto* s : model_specs()) {
    out.emplace_back(s->name);
    for (auto a : s->aliases) out.emplace_back(a);  // other names of the same policy (llama2 -> llama3)
  }
  return out;
}
inline const std::vector<std::string> kModelNames = model_names();

// The spec of the model named `name`.
inline const model::ModelSpec& model_spec(const std::string& name) {
  std::string known;
  for (const auto* s : model_specs()) {
    if (s->name == name) return *s;
    for (auto a : s->aliases)
      if (a == name) return *s;
    known += (known.empty() ? "" : ", ") + std::string(s->name);
    for (auto a : s->aliases) known += ", " + std::string(a);
  }
  fail("--model: unknown model '", name, "' (known: ", known, ")");
}

// What an HF config.json says about the architecture.
struct HfIdentity {
  std::string file, architecture, model_type;
};

// The identity in `path` (a config.json, or a directory holding one); nullopt when there is none.
inline std::optional<HfIdentity> hf_identity(const std::filesystem::path& path) {
  std::error_code ec;
  const std::filesystem::path file = std::filesystem::is_directory(path, ec) ? path / "config.json" : path;
  if (!std::filesystem::is_regular_file(file, ec)) return std::nullopt;
  std::ifstream in(file, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in && !in.eof()) fail(file.string(), ": cannot read");
  const std::string text = ss.str();
  const rapidjson::Document doc = config::detail::parse_json(text, file.string());
  HfIdentity id{file.string(), "", config::detail::jstr(doc, "model_type", file.string(), "")};
  if (const auto* a = config::detail::jget(doc, "architectures")) {
    if (!a->IsArray() || a->Empty() || !(*a)[0].IsString())
      fail(file.string(), ": key 'architectures': expected a non-empty list of strings");
    id.architecture = (*a)[0].GetString();
  }
  return id;
}

struct ModelChoice {
  const model::ModelSpec* spec = nullptr;
  std::string why;  // how it was chosen, for a note
};

// --model when given (`name` non-empty); else the first family, in registry order, whose HF
// identity matches `hf` (when known) and whose check accepts `mc`. Fails, listing every family's
// reason, when none fits.
inline ModelChoice choose_model(const std::string& name, const config::ModelConfig& mc,
                                const std::optional<HfIdentity>& hf) {
  if (!name.empty()) return {&model_spec(name), "--model " + name};
  std::vector<const model::ModelSpec*> fit;
  std::string reasons;
  for (const auto* s : model_specs()) {
    std::string no;
    if (hf && !hf->architecture.empty() && s->hf_architecture != hf->architecture)
      no = "architecture " + std::string(s->hf_architecture);
    else if (hf && !s->hf_model_type.empty() && s->hf_model_type != hf->model_type)
      no = "model_type " + std::string(s->hf_model_type);
    else if (s->check) {
      try {
        s->check(mc);
      } catch (const Error& e) {
        no = e.what();
      }
    }
    if (no.empty())
      fit.push_back(s);
    else
      reasons += "\n  " + std::string(s->name) + ": " + no;
  }
  const std::string from = hf ? hf->file + " (architectures[0] '" + hf->architecture + "', model_type '" +
                                    hf->model_type + "') and the model YAML"
                              : std::string("the model YAML");
  if (fit.empty()) fail("no model policy fits ", from, "; pass --model to name one. Why each was refused:", reasons);
  std::string why = std::string(fit[0]->name) + " (";
  for (std::size_t i = 0; i < fit[0]->aliases.size(); ++i)  // the names of the versions it covers
    why += (i ? ", " : "also named ") + std::string(fit[0]->aliases[i]) + (i + 1 == fit[0]->aliases.size() ? "; " : "");
  why += "chosen from " + from;
  if (fit.size() > 1) {
    why += "; also fits:";
    for (std::size_t i = 1; i < fit.size(); ++i) why += " " + std::string(fit[i]->name);
    why += "; --model chooses";
  }
  return {fit[0], why + ")"};
}

}  // namespace ckbridge::examples

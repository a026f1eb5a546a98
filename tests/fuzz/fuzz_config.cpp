// libFuzzer target: the Hydra-style YAML loader (defaults lists, OmegaConf interpolation, the
// moe_freq list-expression evaluator) and, when a document loads, the model and convert config
// parsers. Only ckbridge::Error and YAML::Exception may escape the library calls; anything else
// (a crash, a sanitizer report, a hang, an unbounded allocation) is a finding.
//
// Input: YAML text. Leading lines of the form "#= key=value" are YAML comments that also become
// Hydra-style overrides (so the fuzzer reaches the override code). The text is loaded twice:
// in memory (YAML::Load + resolve_interpolations) and from a file in a private temporary
// directory (load_yaml, with the ancestor search off so that only that file can be included).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/config/convert_config.hpp"
#include "ckbridge/config/model_config.hpp"
#include "ckbridge/config/yaml_loader.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/model/deepseek_v3.hpp"

namespace {
namespace cfg = ckbridge::config;

const std::filesystem::path& work_dir() {
  static const std::filesystem::path dir = [] {
    std::string t = (std::filesystem::temp_directory_path() / "ckb_fuzz_config.XXXXXX").string();
    if (!mkdtemp(t.data())) std::abort();
    return std::filesystem::path(t);
  }();
  return dir;
}

cfg::LoadOptions options(std::vector<std::string> overrides, bool strict, std::vector<std::string>* unresolved) {
  cfg::LoadOptions o;
  o.overrides = std::move(overrides);
  o.search_ancestors = false;
  o.strict = strict;
  o.unresolved = unresolved;
  // Deterministic environment: two variables exist, everything else is unset.
  o.env = [](const std::string& k) -> std::optional<std::string> {
    if (k == "CKB_FUZZ_A") return std::string("7");
    if (k == "CKB_FUZZ_B") return std::string("[0]*2+[1]");
    return std::nullopt;
  };
  return o;
}

// Every consumer of a loaded tree; each may refuse the input with ckbridge::Error.
void consume(const YAML::Node& root) {
  try {
    (void)cfg::model_config_from_yaml(root, "fuzz.yaml");
  } catch (const ckbridge::Error&) {
  }
  if (auto m = cfg::detail::child(root, "module")) {
    try {
      const auto mc = cfg::model_config_from_yaml(*m, "fuzz.yaml");
      (void)mc.first_k_dense();
      for (std::int64_t l = 0; l < mc.num_layers + mc.mtp_num_layers && l < 64; ++l) (void)mc.is_moe_layer(l);
      (void)ckbridge::model::DeepSeekV3::hf_config_json(mc, {});
    } catch (const ckbridge::Error&) {
    }
  }
  try {
    const auto c = cfg::convert_config_from_yaml(root, "fuzz.yaml");
    // Build a few keys of every entry: these index name lists and special keys.
    for (const auto& [common, e] : c.hf.entries()) {
      for (std::size_t part = 0; part <= e.names.size(); ++part) {
        try {
          (void)c.hf_key(common, 3, "weight", part);
          (void)c.hf_key(common, std::nullopt, "bias", part);
          (void)c.hf_key(common, 1, "weight_scale_inv", part, 5);
          (void)c.hf_key(common, 1, "weight", part, std::nullopt, true);
        } catch (const ckbridge::Error&) {
        }
      }
      (void)c.hf_bf16_mcore_fp8(common);
    }
    for (const auto& [common, e] : c.mcore.entries()) {
      using W = cfg::McoreWhere;
      for (auto w : {W{W::Global, 0}, W{W::Decoder, 2}, W{W::MtpBlock, 0}, W{W::MtpLayer, 1}}) {
        try {
          (void)c.mcore_key(common, w);
          (void)c.mcore_key(common, w, "bias");
          (void)c.mcore_key(common, w, "weight", 4, false, true);
          (void)c.mcore_key(common, w, "weight", 4, false, false);
          (void)c.mcore_key(common, w, "weight", std::nullopt, true);
          (void)c.mcore_extra_state_key(common, w);
        } catch (const ckbridge::Error&) {
        }
      }
      (void)c.tp_split(common, true);
      (void)c.tp_split(common, false, "bias");
    }
    try {
      (void)c.arg_int("common", "num_layers");
    } catch (const ckbridge::Error&) {
    }
  } catch (const ckbridge::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);

  // The list-expression evaluator on the raw bytes.
  try {
    (void)cfg::eval_list_expression(text, "fuzz");
  } catch (const ckbridge::Error&) {
  }

  std::vector<std::string> overrides;
  for (std::size_t pos = 0; pos < text.size() && text.compare(pos, 3, "#= ") == 0;) {
    const std::size_t nl = text.find('\n', pos);
    overrides.push_back(text.substr(pos + 3, nl == std::string::npos ? std::string::npos : nl - pos - 3));
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }

  // In memory: parse, resolve (strict and lenient), consume.
  YAML::Node doc;
  bool parsed = false;
  try {
    doc = YAML::Load(text);
    parsed = true;
  } catch (const YAML::Exception&) {
  }
  if (parsed) {
    for (bool strict : {true, false}) {
      std::vector<std::string> unresolved;
      try {
        const YAML::Node r = cfg::resolve_interpolations(doc, options({}, strict, &unresolved), "fuzz.yaml");
        consume(r);
      } catch (const ckbridge::Error&) {
      } catch (const YAML::Exception&) {
      }
    }
  }

  // From a file: defaults-list composition, overrides, hydra.searchpath.
  const auto file = work_dir() / "fuzz.yaml";
  {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
  }
  try {
    const YAML::Node r = cfg::load_yaml(file, options(overrides, true, nullptr));
    consume(r);
  } catch (const ckbridge::Error&) {
  } catch (const YAML::Exception&) {
  }
  return 0;
}

// Writes a deterministic HF checkpoint for a model config and a model policy (--model deepseek_v3,
// the default, or llama3): real tensor names from the convert YAML, BF16 or DeepSeek's block-FP8
// format (F8_E4M3 + weight_scale_inv), config.json, sharded files with an index. The README's main
// command and the tests use it with configs/deepseek_v3/deepseek_v3_tiny.yaml (llama3:
// configs/llama3/llama3_tiny.yaml); the conversion benchmark with a larger config.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>

#include "ckbridge/config/convert_config.hpp"
#include "ckbridge/convert/from_config.hpp"
#include "ckbridge/convert/hf_files.hpp"
#include "ckbridge/convert/hf_layout.hpp"
#include "ckbridge/core/float_bits.hpp"
#include "ckbridge/format/atomic_file.hpp"
#include "ckbridge/model/deepseek_v3.hpp"
#include "../common/models.hpp"
#include "ckbridge/quant/quantize.hpp"

using namespace ckbridge;

namespace {

std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
std::uint64_t hash_name(const std::string& s, std::uint64_t seed) {
  std::uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Values of one weight: approximately normal, scaled like an initialised model; norms around 1.
Tensor make_values(const std::string& key, const Shape& shape, DType dt, std::uint64_t seed) {
  Tensor t(dt, shape);
  const std::uint64_t base = hash_name(key, seed);
  const bool norm = key.find("norm") != std::string::npos;
  const bool bias = key.find("bias") != std::string::npos;
  const std::int64_t n = t.numel();
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint64_t r = splitmix(base + static_cast<std::uint64_t>(i));
    // sum of four uniforms: cheap, bell-shaped, deterministic
    double u = 0;
    for (int k = 0; k < 4; ++k) u += double((r >> (16 * k)) & 0xFFFF) / 65535.0;
    const double z = (u - 2.0) * 1.7320508;  // ~unit variance
    const float v = norm ? float(1.0 + 0.1 * z) : bias ? float(0.01 * z) : float(0.02 * z);
    if (dt == DType::F32) reinterpret_cast<float*>(t.data())[i] = v;
    else reinterpret_cast<std::uint16_t*>(t.data())[i] = f32_to_bf16_bits(v);
  }
  return t;
}

std::uint64_t parse_size(const std::string& s) {
  double v = std::stod(s);
  std::string u = s.substr(s.find_first_not_of("0123456789.eE+-"));
  if (s.find_first_not_of("0123456789.eE+-") == std::string::npos) u.clear();
  if (u == "KB") v *= 1e3;
  else if (u == "MB") v *= 1e6;
  else if (u == "GB") v *= 1e9;
  else if (!u.empty()) fail("--max_shard_size: unknown unit '", u, "' (use KB, MB or GB)");
  return static_cast<std::uint64_t>(v);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Writes a deterministic HuggingFace checkpoint of a DeepSeek-V3 or Llama-3 architecture model"};
  std::string model_name = "deepseek_v3";
  std::string config_file, convert_file;  // default: configs/<model>/<model>_tiny.yaml and its convert YAML
  std::string out, dtype = "fp8", max_shard = "4MB";
  std::uint64_t seed = 1;
  bool pow2 = false;
  app.add_option("--model", model_name, "model policy")->check(CLI::IsMember(examples::kModelNames));
  app.add_option("--config_file", config_file, "model YAML (LoongForge schema)");
  app.add_option("--convert_file", convert_file, "convert YAML with the HF name map");
  app.add_option("--out", out, "output directory (created; must be empty or absent)")->required();
  app.add_option("--dtype", dtype, "fp8 (DeepSeek block FP8) or bf16")->check(CLI::IsMember({"fp8", "bf16"}));
  app.add_flag("--pow2", pow2, "power-of-two (UE8M0, DeepSeek V3.1 style) FP8 scales");
  app.add_option("--seed", seed, "value seed");
  app.add_option("--max_shard_size", max_shard, "maximum shard size, e.g. 4MB or 5GB");
  CLI11_PARSE(app, argc, argv);
  try {
    if (config_file.empty()) config_file = "configs/" + model_name + "/" + model_name + "_tiny.yaml";
    if (convert_file.empty()) convert_file = "configs/" + model_name + "/ckpt_convert/" + model_name + "_convert.yaml";
    const auto cfg = config::load_loongforge_configs(config_file, convert_file);
    const convert::NameMap nm = convert::name_map_from(cfg.convert);
    const config::ModelConfig mc = cfg.model;
    const model::ModelSpec& spec = examples::model_spec(model_name);
    const convert::ModelShape shape = convert::model_shape_of(spec, mc);
    const bool fp8 = dtype == "fp8";
    const auto layout = convert::hf_layout(spec, nm, shape, {fp8, DType::BF16});

    const std::filesystem::path dir(out);
    if (std::filesystem::exists(dir) && !std::filesystem::is_empty(dir))
      fail(dir.string(), ": output directory is not empty");
    std::filesystem::create_directories(dir);

    std::vector<safetensors::TensorSpec> specs;
    std::map<std::string, const convert::HfTensor*> by_key;
    for (const auto& t : layout) {
      specs.push_back({t.key, t.dtype, t.shape});
      by_key[t.key] = &t;
    }
    const convert::HfFileSet files = convert::hf_file_set(specs, parse_size(max_shard));

    // FP8 weights: quantize the BF16 values with TE's rule (linear scales like DeepSeek V3, or
    // power-of-two like V3.1); the scale is kept for the `weight_scale_inv` that follows.
    std::map<std::string, Tensor> pending_scales;
    std::uint64_t bytes = 0;
    for (const auto& sh : files.shards) {
      safetensors::FileWriter w(dir / sh.file_name, sh.tensors);
      for (const auto& spec : sh.tensors) {
        const convert::HfTensor& t = *by_key.at(spec.name);
        Tensor v;
        if (t.is_scale) {
          auto it = pending_scales.find(spec.name);
          if (it == pending_scales.end()) fail("internal: scale '", spec.name, "' before its weight");
          v = std::move(it->second);
          pending_scales.erase(it);
        } else {
          const std::string& src_key = t.is_copy ? t.copy_of : t.key;
          if (t.dtype == DType::F8_E4M3) {
            Tensor x = make_values(src_key, t.shape, DType::BF16, seed);
            auto r = quant::quantize(quant::MethodId::Te, x.cview(),
                                     {.amax_epsilon = 0.0f, .force_pow_2_scales = pow2, .name = t.key});
            v = std::move(r.data);
            pending_scales[convert::hf_scale_key(nm, t.key)] = std::move(r.scale_inv);
          } else {
            v = make_values(src_key, t.shape, t.dtype, seed);
          }
        }
        w.write(spec.name, v.cview());
        bytes += v.size_bytes();
      }
      w.commit();
    }
    if (!files.index_json.empty())
      AtomicFile::write_all(dir / safetensors::kIndexFileName, files.index_json);
    config::HfJsonOptions jo;
    jo.fp8_quantization_config = fp8;
    if (fp8 && pow2) jo.scale_fmt = "ue8m0";
    const std::string json = convert::hf_config_json(spec, mc, jo);
    AtomicFile::write_all(dir / "config.json", json + "\n");
    std::printf("wrote %s: %zu tensors, %zu files, %.1f MB (%s%s)\n", dir.string().c_str(), layout.size(),
                files.shards.size(), double(bytes) / 1e6, dtype.c_str(), fp8 && pow2 ? ", pow2 scales" : "");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_tiny_checkpoint: error: %s\n", e.what());
    return 1;
  }
}

// ckbridge_verify: proves two checkpoints of one model hold the same weights, on the CPU, streaming.
//
//   ckbridge_verify --config_file M.yaml --convert_file C.yaml [--model NAME] A B
//   ckbridge_verify --manifest DIR
//
// A and B are each an HF safetensors directory or an MCore legacy checkpoint (root, release/ or
// iter_NNNNNNN/, any parallel layout: read from the checkpoint itself). Both are compared in the HF
// tensor namespace: same dtype exactly (FP8 codes and unpadded scales included), FP8 against
// BF16/F32 dequantized within --tolerance. Prints a table (or --json) and exits 0 only when every
// tensor matches. With --manifest, re-hashes a ckbridge output against its ckbridge-manifest.json
// (a truncated, changed, swapped, missing or unlisted file is reported; no model flags needed):
// by each file's XXH3-128 (at the speed of reading), or its SHA-256 with --sha256.
//
// A second program rather than a subcommand of the converter: the converter keeps exactly
// LoongForge's flag surface (its scripts run with only the program name changed), and checking
// needs none of the writing side's flags.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "ckbridge/config/convert_config.hpp"
#include "ckbridge/convert/from_config.hpp"
#include "ckbridge/convert/mcore_layout.hpp"
#include "ckbridge/convert/mcore_to_hf.hpp"
#include "ckbridge/convert/verify.hpp"
#include "ckbridge/format/manifest.hpp"
#include "../common/models.hpp"

using namespace ckbridge;
namespace fs = std::filesystem;

namespace {

struct Side {
  std::string path, kind;
  std::unique_ptr<safetensors::Checkpoint> hf;
  std::unique_ptr<convert::McoreCheckpoint> mcore;
  convert::Plan plan;
  convert::VerifyItems items;
};

bool is_hf_dir(const fs::path& p) {
  if (fs::exists(p / "model.safetensors.index.json")) return true;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(p, ec))
    if (e.path().extension() == ".safetensors") return true;
  return false;
}

void open_side(const model::ModelSpec& spec, Side& s, const convert::NameMap& nm, const convert::ModelShape& shape, const config::ModelConfig& mc) {
  const fs::path p(s.path);
  if (!fs::is_directory(p)) fail(s.path, ": not a directory");
  if (is_hf_dir(p)) {
    s.hf = std::make_unique<safetensors::Checkpoint>(p);
    s.kind = "HF safetensors, " + std::to_string(s.hf->num_files()) + " files";
    s.items = convert::hf_verify_items(*s.hf);
    return;
  }
  const convert::McoreLayout l = convert::read_mcore_layout(
      p, convert::mcore_layout_hints(nm, shape.num_layers, mc.num_experts > 0 ? mc.moe_ffn_hidden_size : 0));
  const convert::ConvertOptions o = convert::source_options(l);
  s.mcore = std::make_unique<convert::McoreCheckpoint>(p, l.second_index_is_ep);
  s.plan = convert::plan_mcore_to_hf(spec, *s.mcore, nm, shape, mc, o);
  std::ostringstream k;
  k << "MCore legacy, TP " << l.tp << " PP " << l.pp << " EP " << l.ep;
  if (l.etp) k << " ETP " << *l.etp;
  if (l.vpp > 1) k << " VPP " << l.vpp << (l.dualpipev ? " DualPipeV" : "");
  k << (l.grouped_gemm ? ", grouped experts" : "") << ", " << s.mcore->dir().ranks.size() << " rank files";
  s.kind = k.str();
  s.items = convert::plan_verify_items(s.plan);
}

std::string idx_str(const Shape& s) {
  std::string o = "[";
  for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else o += c;
  }
  return o + "\"";
}

std::string json_num(double v) {
  if (!std::isfinite(v)) return "null";
  char b[40];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}

std::string to_json(const Side& a, const Side& b, const convert::VerifyReport& r, double tol) {
  using S = convert::VerifyStatus;
  std::ostringstream o;
  o << "{\n  \"a\": {\"path\": " << json_str(a.path) << ", \"kind\": " << json_str(a.kind) << "},\n";
  o << "  \"b\": {\"path\": " << json_str(b.path) << ", \"kind\": " << json_str(b.kind) << "},\n";
  o << "  \"tolerance\": " << json_num(tol) << ",\n  \"ok\": " << (r.ok() ? "true" : "false") << ",\n";
  o << "  \"summary\": {\"tensors\": " << r.tensors.size() << ", \"identical\": " << r.count(S::Identical)
    << ", \"within_tolerance\": " << r.count(S::WithinTolerance) << ", \"differing\": " << r.count(S::Differs)
    << ", \"missing_in_b\": " << r.count(S::MissingInB) << ", \"extra_in_b\": " << r.count(S::ExtraInB)
    << ", \"scales_used_to_dequantize\": " << r.count(S::ScaleOfDequantized) << ", \"bytes\": " << r.bytes << "},\n";
  o << "  \"tensors\": [";
  for (std::size_t i = 0; i < r.tensors.size(); ++i) {
    const auto& t = r.tensors[i];
    o << (i ? ",\n" : "\n") << "    {\"key\": " << json_str(t.key) << ", \"status\": " << json_str(verify_status_name(t.status))
      << ", \"dtype_a\": " << json_str(t.shape_a.empty() && t.status == S::ExtraInB ? "" : std::string(safetensors_name(t.dtype_a)))
      << ", \"dtype_b\": " << json_str(t.shape_b.empty() && t.status == S::MissingInB ? "" : std::string(safetensors_name(t.dtype_b)))
      << ", \"elements\": " << t.elements << ", \"differing\": " << t.differing << ", \"max_abs\": " << json_num(t.max_abs)
      << ", \"max_rel\": " << json_num(t.max_rel);
    if (!t.first.empty()) o << ", \"first\": " << idx_str(t.first) << ", \"value_a\": " << json_num(t.value_a) << ", \"value_b\": " << json_num(t.value_b);
    if (!t.where_a.empty()) o << ", \"where_a\": " << json_str(t.where_a);
    if (!t.where_b.empty()) o << ", \"where_b\": " << json_str(t.where_b);
    if (!t.note.empty()) o << ", \"note\": " << json_str(t.note);
    o << "}";
  }
  o << "\n  ]\n}\n";
  return o.str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ckbridge_verify: compare two checkpoints of one model (HF safetensors or MCore legacy, any layout)"};
  app.option_defaults()->always_capture_default();
  std::string config_file, convert_file, model, json_out;
  std::string path_a, path_b;
  double tolerance = 0.08;
  unsigned threads = 0;
  bool quiet = false, verbose = false;
  std::optional<int> mtp_num_layers;
  std::string manifest_dir;
  bool by_sha256 = false;
  app.add_option("--manifest", manifest_dir, "check the ckbridge output in this directory against its ckbridge-manifest.json");
  app.add_flag("--sha256", by_sha256,
               "with --manifest: compare each file's SHA-256 (also catches a deliberate change; ~1.5 GB/s per core) "
               "instead of its XXH3-128 (any accidental change, at the speed of reading)");
  app.add_option("--config_file", config_file, "model YAML (LoongForge schema), as for the converter");
  app.add_option("--convert_file", convert_file, "convert YAML (name map), as for the converter");
  app.add_option("--model", model, "model policy (default: chosen as the converter does, from A's config.json and the model YAML)")->check(CLI::IsMember(examples::kModelNames));
  app.add_option("--mtp_num_layers", mtp_num_layers, "override the model's MTP layer count, as for the converter");
  app.add_option("--tolerance", tolerance,
                 "FP8 vs BF16/F32 and cross-dtype comparisons: max |a-b| / max|b| per tensor (E4M3 rounding with "
                 "power-of-two scales stays below 1/14)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--threads", threads, "tensors compared in parallel (0: all cores)");
  app.add_option("--json", json_out, "also write the full report as JSON to this file ('-': stdout, no table)");
  app.add_flag("-q,--quiet", quiet, "no progress output");
  app.add_flag("-v,--verbose", verbose, "also list the tensors that differ within --tolerance");
  app.add_option("A", path_a, "first checkpoint (HF directory, or MCore root / iteration directory)");
  app.add_option("B", path_b, "second checkpoint");
  CLI11_PARSE(app, argc, argv);
  try {
    if (!manifest_dir.empty()) {
      if (!path_a.empty()) fail("--manifest takes one directory; A and B are for comparing two checkpoints");
      const auto by = by_sha256 ? manifest::CheckBy::sha256 : manifest::CheckBy::xxh3;
      const fs::path mpath = fs::path(manifest_dir) / manifest::kFileName;
      std::ifstream in(mpath, std::ios::binary);
      if (!in) fail(mpath.string(), ": cannot open (not a ckbridge output, or written before manifests existed)");
      std::stringstream ss;
      ss << in.rdbuf();
      const manifest::Manifest m = manifest::Manifest::parse(ss.str(), mpath.string());
      const auto t0 = std::chrono::steady_clock::now();
      std::size_t ok = 0;
      const auto findings = manifest::check(manifest_dir, m, static_cast<int>(threads ? threads : std::max(1u, std::thread::hardware_concurrency())), &ok, by);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::uint64_t bytes = 0;
      for (const auto& fe : m.files) bytes += fe.size;
      for (const auto& fd : findings) std::printf("  %-52s %s\n", fd.path.c_str(), fd.what.c_str());
      std::size_t by_sha = 0;  // files without an XXH3-128 (a manifest from before it was added) go by SHA-256
      for (const auto& fe : m.files) by_sha += by_sha256 || fe.xxh3.empty();
      const std::string how = by_sha == m.files.size() ? "SHA-256"
                              : by_sha == 0            ? "XXH3-128"
                                                       : "XXH3-128 (" + std::to_string(by_sha) + " by SHA-256)";
      std::printf("manifest: %zu files listed, %zu verified by %s, %zu problems (%.3f GB in %.2f s)\n%s\n", m.files.size(),
                  ok, how.c_str(), findings.size(), double(bytes) / 1e9, secs, findings.empty() ? "MANIFEST OK" : "MANIFEST MISMATCH");
      return findings.empty() ? 0 : 1;
    }
    if (config_file.empty() || convert_file.empty() || path_a.empty() || path_b.empty())
      fail("give --config_file, --convert_file and two checkpoints A B (or --manifest DIR)");
    const auto cfg = config::load_loongforge_configs(config_file, convert_file);
    const convert::NameMap nm = convert::name_map_from(cfg.convert);
    config::ModelConfig mc = cfg.model;
    if (mtp_num_layers) mc.mtp_num_layers = *mtp_num_layers;
    std::optional<examples::HfIdentity> hf_id = examples::hf_identity(path_a);
    if (!hf_id) hf_id = examples::hf_identity(path_b);
    const model::ModelSpec& spec = *examples::choose_model(model, mc, hf_id).spec;
    const convert::ModelShape shape = convert::model_shape_of(spec, mc);
    Side a, b;
    a.path = path_a;
    b.path = path_b;
    open_side(spec, a, nm, shape, mc);
    open_side(spec, b, nm, shape, mc);
    convert::VerifyOptions vo;
    vo.tolerance = tolerance;
    vo.threads = threads;
    vo.scale_suffix = nm.weight_scale_key;
    std::mutex mu;
    const bool to_stdout = json_out == "-";
    if (!quiet) {
      auto last = std::make_shared<std::chrono::steady_clock::time_point>();
      vo.progress = [&mu, last](std::uint64_t done, std::uint64_t total) {
        std::lock_guard lk(mu);
        const auto now = std::chrono::steady_clock::now();
        if (done < total && now - *last < std::chrono::milliseconds(500)) return;
        *last = now;
        std::fprintf(stderr, "[verify] %.1f%% of %.3f GB\n", total ? 100.0 * double(done) / double(total) : 100.0,
                     double(total) / 1e9);
      };
    }
    const auto t0 = std::chrono::steady_clock::now();
    const convert::VerifyReport r = convert::verify(a.items, b.items, vo);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    using S = convert::VerifyStatus;
    if (!to_stdout) {
      std::printf("A: %s (%s)\nB: %s (%s)\n", a.path.c_str(), a.kind.c_str(), b.path.c_str(), b.kind.c_str());
      for (const auto& t : r.tensors) {
        if (t.status == S::Identical || t.status == S::ScaleOfDequantized) continue;
        if (t.status == S::WithinTolerance && !verbose) continue;
        std::printf("  %-16s %s", verify_status_name(t.status), t.key.c_str());
        if (t.status == S::Differs || t.status == S::WithinTolerance) {
          if (!t.note.empty() && t.first.empty()) std::printf(": %s", t.note.c_str());
          if (!t.first.empty())
            std::printf(": %" PRId64 " of %" PRId64 " elements differ, first at %s: A %.6g, B %.6g; max abs err %.3g",
                        t.differing, t.elements, idx_str(t.first).c_str(), t.value_a, t.value_b, t.max_abs);
          if (!t.first.empty() && t.dtype_a != t.dtype_b) std::printf(", max rel err %.3g", t.max_rel);
          if (!t.note.empty() && !t.first.empty()) std::printf(" (%s)", t.note.c_str());
          if (!t.where_a.empty()) std::printf("\n      A: %s", t.where_a.c_str());
          if (!t.where_b.empty()) std::printf("\n      B: %s", t.where_b.c_str());
        } else {
          const std::string& w = t.status == S::ExtraInB ? t.where_b : t.where_a;
          if (!w.empty()) std::printf(" (%s)", w.c_str());
        }
        std::printf("\n");
      }
      std::printf("verify: %zu tensors compared: %zu identical, %zu within tolerance %.3g, %zu differing, %zu missing "
                  "in B, %zu extra in B (%.3f GB in %.2f s)\n",
                  r.tensors.size() - r.count(S::ScaleOfDequantized), r.count(S::Identical), r.count(S::WithinTolerance),
                  tolerance, r.count(S::Differs), r.count(S::MissingInB), r.count(S::ExtraInB), double(r.bytes) / 1e9,
                  secs);
      std::printf("%s\n", r.ok() ? "ALL TENSORS MATCH" : "MISMATCH");
    }
    if (!json_out.empty()) {
      const std::string j = to_json(a, b, r, tolerance);
      if (to_stdout) std::fwrite(j.data(), 1, j.size(), stdout);
      else {
        std::ofstream f(json_out, std::ios::binary);
        if (!f || !(f << j)) fail("--json ", json_out, ": cannot write");
      }
    }
    return r.ok() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckbridge_verify: error: %s\n", e.what());
    return 2;
  }
}

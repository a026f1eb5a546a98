// ckbridge_convert: HF <-> Megatron-Core checkpoint conversion for every model family ckbridge
// knows (examples/common/models.hpp; --model, or chosen from the HF config.json and the model YAML).
// Accepts LoongForge's flags with the same names and meanings, so its example scripts run with only
// the program name changed. Its first name, deepseek_v3_convert, still works.
#include <CLI/CLI.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>

#include <unistd.h>

#include "ckbridge/config/convert_config.hpp"
#include "ckbridge/convert/cli_values.hpp"
#include "ckbridge/convert/executor.hpp"
#include "ckbridge/convert/from_config.hpp"
#include "ckbridge/convert/hf_to_mcore.hpp"
#include "ckbridge/convert/mcore_layout.hpp"
#include "ckbridge/convert/mcore_to_hf.hpp"
#include "ckbridge/convert/mcore_writer.hpp"
#include "ckbridge/convert/torch_dist_in.hpp"
#include "ckbridge/convert/torch_dist_out.hpp"
#include "ckbridge/format/manifest.hpp"
#include "ckbridge/core/proc_memory.hpp"
#include "ckbridge/format/safetensors_checkpoint.hpp"
#include "ckbridge/model/deepseek_v3.hpp"
#include "../common/distributed.hpp"
#include "../common/models.hpp"
#include "../common/test_seams.hpp"

using namespace ckbridge;
namespace fs = std::filesystem;

namespace {

struct Flags {
  std::string load_platform, save_platform, config_file, convert_file, load_ckpt_path, save_ckpt_path;
  int tp = 1, pp = 1, max_workers = 1;
  std::optional<int> ep, etp, mtp_num_layers, vpp, first, last, layers_per_vstage;
  std::string custom_pipeline_layers, pipeline_layout, vpp_scheduler;
  bool safetensors = false, grouped_gemm = false, fp8_force_no_requant = false, convert_to_fp8 = false;
  bool dry_run = false, dequantize_fp8 = false, quiet = false, overwrite = false, allow_nonfinite = false;
  bool torch_dist_strides = false;
  bool distributed = false;
  float amax_epsilon = 0.0f;
  std::string quant_method = "te", force_pow_2_scales = "unset", torch_dtype = "bfloat16";
  std::int64_t make_vocab_size_divisible_by = 128, pad_vocab_size_to = 0;
  std::optional<std::int64_t> vocab_size;
  std::string device = "auto", te_version = "2.9", hf_max_shard_size = "5GB";
  std::string megatron_path, hf_config_file;
  std::string model;  // empty: chosen from the HF config.json and the model YAML
  std::string ckpt_format = "torch";
};

std::uint64_t parse_size(const std::string& s, const char* flag) { return convert::parse_byte_size(s, flag); }

// Whole numbers in [min, max], refused with the flag's name otherwise (overflow included).
CLI::Validator whole(std::int64_t min, std::int64_t max = std::numeric_limits<int>::max()) {
  return CLI::Validator([min, max](std::string& v) { return convert::integer_problem(v, min, max).value_or(""); },
                        "INT in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
}

DType parse_dtype(const std::string& s) {
  if (s == "bfloat16" || s == "bf16") return DType::BF16;
  if (s == "float16" || s == "fp16") return DType::F16;
  if (s == "float32" || s == "fp32") return DType::F32;
  fail("--torch_dtype: expected bfloat16, float16 or float32, got '", s, "'");
}

format::TeVersion parse_te(const std::string& s) {
  format::TeVersion v;
  if (std::sscanf(s.c_str(), "%d.%d", &v.major, &v.minor) != 2 || v.major != 2 || v.minor < 3)
    fail("--te_version: expected 2.<minor> with minor >= 3 (blockwise FP8 appeared in TE 2.3), got '", s, "'");
  return v;
}

// --dry-run: every output file with its tensor count and size, grouped per pipeline stage.
void print_files(const convert::Plan& plan) {
  std::map<int, int> per_stage;
  for (const auto& f : plan.files) {
    std::size_t n = 0;
    for (const auto& e : f.entries) n += e.kind == convert::EntryKind::None ? 0 : 1;
    std::printf("  %-48s %5zu tensors %10.3f MB (%llu bytes)\n", f.rel.string().c_str(), n, double(f.bytes()) / 1e6,
                static_cast<unsigned long long>(f.bytes()));
    if (f.format == convert::FileFormat::TorchSave) ++per_stage[f.pp];
  }
  for (const auto& [p, n] : per_stage) std::printf("plan: pipeline stage %d: %d rank files\n", p, n);
  for (const auto& [rel, text] : plan.small_files)
    std::printf("  %-48s (written last, %zu bytes)\n", rel.string().c_str(), text.size());
}

void print_plan(const convert::Plan& plan, int workers) {
  std::size_t fp8 = 0, requant = 0, quant = 0, zero_copy = 0, entries = 0;
  for (const auto& f : plan.files)
    for (const auto& e : f.entries) {
      if (e.kind == convert::EntryKind::None) continue;
      ++entries;
      if (e.kind == convert::EntryKind::Fp8 || e.data.dtype == DType::F8_E4M3) ++fp8;
      if (e.how == "fp8 requantize") ++requant;
      if (e.how == "quantize") ++quant;
      if (e.data.scratch_bytes == 0) ++zero_copy;
    }
  std::printf("plan: %zu output files, %zu tensors (%zu FP8; %zu quantized, %zu re-quantized; %zu zero-copy)\n",
              plan.files.size(), entries, fp8, quant, requant, zero_copy);
  std::printf("plan: source %.3f GB, output %.3f GB, peak working memory %.1f MB with --max_workers %d\n",
              double(plan.source_bytes) / 1e9, double(plan.output_bytes()) / 1e9,
              double(plan.peak_memory(workers)) / 1e6, workers);
  std::printf("plan: anonymous memory bound %.1f MB (1 GB + 2 x largest tensor %.1f MB; mapped source pages not counted)\n",
              double(plan.anon_memory_bound()) / 1e6, double(plan.largest_tensor()) / 1e6);
}

// "1.2 GB", "340.5 MB", "12.0 kB"
std::string human_bytes(std::uint64_t b) {
  char buf[32];
  const double x = double(b);
  if (x >= 1e9) std::snprintf(buf, sizeof buf, "%.1f GB", x / 1e9);
  else if (x >= 1e6) std::snprintf(buf, sizeof buf, "%.1f MB", x / 1e6);
  else std::snprintf(buf, sizeof buf, "%.1f kB", x / 1e3);
  return buf;
}

// This process's memory now: anonymous apart from mapped file pages, and the peak resident set.
void print_memory(const char* when) {
  const ProcMemory m = proc_memory();
  if (!m.valid) return;
  std::printf("memory %s: RssAnon %.1f MB, RssFile %.1f MB, peak RSS (VmHWM) %.1f MB\n", when, double(m.rss_anon) / 1e6,
              double(m.rss_file) / 1e6, double(m.hwm) / 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ckbridge checkpoint converter, every model family (HuggingFace <-> Megatron-Core), LoongForge-compatible flags"};
  app.option_defaults()->always_capture_default();
  Flags f;
  // ---- LoongForge's checkpoint group
  app.add_option("--load_platform", f.load_platform, "source format")->required()->check(CLI::IsMember({"huggingface", "mcore"}));
  app.add_option("--save_platform", f.save_platform, "target format")->required()->check(CLI::IsMember({"huggingface", "mcore"}));
  app.add_option("--config_file", f.config_file, "model YAML (LoongForge schema), e.g. configs/deepseek_v3/deepseek_v3.yaml")->required();
  app.add_option("--convert_file", f.convert_file, "convert YAML (name map)")->required();
  app.add_option("--model", f.model,
                 "model policy (default: the family whose HF architecture matches the source's config.json and "
                 "whose check accepts the model YAML); tensor names and shapes come from the YAMLs")
      ->check(CLI::IsMember(examples::kModelNames));
  app.add_option("--load_ckpt_path", f.load_ckpt_path, "HF directory, or MCore checkpoint root / iteration directory")->required();
  app.add_option("--save_ckpt_path", f.save_ckpt_path, "output directory (must be new or empty)")->required();
  app.add_option("--hf_config_file,--hf-official-config-file,--hf_official_config_file", f.hf_config_file,
                 "official HF config.json: its router / rope / position / norm-epsilon values go into a written "
                 "config.json (else the model YAML's, else ckbridge's defaults)");
  app.add_option("--megatron_path", f.megatron_path, "accepted for compatibility; ckbridge needs no Megatron sources");
  app.add_flag("--safetensors", f.safetensors, "read HF safetensors (the only HF input format ckbridge reads)");
  app.add_flag("--convert_to_fp8", f.convert_to_fp8, "quantize FP8-capable weights of a BF16 source (both directions)");
  app.add_option("--quant_method", f.quant_method, "FP8 quantizer semantics")->check(CLI::IsMember({"te", "pt"}));
  app.add_flag("--allow_nonfinite", f.allow_nonfinite, "quantize Inf/NaN inputs to FP8 (counted) instead of refusing them");
  app.add_flag("--fp8_force_no_requant", f.fp8_force_no_requant, "never re-quantize FP8 (error if blocks do not align)");
  app.add_flag("--force_pow_2_scales{true}", f.force_pow_2_scales,
               "scale kind of FP8 outputs: not given = keep the source's (BF16 source: power of two); "
               "given = power of two; =false = linear");
  app.add_option("--amax_epsilon", f.amax_epsilon, "amax floor for quantization (stored in TE quantizers)");
  app.add_option("--mtp_num_layers", f.mtp_num_layers, "override the model's MTP layer count (0 disables MTP)")->check(whole(0));
  // ---- common group
  app.add_option("--torch_dtype", f.torch_dtype, "dtype of dequantized weights and of TE FP8 tensors' fake dtype");
  app.add_option("--vocab_size", f.vocab_size, "override the unpadded vocabulary size")->check(whole(1));
  app.add_option("--num-virtual-stages-per-pipeline-rank,--num_virtual_stages_per_pipeline_rank", f.vpp, "virtual pipeline stages")->check(whole(1));
  app.add_option("--num_layers_per_virtual_pipeline_stage,--num-layers-per-virtual-pipeline-stage", f.layers_per_vstage,
                 "alternative to --num-virtual-stages-per-pipeline-rank (must divide evenly)")->check(whole(1));
  app.add_option("--vpp-scheduler,--vpp_scheduler", f.vpp_scheduler, "dualpipev: DualPipeV stage order")->check(CLI::IsMember({"dualpipev"}));
  app.add_option("--decoder-first-pipeline-num-layers,--decoder_first_pipeline_num_layers", f.first, "layers of the first stage")->check(whole(0));
  app.add_option("--decoder-last-pipeline-num-layers,--decoder_last_pipeline_num_layers", f.last, "layers of the last stage")->check(whole(0));
  // ---- megatron group
  app.add_option("--tensor_model_parallel_size", f.tp, "TP size")->check(whole(1));
  app.add_option("--pipeline_model_parallel_size", f.pp, "PP size")->check(whole(1));
  app.add_option("--expert_parallel_size", f.ep, "EP size (MoE models; default 1)")->check(whole(1));
  app.add_option("--expert_tensor_parallel_size", f.etp, "expert TP size (default: TP size)")->check(whole(1));
  app.add_option("--custom_pipeline_layers", f.custom_pipeline_layers, "decoder layers per (virtual) stage, e.g. 8,7,8,8,8,8,8,6");
  app.add_option("--pipeline_model_parallel_layout", f.pipeline_layout, "Megatron layout string, e.g. 'Et*2|t*2m L'");
  app.add_option("--make_vocab_size_divisible_by", f.make_vocab_size_divisible_by, "vocab padding granularity per TP rank")->check(whole(1));
  app.add_option("--pad_vocab_size_to", f.pad_vocab_size_to, "explicit padded vocabulary size")->check(whole(0));
  app.add_option("--max_workers", f.max_workers, "files written in parallel")->check(whole(1, 4096));
  app.add_flag("--moe-grouped-gemm,--moe_grouped_gemm", f.grouped_gemm, "expert names weight<i> (TEGroupedMLP) instead of local_experts.<i>");
  // ---- ckbridge
  app.add_flag("--dry-run,--dry_run", f.dry_run, "print the plan (files, bytes, peak memory) and write nothing");
  app.add_option("--device", f.device, "FP8 quantization device")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app.add_option("--te_version", f.te_version, "TransformerEngine version whose FP8 pickle form to write (2.3 ... 2.17+)");
  app.add_flag("--dequantize_fp8", f.dequantize_fp8, "write FP8 weights of the source as --torch_dtype instead");
  app.add_option("--hf_max_shard_size", f.hf_max_shard_size, "HF output shard size (e.g. 5GB)");
  app.add_option("--ckpt_format,--ckpt-format", f.ckpt_format,
                 "MCore output format: torch (legacy, per rank) or torch_dist (distributed checkpoint; "
                 "no parallel layout)")->check(CLI::IsMember({"torch", "torch_dist"}));
  app.add_flag("--torch_dist_strides", f.torch_dist_strides,
               "torch_dist .metadata: record tensor strides (the 6-field TensorProperties of recent torch, e.g. "
               "2.15; torch 2.11 cannot read it); default: the 5-field form every torch version reads");
  app.add_flag("-q,--quiet", f.quiet, "no progress output");
  app.add_flag("--distributed_convert", f.distributed,
               "share the output files among the processes of the MPI job this runs in (mpirun, srun); the output "
               "directory must be shared by all of them");
  app.add_flag("--overwrite", f.overwrite,
               "replace a finished ckbridge output in --save_ckpt_path (the files its manifest lists)");
  // LoongForge flags with no effect here: accepted, reported, ignored.
  std::vector<std::string> ignored_values;
  bool ignored_flag = false;
  for (const char* name : {"--no_load_optim", "--no_save_optim", "--pretrain_as_fp8", "--use_distributed_optimizer",
                           "--no-te", "--resume-convert", "--moe_grouped_gemm_legacy"})
    app.add_flag(name, ignored_flag, "accepted for LoongForge compatibility; no effect")->group("Ignored");
  for (const char* name : {"--fp8_quant_transfer_type", "--data_parallel_size", "--transformer_impl", "--num_experts",
                           "--checkpoint-format", "--hf_checkpoint_device", "--add_embedding_padding",
                           "--model_type_custom"})
    app.add_option(name, ignored_values, "accepted for LoongForge compatibility; no effect")->group("Ignored");
  CLI11_PARSE(app, argc, argv);

  std::unique_ptr<examples::Job> job;  // this process, or one of an MPI job's
  try {
    job = std::make_unique<examples::Job>(f.distributed);
    job->check();  // an MPI job started without --distributed_convert stops here, on every rank
    const bool lead = job->leader();
    convert::check_output_path(f.save_ckpt_path);
    for (const char* name : {"--no_load_optim", "--no_save_optim", "--pretrain_as_fp8",
                             "--use_distributed_optimizer", "--no-te", "--resume-convert", "--fp8_quant_transfer_type",
                             "--data_parallel_size", "--transformer_impl", "--num_experts", "--checkpoint-format",
                             "--hf_checkpoint_device", "--add_embedding_padding", "--model_type_custom",
                             "--megatron_path"})
      if (app.count(name) && lead) std::fprintf(stderr, "note: %s has no effect in ckbridge (ignored)\n", name);
    if (f.load_platform == "huggingface" && f.save_platform == "huggingface")
      fail("--load_platform and --save_platform are both 'huggingface': nothing to convert");
    if (f.load_platform == "huggingface" && !f.safetensors && lead)
      std::fprintf(stderr, "note: reading HF safetensors (ckbridge does not read pytorch_model.bin)\n");

    const auto cfg = config::load_loongforge_configs(f.config_file, f.convert_file);
    for (const auto& n : cfg.notes)
      if (lead) std::fprintf(stderr, "note: %s\n", n.c_str());
    const convert::NameMap nm = convert::name_map_from(cfg.convert);
    config::ModelConfig mc = cfg.model;
    if (f.mtp_num_layers) {
      mc.mtp_num_layers = *f.mtp_num_layers;
      mc.origin["mtp_num_layers"] = "--mtp_num_layers";
    }
    if (f.vocab_size) {
      mc.vocab_size = *f.vocab_size;
      mc.origin["vocab_size"] = "--vocab_size";
    }
    if (!f.hf_config_file.empty()) config::take_output_values(mc, config::load_hf_config_json(f.hf_config_file));
    std::optional<examples::HfIdentity> hf_id;
    if (f.load_platform == "huggingface") hf_id = examples::hf_identity(f.load_ckpt_path);
    if (!hf_id && !f.hf_config_file.empty()) hf_id = examples::hf_identity(f.hf_config_file);
    const examples::ModelChoice choice = examples::choose_model(f.model, mc, hf_id);
    const model::ModelSpec& spec = *choice.spec;
    if (f.model.empty() && lead && !f.quiet) std::fprintf(stderr, "note: model %s\n", choice.why.c_str());
    convert::ModelShape shape = convert::model_shape_of(spec, mc);
    if (shape.num_experts > 0 && !f.ep && f.save_platform == "mcore" && f.ckpt_format == "torch")
      std::fprintf(stderr, "note: --expert_parallel_size not given; using 1 (LoongForge would silently drop every expert)\n");

    convert::ConvertOptions o;
    o.tp = f.tp;
    o.ep = f.ep.value_or(1);
    o.etp = f.etp;
    o.grouped_gemm = f.grouped_gemm;
    o.pipeline.pp = f.pp;
    o.pipeline.vpp = f.vpp.value_or(1);
    if (f.layers_per_vstage) {
      if (f.vpp) fail("--num_layers_per_virtual_pipeline_stage and --num-virtual-stages-per-pipeline-rank are exclusive");
      o.pipeline.vpp = convert::vpp_from_layers_per_virtual_stage(static_cast<int>(mc.num_layers), f.pp, *f.layers_per_vstage);
    }
    o.pipeline.dualpipev = f.vpp_scheduler == "dualpipev";
    o.pipeline.first = f.first;
    o.pipeline.last = f.last;
    if (!f.custom_pipeline_layers.empty()) o.pipeline.custom = convert::parse_custom_pipeline_layers(f.custom_pipeline_layers);
    if (!f.pipeline_layout.empty()) o.pipeline.layout = f.pipeline_layout;
    // the flag, else the model YAML's make_vocab_size_divisible_by (Kimi K2: 1280), else 128
    o.make_vocab_size_divisible_by = !app.count("--make_vocab_size_divisible_by") && mc.make_vocab_size_divisible_by > 0
                                         ? mc.make_vocab_size_divisible_by
                                         : f.make_vocab_size_divisible_by;
    o.pad_vocab_size_to = f.pad_vocab_size_to;
    o.convert_to_fp8 = f.convert_to_fp8;
    if (f.force_pow_2_scales == "true") o.force_pow_2_scales = true;
    else if (f.force_pow_2_scales == "false") o.force_pow_2_scales = false;
    else if (f.force_pow_2_scales != "unset")
      fail("--force_pow_2_scales: expected no value, =true or =false, got '", f.force_pow_2_scales, "'");
    o.amax_epsilon = f.amax_epsilon;
    o.quant_method = quant::method_from_string(f.quant_method);
    o.fp8_force_no_requant = f.fp8_force_no_requant;
    o.dequantize_fp8 = f.dequantize_fp8;
    o.allow_nonfinite = f.allow_nonfinite;
    std::atomic<std::uint64_t> nonfinite{0};
    o.nonfinite_count = &nonfinite;
    o.device = f.device == "cpu" ? quant::Device::Cpu : f.device == "cuda" ? quant::Device::Cuda : quant::Device::Auto;
    if (o.device == quant::Device::Cuda) {  // refuse before any output exists
      try {
        (void)quant::resolve_device(o.device);
      } catch (const Error& e) {
        fail("--device cuda: ", e.what(), f.device == "cuda" ? " (use --device auto or cpu, or the ckbridge_convert_cuda build)" : "");
      }
    }
    o.torch_dtype = parse_dtype(f.torch_dtype);
    if (f.dequantize_fp8 && o.torch_dtype == DType::F16)
      fail("--torch_dtype float16 with --dequantize_fp8: dequantized weights are written as bfloat16 or float32");
    o.hf_max_shard_bytes = parse_size(f.hf_max_shard_size, "--hf_max_shard_size");
    o.max_workers = f.max_workers;
    const format::TeVersion te = parse_te(f.te_version);
    const bool torch_dist_out = f.save_platform == "mcore" && f.ckpt_format == "torch_dist";
    if (f.torch_dist_strides && !torch_dist_out) fail("--torch_dist_strides applies to --ckpt_format torch_dist output only");
    if (f.ckpt_format != "torch" && f.save_platform != "mcore") fail("--ckpt_format applies to MCore output only");
    if (torch_dist_out) {  // layout-free: planned as one rank, re-keyed by convert/torch_dist_out.hpp
      for (const char* flag : {"--tensor_model_parallel_size", "--pipeline_model_parallel_size", "--expert_parallel_size",
                               "--expert_tensor_parallel_size", "--num-virtual-stages-per-pipeline-rank",
                               "--custom_pipeline_layers", "--pipeline_model_parallel_layout"})
        if (app.count(flag)) fail(flag, " with --ckpt_format torch_dist: a torch_dist checkpoint has no parallel layout "
                                  "(Megatron-Core reshards it when loading); drop the flag");
      // Megatron-Core's GroupedMLP / TEGroupedMLP save their experts under SequentialMLP's keys and
      // global shapes (docs/torch-dist-format.md §5): the same torch_dist checkpoint serves both.
      if (f.grouped_gemm && lead)
        std::fprintf(stderr, "note: --moe-grouped-gemm: a torch_dist checkpoint stores grouped and sequential experts "
                     "under the same keys; the output is the same either way\n");
      o.grouped_gemm = false;
      o.tp = 1;
      o.ep = 1;
      o.etp.reset();
      o.pipeline = convert::PipelineOptions{};
    }

    const fs::path out(f.save_ckpt_path);
    struct Scratch {  // a torch_dist source's legacy copy, removed however the run ends
      fs::path dir;
      ~Scratch() {
        std::error_code ec;
        if (!dir.empty()) fs::remove_all(dir, ec);
      }
    } unpacked;
    convert::Plan plan;
    std::unique_ptr<safetensors::Checkpoint> hf;
    std::unique_ptr<convert::McoreCheckpoint> mcore;
    if (f.load_platform == "huggingface") {
      hf = std::make_unique<safetensors::Checkpoint>(f.load_ckpt_path);
      plan = convert::plan_hf_to_mcore(spec, *hf, nm, shape, o);
    } else {
      fs::path src(f.load_ckpt_path);
      if (const auto td = convert::find_torch_dist_dir(src)) {  // torch_dist source: via a legacy tp1 copy
        unpacked.dir = fs::path(out.string() + ".ckb-torch-dist-src");
        fs::remove_all(unpacked.dir);
        convert::unpack_torch_dist(*td, unpacked.dir);
        std::fprintf(stderr, "note: %s is a torch_dist checkpoint; read through a single-rank legacy copy in %s "
                     "(removed at the end)\n", td->string().c_str(), unpacked.dir.string().c_str());
        src = unpacked.dir;
      }
      // The source layout comes from the checkpoint itself (rank directory names, tensor names,
      // args in Megatron-LM's or LoongForge's naming). For MCore -> HF the layout flags may restate
      // it, but must not contradict it; for MCore -> MCore the flags describe the target.
      const convert::McoreLayout have = convert::read_mcore_layout(
          src, convert::mcore_layout_hints(nm, shape.num_layers, mc.num_experts > 0 ? mc.moe_ffn_hidden_size : 0));
      if (!have.other_keys.empty()) {
        std::string keys;
        for (const auto& k : have.other_keys) keys += (keys.empty() ? "" : ", ") + k;
        std::fprintf(stderr, "note: %s: skipping the entries that are not weights (%s)\n", src.string().c_str(), keys.c_str());
      }
      convert::ConvertOptions so = convert::source_options(have, o);
      if (f.save_platform == "huggingface") {
        auto check = [&](const char* flag, bool given, const std::string& mine, const std::string& theirs,
                         const char* axis) {
          if (given && mine != theirs)
            fail(flag, " ", mine, " contradicts the checkpoint ", src.string(), ": ",
                 have.source.count(axis) ? have.source.at(axis) : std::string("its layout"), " give ", axis, " ", theirs,
                 " (omit the flag to use the checkpoint's layout)");
        };
        auto str = [](std::optional<int> v) { return v ? std::to_string(*v) : std::string("unset"); };
        // the pipeline the flags describe, the checkpoint's sizes where a flag is not given
        auto given_pipeline = [&] {
          convert::PipelineOptions g = o.pipeline;
          if (!app.count("--pipeline_model_parallel_size")) g.pp = have.pp;
          if (!f.vpp && !f.layers_per_vstage) g.vpp = have.vpp;
          if (f.vpp_scheduler.empty()) g.dualpipev = have.dualpipev;
          return g;
        };
        check("--tensor_model_parallel_size", app.count("--tensor_model_parallel_size") > 0, std::to_string(o.tp),
              std::to_string(so.tp), "TP");
        check("--pipeline_model_parallel_size", app.count("--pipeline_model_parallel_size") > 0,
              std::to_string(o.pipeline.pp), std::to_string(so.pipeline.pp), "PP");
        if (have.has_experts) check("--expert_parallel_size", f.ep.has_value(), std::to_string(o.ep), std::to_string(so.ep), "EP");
        if (have.has_experts && so.etp)
          check("--expert_tensor_parallel_size", f.etp.has_value(), str(o.etp), str(so.etp), "ETP");
        check("--num-virtual-stages-per-pipeline-rank", f.vpp.has_value() || f.layers_per_vstage.has_value(),
              std::to_string(o.pipeline.vpp), std::to_string(so.pipeline.vpp), "VPP");
        if (f.grouped_gemm && have.has_experts && !have.grouped_gemm)
          fail("--moe-grouped-gemm contradicts the checkpoint ", src.string(),
               ": its expert tensors are sequential (local_experts) (omit the flag to use the checkpoint's layout)");
        if (!f.custom_pipeline_layers.empty() || !f.pipeline_layout.empty() || f.first || f.last ||
            !f.vpp_scheduler.empty())
          if (auto why = convert::pipeline_contradiction(have, given_pipeline(), "the pipeline flags"))
            fail(*why, " (", src.string(), "; omit the flags to use the checkpoint's layout)");
        if (f.etp && !so.etp) so.etp = f.etp;
      }
      mcore = std::make_unique<convert::McoreCheckpoint>(src, have.second_index_is_ep);
      if (f.save_platform == "huggingface") plan = convert::plan_mcore_to_hf(spec, *mcore, nm, shape, mc, so);
      else plan = convert::plan_mcore_to_mcore(spec, *mcore, nm, shape, so, o);
    }
    // torch_dist output: the plan's entries, re-keyed (refuses FP8 weights etc. before any output)
    convert::TorchDistOutOptions to;
    std::vector<format::torch_dist::WriteEntry> td_entries;
    std::atomic<std::uint64_t> td_bytes{0};
    if (torch_dist_out) {
      if (job->distributed())
        fail("--distributed_convert with --ckpt_format torch_dist: a torch_dist checkpoint is written by one process "
             "(its data files by threads, --max_workers)");
      to.num_experts = shape.num_experts;
      to.gated = true;  // every model ckbridge converts has SwiGLU MLPs
      if (mc.homogeneous_layers) to.stacked_layers = mc.num_layers;
      to.files = static_cast<unsigned>(std::max(2, f.max_workers));
      to.strides_field = f.torch_dist_strides;
      // The test seams (as the legacy writer's) count the chunk bytes produced; progress is
      // recorded every CKBRIDGE_TEST_SYNC_BYTES bytes of a data file (default 256 MiB).
      if (auto seam = examples::test_seams_from_env())
        to.on_chunk = [&td_bytes, seam](std::uint64_t n) { seam(td_bytes.fetch_add(n) + n); };
      if (const char* k = std::getenv("CKBRIDGE_TEST_SYNC_BYTES")) to.sync_bytes = std::strtoull(k, nullptr, 10);
      td_entries = convert::torch_dist_entries(plan, to);
    }
    job->same_plan(plan);
    if (lead) print_plan(plan, o.max_workers);
    for (const auto& n : plan.notes)
      if (lead) std::fprintf(stderr, "note: %s\n", n.c_str());
    if (f.dry_run) {
      if (lead) {
        print_files(plan);
        if (job->distributed())  // the share of each process (the same split every process computes)
          for (int r = 0; const auto& s : convert::split_files(plan, job->size()))
            std::printf("rank %d: %zu files, %s\n", r++, s.files.size(), human_bytes(s.bytes).c_str());
        for (const auto& [rel, text] : plan.small_files)
          if (rel == "config.json")
            for (const auto& [key, from] : config::config_json_origins(text, mc))
              std::printf("  config.json %-32s from %s\n", key.c_str(), from.c_str());
        print_memory("after planning");
      }
      job->check();
      return 0;
    }
    // What shapes the output bytes beyond the plan itself (which lists every tensor and path).
    const std::string source_fp = convert::source_fingerprint(f.load_ckpt_path, out);
    const std::string source_id = manifest::sha256_hex(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(source_fp.data()), source_fp.size()));
    std::ostringstream why;
    why << f.load_platform << " -> " << f.save_platform << " from " << fs::absolute(f.load_ckpt_path).string()
        << " te " << f.te_version << " dtype " << f.torch_dtype << " eps " << f.amax_epsilon << " method "
        << f.quant_method << " pow2 " << f.force_pow_2_scales << " model " << spec.name << "\n"
        << convert::options_fingerprint(o) << source_fp;
    if (torch_dist_out) why << "ckpt_format torch_dist files " << to.files << " strides " << to.strides_field << "\n";
    convert::check_memory(plan, o.max_workers);
    const std::string fingerprint = convert::plan_fingerprint(plan, why.str());
    const std::string run_id = fingerprint.substr(0, fingerprint.find('\n'));
    // A finished output (manifest, no run state): the same command is "already done" once the
    // files are checked against the manifest; other arguments need --overwrite.
    bool complete = false;  // (rank 0 looks; the others learn it below)
    if (lead && fs::exists(out / manifest::kFileName) && !fs::exists(out / ".ckbridge-run")) {
      const fs::path mpath = out / manifest::kFileName;
      std::ifstream in(mpath, std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      const manifest::Manifest old = manifest::Manifest::parse(ss.str(), mpath.string());
      if (f.overwrite) {
        for (const auto& fe : old.files) fs::remove(out / fe.rel);
        fs::remove(mpath);
        // empty directories left by the old layout
        for (bool again = true; again;) {
          again = false;
          for (const auto& e : fs::recursive_directory_iterator(out))
            if (e.is_directory() && fs::is_empty(e.path())) {
              fs::remove(e.path());
              again = true;
              break;
            }
        }
        std::fprintf(stderr, "note: --overwrite: removed the %zu files of the finished output in %s\n", old.files.size(),
                     out.string().c_str());
      } else if (old.fingerprint == run_id &&
                 old.source_fingerprint != source_id) {
        fail("--save_ckpt_path ", out.string(), ": holds this conversion's finished output, but the source ",
             f.load_ckpt_path, " changed since (sizes or content differ from ", mpath.string(),
             "); pass --overwrite to convert it again");
      } else if (old.fingerprint == run_id) {
        std::size_t verified = 0;
        const auto findings = manifest::check(out, old, o.max_workers, &verified);
        if (!findings.empty()) {
          std::string w;
          for (const auto& fd : findings) w += "\n  " + fd.path + ": " + fd.what;
          fail("--save_ckpt_path ", out.string(), ": holds this conversion's finished output, but it no longer matches "
               "its ", manifest::kFileName, ":", w, "\n(rerun with --overwrite to write it again)");
        }
        std::printf("already complete: %zu files verified against %s in %s\n", verified, manifest::kFileName,
                    out.string().c_str());
        complete = true;
      } else {
        fail("--save_ckpt_path ", out.string(), ": holds a finished conversion made with other arguments or another "
             "source (", mpath.string(), "); choose a new directory, or pass --overwrite to replace it");
      }
    }
    job->check();
    if (job->broadcast(complete)) return 0;
    const auto state = job->open_state(out, fingerprint);
    if (lead && state->resumed())
      std::fprintf(stderr, "note: resuming an interrupted run in %s (%zu files already complete)\n",
                   out.string().c_str(), state->done_count());
    convert::McoreWriteOptions mo;
    mo.te = te;
    mo.fake_dtype = o.torch_dtype;
    mo.amax_epsilon = o.amax_epsilon;
    // The manifest: written after every output file but the tracker, from the hashes each process
    // took of the files it completed (`hashed`, gathered on rank 0) and of the other files on disk.
    std::map<std::string, manifest::FileEntry> hashed;
    std::mutex hashed_mu;
    auto file_done = [&](const convert::OutFile& of) {
      manifest::FileEntry e = manifest::hash_file(out, of.rel);
      std::lock_guard lk(hashed_mu);
      hashed[e.rel] = std::move(e);
    };
    auto report = [&] {
      manifest::Manifest m;
      for (const auto& [rel, e] : hashed) m.files.push_back(e);
      return m.to_json();
    };
    auto write_manifest = [&](const std::vector<std::string>& reports) {
      for (const auto& r : reports)
        for (auto& e : manifest::Manifest::parse(r, "a process's report").files) hashed[e.rel] = std::move(e);
      manifest::Manifest m;
      m.fingerprint = run_id;
      for (int i = 0; i < argc; ++i) m.arguments.emplace_back(argv[i]);
      m.source = fs::absolute(f.load_ckpt_path).lexically_normal().string();
      m.source_fingerprint = source_id;
      m.files = manifest::hash_files(out, manifest::checkpoint_files(out), o.max_workers, &hashed);
      for (const auto& [rel, text] : plan.small_files)
        if (rel.filename() == "latest_checkpointed_iteration.txt") {
          m.files.push_back(manifest::bytes_entry(
              rel.generic_string(), std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size())));
        }
      AtomicFile::write_all(out / manifest::kFileName, m.to_json());
    };
    if (torch_dist_out) {  // one process; resumable through the run state; manifest before the tracker
      const auto t0 = std::chrono::steady_clock::now();
      to.progress_dir = out / ".ckbridge-run" / "torch_dist";
      to.save_id = convert::uuid_from(run_id);
      to.write_small_files = false;
      const auto rep = convert::write_torch_dist(plan, td_entries, out, to);
      convert::finish_run(plan, out, state.get(), [&] { write_manifest({}); });
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (rep.resumed_bytes)
        std::fprintf(stderr, "note: torch_dist: %llu bytes of data files kept from the interrupted run\n",
                     static_cast<unsigned long long>(rep.resumed_bytes));
      std::printf("done: torch_dist, %zu entries in %zu data files, %.3f GB in %.2f s -> %s\n",
                  rep.metadata.entries.size(), rep.files.size(), double(rep.bytes) / 1e9, sec, out.string().c_str());
      print_memory("at the end");
      return 0;
    }
    const auto t0 = std::chrono::steady_clock::now();
    // Each process of a job hashes the files it wrote as it completes them (rank 0 then reads none
    // of the others'); one process hashes them all at the end instead: hashing a file right after
    // writing it, while other threads write, cost 0.65 s more system time on the 5 GB benchmark
    // (bench/ab_convert.sh, 6 rounds: median sys 5.11 s against 4.48 s at the end).
    convert::ExecHooks hooks;
    if (job->distributed()) hooks.file_done = file_done;
    hooks.on_bytes = examples::test_seams_from_env();
    const auto runs = job->run(plan, out, o.max_workers, convert::mcore_file_writer(plan.mcore_args, mo), f.quiet,
                               state.get(), hooks, report, write_manifest);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::uint64_t nonfinite_all = job->sum(nonfinite.load());
    if (!lead) return 0;
    std::uint64_t bytes = 0;
    std::size_t files = 0;
    for (const auto& r : runs) bytes += r.result.bytes, files += r.result.files;
    std::printf("done: %zu files, %.3f GB in %.2f s (%.2f GB/s) -> %s\n", files, double(bytes) / 1e9, secs,
                secs > 0 ? double(bytes) / 1e9 / secs : 0.0, out.string().c_str());
    if (job->distributed())  // each process: its files and how fast it wrote them (its own clock)
      for (int r = 0; const auto& x : runs)
        std::printf("rank %d: %zu files, %s in %.2f s (%.2f GB/s)\n", r++, x.result.files,
                    human_bytes(x.result.bytes).c_str(), x.result.seconds,
                    x.result.seconds > 0 ? double(x.result.bytes) / 1e9 / x.result.seconds : 0.0);
    print_memory(job->distributed() ? "at the end (rank 0)" : "at the end");
    if (nonfinite_all)
      std::printf("note: %llu non-finite input values (Inf/NaN) were quantized to FP8 (--allow_nonfinite)\n",
                  static_cast<unsigned long long>(nonfinite_all));
    return 0;
  } catch (const std::exception& e) {
    const std::string msg = job ? job->failure(e) : std::string(e.what());
    std::fprintf(stderr, "ckbridge_convert: error: %s\n", msg.c_str());
    return 1;
  }
}

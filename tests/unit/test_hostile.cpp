// Hostile inputs and faults (issue 13): CRC-32 at storage speed equal to zlib's, non-finite FP8
// inputs counted, strict numeric flag values, TP that does not divide the heads, output-directory
// lock, fingerprint coverage, leftovers of a killed fingerprint write, symlinks in a partial
// output, safetensors offsets blamed on the right tensor. The converter-level cases (two
// concurrent runs, edited sources, flipped storage bits) are in tests/scripts/kill_resume.sh and
// tests/python/test_hostile_inputs.py.
#include <boost/test/unit_test.hpp>
#include <zlib.h>

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ckbridge/convert/cli_values.hpp"
#include "ckbridge/convert/instances.hpp"
#include "ckbridge/convert/resume.hpp"
#include "ckbridge/core/crc32.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/format/safetensors_header.hpp"
#include "ckbridge/quant/quantize.hpp"

using namespace ckbridge;
namespace fs = std::filesystem;

namespace {
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}
bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

struct TempDir {
  fs::path p;
  explicit TempDir(const std::string& name)
      : p(fs::temp_directory_path() / ("ckb_hostile_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(p);
    fs::create_directories(p);
  }
  ~TempDir() { fs::remove_all(p); }
};
}  // namespace

BOOST_AUTO_TEST_SUITE(hostile)

// The folded CRC equals zlib's (the independent reference) for every length and alignment,
// chained from any start value.
BOOST_AUTO_TEST_CASE(crc32_equals_zlib) {
  std::mt19937_64 rng(13);
  std::vector<std::byte> buf(300'000);
  for (auto& b : buf) b = std::byte(rng());
  for (int t = 0; t < 3000; ++t) {
    const std::size_t off = rng() % 64, n = t < 1500 ? rng() % 300 : rng() % (buf.size() - 64);
    const std::uint32_t init = t % 3 ? static_cast<std::uint32_t>(rng()) : 0u;
    const std::uint32_t want =
        static_cast<std::uint32_t>(::crc32(init, reinterpret_cast<const Bytef*>(buf.data() + off), static_cast<uInt>(n)));
    BOOST_TEST_REQUIRE(crc32_update(init, buf.data() + off, n) == want, "n " << n << " off " << off);
  }
}

// Inf and NaN counted in BF16, F16 and F32, dense and strided.
BOOST_AUTO_TEST_CASE(count_nonfinite) {
  std::vector<std::uint16_t> bf(6 * 8, 0x3F80);  // 1.0
  bf[3] = 0x7F80;                               // +inf
  bf[10] = 0xFF80;                              // -inf
  bf[17] = 0x7FC1;                              // NaN
  bf[20] = 0x7F7F;                              // largest finite
  BOOST_TEST(quant::count_nonfinite(AnyConstView(reinterpret_cast<const std::byte*>(bf.data()), DType::BF16, Shape{6, 8})) == 3u);
  // columns 0..3 of each row only (strided): bf[3] and bf[17] are in, bf[10] (col 2 of row 1) too
  BOOST_TEST(quant::count_nonfinite(
                 AnyConstView(reinterpret_cast<const std::byte*>(bf.data()), DType::BF16, Shape{6, 4}, Shape{8, 1})) == 3u);
  BOOST_TEST(quant::count_nonfinite(
                 AnyConstView(reinterpret_cast<const std::byte*>(bf.data()), DType::BF16, Shape{6, 2}, Shape{8, 1})) == 1u);
  std::vector<std::uint16_t> h(5, 0x3C00);
  h[4] = 0x7C00;  // +inf
  BOOST_TEST(quant::count_nonfinite(AnyConstView(reinterpret_cast<const std::byte*>(h.data()), DType::F16, Shape{5})) == 1u);
  std::vector<float> f(4, 1.0f);
  f[1] = std::numeric_limits<float>::quiet_NaN();
  f[2] = -std::numeric_limits<float>::infinity();
  f[3] = std::numeric_limits<float>::max();
  BOOST_TEST(quant::count_nonfinite(AnyConstView(reinterpret_cast<const std::byte*>(f.data()), DType::F32, Shape{2, 2})) == 2u);
}

// Numeric flag values: overflow, negative and 0 refused with a message that says what is wanted.
BOOST_AUTO_TEST_CASE(numeric_flags) {
  using convert::integer_problem;
  BOOST_TEST(!integer_problem("8", 1, 1 << 30));
  BOOST_TEST(has(integer_problem("0", 1, 100).value_or(""), "out of range: expected a whole number in [1, 100]"));
  BOOST_TEST(has(integer_problem("-3", 0, 100).value_or(""), "out of range"));
  BOOST_TEST(has(integer_problem("99999999999999999999", 1, 100).value_or(""), "out of range"));
  BOOST_TEST(has(integer_problem("2e9", 0, 1 << 30).value_or(""), "expected a whole number, got '2e9'"));
  BOOST_TEST(has(integer_problem("", 0, 1).value_or(""), "expected a whole number"));
  BOOST_TEST(has(integer_problem("4x", 0, 10).value_or(""), "expected a whole number"));
  using convert::parse_byte_size;
  BOOST_TEST(parse_byte_size("5GB", "--s") == 5'000'000'000ull);
  BOOST_TEST(parse_byte_size("1MiB", "--s") == 1048576ull);
  BOOST_TEST(parse_byte_size("18446744073709549568", "--s") == 18446744073709549568ull);  // largest double < 2^64
  BOOST_TEST(has(error_of([] { parse_byte_size("18446744073709551616", "--s"); }), "too large"));
  BOOST_TEST(has(error_of([] { parse_byte_size("20000000000GB", "--s"); }), "too large"));
  BOOST_TEST(has(error_of([] { parse_byte_size("0", "--s"); }), "at least 1 byte"));
  BOOST_TEST(has(error_of([] { parse_byte_size("-5GB", "--s"); }), "at least 1 byte"));
  BOOST_TEST(has(error_of([] { parse_byte_size("nanGB", "--s"); }), "not a finite number"));
  BOOST_TEST(has(error_of([] { parse_byte_size("1e400", "--s"); }), "--s"));
}

// TP must divide the attention heads (MLA: from the args) and, with GQA, the query groups.
BOOST_AUTO_TEST_CASE(tp_divides_heads) {
  convert::ModelShape mla;
  mla.args = {{"num_attention_heads", convert::ArgValue{std::int64_t{4}}}};
  BOOST_TEST(error_of([&] { mla.check_tensor_parallel(4); }) == "<no error>");
  const auto e = error_of([&] { mla.check_tensor_parallel(8); });
  BOOST_TEST(has(e, "--tensor_model_parallel_size 8 does not divide the model's num_attention_heads 4"), e);
  convert::ModelShape gqa;
  gqa.num_attention_heads = 6;
  gqa.num_query_groups = 2;
  BOOST_TEST(error_of([&] { gqa.check_tensor_parallel(2); }) == "<no error>");
  BOOST_TEST(has(error_of([&] { gqa.check_tensor_parallel(3); }), "does not divide the model's num_query_groups 2"));
  BOOST_TEST(has(error_of([&] { gqa.check_tensor_parallel(4); }), "num_query_groups 2"));
  convert::ModelShape mha;  // groups unset: heads alone
  mha.num_attention_heads = 6;
  BOOST_TEST(has(error_of([&] { mha.check_tensor_parallel(4); }), "num_attention_heads 6"));
}

// Every output-shaping option changes the fingerprint; workers, device and allow_nonfinite do not.
BOOST_AUTO_TEST_CASE(options_fingerprint_coverage) {
  const convert::ConvertOptions base;
  const std::string f0 = convert::options_fingerprint(base);
  std::vector<std::function<void(convert::ConvertOptions&)>> changes = {
      [](auto& o) { o.tp = 2; }, [](auto& o) { o.ep = 2; }, [](auto& o) { o.etp = 1; },
      [](auto& o) { o.grouped_gemm = true; }, [](auto& o) { o.pipeline.pp = 2; }, [](auto& o) { o.pipeline.vpp = 2; },
      [](auto& o) { o.pipeline.custom = std::vector<int>{2, 2}; }, [](auto& o) { o.pipeline.layout = "E|tL"; },
      [](auto& o) { o.pipeline.first = 1; }, [](auto& o) { o.pipeline.last = 1; },
      [](auto& o) { o.pipeline.dualpipev = true; }, [](auto& o) { o.make_vocab_size_divisible_by = 64; },
      [](auto& o) { o.pad_vocab_size_to = 1024; }, [](auto& o) { o.convert_to_fp8 = true; },
      [](auto& o) { o.force_pow_2_scales = false; }, [](auto& o) { o.amax_epsilon = 1e-30f; },
      [](auto& o) { o.quant_method = quant::MethodId::Pt; }, [](auto& o) { o.fp8_force_no_requant = true; },
      [](auto& o) { o.dequantize_fp8 = true; },
      [](auto& o) { o.torch_dtype = DType::F16; }, [](auto& o) { o.hf_max_shard_bytes = 1; },
      [](auto& o) { o.te_minor = 3; }, [](auto& o) { o.iteration = 5; }};
  for (std::size_t i = 0; i < changes.size(); ++i) {
    convert::ConvertOptions o;
    changes[i](o);
    BOOST_TEST(convert::options_fingerprint(o) != f0, "change " << i << " not in the fingerprint");
  }
  convert::ConvertOptions same;
  same.max_workers = 8;
  same.device = quant::Device::Cpu;
  same.allow_nonfinite = true;  // a run refused for Inf/NaN may resume with it: finished files hold none
  BOOST_TEST(convert::options_fingerprint(same) == f0);
  // The MCore args and small files' contents are in the plan fingerprint.
  convert::Plan p;
  p.mcore_args = {{"pipeline_model_parallel_split", convert::ArgValue{std::string("2,2")}}};
  const auto a = convert::plan_fingerprint(p, "x");
  p.mcore_args[0].second = convert::ArgValue{std::monostate{}};
  BOOST_TEST(convert::plan_fingerprint(p, "x") != a);
  p.small_files = {{"latest_checkpointed_iteration.txt", "release"}};
  const auto b = convert::plan_fingerprint(p, "x");
  p.small_files[0].second = "relea5e";
  BOOST_TEST(convert::plan_fingerprint(p, "x") != b);
}

// Source files: size, mtime and content samples (first and last 64 KiB).
BOOST_AUTO_TEST_CASE(source_fingerprint) {
  TempDir d("src");
  std::string big(200'000, 'a');
  std::ofstream(d.p / "a.safetensors", std::ios::binary) << big;
  std::ofstream(d.p / "config.json") << "{}";
  const auto f0 = convert::source_fingerprint(d.p);
  BOOST_TEST(has(f0, "source a.safetensors 200000 "));
  BOOST_TEST(has(f0, "source config.json 2 "));
  const auto mtime = fs::last_write_time(d.p / "a.safetensors");
  {  // same size, same mtime, one byte changed near the end
    std::fstream f(d.p / "a.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(199'000);
    f.put('b');
  }
  fs::last_write_time(d.p / "a.safetensors", mtime);
  BOOST_TEST(convert::source_fingerprint(d.p) != f0);
  // an output directory inside the source is left out
  fs::create_directories(d.p / "out");
  const auto f1 = convert::source_fingerprint(d.p, d.p / "out");
  std::ofstream(d.p / "out" / "x") << "new output";
  BOOST_TEST(convert::source_fingerprint(d.p, d.p / "out") == f1);
}

// The processes of one multi-process run share its run state: rank 0 prepares it, the others join
// it and list their files in done.<rank>; a later attempt with another process count sees them all.
BOOST_AUTO_TEST_CASE(run_state_join) {
  TempDir d("join");
  const fs::path out = d.p / "out";
  using Join = convert::RunState::Join;
  BOOST_TEST(has(error_of([&] { convert::RunState s(out, "fp-j\n", Join{1}); }), "is missing"));
  auto put = [&](const std::string& rel, std::size_t n) {
    fs::create_directories((out / rel).parent_path());
    std::ofstream(out / rel) << std::string(n, 'x');
  };
  {
    convert::RunState lead(out, "fp-j\n");
    BOOST_TEST(has(error_of([&] { convert::RunState s(out, "fp-other\n", Join{1}); }), "differs"));
    convert::RunState r1(out, "fp-j\n", Join{1});
    convert::RunState r2(out, "fp-j\n", Join{2});
    put("a.bin", 3);
    lead.mark_done("a.bin");
    put("b/c.bin", 5);
    r1.mark_done("b/c.bin");
    put("d.bin", 7);
    r2.mark_done("d.bin");
    BOOST_TEST(fs::exists(out / ".ckbridge-run" / "done.1"));
    BOOST_TEST(fs::exists(out / ".ckbridge-run" / "done.2"));
  }  // killed: no finish()
  {  // resumed by two processes
    convert::RunState lead(out, "fp-j\n");
    BOOST_TEST(lead.resumed());
    BOOST_TEST(lead.done_count() == 3u);
    convert::RunState r1(out, "fp-j\n", Join{1});
    for (const convert::RunState* s : {&lead, &r1}) {
      BOOST_TEST(s->finished("a.bin", 0));
      BOOST_TEST(s->finished("b/c.bin", 0));
      BOOST_TEST(s->finished("d.bin", 0));
      BOOST_TEST(!s->finished("e.bin", 0));
    }
    r1.close_done();
    lead.finish();
    BOOST_TEST(!fs::exists(out / ".ckbridge-run"));
  }
}

// The output directory lock, a killed fingerprint write, symlinks in a partial output, bad paths.
BOOST_AUTO_TEST_CASE(run_state) {
  TempDir d("run");
  const fs::path out = d.p / "out";
  {
    convert::RunState a(out, "fp-1\n");
    // a second run (another open file description: flock conflicts even within one process)
    const auto e = error_of([&] { convert::RunState b(out, "fp-1\n"); });
    BOOST_TEST(has(e, "another conversion is writing to this directory"), e);
    BOOST_TEST(has(e, out.string()));
    const auto e2 = error_of([&] { convert::RunState b(out, "fp-2\n"); });
    BOOST_TEST(has(e2, "another conversion is writing"), e2);
  }
  {  // lock released with the first run: the identical run resumes
    convert::RunState again(out, "fp-1\n");
    BOOST_TEST(again.resumed());
  }
  // A kill while the fingerprint was written: only .ckbridge-run/fingerprint.tmp-* exists.
  const fs::path k = d.p / "killed";
  fs::create_directories(k / ".ckbridge-run");
  std::ofstream(k / ".ckbridge-run" / "fingerprint.tmp-0a1b2c3d") << "half";
  {
    convert::RunState s(k, "fp-3\n");
    BOOST_TEST(!s.resumed());
  }
  std::ifstream in(k / ".ckbridge-run" / "fingerprint");
  std::string got((std::istreambuf_iterator<char>(in)), {});
  BOOST_TEST(got == "fp-3\n");
  BOOST_TEST(!fs::exists(k / ".ckbridge-run" / "fingerprint.tmp-0a1b2c3d"));
  // ... but a directory with other content next to it is still refused.
  const fs::path k2 = d.p / "killed2";
  fs::create_directories(k2 / ".ckbridge-run");
  std::ofstream(k2 / ".ckbridge-run" / "fingerprint.tmp-0a1b2c3d") << "half";
  std::ofstream(k2 / "notes.txt") << "keep";
  BOOST_TEST(has(error_of([&] { convert::RunState s(k2, "fp-3\n"); }), "is not empty"));
  // A partial output whose rank directory became a symlink: refused, naming the link.
  const fs::path p = d.p / "partial";
  { convert::RunState s(p, "fp-4\n"); }
  fs::create_directories(d.p / "elsewhere");
  fs::create_directories(p / "release");
  fs::create_directory_symlink(d.p / "elsewhere", p / "release" / "mp_rank_00");
  const auto e3 = error_of([&] { convert::RunState s(p, "fp-4\n"); });
  BOOST_TEST(has(e3, "symbolic link"), e3);
  BOOST_TEST(has(e3, (p / "release" / "mp_rank_00").string()));
  // Paths that cannot be meant.
  BOOST_TEST(has(error_of([] { convert::check_output_path(""); }), "empty path"));
  BOOST_TEST(has(error_of([] { convert::check_output_path("--safetensors"); }), "looks like a flag"));
  BOOST_TEST(error_of([] { convert::check_output_path("./-out"); }) == "<no error>");
}

// An offset out of range is reported on the tensor that has it, not on its neighbour.
BOOST_AUTO_TEST_CASE(safetensors_offset_blame) {
  const std::string hdr =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[1000000,1000008]},)"
      R"("c":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})";
  std::vector<std::byte> file(8 + hdr.size() + 24);
  const std::uint64_t n = hdr.size();
  for (int i = 0; i < 8; ++i) file[static_cast<std::size_t>(i)] = std::byte((n >> (8 * i)) & 0xFF);
  std::memcpy(file.data() + 8, hdr.data(), hdr.size());
  const auto e = error_of([&] { safetensors::parse_header(file, "x.safetensors"); });
  BOOST_TEST(has(e, "tensor 'b'"), e);
  BOOST_TEST(has(e, "run past the data section"), e);
}

BOOST_AUTO_TEST_SUITE_END()

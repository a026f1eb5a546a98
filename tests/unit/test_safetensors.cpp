#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <initializer_list>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ckbridge/format/safetensors.hpp"

using namespace ckbridge;
namespace st = ckbridge::safetensors;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test case, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    static int n = 0;
    path = fs::temp_directory_path() / ("ckb_st_test_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& s) const { return path / s; }
};

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
void write_all(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

// A raw safetensors file: length prefix + header text (as given, no padding) + data bytes.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return s + header + data;
}

std::vector<std::byte> random_bytes(std::size_t n, std::mt19937_64& rng) {
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng() & 0xFF);
  return v;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// Asserts that f throws ckbridge::Error whose message contains every fragment.
void check_error(const std::function<void()>& f, std::initializer_list<std::string> fragments) {
  const std::string msg = error_of(f);
  for (const auto& frag : fragments)
    BOOST_TEST(msg.find(frag) != std::string::npos, "message '" << msg << "' lacks '" << frag << "'");
}

// Every dtype, plus zero-size and scalar tensors.
std::vector<st::TensorSpec> all_dtype_specs() {
  std::vector<st::TensorSpec> specs;
  int k = 0;
  for (const auto& i : kDTypeInfo) {
    specs.push_back({"t." + std::string(i.safetensors), i.dtype, {3, k % 4 + 1}});
    ++k;
  }
  specs.push_back({"empty", DType::F32, {0, 7}});
  specs.push_back({"empty.bf16", DType::BF16, {4, 0}});
  specs.push_back({"scalar", DType::F64, {}});
  specs.push_back({"scalar.e8m0", DType::F8_E8M0, {}});
  specs.push_back({"big", DType::BF16, {64, 129}});
  return specs;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(safetensors)

// Header bytes produced by Python safetensors 0.8 save_file for the same tensors (an independent
// reference: reordering, compact JSON, padding).
BOOST_AUTO_TEST_CASE(header_matches_python_reference) {
  const std::vector<st::TensorSpec> specs{{"b", DType::BF16, {3}},   {"a", DType::F32, {2, 2}}, {"c", DType::F8_E4M3, {5}},
                                          {"d", DType::F8_E8M0, {1}}, {"i", DType::I64, {1}},   {"z", DType::F32, {0, 3}},
                                          {"s", DType::I16, {}}};
  const st::Layout L = st::plan_layout(specs, st::default_metadata(), "x");
  const std::string expect =
      R"({"__metadata__":{"format":"pt"},"i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]},"z":{"dtype":"F32","shape":[0,3],"data_offsets":[24,24]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[24,30]},"s":{"dtype":"I16","shape":[],"data_offsets":[30,32]},"d":{"dtype":"F8_E8M0","shape":[1],"data_offsets":[32,33]},"c":{"dtype":"F8_E4M3","shape":[5],"data_offsets":[33,38]}}      )";
  BOOST_TEST(L.header.size() == 8 + 432);
  BOOST_TEST(L.header.substr(8) == expect);
  BOOST_TEST(L.file_size == 478u);

  // No metadata; names compared bytewise; control characters escaped as serde_json does.
  const st::Layout L2 = st::plan_layout({{"zz", DType::F32, {1}}, {"b", DType::F32, {1}}, {"a", DType::F32, {0}},
                                         {"B", DType::F32, {1}}, {"x\x01\t\x1f\b\f\r", DType::U8, {1}}},
                                        std::nullopt, "x");
  BOOST_TEST(L2.header.substr(8) ==
             R"({"B":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"zz":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"x\u0001\t\u001f\b\f\r":{"dtype":"U8","shape":[1],"data_offsets":[12,13]}}       )");
}

BOOST_AUTO_TEST_CASE(round_trip_every_dtype_byte_identical) {
  TempDir dir;
  std::mt19937_64 rng(42);
  const auto specs = all_dtype_specs();
  std::map<std::string, std::vector<std::byte>> data;
  for (const auto& s : specs) data[s.name] = random_bytes(st::byte_size(s), rng);

  const fs::path p1 = dir / "a.safetensors";
  {
    st::FileWriter w(p1, specs);
    // pieces of 5 bytes, in shuffled order, from 4 threads
    struct Piece { std::string name; std::size_t off, len; };
    std::vector<Piece> pieces;
    for (const auto& s : specs)
      for (std::size_t off = 0; off < data[s.name].size(); off += 5)
        pieces.push_back({s.name, off, std::min<std::size_t>(5, data[s.name].size() - off)});
    std::shuffle(pieces.begin(), pieces.end(), rng);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (std::size_t i = t; i < pieces.size(); i += 4) {
          const auto& pc = pieces[i];
          w.write(pc.name, std::span<const std::byte>(data.at(pc.name)).subspan(pc.off, pc.len), pc.off);
        }
      });
    for (auto& t : threads) t.join();
    BOOST_TEST(!fs::exists(p1));  // nothing under the final name before commit
    w.commit();
  }
  BOOST_REQUIRE(fs::exists(p1));
  BOOST_TEST(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}) == 1);  // no temp left

  st::File f(p1);
  BOOST_TEST(f.size() == specs.size());
  BOOST_TEST(f.metadata().at("format") == "pt");
  for (const auto& s : specs) {
    const st::TensorInfo* t = f.find(s.name);
    BOOST_REQUIRE(t);
    BOOST_TEST(t->dtype == s.dtype);
    BOOST_TEST(t->shape == s.shape);
    BOOST_TEST(f.is_aligned(*t));
    const AnyConstView v = f.view(s.name);
    BOOST_TEST(v.dtype == s.dtype);
    BOOST_TEST(v.shape == s.shape);
    BOOST_TEST(std::equal(v.data, v.data + v.size_bytes(), data[s.name].begin(), data[s.name].end()));
    // zero copy: the view points into the mapping
    BOOST_TEST((v.data >= f.mapped().data() && v.data <= f.mapped().data() + f.mapped().size()));
  }
  // offsets ascending and tiling (file order)
  std::uint64_t pos = 0;
  for (const auto& t : f.tensors()) {
    BOOST_TEST(t.begin == pos);
    pos = t.end;
  }
  BOOST_TEST(f.find("nope") == nullptr);
  check_error([&] { (void)f.view("nope"); }, {p1.string(), "'nope'"});

  // write again from the views (save_file, reverse order): identical bytes
  const fs::path p2 = dir / "b.safetensors";
  std::vector<std::pair<std::string, AnyConstView>> views;
  for (auto it = f.tensors().rbegin(); it != f.tensors().rend(); ++it) views.emplace_back(it->name, f.view(*it));
  st::save_file(p2, views, f.metadata());
  BOOST_TEST(read_all(p1) == read_all(p2));

  // typed access through the view
  const st::File g(p2);
  const auto tv = g.view("t.I32").as<std::int32_t, 2>();
  std::int32_t first;
  std::memcpy(&first, data["t.I32"].data(), 4);
  BOOST_TEST(tv(0, 0) == first);
}

// Pass-through copies from another file: first halves in the kernel from the source file,
// second halves from a memfd (another file system: the pread/pwrite fallback on kernels that
// refuse cross-file-system copy_file_range).
BOOST_AUTO_TEST_CASE(write_from_fd_passthrough) {
  TempDir dir;
  std::mt19937_64 rng(3);
  const auto specs = all_dtype_specs();
  const fs::path p1 = dir / "src.safetensors", p2 = dir / "dst.safetensors";
  {
    st::FileWriter w(p1, specs);
    for (const auto& s : specs) w.write(s.name, random_bytes(st::byte_size(s), rng));
    w.commit();
  }
  const std::string src_bytes = read_all(p1);
  const int fd = ::open(p1.c_str(), O_RDONLY | O_CLOEXEC);
  const int mfd = ::memfd_create("ckb_st_test", MFD_CLOEXEC);
  BOOST_REQUIRE(fd >= 0 && mfd >= 0);
  BOOST_REQUIRE(::pwrite(mfd, src_bytes.data(), src_bytes.size(), 0) == static_cast<ssize_t>(src_bytes.size()));
  const st::File src(p1);
  {
    st::FileWriter w(p2, specs);
    for (const auto& t : src.tensors()) {
      const std::uint64_t half = t.size_bytes() / 2;
      w.write_from_fd(t.name, fd, src.file_offset(t), half, 0);
      w.write_from_fd(t.name, mfd, src.file_offset(t) + half, t.size_bytes() - half, half);
    }
    check_error([&] { w.write_from_fd("big", fd, 0, 1, 0); }, {p2.string(), "'big'", "overlap"});
    check_error([&] { w.write_from_fd("big", fd, 0, 1 << 20, 0); }, {p2.string(), "'big'", "runs past"});
    w.commit();
  }
  BOOST_TEST(read_all(p2) == src_bytes);
  {
    st::FileWriter w(p2, {{"x", DType::U8, {16}}});
    check_error([&] { w.write_from_fd("x", fd, src_bytes.size() - 8, 16, 0); }, {"source ended early"});
    check_error([&] { w.commit(); }, {p2.string(), "a write failed earlier"});
  }
  ::close(fd);
  ::close(mfd);
}

BOOST_AUTO_TEST_CASE(strided_view_write) {
  TempDir dir;
  Tensor t(DType::I32, {4, 6});
  auto tv = t.typed<std::int32_t, 2>();
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 6; ++j) tv(i, j) = i * 100 + j;
  const AnyConstView cols = t.cview().slice(1, 2, 5);  // [4, 3], non-contiguous
  st::save_file(dir / "s.safetensors", {{"w", cols}});
  st::File f(dir / "s.safetensors");
  const auto v = f.view("w").as<std::int32_t, 2>();
  BOOST_TEST(v(3, 2) == 304);
  BOOST_TEST(v(1, 0) == 102);
  check_error([&] { st::save_file(dir / "bad.safetensors", {{"w", cols}, {"w", cols}}); }, {"bad.safetensors", "'w'", "twice"});
}

BOOST_AUTO_TEST_CASE(writer_refuses_bad_writes) {
  TempDir dir;
  const fs::path p = dir / "w.safetensors";
  const std::vector<std::byte> buf(64, std::byte{7});
  {
    st::FileWriter w(p, {{"a", DType::F32, {4}}, {"b", DType::U8, {3}}, {"e", DType::F32, {0}}});
    const auto temp_files = [&] { return std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}); };
    BOOST_TEST(temp_files() == 1);
    w.write("a", std::span(buf).first(8), 0);
    check_error([&] { w.write("a", std::span(buf).first(4), 4); }, {p.string(), "'a'", "overlap", "[4, 8)"});
    check_error([&] { w.write("a", std::span(buf).first(12), 2); }, {p.string(), "'a'", "overlap"});
    check_error([&] { w.write("a", std::span(buf).first(9), 8); }, {p.string(), "'a'", "runs past"});
    check_error([&] { w.write("zz", std::span(buf).first(1), 0); }, {p.string(), "'zz'", "not declared"});
    check_error([&] { w.write("b", AnyConstView(buf.data(), DType::U8, {2})); }, {p.string(), "'b'", "declared U8 [3]"});
    w.write("a", std::span(buf).first(4), 12);
    check_error([&] { w.commit(); }, {p.string(), "'a'", "incomplete", "12 of 16", "offset 8"});
    w.write("a", std::span(buf).first(4), 8);
    check_error([&] { w.commit(); }, {p.string(), "'b'", "incomplete", "0 of 3"});
    BOOST_TEST(!fs::exists(p));
  }
  // destroyed uncommitted: the temporary is gone and nothing was created
  BOOST_TEST(fs::is_empty(dir.path));
  check_error([] { (void)st::FileWriter(fs::path("/nonexistent-dir/x.safetensors"), {}); }, {"/nonexistent-dir/x.safetensors"});
  check_error([&] { (void)st::FileWriter(p, {{"__metadata__", DType::U8, {1}}}); }, {p.string(), "__metadata__"});
  check_error([&] { (void)st::FileWriter(p, {{"a", DType::U8, {-1}}}); }, {p.string(), "'a'", "invalid shape"});
  check_error([&] { (void)st::FileWriter(p, {{"bad\xff", DType::U8, {1}}}); }, {p.string(), "UTF-8"});
  BOOST_TEST(fs::is_empty(dir.path));
}

BOOST_AUTO_TEST_CASE(reader_accepts_what_the_reference_accepts) {
  TempDir dir;
  const std::string data(8, '\x01');
  const auto ok = [&](const std::string& header, std::size_t n_tensors) {
    write_all(dir / "ok.safetensors", raw_file(header, data));
    st::File f(dir / "ok.safetensors");
    BOOST_TEST(f.size() == n_tensors);
    return f.metadata().size();
  };
  // unpadded, keys out of order, leading/trailing whitespace, unknown field, null metadata
  BOOST_TEST(ok(R"({"b":{"data_offsets":[4,8],"shape":[2],"dtype":"BF16"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 2) == 0u);
  BOOST_TEST(ok(R"(  {"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":[1,{}]},"__metadata__":{"k":"v","format":"pt"}}   )", 1) == 2u);
  BOOST_TEST(ok(R"({"__metadata__":null,"a":{"dtype":"U8","shape":[2,2,2],"data_offsets":[0,8]},"e":{"dtype":"F64","shape":[0],"data_offsets":[8,8]}})", 2) == 0u);
  // an empty header and no data
  write_all(dir / "empty.safetensors", raw_file("{}", ""));
  BOOST_TEST(st::File(dir / "empty.safetensors").size() == 0u);
}

BOOST_AUTO_TEST_CASE(reader_rejects_bad_files_naming_file_and_tensor) {
  TempDir dir;
  const fs::path p = dir / "bad.safetensors";
  const std::string ps = p.string();
  const auto bad = [&](const std::string& bytes, std::initializer_list<std::string> frags) {
    write_all(p, bytes);
    std::vector<std::string> all{ps};
    all.insert(all.end(), frags);
    const std::string msg = error_of([&] { st::File f(p); });
    for (const auto& frag : all) BOOST_TEST(msg.find(frag) != std::string::npos, "message '" << msg << "' lacks '" << frag << "'");
    // the same through the in-memory parser
    const std::string msg2 = error_of([&] { st::parse_header(std::as_bytes(std::span(bytes)), ps); });
    BOOST_TEST(msg2 == msg);
  };
  const std::string t8(8, '\0');
  const std::string A = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  bad("", {"too short"});
  bad(std::string(7, '\0'), {"too short"});
  bad(raw_file("{}", "").substr(0, 8) + "{", {"runs past the end"});                  // truncated header
  bad(std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8) + "{}", {"exceeds the 100000000-byte limit"});
  bad(raw_file("{" + A + ",", t8), {"invalid JSON"});
  bad(raw_file("[1,2]", ""), {"not a JSON object"});
  bad(raw_file("{\"a\xff\":{}}", ""), {"invalid JSON"});                             // invalid UTF-8
  bad(raw_file("{" + A + "} x", t8), {"invalid JSON"});  // junk after the object
  bad(raw_file(R"({"a\udc00":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", t8), {"not valid UTF-8"});  // lone surrogate
  bad(raw_file(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", t8), {"'a'", "unknown dtype 'F33'"});
  bad(raw_file(R"({"a":{"dtype":"U16","shape":[4],"data_offsets":[0,8]}})", t8), {"'a'", "U16", "not supported"});
  bad(raw_file(R"({"__metadata__":{"n":1},)" + A + "}", t8), {"__metadata__", "'n'", "not a string"});
  bad(raw_file(R"({"__metadata__":[],)" + A + "}", t8), {"__metadata__", "not a JSON object"});
  bad(raw_file("{" + A + "," + A + "}", t8 + t8), {"'a'", "appears twice"});
  bad(raw_file(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", t8), {"'a'", "duplicate field 'dtype'"});
  bad(raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", t8), {"'a'", "missing field 'shape'"});
  bad(raw_file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", t8), {"'a'", "missing field 'dtype'"});
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[2]}})", t8), {"'a'", "missing field 'data_offsets'"});
  bad(raw_file(R"({"a":[]})", ""), {"'a'", "not a JSON object"});
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", t8), {"'a'", "shape entries"});
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", t8), {"'a'", "shape entries"});
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", t8), {"'a'", "data_offsets must be"});
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", t8), {"'a'", "data_offsets must be"});
  // lying offsets / dtype / shape
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", t8), {"'a'", "hold 8 bytes but F32 [3] needs 12"});
  bad(raw_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", t8), {"'a'", "hold 8 bytes but F64 [2] needs 16"});
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", t8), {"'a'", "overflows"});
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", t8), {"'a'", "end before they begin"});
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", t8 + t8), {"'a'", "gap", "data start"});
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", t8 + t8),
      {"'b'", "gap after tensor 'a'"});
  bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", t8 + "1234"),
      {"'b'", "overlap tensor 'a'"});
  // out of range / truncated data / trailing bytes
  bad(raw_file("{" + A + "}", "1234"), {"'a'", "run past the data section (4 bytes"});
  bad(raw_file("{" + A + "}", t8 + "x"), {"9 bytes but the tensors cover 8", "trailing"});
  bad(raw_file("{}", "x"), {"1 bytes but the tensors cover 0"});
}

BOOST_AUTO_TEST_CASE(shard_planning_like_huggingface_hub) {
  // sizes: a=40, b=40, big=400 (oversize), c=40, d=80
  const std::vector<st::TensorSpec> specs{{"a", DType::F32, {10}}, {"b", DType::F32, {10}}, {"big", DType::F32, {100}},
                                          {"c", DType::F32, {10}}, {"d", DType::F32, {20}}};
  const auto plan = st::plan_shards(specs, 100);
  // greedy: a, b fill the open shard (80); big (> max) gets a shard of its own, emitted before
  // the open one; c would make 120 > 100, so [a, b] closes; d likewise closes [c].
  BOOST_REQUIRE(plan.size() == 4u);
  BOOST_TEST(plan[0].tensors.size() == 1u);
  BOOST_TEST(plan[0].tensors[0].name == "big");
  BOOST_TEST(plan[1].tensors.size() == 2u);  // a, b
  BOOST_TEST(plan[2].tensors.size() == 1u);  // c (c + d = 120 > 100)
  BOOST_TEST(plan[3].tensors[0].name == "d");
  BOOST_TEST(plan[0].file_name == "model-00001-of-00004.safetensors");
  BOOST_TEST(plan[3].file_name == "model-00004-of-00004.safetensors");
  BOOST_TEST(st::total_size(plan) == 600u);
  const auto wm = st::weight_map(plan);
  BOOST_TEST(wm.at("c") == "model-00003-of-00004.safetensors");

  const auto one = st::plan_shards(specs);
  BOOST_REQUIRE(one.size() == 1u);
  BOOST_TEST(one[0].file_name == "model.safetensors");
  BOOST_TEST(st::plan_shards(specs, 5'000'000'000, false)[0].file_name == "model-00001-of-00001.safetensors");
  BOOST_TEST(st::shard_file_name(162, 163) == "model-00163-of-00163.safetensors");

  const auto by = st::plan_shards(specs, {{"a", "x.safetensors"}, {"b", "y.safetensors"}, {"big", "x.safetensors"},
                                          {"c", "y.safetensors"}, {"d", "x.safetensors"}});
  BOOST_REQUIRE(by.size() == 2u);
  BOOST_TEST(by[0].file_name == "x.safetensors");
  BOOST_TEST(by[0].size_bytes == 520u);
  check_error([&] { st::plan_shards(specs, {{"a", "x"}}); }, {"'b'", "not assigned"});
  check_error([&] { st::plan_shards({specs[0]}, {{"a", "x"}, {"q", "y"}}); }, {"'q'", "not in the tensor list"});
}

// Expected bytes from Python: json.dumps(index, indent=2, sort_keys=True) + "\n".
BOOST_AUTO_TEST_CASE(index_json_matches_transformers) {
  const std::map<std::string, std::string> wm{{"z.w", "model-00002-of-00002.safetensors"},
                                              {"a\xc3\xa9\xf0\x9f\x98\x80\x7f\x01\"\\/", "model-00001-of-00002.safetensors"},
                                              {"b", "model-00001-of-00002.safetensors"}};
  BOOST_TEST(st::index_json(wm, 14, 7) ==
             "{\n  \"metadata\": {\n    \"total_parameters\": 7,\n    \"total_size\": 14\n  },\n  \"weight_map\": {\n"
             "    \"a\\u00e9\\ud83d\\ude00\\u007f\\u0001\\\"\\\\/\": \"model-00001-of-00002.safetensors\",\n"
             "    \"b\": \"model-00001-of-00002.safetensors\",\n"
             "    \"z.w\": \"model-00002-of-00002.safetensors\"\n  }\n}\n");
  BOOST_TEST(st::index_json({}, 0) == "{\n  \"metadata\": {\n    \"total_size\": 0\n  },\n  \"weight_map\": {}\n}\n");
  // and parse_index reads it back
  const auto idx = st::parse_index(st::index_json(wm, 14, 7), "idx");
  BOOST_TEST(idx.weight_map.size() == 3u);
  BOOST_TEST(idx.weight_map[0].first == "a\xc3\xa9\xf0\x9f\x98\x80\x7f\x01\"\\/");
  BOOST_TEST(*idx.total_size == 14u);
}

BOOST_AUTO_TEST_CASE(sharded_checkpoint_round_trip) {
  TempDir dir;
  std::mt19937_64 rng(7);
  const auto specs = all_dtype_specs();
  std::map<std::string, std::vector<std::byte>> data;
  for (const auto& s : specs) data[s.name] = random_bytes(st::byte_size(s), rng);
  const auto plan = st::plan_shards(specs, 64);
  BOOST_REQUIRE(plan.size() > 3u);
  for (const auto& shard : plan) {
    st::FileWriter w(dir / shard.file_name, shard.tensors);
    for (const auto& s : shard.tensors) w.write(s.name, data[s.name]);
    w.commit();
  }
  st::write_index(dir.path, st::weight_map(plan), st::total_size(plan));

  st::Checkpoint ck(dir.path);
  BOOST_TEST(ck.has_index());
  BOOST_TEST(ck.num_files() == plan.size());
  BOOST_TEST(ck.names().size() == specs.size());
  BOOST_TEST(*ck.declared_total_size() == st::total_size(plan));
  BOOST_TEST(ck.total_size() == st::total_size(plan));
  for (const auto& s : specs) {
    const auto v = ck.view(s.name);
    BOOST_TEST(v.shape == s.shape);
    BOOST_TEST(std::equal(v.data, v.data + v.size_bytes(), data[s.name].begin(), data[s.name].end()));
    BOOST_TEST(ck.locate(s.name).file.path().filename() == st::weight_map(plan).at(s.name));
  }
  check_error([&] { (void)ck.view("missing"); }, {dir.path.string(), "'missing'"});

  // without the index, the directory's files are read directly
  fs::remove(dir / "model.safetensors.index.json");
  st::Checkpoint ck2(dir.path);
  BOOST_TEST(!ck2.has_index());
  BOOST_TEST(ck2.names().size() == specs.size());
  BOOST_TEST(ck2.total_size() == st::total_size(plan));
  // ... and a tensor in two files is ambiguous
  st::save_file(dir / "zzz.safetensors", {{specs[0].name, ck2.view(specs[0].name)}});
  check_error([&] { st::Checkpoint c(dir.path); }, {dir.path.string(), "'" + specs[0].name + "'", "zzz.safetensors"});
}

BOOST_AUTO_TEST_CASE(checkpoint_rejects_bad_indexes) {
  TempDir dir;
  const fs::path sub = dir / "ck";
  fs::create_directories(sub);
  const std::vector<std::byte> four(4, std::byte{1});
  st::save_file(sub / "s1.safetensors", {{"a", AnyConstView(four.data(), DType::F32, {1})}});
  st::save_file(dir / "outside.safetensors", {{"x", AnyConstView(four.data(), DType::F32, {1})}});
  const fs::path ix = sub / "model.safetensors.index.json";
  const std::string ixs = ix.string();
  const auto with_index = [&](const std::string& text, std::initializer_list<std::string> frags) {
    write_all(ix, text);
    std::vector<std::string> all{ixs};
    all.insert(all.end(), frags);
    const std::string msg = error_of([&] {
      st::Checkpoint c(sub);
      c.verify();
    });
    for (const auto& frag : all) BOOST_TEST(msg.find(frag) != std::string::npos, "message '" << msg << "' lacks '" << frag << "'");
  };
  with_index(R"({"weight_map":{"a":"s2.safetensors"}})", {"'a'", "'s2.safetensors'", "missing"});
  with_index(R"({"weight_map":{"a":"s1.safetensors","a":"s1.safetensors"}})", {"'a'", "listed twice"});
  with_index(R"({"weight_map":{"a":"../outside.safetensors"}})", {"'a'", "'../outside.safetensors'", "not a name inside"});
  with_index(R"({"weight_map":{"a":"sub/../../outside.safetensors"}})", {"'a'", "not a name inside"});
  with_index(R"({"weight_map":{"a":")" + (dir / "outside.safetensors").string() + R"("}})", {"'a'", "not a name inside"});
  with_index(R"({"weight_map":{"a":3}})", {"'a'", "not a file name"});
  with_index(R"({"metadata":{}})", {"no \"weight_map\""});
  with_index(R"({"weight_map":{"a":"s1.safetensors")", {"invalid JSON"});
  // the index names a tensor the shard lacks (found on first use, or by verify())
  {
    write_all(ix, R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}})");
    st::Checkpoint c(sub);
    BOOST_TEST(c.view("a").numel() == 1);
    check_error([&] { (void)c.view("b"); }, {(sub / "s1.safetensors").string(), "'b'", "maps it to this file"});
    check_error([&] { c.verify(); }, {"'b'"});
  }
  // a symlink that leads out of the directory
  fs::create_symlink(dir / "outside.safetensors", sub / "link.safetensors");
  with_index(R"({"weight_map":{"x":"link.safetensors"}})", {"'x'", "'link.safetensors'", "outside the checkpoint directory"});
  {
    st::Checkpoint c(sub, st::Checkpoint::Options{.allow_external_symlinks = true});
    BOOST_TEST(c.view("x").numel() == 1);
  }
  // a shard that is damaged is reported with its own path
  write_all(sub / "s1.safetensors", raw_file("{}", "xx"));
  write_all(ix, R"({"weight_map":{"a":"s1.safetensors"}})");
  check_error([&] { st::Checkpoint(sub).verify(); }, {(sub / "s1.safetensors").string(), "trailing"});
  // an empty directory
  const fs::path empty = dir / "empty";
  fs::create_directories(empty);
  check_error([&] { st::Checkpoint c(empty); }, {empty.string(), "no model.safetensors.index.json"});
}

BOOST_AUTO_TEST_CASE(atomic_file_replaces_atomically) {
  TempDir dir;
  const fs::path p = dir / "f.txt";
  write_all(p, "old");
  {
    AtomicFile f(p, 10);
    f.pwrite(std::string_view("new"), 7);
    BOOST_TEST(read_all(p) == "old");
    BOOST_TEST(fs::exists(f.temp_path()));
    f.commit();
  }
  BOOST_TEST(read_all(p) == std::string(7, '\0') + "new");
  {
    AtomicFile f(p);
    f.pwrite(std::string_view("abandoned"), 0);
  }
  BOOST_TEST(read_all(p) == std::string(7, '\0') + "new");
  BOOST_TEST(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}) == 1);
  AtomicFile::write_all(p, "x");
  BOOST_TEST(read_all(p) == "x");
}

BOOST_AUTO_TEST_SUITE_END()

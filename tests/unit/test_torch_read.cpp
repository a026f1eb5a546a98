// torch.save read side: zip container, safe unpickler, TE FP8 records, Megatron directories.
// Archives and pickles are built here byte by byte from the format descriptions (independent of
// the readers); byte sequences quoted from the reference (TE enum pickles, the minimal writer
// recipe) are checked verbatim. Cross-checks against real torch.save output live in
// tests/python/test_torch_read_interop.py.
#include <boost/test/unit_test.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <zlib.h>

#include "ckbridge/format/megatron_reader.hpp"
#include "ckbridge/format/pickle_reader.hpp"
#include "ckbridge/format/te_fp8_reader.hpp"
#include "ckbridge/format/torch_zip_reader.hpp"

using namespace ckbridge;
using namespace std::string_literals;
using namespace ckbridge::format;
namespace pk = ckbridge::pickle;

namespace {

// ---------------------------------------------------------------- byte builders
void put16(std::string& s, unsigned v) { s += char(v & 255); s += char((v >> 8) & 255); }
void put32(std::string& s, std::uint32_t v) { put16(s, v & 0xFFFF); put16(s, v >> 16); }
void put64(std::string& s, std::uint64_t v) { put32(s, std::uint32_t(v)); put32(s, std::uint32_t(v >> 32)); }

struct Entry { std::string name, data; int method = 0; };

// Stored zip in torch's shape: 64-byte aligned data via an FB extra, zip64 end records, real CRCs.
// force_zip64: sizes/offsets go through 0xFFFFFFFF + zip64 extras in the central directory.
std::string make_zip(const std::vector<Entry>& es, bool force_zip64 = false) {
  std::string z;
  struct Cd { std::string name; std::uint32_t crc; std::uint64_t size, off; int method; };
  std::vector<Cd> cds;
  for (const auto& e : es) {
    const std::uint64_t off = z.size();
    const auto crc = static_cast<std::uint32_t>(::crc32(0, reinterpret_cast<const Bytef*>(e.data.data()), e.data.size()));
    z += "PK\x03\x04";
    put16(z, 20); put16(z, 0); put16(z, e.method); put16(z, 0); put16(z, 0);
    put32(z, crc); put32(z, e.data.size()); put32(z, e.data.size());
    put16(z, e.name.size());
    const std::size_t start = off + 30 + e.name.size() + 4;
    const std::size_t pad = (64 - start % 64) % 64;
    put16(z, 4 + pad);
    z += e.name;
    put16(z, 0x4246); put16(z, pad); z += std::string(pad, 'Z');
    z += e.data;
    cds.push_back({e.name, crc, e.data.size(), off, e.method});
  }
  const std::uint64_t cd_off = z.size();
  for (const auto& c : cds) {
    z += "PK\x01\x02";
    put16(z, 0); put16(z, 0); put16(z, 0); put16(z, c.method); put16(z, 0); put16(z, 0);
    put32(z, c.crc);
    put32(z, force_zip64 ? 0xFFFFFFFF : c.size); put32(z, force_zip64 ? 0xFFFFFFFF : c.size);
    put16(z, c.name.size()); put16(z, force_zip64 ? 28 : 0); put16(z, 0); put16(z, 0); put16(z, 0); put32(z, 0);
    put32(z, force_zip64 ? 0xFFFFFFFF : c.off);
    z += c.name;
    if (force_zip64) { put16(z, 1); put16(z, 24); put64(z, c.size); put64(z, c.size); put64(z, c.off); }
  }
  const std::uint64_t cd_size = z.size() - cd_off, z64 = z.size();
  z += "PK\x06\x06"; put64(z, 44); put16(z, 0x31E); put16(z, 45); put32(z, 0); put32(z, 0);
  put64(z, cds.size()); put64(z, cds.size()); put64(z, cd_size); put64(z, cd_off);
  z += "PK\x06\x07"; put32(z, 0); put64(z, z64); put32(z, 1);
  z += "PK\x05\x06"; put16(z, 0); put16(z, 0);
  put16(z, force_zip64 ? 0xFFFF : cds.size()); put16(z, force_zip64 ? 0xFFFF : cds.size());
  put32(z, force_zip64 ? 0xFFFFFFFF : cd_size); put32(z, force_zip64 ? 0xFFFFFFFF : cd_off); put16(z, 0);
  return z;
}

std::vector<Entry> torch_entries(const std::string& pkl, const std::vector<std::pair<std::string, std::string>>& storages,
                                 const std::string& prefix = "archive") {
  std::vector<Entry> es{{prefix + "/data.pkl", pkl}, {prefix + "/byteorder", "little"}};
  for (const auto& [k, v] : storages) es.push_back({prefix + "/data/" + k, v});
  es.push_back({prefix + "/version", "3\n"});
  return es;
}

std::span<const std::byte> span_of(const std::string& s) { return {reinterpret_cast<const std::byte*>(s.data()), s.size()}; }

// Protocol-2 pickle builder (file-formats.md §2.5).
struct P {
  std::string b = "\x80\x02";
  P& raw(const std::string& s) { b += s; return *this; }
  P& op(char c) { b += c; return *this; }
  P& mark() { return op('('); }
  P& str(const std::string& s) { b += 'X'; put32(b, s.size()); b += s; return *this; }
  P& i(std::int64_t v) {
    if (v >= 0 && v < 256) { b += 'K'; b += char(v); }
    else if (v >= INT32_MIN && v <= INT32_MAX) { b += 'J'; put32(b, std::uint32_t(v)); }
    else { b += "\x8a\x08"; put64(b, std::uint64_t(v)); }
    return *this;
  }
  P& f(double d) { std::uint64_t u; std::memcpy(&u, &d, 8); b += 'G'; for (int k = 7; k >= 0; --k) b += char((u >> (8 * k)) & 255); return *this; }
  P& global(const std::string& m, const std::string& n) { b += 'c'; b += m + "\n" + n + "\n"; return *this; }
  P& ints(const std::vector<std::int64_t>& v) { mark(); for (auto x : v) i(x); return op('t'); }
  // _rebuild_tensor_v2(('storage', torch.<storage>, key, 'cpu', numel), offset, size, stride, False, OrderedDict())
  P& tensor(const std::string& storage, const std::string& key, std::int64_t numel, std::int64_t off,
            const std::vector<std::int64_t>& size, const std::vector<std::int64_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    mark().str("storage").global("torch", storage).str(key).str("cpu").i(numel).op('t').op('Q');
    i(off).ints(size).ints(stride).op('\x89').global("collections", "OrderedDict").op(')').op('R');
    return op('t').op('R');
  }
  std::string done() { return b + "."; }
};

pk::ObjectPtr loads(const std::string& s, pk::Limits lim = {}) { return pk::loads(span_of(s), "test.pkl", lim); }

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}
bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

std::filesystem::path temp_dir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() / ("ckb_torch_read_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}
void write_file(const std::filesystem::path& p, const std::string& s) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(torch_read)

// ---------------------------------------------------------------- zip container

BOOST_AUTO_TEST_CASE(zip_records_and_offsets) {
  for (bool z64 : {false, true}) {
    const std::string blob(1000, 'q');
    const auto zip = make_zip(torch_entries("\x80\x02N.", {{"0", blob}, {"1", ""}}, "model_optim_rng"), z64);
    TorchZipReader r(span_of(zip), "mem.pt", ZipReadOptions{.verify_crc = true});
    BOOST_TEST(r.prefix() == "model_optim_rng");
    BOOST_TEST(r.records().size() == 5u);
    BOOST_TEST(r.format_version() == 3);
    BOOST_TEST(r.little_endian());
    auto b = r.bytes("data/0");
    BOOST_TEST(b.size() == 1000u);
    BOOST_TEST((reinterpret_cast<std::uintptr_t>(b.data()) - reinterpret_cast<std::uintptr_t>(zip.data())) % 64 == 0u);
    BOOST_TEST(std::string(reinterpret_cast<const char*>(b.data()), b.size()) == blob);
    BOOST_TEST(r.bytes("data/1").size() == 0u);
    BOOST_TEST(r.text("version") == "3\n");
    BOOST_TEST(!r.has("data/2"));
    BOOST_TEST(contains(error_of([&] { r.bytes("data/2"); }), "no record 'model_optim_rng/data/2'"));
  }
}

BOOST_AUTO_TEST_CASE(zip_crc_checked_on_request) {
  auto zip = make_zip(torch_entries("\x80\x02N.", {{"0", std::string(100, 'a')}}));
  TorchZipReader(span_of(zip), "ok.pt", ZipReadOptions{.verify_crc = true});
  const auto pos = zip.find(std::string(100, 'a'));
  zip[pos + 50] = 'b';
  TorchZipReader lazy(span_of(zip), "bad.pt");  // not verified by default, like torch.load
  const auto msg = error_of([&] { lazy.verify_crc(lazy.record("data/0")); });
  BOOST_TEST((contains(msg, "bad.pt") && contains(msg, "CRC-32 mismatch") && contains(msg, "archive/data/0")), msg);
}

BOOST_AUTO_TEST_CASE(zip_refuses_compressed_and_foreign_layouts) {
  std::vector<Entry> es = torch_entries("\x80\x02N.", {});
  es[0].method = 8;
  auto msg = error_of([&] { TorchZipReader(span_of(make_zip(es)), "c.pt"); });
  BOOST_TEST((contains(msg, "c.pt") && contains(msg, "compressed")), msg);
  msg = error_of([&] { TorchZipReader(span_of(make_zip({{"archive/data.pkl", "x"}, {"other/version", "3"}})), "p.pt"); });
  BOOST_TEST(contains(msg, "outside the archive folder"), msg);
  msg = error_of([&] { TorchZipReader(span_of(make_zip({{"archive/data.pkl", "x"}})), "v.pt"); });
  BOOST_TEST(contains(msg, "version"), msg);
  msg = error_of([&] { TorchZipReader(span_of(make_zip({{"archive/data.pkl", "x"}, {"archive/data.pkl", "y"}})), "d.pt"); });
  BOOST_TEST(contains(msg, "duplicate"), msg);
  const std::string legacy = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19................"s;
  msg = error_of([&] { TorchZipReader(span_of(legacy), "old.pt"); });
  BOOST_TEST(contains(msg, "legacy"), msg);
}

// Every truncation and every single-byte corruption of the container either reads consistently or
// fails with ckbridge::Error; never anything else (ASan/UBSan builds check "never reads out of bounds").
BOOST_AUTO_TEST_CASE(zip_truncation_and_corruption_property) {
  const auto zip = make_zip(torch_entries(P().tensor("FloatStorage", "0", 4, 0, {4}, {1}).done(), {{"0", std::string(16, '\1')}}));
  for (std::size_t n = 0; n < zip.size(); ++n) {
    const std::string cut = zip.substr(0, n);
    const auto msg = error_of([&] { TorchFile(span_of(cut), "cut.pt"); });
    BOOST_TEST(contains(msg, "cut.pt"), "length " << n << ": " << msg);
  }
  std::mt19937 rng(5);
  std::size_t errors = 0, ok = 0;
  for (std::size_t pos = 0; pos < zip.size(); ++pos) {
    std::string bad = zip;
    bad[pos] = char(bad[pos] ^ (1 + rng() % 255));
    try {
      TorchFile f(span_of(bad), "flip.pt");
      // Anything accepted must still be inside the buffer.
      for (const auto& r : f.zip().records()) BOOST_TEST(r.data_offset + r.size <= bad.size());
      ++ok;
    } catch (const Error& e) {
      BOOST_TEST(contains(e.what(), "flip.pt"));
      ++errors;
    }
  }
  BOOST_TEST(errors > 0u);
  BOOST_TEST(ok > 0u);  // flips in padding/CRC fields are harmless
}

BOOST_AUTO_TEST_CASE(zip_lying_central_directory) {
  const auto zip = make_zip(torch_entries("\x80\x02N.", {{"0", std::string(64, 'x')}}));
  const auto z64 = zip.rfind("PK\x06\x06");
  // entry count larger than the directory can hold
  std::string bad = zip;
  for (int k = 0; k < 8; ++k) bad[z64 + 32 + k] = k == 0 ? char(0xF0) : (k < 3 ? char(0xFF) : 0);
  auto msg = error_of([&] { TorchZipReader(span_of(bad), "lie.pt"); });
  BOOST_TEST((contains(msg, "lie.pt") && contains(msg, "entries")), msg);
  // local header offset of the first entry points into another record's data
  bad = zip;
  const auto cd = zip.find("PK\x01\x02");
  bad[cd + 42] = 64;
  msg = error_of([&] { TorchZipReader(span_of(bad), "lie2.pt"); });
  BOOST_TEST((contains(msg, "lie2.pt") && contains(msg, "offset 64")), msg);
}

// ---------------------------------------------------------------- unpickler

BOOST_AUTO_TEST_CASE(reference_minimal_writer_recipe) {
  // file-formats.md §2.5, byte for byte (memo-free, as the recipe writes it).
  P p;
  p.op('}').mark().str("iteration").i(5).str("model").global("collections", "OrderedDict").op(')').op('R').mark();
  p.str("w").tensor("BFloat16Storage", "0", 6, 0, {2, 3}, {3, 1}).op('u');
  p.str("args").global("argparse", "Namespace").op(')').raw("\x81").op('}').mark().str("num_layers").i(2).op('u').op('b');
  p.op('u');
  const auto zip = make_zip(torch_entries(p.done(), {{"0", "\x01\x00\x02\x00\x03\x00\x04\x00\x05\x00\x06\x00"s}}));
  TorchFile f(span_of(zip), "recipe.pt");
  const auto& root = *f.root();
  BOOST_TEST(root.get("iteration")->as_int() == 5);
  auto model = root.get("model");
  BOOST_TEST(model->name == "collections.OrderedDict");
  const auto& t = *model->get("w")->tensor;
  BOOST_TEST((t.dtype == DType::BF16));
  BOOST_TEST(t.shape == (Shape{2, 3}));
  auto v = f.view(t).as<bf16_t, 2>();
  BOOST_TEST(v(1, 2).bits == 6);
  BOOST_TEST(v(0, 1).bits == 2);
  auto args = root.get("args");
  BOOST_TEST((args->kind == pk::Kind::Namespace));
  BOOST_TEST(args->get("num_layers")->as_int() == 2);
}

BOOST_AUTO_TEST_CASE(opcode_coverage) {
  // Protocol 4 framing, memoize, stack global, short strings, sets, bytes, DUP/POP/POP_MARK, NEWOBJ_EX.
  std::string full = "\x80\x04\x95"s;
  put64(full, 0);
  full += "("s;
  full += "\x8c\x01" "a" "\x94" "\x8c\x05" "hello" "\x94"s;                 // 'a', 'hello' memoized as 0, 1
  full += "\x8c\x0b" "collections" "\x8c\x0b" "OrderedDict" "\x93" ")R\x94"s;  // OrderedDict()
  full += "h\x00" "h\x01" "s"s;                                              // od['a'] = 'hello'
  full += "\x8f(K\x01K\x02\x90"s;                                            // {1, 2}
  full += "C\x03\x00\x01\x02"s;                                              // b'\0\1\2'
  full += "B\x01\x00\x00\x00\xff"s;                                          // b'\xff'
  full += "K\x07" "2" "0"s;                                                  // DUP + POP leave one 7
  full += "(K\x01K\x02" "1"s;                                                // POP_MARK
  full += "\x8c\x03" "mod" "\x8c\x03" "Cls" "\x93" ")}\x92"s;                // NEWOBJ_EX(Cls, (), {})
  full += "\x8a\x01\xff" "\x8a\x02\x00\x80" "\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01" "\x8a\x00"s;  // -1, -32768, 2**64, 0
  full += "I01\nI-42\nL123456789012345678901234567890L\nF2.5\n"s;
  full += "(K\x05\x91"s;                                                     // frozenset({5})
  full += "(\x8c\x01" "k" "\x8c\x01" "v" "d"s;                                // DICT
  full += "(K\x01K\x02" "l"s;                                                // LIST
  full += "t."s;
  auto root = loads(full);
  BOOST_REQUIRE((root->kind == pk::Kind::Tuple));
  const auto& it = root->items;
  BOOST_REQUIRE_EQUAL(it.size(), 19u);
  BOOST_TEST(it[0]->as_str() == "a");
  BOOST_TEST(it[1]->as_str() == "hello");
  BOOST_TEST(it[2]->name == "collections.OrderedDict");
  BOOST_TEST(it[2]->get("a")->as_str() == "hello");
  BOOST_TEST((it[3]->kind == pk::Kind::Set && it[3]->items.size() == 2));
  BOOST_TEST((it[4]->kind == pk::Kind::Bytes && it[4]->s == std::string("\0\1\2", 3)));
  BOOST_TEST(it[5]->s == "\xff");
  BOOST_TEST(it[6]->as_int() == 7);
  BOOST_TEST((it[7]->kind == pk::Kind::NewObj && it[7]->callable->qualified_name() == "mod.Cls"));
  BOOST_TEST(it[8]->as_int() == -1);
  BOOST_TEST(it[9]->as_int() == -32768);
  BOOST_TEST((it[10]->kind == pk::Kind::BigInt && it[10]->s == "18446744073709551616"));
  BOOST_TEST(it[11]->as_int() == 0);
  BOOST_TEST(it[12]->as_bool() == true);
  BOOST_TEST(it[13]->as_int() == -42);
  BOOST_TEST(it[14]->s == "123456789012345678901234567890");
  BOOST_TEST(it[15]->as_float() == 2.5);
  BOOST_TEST((it[16]->kind == pk::Kind::Set && it[16]->items.size() == 1));
  BOOST_TEST(it[17]->get("k")->as_str() == "v");
  BOOST_TEST((it[18]->kind == pk::Kind::List && it[18]->items.size() == 2));
}

BOOST_AUTO_TEST_CASE(longs_match_twos_complement) {
  std::mt19937_64 rng(11);
  for (int n = 0; n < 2000; ++n) {
    std::int64_t v = static_cast<std::int64_t>(rng()) >> (rng() % 64);
    std::string s = "\x80\x02\x8a";
    int len = 1;  // minimal two's complement length, as CPython writes it
    while (len < 8 && !(v >> (8 * len - 1) == 0 || v >> (8 * len - 1) == -1)) ++len;
    s += char(len);
    for (int k = 0; k < len; ++k) s += char((static_cast<std::uint64_t>(v) >> (8 * k)) & 255);
    BOOST_TEST(loads(s + ".")->as_int() == v);
  }
  // 2**100 and -(2**100)
  std::string big = "\x80\x02\x8a\x0e"s + std::string(12, '\0') + "\x10"s + std::string(1, '\0') + ".";
  BOOST_TEST(loads(big)->s == "1267650600228229401496703205376");
  std::string nbig = "\x80\x02\x8a\x0d"s + std::string(12, '\0') + "\xf0."s;
  BOOST_TEST(loads(nbig)->s == "-1267650600228229401496703205376");
}

BOOST_AUTO_TEST_CASE(tensor_encodings) {
  // v3 + UntypedStorage + float8 dtype; parameter; _rebuild_from_type_v2 with attributes; codecs bytes.
  P p;
  p.mark();
  p.global("torch._utils", "_rebuild_tensor_v3").mark().mark().str("storage").global("torch.storage", "UntypedStorage");
  p.str("0").str("cpu").i(6).op('t').op('Q').i(1).ints({2, 2}).ints({1, 2}).op('\x89');
  p.global("collections", "OrderedDict").op(')').op('R').global("torch", "float8_e4m3fn").op('t').op('R');
  p.global("torch._utils", "_rebuild_parameter").mark().tensor("FloatStorage", "1", 3, 0, {3}, {1}).op('\x88');
  p.global("collections", "OrderedDict").op(')').op('R').op('t').op('R');
  p.global("torch._tensor", "_rebuild_from_type_v2").mark().global("torch._utils", "_rebuild_tensor_v2").global("torch", "Tensor");
  p.mark().mark().str("storage").global("torch", "LongStorage").str("2").str("cpu").i(2).op('t').op('Q').i(0).ints({2}).ints({1});
  p.op('\x89').global("collections", "OrderedDict").op(')').op('R').op('t');
  p.op('}').str("tensor_model_parallel").op('\x88').op('s').op('t').op('R');
  p.global("_codecs", "encode").str("\xc3\xbf"s + '\0' + "A").str("latin1").op('\x86').op('R');
  p.op('t');
  std::string six("\x10\x20\x30\x40\x50\x60", 6), fl(12, '\0'), lg(16, '\0');
  fl[4] = 1; lg[8] = 9;
  const auto zip = make_zip(torch_entries(p.done(), {{"0", six}, {"1", fl}, {"2", lg}}));
  TorchFile f(span_of(zip), "enc.pt");
  const auto& it = f.root()->items;
  const auto& t8 = *it[0]->tensor;
  BOOST_TEST((t8.dtype == DType::F8_E4M3 && t8.dtype_name == "float8_e4m3fn"));
  auto v8 = f.view(t8).as<e4m3_t, 2>();  // offset 1, column-major 2x2: elements 1,2 / 3,4
  BOOST_TEST(v8(0, 0).bits == 0x20);
  BOOST_TEST(v8(1, 0).bits == 0x30);
  BOOST_TEST(v8(0, 1).bits == 0x40);
  BOOST_TEST(v8(1, 1).bits == 0x50);
  BOOST_TEST(it[1]->tensor->is_parameter);
  BOOST_TEST(it[1]->tensor->requires_grad);
  BOOST_TEST((f.view(*it[1]->tensor).as<float, 1>()(1) != 0.0f));
  BOOST_TEST((it[2]->tensor->dtype == DType::I64));
  BOOST_TEST(it[2]->tensor->attributes->get("tensor_model_parallel")->as_bool());
  BOOST_TEST((f.view(*it[2]->tensor).as<std::int64_t, 1>()(1) == 9));
  BOOST_TEST((it[3]->kind == pk::Kind::Bytes && it[3]->s == "\xff"s + '\0' + "A"));
}

BOOST_AUTO_TEST_CASE(random_views_match_reference_indexing) {
  // Property: for random shapes/strides/offsets inside a storage, view(i...) is storage[offset + sum(i*stride)].
  std::mt19937 rng(3);
  for (int n = 0; n < 200; ++n) {
    const int rank = 1 + rng() % 3;
    std::vector<std::int64_t> size(rank), stride(rank);
    std::int64_t extent = 0;
    for (int d = 0; d < rank; ++d) {
      size[d] = 1 + rng() % 5;
      stride[d] = rng() % 7;
      extent += (size[d] - 1) * stride[d];
    }
    const std::int64_t off = rng() % 4, numel = off + extent + 1 + rng() % 3;
    std::string storage(numel * 4, '\0');
    for (std::int64_t k = 0; k < numel; ++k) {
      const float x = static_cast<float>(k) * 1.5f;
      std::memcpy(&storage[k * 4], &x, 4);
    }
    const auto zip = make_zip(torch_entries(P().tensor("FloatStorage", "0", numel, off, size, stride).done(), {{"0", storage}}));
    TorchFile f(span_of(zip), "rand.pt");
    const auto v = f.view(*f.root()->tensor);
    for (std::int64_t e = 0; e < numel * 3; ++e) {
      std::int64_t lin = off, rem = e;
      std::vector<std::int64_t> idx(rank);
      for (int d = rank - 1; d >= 0; --d) { idx[d] = rem % size[d]; rem /= size[d]; lin += idx[d] * stride[d]; }
      std::int64_t pos = 0;
      for (int d = 0; d < rank; ++d) pos += idx[d] * v.strides[d];
      float got;
      std::memcpy(&got, v.data + pos * 4, 4);
      BOOST_TEST(got == static_cast<float>(lin) * 1.5f);
    }
  }
}

BOOST_AUTO_TEST_CASE(malformed_pickles_are_errors) {
  struct Case { std::string bytes, needle; };
  std::string deep = "\x80\x02";
  for (int k = 0; k < 2000; ++k) deep += "]";
  for (int k = 0; k < 1999; ++k) deep += "a";
  std::string laughs = "\x80\x02K\x01";  // x = (x, x) forty times: 2**40 expanded nodes
  for (int k = 0; k < 40; ++k) laughs += "2\x86";
  const std::vector<Case> cases = {
      {"\x80\x02\xff.", "unknown opcode 0xff"},
      {"\x80\x02}q\x00\xfe."s, "offset 5"},
      {"\x80\x02]q\x00h\x00" "a."s, "contain itself"},                     // l.append(l)
      {"\x80\x02]q\x00]h\x00" "aa."s, "cycle"},                          // l.append([l])
      {"\x80\x02}q\x00X\x01\x00\x00\x00k]h\x00" "as."s, "cycle"},          // d['k'] = [d]
      {deep + ".", "nesting deeper"},
      {laughs + ".", "expands to more than"},
      {"\x80\x02X\xff\xff\xff\xff."s, "runs past the end"},
      {"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xff.", "runs past the end"},
      {"\x80\x02\x8b\x00\x00\x00\x10."s, "exceeds the limit"},
      {"\x80\x02h\x05.", "memo key 5"},
      {"\x80\x02t.", "no MARK"},
      {"\x80\x02R.", "stack underflow"},
      {"\x80\x02K\x01", "without STOP"},
      {"\x80\x02K\x01K\x01.", "STOP with 2"},
      {"\x80\x02K\x01}b.", "BUILD on a int"},
      {"\x80\x02" "ca\nb\n)\x81}b}b."s, "second BUILD"},
      {"\x80\x06N.", "protocol 6"},
      {P().mark().str("storage").global("a", "B").str("0").str("cpu").i(1).op('t').op('Q').done(), "not a torch storage"},
      {P().mark().str("storage").global("torch", "NopeStorage").str("0").str("cpu").i(1).op('t').op('Q').done(), "unknown storage class"},
      {"\x80\x02X\x01\x00\x00\x00xQ."s, "persistent id"},
      {"\x80\x02K\x01s.", "stack underflow"},
      {"\x80\x02]K\x01K\x02s.", "not a dict"},
      {P().global("torch._utils", "_rebuild_parameter_with_state").mark().tensor("FloatStorage", "0", 1, 0, {1}, {1})
           .op('\x88').op('t').op('R').done(), "at least 4 arguments"},
      {P().global("torch._utils", "_rebuild_tensor_v2").mark().i(1).op('t').op('R').done(), "first argument is a int, not a storage"},
  };
  pk::Limits lim;
  lim.max_weight = 1u << 20;
  for (const auto& c : cases) {
    const auto msg = error_of([&] { loads(c.bytes, lim); });
    BOOST_TEST((contains(msg, "test.pkl") && contains(msg, c.needle)), "needle '" << c.needle << "': " << msg);
  }
  // Memo ids: sparse ones work, holes in the dense range are refused
  auto sp = loads("\x80\x02K\x05r\x40\x42\x0f\x00j\x40\x42\x0f\x00\x86."s);
  BOOST_TEST(sp->items[1]->as_int() == 5);
  BOOST_TEST(contains(error_of([&] { loads("\x80\x02K\x05q\x0ah\x05."s); }), "memo key 5 was never stored"));
  // Sharing without cycles is fine: x = [1]; (x, x)
  auto ok = loads("\x80\x02]q\x00K\x01" "ah\x00\x86."s);
  BOOST_TEST(ok->items[0].get() == ok->items[1].get());
}

BOOST_AUTO_TEST_CASE(tensor_bounds_are_checked) {
  // view reaching past the storage; negative stride; record size differing from the declared storage
  auto msg = error_of([&] { loads(P().tensor("FloatStorage", "0", 15, 0, {4, 4}, {4, 1}).done()); });
  BOOST_TEST(contains(msg, "reaches past storage '0'"), msg);
  msg = error_of([&] { loads(P().tensor("FloatStorage", "0", 15, 3, {2}, {-1}).done()); });
  BOOST_TEST(contains(msg, "negative"), msg);
  msg = error_of([&] { loads(P().tensor("FloatStorage", "0", 16, 0, {2, 2}, {1}).done()); });
  BOOST_TEST(contains(msg, "differ in rank"), msg);
  const auto zip = make_zip(torch_entries(P().tensor("FloatStorage", "0", 4, 0, {4}, {1}).done(), {{"0", std::string(12, '\0')}}));
  TorchFile f(span_of(zip), "short.pt");
  msg = error_of([&] { f.view(*f.root()->tensor); });
  BOOST_TEST((contains(msg, "short.pt") && contains(msg, "12 bytes") && contains(msg, "16 bytes")), msg);
  // the same key with two different declarations
  P p;
  p.mark().tensor("FloatStorage", "0", 4, 0, {4}, {1}).tensor("FloatStorage", "0", 8, 0, {4}, {1}).op('t');
  msg = error_of([&] { loads(p.done()); });
  BOOST_TEST(contains(msg, "earlier as FloatStorage[4]"), msg);
}

// ---------------------------------------------------------------- TE FP8

namespace {
// fp8-blockwise.md §2.2: the enum forms, byte for byte (protocol 2, as in the reference).
const std::string kEnumPybind = "ctransformer_engine_torch\nDType\nq\x00)\x81q\x01K\x07" "b"s;
const std::string kEnumPybind23 = "ctransformer_engine_torch\nDType\nq\x00)\x81q\x01K\x06" "b"s;
const std::string kEnum216 = "ctransformer_engine_torch\nDType\nq\x00K\x07\x85q\x01R"s;
const std::string kEnum217 = "ctransformer_engine.pytorch.constants\nDType\nK\x07\x85R";
const std::string kMod = "transformer_engine.pytorch.tensor.float8_blockwise_tensor";

enum class Form { Getattr9, Getattr10Fmt, Getattr10None, Module10 };

std::string te_pickle(Form form, const std::string& enum_bytes, std::int64_t m, std::int64_t n, std::int64_t scale_rows,
                      std::int64_t scale_cols, bool pow2) {
  P p;
  if (form == Form::Module10) {
    p.global(kMod, "_make_float8_blockwise_tensor_in_reduce_ex");
  } else {
    p.global("__builtin__", "getattr").global(kMod, "Float8BlockwiseQTensor").str("_make_in_reduce_ex").op('\x86').op('R');
  }
  p.mark();
  p.global("torch", "Size").ints({m, n}).op('\x85').op('R');
  p.tensor("ByteStorage", "0", m * n, 0, {m, n}, {n, 1});
  p.tensor("FloatStorage", "1", scale_rows * scale_cols, 0, {scale_rows, scale_cols}, {scale_cols, 1});
  p.op('N').op('N');
  p.raw(enum_bytes);
  p.b += "q\x20";  // memoize the enum, reused by the quantizer like the real pickler does
  p.global("torch", "bfloat16");
  p.global(kMod, "Float8BlockQuantizer").op(')').raw("\x81").op('}').mark();
  p.str("rowwise_usage").op('\x88').str("columnwise_usage").op('\x89').str("internal").op('\x89');
  if (form == Form::Getattr10None || form == Form::Module10) p.str("optimize_for_gemm").op(']').op('\x89').op('a');
  p.str("dtype").raw("h\x20").str("block_len").i(128).str("force_pow_2_scales").op(pow2 ? '\x88' : '\x89');
  p.str("amax_epsilon").f(0.0).str("block_scaling_dim").i(2);
  if (form == Form::Getattr10Fmt) p.str("all_gather_usage").op(']').op('\x89').op('a');
  p.op('u').op('b');
  p.op('\x88');
  if (form == Form::Getattr10Fmt) p.global("transformer_engine_torch", "Float8BlockScaleTensorFormat").op(')').raw("\x81").i(0).op('b');
  if (form == Form::Getattr10None || form == Form::Module10) p.op('N');
  p.op('t').op('R');
  return p.done();
}

TeFp8BlockwiseRef read_te(const std::string& pkl, TeDTypeNumbering num = TeDTypeNumbering::Auto) {
  auto root = loads(pkl);
  BOOST_REQUIRE(is_te_fp8_blockwise(*root));
  return read_te_fp8_blockwise(*root, "w", num);
}
}  // namespace

BOOST_AUTO_TEST_CASE(te_fp8_every_form) {
  struct C { Form form; std::string enm; std::size_t nargs; bool module; std::optional<std::int64_t> fmt; bool ambiguous; };
  const std::vector<C> cs = {
      {Form::Getattr9, kEnumPybind, 9, false, std::nullopt, true},       // TE 2.4
      {Form::Getattr9, kEnumPybind23, 9, false, std::nullopt, false},    // TE 2.3 numbering
      {Form::Getattr10Fmt, kEnumPybind, 10, false, 0, false},            // TE 2.5 - 2.11
      {Form::Getattr10None, kEnumPybind, 10, false, std::nullopt, false},  // TE 2.12 - 2.15
      {Form::Module10, kEnum216, 10, true, std::nullopt, false},         // TE 2.16
      {Form::Module10, kEnum217, 10, true, std::nullopt, false},         // TE >= 2.17
  };
  for (const auto& c : cs) {
    const auto r = read_te(te_pickle(c.form, c.enm, 300, 520, 3, 8, true));
    BOOST_TEST(r.shape == (Shape{300, 520}));
    BOOST_TEST((r.fp8_dtype == DType::F8_E4M3));
    BOOST_TEST(r.num_args == c.nargs);
    BOOST_TEST(r.module_level_rebuild == c.module);
    BOOST_TEST((r.data_format == c.fmt));
    BOOST_TEST(r.dtype_code_ambiguous == c.ambiguous);
    BOOST_TEST((r.fake_dtype == DType::BF16));
    BOOST_TEST(r.is_2d_scaled);
    BOOST_TEST(r.quantizer.present);
    BOOST_TEST(*r.quantizer.block_len == 128);
    BOOST_TEST(*r.quantizer.force_pow_2_scales);
    BOOST_TEST(*r.quantizer.block_scaling_dim == 2);
    BOOST_TEST(*r.quantizer.amax_epsilon == 0.0);
    BOOST_TEST(*r.quantizer.rowwise_usage);
    BOOST_TEST(!*r.quantizer.columnwise_usage);
    BOOST_TEST(*r.quantizer.te_dtype_code == r.te_dtype_code);
    BOOST_TEST(r.quantizer.all_gather_usage.has_value() == (c.form == Form::Getattr10Fmt));
    BOOST_TEST(r.quantizer.optimize_for_gemm.has_value() == (c.form == Form::Getattr10None || c.form == Form::Module10));
    BOOST_TEST((r.rowwise_data->dtype == DType::U8 && r.rowwise_scale_inv->shape == Shape{3, 8}));
    BOOST_TEST(!r.columnwise_data.has_value());
  }
  // TE 2.3 numbering on request: 7 is E5M2 there
  BOOST_TEST((read_te(te_pickle(Form::Getattr9, kEnumPybind, 128, 128, 1, 4, false), TeDTypeNumbering::V2_3).fp8_dtype ==
              DType::F8_E5M2));
}

BOOST_AUTO_TEST_CASE(te_fp8_inconsistencies_are_errors) {
  auto msg = error_of([&] { read_te(te_pickle(Form::Module10, kEnum217, 300, 520, 2, 8, true)); });
  BOOST_TEST((contains(msg, "w:") && contains(msg, "does not cover")), msg);
  msg = error_of([&] { read_te(te_pickle(Form::Module10, kEnum217, 300, 520, 3, 4, true)); });
  BOOST_TEST(contains(msg, "does not cover"), msg);
  const std::string bf16_enum = "ctransformer_engine.pytorch.constants\nDType\nK\x06\x85R";
  msg = error_of([&] { read_te(te_pickle(Form::Module10, bf16_enum, 128, 128, 1, 4, true)); });
  BOOST_TEST(contains(msg, "not an FP8 type"), msg);
  BOOST_TEST(!is_te_fp8_blockwise(*loads("\x80\x02" "ca\nb\n)R.")));
}

// ---------------------------------------------------------------- Megatron directories

BOOST_AUTO_TEST_CASE(mp_rank_names) {
  BOOST_TEST((parse_mp_rank_name("mp_rank_00") == std::vector<int>{0}));
  BOOST_TEST((parse_mp_rank_name("mp_rank_03_001") == std::vector<int>{3, 1}));
  BOOST_TEST((parse_mp_rank_name("mp_rank_07_002_015") == std::vector<int>{7, 2, 15}));
  for (const char* bad : {"mp_rank_", "mp_rank_0a", "mp_rank_00__1", "mp_rank_00_001_002_003", "rank_00", "mp_rank_-1"})
    BOOST_TEST(!parse_mp_rank_name(bad).has_value(), bad);
}

BOOST_AUTO_TEST_CASE(checkpoint_directories) {
  const auto root = temp_dir("dirs");
  // iteration checkpoint, TP2 x EP2 (two-number names)
  write_file(root / "latest_checkpointed_iteration.txt", " 42\n");
  for (const char* d : {"mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"})
    write_file(root / "iter_0000042" / d / "model_optim_rng.pt", "");
  std::filesystem::create_directories(root / "iter_0000042" / "other");
  auto c = open_megatron_checkpoint(root);
  BOOST_TEST(!c.release);
  BOOST_TEST(c.iteration == 42);
  BOOST_TEST(c.ranks.size() == 4u);
  BOOST_TEST(c.rank(1, 1, 0).name == "mp_rank_01_001");  // default: second number is PP
  resolve_rank_axes(c, true);
  BOOST_TEST(c.rank(1, 0, 1).name == "mp_rank_01_001");
  // release
  const auto rel = temp_dir("rel");
  write_file(rel / "latest_checkpointed_iteration.txt", "release");
  std::filesystem::create_directories(rel / "release" / "mp_rank_00_000_000");
  auto msg = error_of([&] { open_megatron_checkpoint(rel); });
  BOOST_TEST((contains(msg, "mp_rank_00_000_000") && contains(msg, "model_optim_rng.pt: missing")), msg);
  write_file(rel / "release" / "mp_rank_00_000_000" / "model_optim_rng.pt", "");
  auto r = open_megatron_checkpoint(rel);
  BOOST_TEST(r.release);
  BOOST_TEST(r.ranks.front().model_file() == rel / "release" / "mp_rank_00_000_000" / "model_optim_rng.pt");
  // errors name the file
  write_file(rel / "latest_checkpointed_iteration.txt", "latest");
  msg = error_of([&] { open_megatron_checkpoint(rel); });
  BOOST_TEST((contains(msg, "latest_checkpointed_iteration.txt") && contains(msg, "'latest'")), msg);
  write_file(rel / "latest_checkpointed_iteration.txt", "7");
  msg = error_of([&] { open_megatron_checkpoint(rel); });
  BOOST_TEST(contains(msg, "iter_0000007"), msg);
  write_file(root / "iter_0000042" / "mp_rank_01" / "model_optim_rng.pt", "");
  msg = error_of([&] { open_megatron_checkpoint(root); });
  BOOST_TEST(contains(msg, "mixed mp_rank name forms"), msg);
  std::filesystem::remove_all(root);
  std::filesystem::remove_all(rel);
}

BOOST_AUTO_TEST_CASE(rank_file_contents) {
  const auto root = temp_dir("rankfile");
  P q;
  q.op('}').mark();
  q.str("args").global("argparse", "Namespace").op(')').raw("\x81").op('}').mark();
  q.str("pipeline_model_parallel_size").i(1).str("expert_model_parallel_size").i(4).op('u').op('b');
  q.str("checkpoint_version").f(3.0).str("iteration").i(0);
  q.str("model0").global("collections", "OrderedDict").op(')').op('R').mark();
  q.str("fp8").raw(te_pickle(Form::Module10, kEnum217, 128, 256, 1, 4, true).substr(2));
  q.b.pop_back();
  q.str("a._extra_state").tensor("ByteStorage", "2", 0, 0, {0}, {1});
  q.str("b._extra_state").op('N');
  // TE 1.x: io.BytesIO holding a nested torch.save archive (of None here)
  const std::string nested = make_zip(torch_entries("\x80\x02N."s, {}));
  std::string latin;  // bytes as _codecs.encode(latin-1 text) does it
  for (unsigned char c : nested) {
    if (c < 0x80) latin += char(c);
    else { latin += char(0xC0 | (c >> 6)); latin += char(0x80 | (c & 0x3F)); }
  }
  q.str("c._extra_state").global("_io", "BytesIO").op(')').raw("\x81").global("_codecs", "encode").str(latin).str("latin1");
  q.op('\x86').op('R').i(0).op('N').op('\x87').op('b');
  q.op('u').str("model1").op('}').op('u');
  const auto zip = make_zip(torch_entries(q.done(), {{"0", std::string(128 * 256, '\x7e')}, {"1", std::string(16, '\0')}, {"2", ""}},
                                          "model_optim_rng"));
  write_file(root / "model_optim_rng.pt", zip);
  auto f = load_megatron_rank_file(root / "model_optim_rng.pt");
  BOOST_TEST(*f.checkpoint_version == 3.0);
  BOOST_TEST(*f.iteration == 0);
  BOOST_TEST(*f.arg_int("expert_model_parallel_size") == 4);
  BOOST_REQUIRE_EQUAL(f.models.size(), 2u);
  BOOST_TEST(f.models[0].key == "model0");
  BOOST_TEST(f.models[1].entries.empty());
  const auto* e = f.models[0].find("fp8");
  BOOST_REQUIRE(e);
  BOOST_TEST((e->kind == ModelEntry::Kind::TeFp8Blockwise));
  const auto data = f.view(*e->fp8->rowwise_data).as<std::uint8_t, 2>();
  BOOST_TEST(data(127, 255) == 0x7e);
  const auto tv = f.file->te_fp8_views(*e->fp8, "fp8");
  BOOST_TEST(tv.data.shape == (Shape{128, 256}));
  BOOST_TEST(tv.scale_inv.shape == (Shape{1, 4}));
  BOOST_TEST((tv.scale_inv.dtype == DType::F32));
  BOOST_TEST((f.models[0].find("a._extra_state")->kind == ModelEntry::Kind::ExtraState));
  BOOST_TEST(f.models[0].find("a._extra_state")->tensor->numel() == 0);
  BOOST_TEST((f.models[0].find("b._extra_state")->kind == ModelEntry::Kind::ExtraState));
  BOOST_TEST(!extra_state_bytes(f, *f.models[0].find("b._extra_state")).has_value());
  BOOST_TEST(extra_state_bytes(f, *f.models[0].find("a._extra_state"))->size() == 0u);
  const auto nested_bytes = *extra_state_bytes(f, *f.models[0].find("c._extra_state"));
  BOOST_TEST(nested_bytes.size() == nested.size());
  TorchFile inner(nested_bytes, "extra_state");
  BOOST_TEST(inner.root()->is_none());
  // resolve two-number names from args: PP 1, EP 4 -> second number is EP
  MegatronCheckpointDir c;
  c.iter_dir = root;
  c.ranks.push_back({"mp_rank_00_003", root, {0, 3}});
  resolve_rank_axes(c, f);
  BOOST_TEST(c.ranks[0].ep == 3);
  BOOST_TEST(c.ranks[0].pp == 0);
  std::filesystem::remove_all(root);
}

BOOST_AUTO_TEST_SUITE_END()

// torch.save write side: pickle bytes against CPython's pickler output, the miniz/torch ZIP layout
// re-parsed independently (incl. the zip64 paths on a sink that drops bulk data), TE FP8 pickles,
// Megatron names, atomic files, error messages, and write -> read (ckbridge reader) -> write byte
// identity.
#include <boost/test/unit_test.hpp>

#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "ckbridge/core/tensor.hpp"
#include "ckbridge/format/megatron_layout.hpp"
#include "ckbridge/format/pickle_reader.hpp"
#include "ckbridge/format/pickle_writer.hpp"
#include "ckbridge/format/te_fp8_pickle.hpp"
#include "ckbridge/format/te_fp8_reader.hpp"
#include "ckbridge/format/torch_save.hpp"
#include "ckbridge/format/torch_zip_reader.hpp"
#include "ckbridge/format/zip_writer.hpp"

using namespace ckbridge;
using pickle::Value;
namespace fs = std::filesystem;

namespace {
std::vector<std::uint8_t> pk(const Value& v, pickle::PickleOptions o = {}) { return pickle::dumps(v, o).bytes; }

template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    BOOST_TEST_INFO("message: " << e.what());
    BOOST_CHECK(std::string(e.what()).find(needle) != std::string::npos);
    return;
  }
  BOOST_ERROR("expected ckbridge::Error containing '" << needle << "'");
}

std::uint64_t rd(const std::vector<std::byte>& b, std::uint64_t off, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint64_t>(b.at(off + i));
  return v;
}

// Keeps small writes (headers) with their offsets, drops large data writes; for multi-GiB layouts.
class HeaderSink final : public format::ByteSink {
public:
  void write(const void* p, std::size_t n) override {
    if (n <= 4096) {
      const auto* b = static_cast<const std::byte*>(p);
      chunks[pos] = std::vector<std::byte>(b, b + n);
    }
    pos += n;
  }
  void write_zeros(std::uint64_t n) override { pos += n; }
  // Little-endian field at an absolute offset inside a kept chunk.
  std::uint64_t at(std::uint64_t off, int n) const {
    auto it = chunks.upper_bound(off);
    BOOST_REQUIRE(it != chunks.begin());
    --it;
    BOOST_REQUIRE(off + n <= it->first + it->second.size());
    return rd(it->second, off - it->first, n);
  }
  std::map<std::uint64_t, std::vector<std::byte>> chunks;
  std::uint64_t pos = 0;
};

Tensor f32(Shape s, float start) {
  Tensor t(DType::F32, s);
  auto* p = reinterpret_cast<float*>(t.data());
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = start + float(i);
  return t;
}

format::TeFp8Tensor te_tensor(std::int64_t M, std::int64_t N) {
  auto codes = std::make_shared<Tensor>(DType::F8_E4M3, Shape{M, N});
  for (std::int64_t i = 0; i < M * N; ++i) codes->data()[i] = std::byte(i % 0x7F);
  auto scale = std::make_shared<Tensor>(f32({(M + 127) / 128, (N + 127) / 128}, 0.5f));
  format::TeFp8Tensor t;
  t.data = std::as_const(*codes).view();
  t.scale_inv = std::as_const(*scale).view();
  t.owner = std::make_shared<std::pair<std::shared_ptr<Tensor>, std::shared_ptr<Tensor>>>(codes, scale);
  return t;
}

// ckbridge reader tree -> writer tree, keeping object identity (memo) and tensor storages as
// zero-copy views into the archive that was read.
struct Rebuilder {
  const format::TorchZipReader& zr;
  std::map<const pickle::Object*, Value> seen;
  std::map<std::string, std::shared_ptr<const pickle::Storage>> storages;

  Value operator()(const pickle::ObjectPtr& p) {
    auto it = seen.find(p.get());
    if (it != seen.end()) return it->second;
    Value v = convert(*p);
    seen.emplace(p.get(), v);
    return v;
  }
  std::vector<Value> all(const std::vector<pickle::ObjectPtr>& xs) {
    std::vector<Value> out;
    for (const auto& x : xs) out.push_back((*this)(x));
    return out;
  }
  std::vector<Value::Item> items(const pickle::Object& o) {
    std::vector<Value::Item> out;
    for (const auto& [k, x] : o.dict) out.emplace_back((*this)(k), (*this)(x));
    return out;
  }
  Value convert(const pickle::Object& o) {
    using K = pickle::Kind;
    switch (o.kind) {
      case K::None: return Value();
      case K::Bool: return Value(o.b);
      case K::Int: return Value(o.i);
      case K::Float: return Value(o.f);
      case K::Str: return Value(o.s);
      case K::Bytes: return Value::bytes(o.s);
      case K::List: return Value::list(all(o.items));
      case K::Tuple:
        if (o.name == "torch.Size") {
          Shape s;
          for (const auto& x : o.items) s.push_back(x->i);
          return Value::torch_size(s);
        }
        return Value::tuple(all(o.items));
      case K::Dict:
        if (o.name == "collections.OrderedDict")
          return Value::ordered_dict(items(o), o.state ? std::optional<Value>((*this)(o.state)) : std::nullopt);
        return Value::dict(items(o));
      case K::Global: return Value::global(o.s, o.name);
      case K::Namespace: {
        std::vector<std::pair<std::string, Value>> a;
        for (const auto& [k, x] : o.dict) a.emplace_back(k->s, (*this)(x));
        return Value::namespace_(std::move(a));
      }
      case K::Call:
        return Value::reduce((*this)(o.callable), (*this)(o.args),
                             o.state ? std::optional<Value>((*this)(o.state)) : std::nullopt);
      case K::NewObj:
        return Value::newobj((*this)(o.callable), (*this)(o.args),
                             o.state ? std::optional<Value>((*this)(o.state)) : std::nullopt);
      case K::Tensor: {
        const pickle::TensorRef& t = *o.tensor;
        BOOST_REQUIRE(t.dtype);
        auto& st = storages[t.storage.key];
        if (!st) {
          auto bytes = zr.bytes("data/" + t.storage.key);
          const auto es = static_cast<std::int64_t>(dtype_size(*t.dtype));
          st = Value::make_storage(
              AnyConstView(bytes.data(), *t.dtype, Shape{static_cast<std::int64_t>(bytes.size()) / es}));
        }
        return Value::tensor(st, t.storage_offset, t.shape, t.strides);
      }
      default: BOOST_FAIL("unexpected object kind in round trip"); return Value();
    }
  }
};

std::vector<std::byte> save_mem(const Value& v, format::TorchFlavor fl = format::TorchFlavor::Torch2) {
  format::MemorySink s;
  format::TorchSaveOptions o;
  o.flavor = fl;
  o.archive_name = "model_optim_rng";
  format::save_torch(s, v, o);
  return s.bytes;
}

std::vector<std::byte> reread_and_save(const std::vector<std::byte>& file, format::TorchFlavor fl) {
  format::TorchZipReader zr(std::span<const std::byte>(file), "roundtrip.pt");
  auto root = pickle::loads(zr.bytes("data.pkl"), "roundtrip.pt");
  Rebuilder rb{zr, {}, {}};
  return save_mem(rb(root), fl);
}

Value sample_tree() {
  Value d = Value::dict();
  auto base = std::make_shared<Tensor>(f32({4, 3}, -1.f));
  auto st = Value::make_storage(std::as_const(*base).view(), base);
  d.set("base", Value::tensor(st, 0, {4, 3}, {3, 1}));
  d.set("tr", Value::tensor(st, 1, {3, 2}, {1, 3}));
  Value tied = Value::tensor(f32({2}, 9.f));
  d.set("tied_a", tied);
  d.set("tied_b", tied);
  d.set("empty", format::megatron::extra_state(format::megatron::ExtraState::EmptyUint8));
  d.set("none", format::megatron::extra_state(format::megatron::ExtraState::None));
  d.set("od", Value::ordered_dict({{"x", 1}, {"y", Value::list({1.5, "s", Value::bytes(std::string("\0\xff", 2))})}},
                                  Value::dict({{"_metadata", Value::dict()}})));
  d.set("ns", Value::namespace_({{"num_layers", 2}, {"dtype", Value::dtype(DType::BF16)}}));
  d.set("size", Value::torch_size({5, 6}));
  d.set("fp8", Value::tensor(AnyConstView(base->data(), DType::F8_E4M3, Shape{6}), base));
  return d;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(torch_write)

// Expected bytes are CPython 3.11's pickle.dumps(obj, protocol=2) output for the same objects.
BOOST_AUTO_TEST_CASE(pickle_matches_cpython) {
  BOOST_TEST(pk(Value::dict({{"a", 1}})) ==
                 (std::vector<std::uint8_t>{0x80, 0x02, 0x7d, 0x71, 0x00, 0x58, 0x01, 0x00, 0x00, 0x00, 0x61, 0x71, 0x01,
                                            0x4b, 0x01, 0x73, 0x2e}),
             boost::test_tools::per_element());
  Value ints = Value::list({0, 255, 256, 65535, 65536, -1, 2147483647LL, -2147483648LL, 2147483648LL,
                            -2147483649LL, 1LL << 40, INT64_MAX, INT64_MIN});
  BOOST_TEST(pk(ints) ==
                 (std::vector<std::uint8_t>{
                     0x80, 0x02, 0x5d, 0x71, 0x00, 0x28, 0x4b, 0x00, 0x4b, 0xff, 0x4d, 0x00, 0x01, 0x4d, 0xff, 0xff,
                     0x4a, 0x00, 0x00, 0x01, 0x00, 0x4a, 0xff, 0xff, 0xff, 0xff, 0x4a, 0xff, 0xff, 0xff, 0x7f, 0x4a,
                     0x00, 0x00, 0x00, 0x80, 0x8a, 0x05, 0x00, 0x00, 0x00, 0x80, 0x00, 0x8a, 0x05, 0xff, 0xff, 0xff,
                     0x7f, 0xff, 0x8a, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x8a, 0x08, 0xff, 0xff, 0xff, 0xff,
                     0xff, 0xff, 0xff, 0x7f, 0x8a, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x65, 0x2e}),
             boost::test_tools::per_element());
  BOOST_TEST(pk(Value::list({1.5, -0.0})) ==
                 (std::vector<std::uint8_t>{0x80, 0x02, 0x5d, 0x71, 0x00, 0x28, 0x47, 0x3f, 0xf8, 0x00, 0x00, 0x00,
                                            0x00, 0x00, 0x00, 0x47, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                            0x65, 0x2e}),
             boost::test_tools::per_element());
  // x = ['shared']; [x, x, 'yy', 'yy'] with both 'yy' the same object: BINGETs
  Value x = Value::list({"shared"}), yy("yy");
  BOOST_TEST(pk(Value::list({x, x, yy, yy})) ==
                 (std::vector<std::uint8_t>{0x80, 0x02, 0x5d, 0x71, 0x00, 0x28, 0x5d, 0x71, 0x01, 0x58, 0x06, 0x00,
                                            0x00, 0x00, 0x73, 0x68, 0x61, 0x72, 0x65, 0x64, 0x71, 0x02, 0x61, 0x68,
                                            0x01, 0x58, 0x02, 0x00, 0x00, 0x00, 0x79, 0x79, 0x71, 0x03, 0x68, 0x03,
                                            0x65, 0x2e}),
             boost::test_tools::per_element());
  BOOST_TEST(pk(Value::namespace_({{"n", 2}})) ==
                 (std::vector<std::uint8_t>{0x80, 0x02, 0x63, 0x61, 0x72, 0x67, 0x70, 0x61, 0x72, 0x73, 0x65, 0x0a,
                                            0x4e, 0x61, 0x6d, 0x65, 0x73, 0x70, 0x61, 0x63, 0x65, 0x0a, 0x71, 0x00,
                                            0x29, 0x81, 0x71, 0x01, 0x7d, 0x71, 0x02, 0x58, 0x01, 0x00, 0x00, 0x00,
                                            0x6e, 0x71, 0x03, 0x4b, 0x02, 0x73, 0x62, 0x2e}),
             boost::test_tools::per_element());
  BOOST_TEST(pk(Value::ordered_dict({{"k", Value()}})) ==
                 (std::vector<std::uint8_t>{0x80, 0x02, 0x63, 0x63, 0x6f, 0x6c, 0x6c, 0x65, 0x63, 0x74, 0x69, 0x6f,
                                            0x6e, 0x73, 0x0a, 0x4f, 0x72, 0x64, 0x65, 0x72, 0x65, 0x64, 0x44, 0x69,
                                            0x63, 0x74, 0x0a, 0x71, 0x00, 0x29, 0x52, 0x71, 0x01, 0x58, 0x01, 0x00,
                                            0x00, 0x00, 0x6b, 0x71, 0x02, 0x4e, 0x73, 0x2e}),
             boost::test_tools::per_element());
  Value tup = Value::tuple({true, false, Value(), Value::tuple(), Value::tuple({1}), Value::tuple({1, 2}),
                            Value::tuple({1, 2, 3}), Value::tuple({1, 2, 3, 4})});
  BOOST_TEST(pk(tup) ==
                 (std::vector<std::uint8_t>{0x80, 0x02, 0x28, 0x88, 0x89, 0x4e, 0x29, 0x4b, 0x01, 0x85, 0x71, 0x00,
                                            0x4b, 0x01, 0x4b, 0x02, 0x86, 0x71, 0x01, 0x4b, 0x01, 0x4b, 0x02, 0x4b,
                                            0x03, 0x87, 0x71, 0x02, 0x28, 0x4b, 0x01, 0x4b, 0x02, 0x4b, 0x03, 0x4b,
                                            0x04, 0x74, 0x71, 0x03, 0x74, 0x71, 0x04, 0x2e}),
             boost::test_tools::per_element());
  BOOST_TEST(pk(Value::bytes(std::string("\x00\xff", 2))) ==
                 (std::vector<std::uint8_t>{0x80, 0x02, 0x63, 0x5f, 0x63, 0x6f, 0x64, 0x65, 0x63, 0x73, 0x0a, 0x65,
                                            0x6e, 0x63, 0x6f, 0x64, 0x65, 0x0a, 0x71, 0x00, 0x58, 0x03, 0x00, 0x00,
                                            0x00, 0x00, 0xc3, 0xbf, 0x71, 0x01, 0x58, 0x06, 0x00, 0x00, 0x00, 0x6c,
                                            0x61, 0x74, 0x69, 0x6e, 0x31, 0x71, 0x02, 0x86, 0x71, 0x03, 0x52, 0x71,
                                            0x04, 0x2e}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(pickle_without_memo_and_memo_indices) {
  auto b = pk(sample_tree(), pickle::PickleOptions{false});
  auto root = pickle::loads(std::as_bytes(std::span<const std::uint8_t>(b)), "nomemo");
  BOOST_TEST(root->get("tied_a").get() != root->get("tied_b").get());  // identity lost without memo
  auto m = pk(sample_tree());
  auto r2 = pickle::loads(std::as_bytes(std::span<const std::uint8_t>(m)), "memo");
  BOOST_TEST(r2->get("tied_a").get() == r2->get("tied_b").get());
  // > 256 memo entries switch to LONG_BINPUT/LONG_BINGET; the shared string must resolve
  Value l = Value::list();
  Value s("repeated string");
  for (int i = 0; i < 300; ++i) l.append(Value(std::string("s").append(std::to_string(i))));
  l.append(s);
  l.append(s);
  auto lb = pk(l);
  auto lr = pickle::loads(std::as_bytes(std::span<const std::uint8_t>(lb)), "long memo");
  BOOST_TEST(lr->items.size() == 302u);
  BOOST_TEST(lr->items[300]->s == "repeated string");
  BOOST_TEST(lr->items[300].get() == lr->items[301].get());
  BOOST_TEST(lb[lb.size() - 7] == 0x6a);  // LONG_BINGET u32, then APPENDS ... STOP
}

BOOST_AUTO_TEST_CASE(zip_layout_matches_miniz_rules) {
  format::MemorySink s;
  format::ZipWriter zw(s);
  const std::vector<std::size_t> sizes{0, 1, 63, 64, 65, 1000, 3};
  std::vector<std::vector<std::byte>> datas;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    std::vector<std::byte> d(sizes[k]);
    for (std::size_t i = 0; i < d.size(); ++i) d[i] = std::byte((i * 31 + k) & 0xFF);
    const std::string name = "archive/" + std::string(k + 1, 'n');  // name lengths vary the padding
    zw.begin_record(name, d.size());
    // stream in two pieces: CRC must be of the whole
    zw.write(d.data(), d.size() / 2);
    zw.write(d.data() + d.size() / 2, d.size() - d.size() / 2);
    zw.end_record();
    datas.push_back(std::move(d));
  }
  zw.finish();
  const auto& b = s.bytes;
  std::uint64_t off = 0;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    const auto& e = zw.entries()[k];
    BOOST_TEST(e.header_offset == off);
    BOOST_TEST(rd(b, off, 4) == 0x04034b50u);
    BOOST_TEST(rd(b, off + 4, 2) == 0u);
    BOOST_TEST(rd(b, off + 6, 2) == (sizes[k] ? 0x0808u : 0x0800u));
    BOOST_TEST(rd(b, off + 14, 4) == 0u);
    BOOST_TEST(rd(b, off + 18, 8) == 0u);
    const auto nlen = rd(b, off + 26, 2), xlen = rd(b, off + 28, 2);
    BOOST_TEST(nlen == k + 9);
    BOOST_TEST(rd(b, off + 30 + nlen, 2) == 0x4246u);  // "FB"
    BOOST_TEST(rd(b, off + 32 + nlen, 2) == xlen - 4);
    for (std::uint64_t i = 0; i < xlen - 4; ++i) BOOST_TEST(std::to_integer<int>(b[off + 34 + nlen + i]) == 'Z');
    const std::uint64_t data = off + 30 + nlen + xlen;
    BOOST_TEST(data % 64 == 0u);
    BOOST_TEST(xlen - 4 < 64u);
    const auto L = format::zip_record_layout(off, nlen, sizes[k], 64);
    BOOST_TEST(L.data_offset == data);
    BOOST_TEST(std::memcmp(b.data() + data, datas[k].data(), sizes[k]) == 0);
    const auto crc = static_cast<std::uint32_t>(::crc32(0, reinterpret_cast<const Bytef*>(datas[k].data()),
                                                        static_cast<uInt>(sizes[k])));
    BOOST_TEST(e.crc == (sizes[k] ? crc : 0u));
    off = data + sizes[k];
    if (sizes[k]) {
      BOOST_TEST(rd(b, off, 4) == 0x08074b50u);
      BOOST_TEST(rd(b, off + 4, 4) == crc);
      BOOST_TEST(rd(b, off + 8, 4) == sizes[k]);
      BOOST_TEST(rd(b, off + 12, 4) == sizes[k]);
      off += 16;
    }
    BOOST_TEST(L.end == off);
  }
  // central directory
  const std::uint64_t cd = off;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    BOOST_TEST(rd(b, off, 4) == 0x02014b50u);
    BOOST_TEST(rd(b, off + 4, 4) == 0u);  // made by, needed
    BOOST_TEST(rd(b, off + 8, 2) == (sizes[k] ? 0x0808u : 0x0800u));
    BOOST_TEST(rd(b, off + 16, 4) == zw.entries()[k].crc);
    BOOST_TEST(rd(b, off + 20, 4) == sizes[k]);
    BOOST_TEST(rd(b, off + 24, 4) == sizes[k]);
    BOOST_TEST(rd(b, off + 30, 2) == 0u);  // no zip64 extra below 4 GiB
    BOOST_TEST(rd(b, off + 42, 4) == zw.entries()[k].header_offset);
    off += 46 + rd(b, off + 28, 2);
  }
  const std::uint64_t cd_size = off - cd;
  BOOST_TEST(rd(b, off, 4) == 0x06064b50u);
  BOOST_TEST(rd(b, off + 4, 8) == 44u);
  BOOST_TEST(rd(b, off + 12, 2) == 0x031Eu);
  BOOST_TEST(rd(b, off + 14, 2) == 45u);
  BOOST_TEST(rd(b, off + 24, 8) == sizes.size());
  BOOST_TEST(rd(b, off + 40, 8) == cd_size);
  BOOST_TEST(rd(b, off + 48, 8) == cd);
  BOOST_TEST(rd(b, off + 56, 4) == 0x07064b50u);
  BOOST_TEST(rd(b, off + 64, 8) == off);
  BOOST_TEST(rd(b, off + 72, 4) == 1u);
  BOOST_TEST(rd(b, off + 76, 4) == 0x06054b50u);
  BOOST_TEST(rd(b, off + 86, 2) == sizes.size());
  BOOST_TEST(rd(b, off + 88, 4) == cd_size);
  BOOST_TEST(rd(b, off + 92, 4) == cd);
  BOOST_TEST(off + 98 == b.size());
  // the ckbridge reader agrees on every record
  format::TorchZipReader zr(std::span<const std::byte>(b), "mem.zip", format::ZipReadOptions{true, false});
  BOOST_TEST(zr.records().size() == sizes.size());
}

BOOST_AUTO_TEST_CASE(zip64_header_logic) {
  HeaderSink s;
  format::ZipWriter zw(s);
  const std::uint64_t big = (std::uint64_t(4) << 30) + 10;
  zw.add_record("a/small", std::string_view("xyz"));
  zw.begin_record("a/big", big);
  zw.write_zeros(big);
  zw.end_record();
  zw.add_record("a/after", std::string_view("hello"));
  zw.add_record("a/empty", std::string_view(""));
  zw.finish();
  const auto& E = zw.entries();
  // big record: local zip64 extra with (size, 0), then FB; 24-byte descriptor
  const std::uint64_t o1 = E[1].header_offset;
  BOOST_TEST(o1 < 0xFFFFFFFFull);
  const std::uint64_t n1 = s.at(o1 + 26, 2), x1 = s.at(o1 + 28, 2);
  BOOST_TEST(s.at(o1 + 30 + n1, 2) == 1u);
  BOOST_TEST(s.at(o1 + 32 + n1, 2) == 16u);
  BOOST_TEST(s.at(o1 + 34 + n1, 8) == big);
  BOOST_TEST(s.at(o1 + 42 + n1, 8) == 0u);
  BOOST_TEST(s.at(o1 + 50 + n1, 2) == 0x4246u);
  const std::uint64_t d1 = o1 + 30 + n1 + x1;
  BOOST_TEST(d1 % 64 == 0u);
  BOOST_TEST(s.at(d1 + big, 4) == 0x08074b50u);
  const auto zcrc = s.at(d1 + big + 4, 4);
  BOOST_TEST(s.at(d1 + big + 8, 8) == big);
  BOOST_TEST(s.at(d1 + big + 16, 8) == big);
  // CRC of the zeros, computed independently by streaming zlib over a zero block
  {
    std::vector<Bytef> z(1 << 20, 0);
    uLong c = ::crc32(0, Z_NULL, 0);
    for (std::uint64_t left = big; left;) {
      const auto k = static_cast<uInt>(std::min<std::uint64_t>(left, z.size()));
      c = ::crc32(c, z.data(), k);
      left -= k;
    }
    BOOST_TEST(zcrc == c);
  }
  // record after 4 GiB: local zip64 extra with the offset only, 24-byte descriptor
  const std::uint64_t o2 = E[2].header_offset;
  BOOST_TEST(o2 == d1 + big + 24);
  BOOST_TEST(o2 > 0xFFFFFFFFull);
  const std::uint64_t n2 = s.at(o2 + 26, 2), x2 = s.at(o2 + 28, 2);
  BOOST_TEST(s.at(o2 + 30 + n2, 2) == 1u);
  BOOST_TEST(s.at(o2 + 32 + n2, 2) == 8u);
  BOOST_TEST(s.at(o2 + 34 + n2, 8) == o2);
  const std::uint64_t d2 = o2 + 30 + n2 + x2;
  BOOST_TEST(d2 % 64 == 0u);
  BOOST_TEST(format::zip_record_layout(o2, n2, 5, 64).data_offset == d2);
  BOOST_TEST(s.at(d2 + 5, 4) == 0x08074b50u);
  BOOST_TEST(s.at(d2 + 5 + 8, 8) == 5u);
  // empty record past 4 GiB: zip64 offset extra, no descriptor
  const std::uint64_t o3 = E[3].header_offset;
  BOOST_TEST(o3 == d2 + 5 + 24);
  BOOST_TEST(s.at(o3 + 6, 2) == 0x0800u);
  // central directory: 0xFFFFFFFF placeholders + zip64 extras with only the overflowing fields
  std::uint64_t c = o3 + 30 + s.at(o3 + 26, 2) + s.at(o3 + 28, 2);
  const std::uint64_t cd = c;
  std::vector<std::uint64_t> extra_len;
  for (int k = 0; k < 4; ++k) {
    BOOST_TEST(s.at(c, 4) == 0x02014b50u);
    const auto n = s.at(c + 28, 2), x = s.at(c + 30, 2);
    extra_len.push_back(x);
    if (k == 1) {
      BOOST_TEST(s.at(c + 20, 4) == 0xFFFFFFFFu);
      BOOST_TEST(s.at(c + 24, 4) == 0xFFFFFFFFu);
      BOOST_TEST(s.at(c + 42, 4) == o1);
      BOOST_TEST(s.at(c + 46 + n + 4, 8) == big);
      BOOST_TEST(s.at(c + 46 + n + 12, 8) == big);
    }
    if (k >= 2) {
      BOOST_TEST(s.at(c + 42, 4) == 0xFFFFFFFFu);
      BOOST_TEST(s.at(c + 46 + n + 4, 8) == E[k].header_offset);
    }
    c += 46 + n + x;
  }
  BOOST_TEST(extra_len == (std::vector<std::uint64_t>{0, 20, 12, 12}), boost::test_tools::per_element());
  // end records: classic EOCD points to the zip64 record
  BOOST_TEST(s.at(c, 4) == 0x06064b50u);
  BOOST_TEST(s.at(c + 48, 8) == cd);
  BOOST_TEST(s.at(c + 76, 4) == 0x06054b50u);
  BOOST_TEST(s.at(c + 92, 4) == 0xFFFFFFFFu);
  BOOST_TEST(s.pos == c + 98);
}

BOOST_AUTO_TEST_CASE(torch_save_records_and_alignment) {
  auto b = save_mem(sample_tree());
  format::TorchZipReader zr(std::span<const std::byte>(b), "mem.pt", format::ZipReadOptions{true, true});
  std::vector<std::string> names;
  for (const auto& r : zr.records()) names.push_back(r.name);
  const std::vector<std::string> want{"model_optim_rng/data.pkl",   "model_optim_rng/.format_version",
                                      "model_optim_rng/.storage_alignment", "model_optim_rng/byteorder",
                                      "model_optim_rng/data/0",     "model_optim_rng/data/1",
                                      "model_optim_rng/data/2",     "model_optim_rng/data/3",
                                      "model_optim_rng/version",    "model_optim_rng/.data/serialization_id"};
  BOOST_TEST(names == want, boost::test_tools::per_element());
  for (const auto& r : zr.records()) BOOST_TEST(r.data_offset % 64 == 0u);
  BOOST_TEST(zr.text("version") == "3\n");
  BOOST_TEST(zr.text(".format_version") == "1");
  BOOST_TEST(zr.text(".storage_alignment") == "64");
  BOOST_TEST(zr.text("byteorder") == "little");
  BOOST_TEST(zr.text(".data/serialization_id").size() == 40u);
  // values read back
  auto root = pickle::loads(zr.bytes("data.pkl"), "mem.pt");
  const auto& tr = *root->get("tr")->tensor;
  BOOST_TEST(tr.storage.key == "0");
  BOOST_TEST(tr.storage_offset == 1);
  BOOST_TEST(tr.strides == (Shape{1, 3}), boost::test_tools::per_element());
  BOOST_TEST(zr.bytes("data/0").size() == 48u);
  const auto& fp8 = *root->get("fp8")->tensor;
  BOOST_TEST(fp8.storage.type_name == "UntypedStorage");
  BOOST_TEST(fp8.dtype_name == "float8_e4m3fn");
  BOOST_TEST(root->get("none")->is_none());
  BOOST_TEST(root->get("empty")->tensor->numel() == 0);
  BOOST_TEST(zr.bytes("data/2").size() == 0u);  // empty storage still has a record
  // torch 1.x flavour: only data.pkl, data/*, version; same pickle
  auto b1 = save_mem(sample_tree(), format::TorchFlavor::Torch1);
  format::TorchZipReader z1(std::span<const std::byte>(b1), "mem1.pt");
  BOOST_TEST(z1.records().size() == 6u);
  BOOST_TEST(std::equal(z1.bytes("data.pkl").begin(), z1.bytes("data.pkl").end(), zr.bytes("data.pkl").begin(),
                        zr.bytes("data.pkl").end()));
}

// Strided sources are packed through the bounce buffer in row blocks, per row, or per element
// (depending on its size); the record must equal the dense copy in every case.
BOOST_AUTO_TEST_CASE(strided_sources_pack_like_a_dense_copy) {
  Tensor m = f32({5, 3, 40}, 0.f);
  const AnyConstView v = std::as_const(m).view().slice(2, 3, 37).slice(1, 1, 3);  // [5, 2, 34], strided
  const Tensor dense = Tensor::copy_of(v);
  for (std::size_t bounce : {std::size_t(1) << 20, std::size_t(300), std::size_t(64), std::size_t(1)}) {
    BOOST_TEST_CONTEXT("bounce " << bounce) {
      format::MemorySink s;
      format::TorchSaveOptions o;
      o.bounce_bytes = bounce;
      format::save_torch(s, Value::dict({{"v", Value::tensor(v)}}), o);
      format::TorchZipReader zr(std::span<const std::byte>(s.bytes), "strided.pt", format::ZipReadOptions{true, true});
      auto rec = zr.bytes("data/0");
      BOOST_TEST_REQUIRE(rec.size() == dense.size_bytes());
      BOOST_TEST(std::memcmp(rec.data(), dense.data(), rec.size()) == 0);
    }
  }
}

// Large contiguous storages get their CRC from other threads while being written; the CRC must
// equal zlib's over the record, and misuse of the deferred-CRC protocol is refused.
BOOST_AUTO_TEST_CASE(overlapped_crc_of_large_records) {
  Tensor big(DType::U8, {(std::int64_t(40) << 20) + 7});
  for (std::int64_t i = 0; i < big.numel(); ++i) big.data()[i] = std::byte((i * 2654435761u) >> 24);
  const auto want = static_cast<std::uint32_t>(::crc32_z(0, reinterpret_cast<const Bytef*>(big.data()), big.size_bytes()));
  BOOST_TEST(format::parallel_crc32(big.data(), big.size_bytes(), 5) == want);
  for (unsigned th : {1u, 3u}) {
    format::MemorySink s;
    format::TorchSaveOptions o;
    o.crc_threads = th;
    auto entries = format::save_torch(s, Value::dict({{"big", Value::tensor(big.cview())}}), o);
    BOOST_TEST(entries.at(4).name == "archive/data/0");
    BOOST_TEST(entries.at(4).crc == want);
  }
  format::MemorySink s;
  format::ZipWriter zw(s);
  zw.begin_record("a/x", 8);
  zw.write_deferred_crc("1234", 4);
  expect_error([&] { zw.write("5678", 4); }, "before the deferred CRC was folded");
  expect_error([&] { zw.fold_crc(0, 3); }, "CRC folded for 3 bytes, 4 pending");
  zw.fold_crc(static_cast<std::uint32_t>(::crc32(0, reinterpret_cast<const Bytef*>("1234"), 4)), 4);
  zw.write("5678", 4);
  zw.end_record();
  BOOST_TEST(zw.entries()[0].crc == static_cast<std::uint32_t>(::crc32(0, reinterpret_cast<const Bytef*>("12345678"), 8)));
}

// Lazy storages are produced once, at write time, in record order; the file equals the eager one.
BOOST_AUTO_TEST_CASE(lazy_tensors_match_eager_ones) {
  const Tensor a = f32({3, 5}, 1.f), b = f32({7}, -3.f);
  std::vector<int> calls;
  Value lazy = Value::dict();
  lazy.set("a", Value::lazy_tensor(DType::F32, {3, 5}, [&](Tensor&) {
    calls.push_back(0);
    return a.view();
  }));
  lazy.set("b", Value::lazy_tensor(DType::F32, {7}, [&](Tensor& scratch) {
    calls.push_back(1);
    scratch = Tensor::copy_of(b.view());
    return scratch.cview();
  }));
  Value eager = Value::dict({{"a", Value::tensor(a.view())}, {"b", Value::tensor(b.view())}});
  BOOST_TEST((save_mem(lazy) == save_mem(eager)));
  BOOST_TEST(calls == (std::vector<int>{0, 1}), boost::test_tools::per_element());
  // TE object from prebuilt tensors equals the one from views
  auto t = te_tensor(130, 260);
  Tensor padded(DType::F32, {2, 4});
  std::memset(padded.data(), 0, padded.size_bytes());
  copy(t.scale_inv, padded.view().slice(1, 0, 3));
  AnyConstView codes = t.data;
  codes.dtype = DType::U8;
  Value v1 = format::te_fp8_blockwise_value({130, 260}, Value::tensor(codes), Value::tensor(padded.cview()),
                                            DType::BF16, {}, format::TeVersion{2, 12});
  Value v2 = format::te_fp8_blockwise_tensor(t, format::TeVersion{2, 12});
  BOOST_TEST((save_mem(Value::dict({{"w", v1}})) == save_mem(Value::dict({{"w", v2}}))));
  // a producer that lies about its size is caught and named
  Value bad = Value::dict({{"x", Value::lazy_tensor(DType::F32, {4}, [&](Tensor&) { return b.view(); })}});
  expect_error([&] { save_mem(bad); }, "writing storage record 'model_optim_rng/data/0'");
}

BOOST_AUTO_TEST_CASE(write_read_write_is_byte_identical) {
  for (auto fl : {format::TorchFlavor::Torch2, format::TorchFlavor::Torch1}) {
    auto a = save_mem(sample_tree(), fl);
    auto b = reread_and_save(a, fl);
    BOOST_TEST((a == b));
  }
  for (format::TeVersion v : {format::TeVersion{2, 3}, format::TeVersion{2, 4}, format::TeVersion{2, 9},
                              format::TeVersion{2, 12}, format::TeVersion{2, 16}, format::TeVersion{2, 17},
                              format::TeVersion{2, 17, true}}) {
    BOOST_TEST_CONTEXT("TE " << v.major << "." << v.minor) {
      Value d = Value::dict();
      d.set("w", format::te_fp8_blockwise_tensor(te_tensor(130, 260), v, "w"));
      d.set("w2", format::te_fp8_blockwise_tensor(te_tensor(128, 64), v, "w2"));
      auto a = save_mem(d);
      auto b = reread_and_save(a, format::TorchFlavor::Torch2);
      BOOST_TEST((a == b));
    }
  }
}

BOOST_AUTO_TEST_CASE(te_pickle_contents) {
  auto t = te_tensor(130, 260);
  Value v = format::te_fp8_blockwise_tensor(t, format::TeVersion{2, 9}, "w");
  auto p = pickle::dumps(Value::dict({{"w", v}}));
  BOOST_TEST_REQUIRE(p.storages.size() == 2u);
  // data: uint8 [130, 260] aliasing the codes; scale: f32 [2, 4] with +0.0 padding columns
  BOOST_TEST((p.storages[0]->dtype() == DType::U8));
  BOOST_TEST(p.storages[0]->source.data == t.data.data);
  const auto& sc = p.storages[1]->source;
  BOOST_TEST(sc.shape == (Shape{2, 4}), boost::test_tools::per_element());
  const auto* f = reinterpret_cast<const float*>(sc.data);
  const auto* src = reinterpret_cast<const float*>(t.scale_inv.data);
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 4; ++c) {
      std::uint32_t bits;
      std::memcpy(&bits, &f[r * 4 + c], 4);
      if (c < 3) BOOST_TEST(f[r * 4 + c] == src[r * 3 + c]);
      else BOOST_TEST(bits == 0u);
    }
  // shared enum: one full pybind DType pickle, then a BINGET in the quantizer
  const std::string s(p.bytes.begin(), p.bytes.end());
  const std::string dtype_global = "ctransformer_engine_torch\nDType\n";
  BOOST_TEST(s.find(dtype_global) != std::string::npos);
  BOOST_TEST(s.find(dtype_global, s.find(dtype_global) + 1) == std::string::npos);
  BOOST_TEST(s.find("c__builtin__\ngetattr\n") != std::string::npos);
  BOOST_TEST(s.find("Float8BlockScaleTensorFormat") != std::string::npos);
  BOOST_TEST(s.find("all_gather_usage") != std::string::npos);
  BOOST_TEST(s.find("optimize_for_gemm") == std::string::npos);
  // 2.16: module-level function, no getattr
  auto s16 = pk(format::te_fp8_blockwise_tensor(t, format::TeVersion{2, 16}));
  const std::string q(s16.begin(), s16.end());
  BOOST_TEST(q.find("_make_float8_blockwise_tensor_in_reduce_ex") != std::string::npos);
  BOOST_TEST(q.find("getattr") == std::string::npos);
  BOOST_TEST(q.find("optimize_for_gemm") != std::string::npos);
  // the reader recognises every form
  for (format::TeVersion tv : {format::TeVersion{2, 3}, format::TeVersion{2, 5}, format::TeVersion{2, 15},
                               format::TeVersion{2, 16}, format::TeVersion{2, 20}}) {
    auto b = save_mem(Value::dict({{"w", format::te_fp8_blockwise_tensor(t, tv)}}));
    format::TorchZipReader zr(std::span<const std::byte>(b), "te.pt");
    auto root = pickle::loads(zr.bytes("data.pkl"), "te.pt");
    BOOST_TEST(format::is_te_fp8_blockwise(*root->get("w")));
  }
}

BOOST_AUTO_TEST_CASE(megatron_names) {
  namespace mg = format::megatron;
  BOOST_TEST(mg::rank_dir_name({0, 0, 0}, {1, 1, 1}) == "mp_rank_00");
  BOOST_TEST(mg::rank_dir_name({7, 0, 0}, {8, 1, 1}) == "mp_rank_07");
  BOOST_TEST(mg::rank_dir_name({1, 2, 0}, {2, 4, 1}) == "mp_rank_01_002");
  BOOST_TEST(mg::rank_dir_name({3, 0, 31}, {8, 1, 32}) == "mp_rank_03_031");
  BOOST_TEST(mg::rank_dir_name({0, 1, 3}, {1, 2, 4}) == "mp_rank_00_001_003");
  BOOST_TEST(mg::rank_dir_name({10, 0, 0}, {16, 1, 1}) == "mp_rank_10");
  BOOST_TEST(mg::iteration_dir_name(mg::CheckpointTag::release_tag()) == "release");
  BOOST_TEST(mg::iteration_dir_name(mg::CheckpointTag::at(1234)) == "iter_0001234");
  BOOST_TEST(mg::tracker_text(mg::CheckpointTag::at(1234)) == "1234");
  BOOST_TEST(mg::rank_file_path(mg::CheckpointTag::release_tag(), {0, 7, 1}, {1, 8, 2}) ==
             "release/mp_rank_00_007_001/model_optim_rng.pt");
  expect_error([] { mg::rank_dir_name({2, 0, 0}, {2, 1, 1}); }, "outside sizes");
  expect_error([] { mg::rank_dir_name({0, 0, 0}, {0, 1, 1}); }, "must be >= 1");
  expect_error([] { mg::iteration_dir_name(mg::CheckpointTag::at(-1)); }, "negative iteration");
  mg::CheckpointArgs a;
  a.extra = {{"num_layers", 3}};
  expect_error([&] { a.to_namespace(); }, "extra field 'num_layers' duplicates a standard field");
  mg::RankState st;
  expect_error([&] { st.to_value(); }, "at least one model chunk");
  // model vs model0..: keys and order
  st.model_chunks = {Value::dict()};
  auto b = pk(st.to_value());
  auto root = pickle::loads(std::as_bytes(std::span<const std::uint8_t>(b)), "rank");
  BOOST_TEST(root->dict.size() == 3u);
  BOOST_TEST(root->dict[0].first->s == "checkpoint_version");
  BOOST_TEST(root->get("checkpoint_version")->f == 3.0);
  BOOST_TEST(root->dict[2].first->s == "model");
  st.model_chunks = {Value::dict(), Value::dict(), Value::dict()};
  st.args = mg::CheckpointArgs{}.to_namespace();
  b = pk(st.to_value());
  root = pickle::loads(std::as_bytes(std::span<const std::uint8_t>(b)), "rank");
  std::vector<std::string> keys;
  for (const auto& [k, v] : root->dict) keys.push_back(k->s);
  BOOST_TEST(keys == (std::vector<std::string>{"args", "checkpoint_version", "iteration", "model0", "model1", "model2"}),
             boost::test_tools::per_element());
  for (const char* f : {"num_layers", "hidden_size", "num_attention_heads", "tensor_model_parallel_size",
                        "pipeline_model_parallel_size", "max_position_embeddings", "make_vocab_size_divisible_by",
                        "padded_vocab_size", "add_position_embedding", "vocab_file", "tokenizer_type"})
    BOOST_TEST(root->get("args")->get(f) != nullptr, f);
}

BOOST_AUTO_TEST_CASE(atomic_files_and_errors) {
  const fs::path dir = fs::temp_directory_path() / ("ckb_tw_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "model_optim_rng.pt").string();
  // a failure while pickling (too deep) leaves neither the file nor a temporary
  Value deep = Value::list();
  for (int i = 0; i < 1100; ++i) deep = Value::list({deep});
  format::TorchSaveOptions opt;
  opt.fsync = false;
  expect_error([&] { format::save_torch(path, deep, opt); }, "deeper than");
  BOOST_TEST(fs::is_empty(dir));
  // success: exactly the target, archive name from the file name
  format::save_torch(path, sample_tree(), opt);
  BOOST_TEST(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);
  format::TorchZipReader zr(path);
  BOOST_TEST(zr.prefix() == "model_optim_rng");
  BOOST_TEST(format::torch_archive_name("a/b/foo.bar.pt") == "foo.bar");
  BOOST_TEST(format::torch_archive_name("noext") == "noext");
  fs::remove_all(dir);

  // zip writer misuse
  format::MemorySink s;
  format::ZipWriter zw(s);
  zw.begin_record("a/x", 4);
  expect_error([&] { zw.write("12345", 5); }, "overflows its declared size 4");
  expect_error([&] { zw.end_record(); }, "declared 4 bytes but 0");
  expect_error([&] { zw.begin_record("a/y", 1); }, "still open");
  zw.write("1234", 4);
  zw.end_record();
  expect_error([&] { zw.add_record("a/x", std::string_view("z")); }, "'a/x' written twice");
  // values
  expect_error([] { Value("\xff\xfe"); }, "not valid UTF-8");
  expect_error([] { Value::dict({{"k", 1}, {"k", 2}}); }, "duplicate dict key 'k'");
  auto st = Value::make_storage(AnyConstView(nullptr, DType::F32, Shape{0}));
  expect_error([&] { Value::tensor(st, 0, {2}, {1}); }, "exceeds its storage of 0 elements");
  Tensor t4(DType::F32, {4});
  auto st4 = Value::make_storage(std::as_const(t4).view());
  expect_error([&] { Value::tensor(st4, 1, {2, 2}, {2, 1}); }, "exceeds its storage of 4 elements");
  expect_error([&] { Value::tensor(st4, 0, {2}, {1, 1}); }, "differ in rank");
  expect_error([] { Value::list().set("a", 1); }, "not a dict");
  expect_error([] { Value::namespace_({}).set("a", 1); }, "not a dict");
  // TE inputs
  auto te = te_tensor(130, 260);
  expect_error([&] { format::te_fp8_blockwise_tensor(te, format::TeVersion{2, 2}); }, "TE >= 2.3");
  auto bad = te;
  bad.scale_inv = bad.scale_inv.slice(0, 0, 1);
  expect_error([&] { format::te_fp8_blockwise_tensor(bad, {}, "layer.w"); }, "'layer.w': scale_inv shape [1, 3]");
  bad = te;
  bad.data.dtype = DType::BF16;
  expect_error([&] { format::te_fp8_blockwise_tensor(bad, {}, "layer.w"); }, "F8_E4M3 or U8");
}

BOOST_AUTO_TEST_SUITE_END()

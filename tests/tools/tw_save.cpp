// Test helper for tests/python/test_torch_load_interop.py: writes fixed object trees with the
// ckbridge torch.save writer, so Python can load them with torch and compare against torch.save.
//   tw_save <scenario> <out path> [flavor torch1|torch2]
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ckbridge/core/float_bits.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/format/torch_save.hpp"

using namespace ckbridge;
using pickle::Value;

namespace {
Tensor bf16_arange(Shape s) {
  Tensor t(DType::BF16, s);
  auto* p = reinterpret_cast<bf16_t*>(t.data());
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = bf16_t{f32_to_bf16_bits(float(i))};
  return t;
}
template <class T>
Tensor filled(DType d, Shape s, T start, T step) {
  Tensor t(d, s);
  auto* p = reinterpret_cast<T*>(t.data());
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<T>(start + step * static_cast<T>(i));
  return t;
}

// {'a': bf16 arange(6).reshape(2,3), 'b': ones(3) f32, 'c': OrderedDict(x=int64 [1, 2])}
Value simple() {
  Value d = Value::dict();
  d.set("a", Value::tensor(bf16_arange({2, 3})));
  d.set("b", Value::tensor(filled<float>(DType::F32, {3}, 1.f, 0.f)));
  d.set("c", Value::ordered_dict({{"x", Value::tensor(filled<std::int64_t>(DType::I64, {2}, 1, 1))}}));
  return d;
}

// Shared storages, views, 0-d, empty, many dtypes, scalars, containers and pickle batching.
Value mixed() {
  Value d = Value::dict();
  auto base = std::make_shared<Tensor>(filled<float>(DType::F32, {4, 3}, -2.5f, 0.75f));
  auto st = Value::make_storage(std::as_const(*base).view(), base);
  d.set("base", Value::tensor(st, 0, {4, 3}, {3, 1}));
  d.set("rows", Value::tensor(st, 3, {2, 3}, {3, 1}));   // base[1:3]
  d.set("tr", Value::tensor(st, 0, {3, 4}, {1, 3}));     // base.t()
  d.set("scalar", Value::tensor(filled<double>(DType::F64, {}, 3.25, 0)));
  d.set("empty", Value::tensor(Tensor(DType::U8, {0})));
  d.set("f16", Value::tensor(filled<std::uint16_t>(DType::F16, {5}, 0x3C00, 1)));
  d.set("i32", Value::tensor(filled<std::int32_t>(DType::I32, {2, 2}, -7, 5)));
  d.set("i16", Value::tensor(filled<std::int16_t>(DType::I16, {3}, -300, 200)));
  d.set("i8", Value::tensor(filled<std::int8_t>(DType::I8, {3}, -100, 90)));
  d.set("u8", Value::tensor(filled<std::uint8_t>(DType::U8, {2, 1, 2}, 250, 1)));
  Tensor b(DType::Bool, {3});
  b.data()[0] = std::byte{0}, b.data()[1] = std::byte{1}, b.data()[2] = std::byte{1};
  d.set("bool", Value::tensor(std::move(b)));
  d.set("rank5", Value::tensor(filled<float>(DType::F32, {1, 2, 1, 2, 1}, 0, 1)));
  // A strided source: column 1 of a 3x4 bf16 matrix becomes its own contiguous storage.
  auto m = std::make_shared<Tensor>(bf16_arange({3, 4}));
  d.set("col", Value::tensor(std::as_const(*m).view().slice(1, 1, 2), m));
  Value tied = Value::tensor(filled<float>(DType::F32, {2}, 7.f, 1.f));  // one object twice
  d.set("tied_a", tied);
  d.set("tied_b", tied);
  Value ints = Value::list({0, 255, 256, 65535, 65536, -1, -256, 2147483647, -2147483648LL, 2147483648LL,
                            -2147483649LL, 1LL << 40, -(1LL << 40), INT64_MAX, INT64_MIN});
  d.set("ints", ints);
  d.set("floats", Value::list({0.0, -0.0, 1.5, -1e300, 3.141592653589793}));
  d.set("strs", Value::list({"", "a", "héllo wörld", "日本", std::string(300, 'z')}));
  d.set("misc", Value::tuple({Value(), true, false, Value::tuple(), Value::list(), Value::dict()}));
  d.set("t1", Value::tuple({1}));
  d.set("t2", Value::tuple({1, 2}));
  d.set("t3", Value::tuple({1, 2, 3}));
  d.set("t4", Value::tuple({1, 2, 3, 4}));
  d.set("bytes", Value::bytes(std::string("\x00\x01\x7f\x80\xff abc", 9)));
  d.set("nobytes", Value::bytes(""));
  Value big = Value::dict();
  for (int i = 0; i < 1000; ++i) big.set("k" + std::to_string(i), i);
  d.set("dict1000", big);
  Value big1 = Value::dict();
  for (int i = 0; i < 1001; ++i) big1.set("k" + std::to_string(i), i);
  d.set("dict1001", big1);
  Value od = Value::ordered_dict();
  for (int i = 0; i < 1001; ++i) od.set("o" + std::to_string(i), i * 2);
  d.set("od1001", od);
  Value l = Value::list();
  for (int i = 0; i < 2001; ++i) l.append(i);
  d.set("list2001", l);
  d.set("one", Value::list({Value::dict({{"only", 1}})}));
  d.set("size", Value::torch_size({2, 3}));
  d.set("dtype", Value::dtype(DType::BF16));
  d.set("ns", Value::namespace_({{"num_layers", 2}, {"hidden_size", 64}, {"params_dtype", Value::dtype(DType::BF16)},
                                 {"vocab_file", Value()}, {"lr", 1e-4}}));
  return d;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: tw_save <simple|mixed> <out> [torch1|torch2]\n");
    return 2;
  }
  try {
    const std::string sc = argv[1];
    format::TorchSaveOptions opt;
    if (argc > 3 && std::strcmp(argv[3], "torch1") == 0) opt.flavor = format::TorchFlavor::Torch1;
    opt.fsync = false;
    Value v;
    if (sc == "simple") v = simple();
    else if (sc == "mixed") v = mixed();
    else {
      std::fprintf(stderr, "unknown scenario %s\n", sc.c_str());
      return 2;
    }
    format::save_torch(argv[2], v, opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tw_save: %s\n", e.what());
    return 1;
  }
  return 0;
}

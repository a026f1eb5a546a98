// Test helper for tests/python/test_torch_load_interop.py: writes fixed object trees with the
// ckbridge torch.save writer, so Python can load them with torch and compare against torch.save.
//   tw_save <scenario> <out path> [flavor torch1|torch2]
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ckbridge/core/float_bits.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/format/megatron_layout.hpp"
#include "ckbridge/format/te_fp8_pickle.hpp"
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
  for (int i = 0; i < 1000; ++i) big.set(std::string("k").append(std::to_string(i)), i);
  d.set("dict1000", big);
  Value big1 = Value::dict();
  for (int i = 0; i < 1001; ++i) big1.set(std::string("k").append(std::to_string(i)), i);
  d.set("dict1001", big1);
  Value od = Value::ordered_dict();
  for (int i = 0; i < 1001; ++i) od.set(std::string("o").append(std::to_string(i)), i * 2);
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

// Deterministic FP8 test tensor: codes[i][j] = (i * 7 + j * 3 + seed) % 0x7F (never NaN),
// scale_inv[r][c] = 2^(r - c - seed) for the real columns; Python recomputes both.
format::TeFp8Tensor te_tensor(std::int64_t M, std::int64_t N, int seed, bool pow2, double eps) {
  auto codes = std::make_shared<Tensor>(DType::F8_E4M3, Shape{M, N});
  auto* c = reinterpret_cast<std::uint8_t*>(codes->data());
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = 0; j < N; ++j) c[i * N + j] = static_cast<std::uint8_t>((i * 7 + j * 3 + seed) % 0x7F);
  const std::int64_t R = (M + 127) / 128, C = (N + 127) / 128;
  auto scale = std::make_shared<Tensor>(DType::F32, Shape{R, C});
  auto* s = reinterpret_cast<float*>(scale->data());
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t k = 0; k < C; ++k) s[r * C + k] = std::ldexp(1.0f, static_cast<int>(r - k - seed));
  format::TeFp8Tensor t;
  t.data = std::as_const(*codes).view();
  t.scale_inv = std::as_const(*scale).view();
  t.owner = std::make_shared<std::pair<std::shared_ptr<Tensor>, std::shared_ptr<Tensor>>>(codes, scale);
  t.quantizer.force_pow_2_scales = pow2;
  t.quantizer.amax_epsilon = eps;
  return t;
}

Value te_dict(format::TeVersion v) {
  Value d = Value::dict();
  d.set("w", format::te_fp8_blockwise_tensor(te_tensor(130, 260, 1, true, 0.0), v, "w"));
  d.set("w2", format::te_fp8_blockwise_tensor(te_tensor(128, 128, 2, false, 1e-6), v, "w2"));
  d.set("b", Value::tensor(bf16_arange({4})));
  return d;
}

void megatron(const std::string& dir, format::TorchSaveOptions opt) {
  namespace mg = format::megatron;
  // (a) release, TP=2 PP=2, two virtual stages -> model0/model1, None extra states
  {
    mg::ParallelSizes sz{2, 2, 1};
    mg::CheckpointArgs a;
    a.num_layers = 4; a.hidden_size = 8; a.num_attention_heads = 2;
    a.tensor_model_parallel_size = 2; a.pipeline_model_parallel_size = 2;
    a.virtual_pipeline_model_parallel_size = 2;
    a.max_position_embeddings = 64; a.padded_vocab_size = 256;
    a.extra = {{"ffn_hidden_size", 16}, {"params_dtype", Value::dtype(DType::BF16)}, {"swiglu", true}};
    for (int p = 0; p < 2; ++p)
      for (int t = 0; t < 2; ++t) {
        mg::RankState st;
        st.args = a.to_namespace();
        for (int v = 0; v < 2; ++v) {
          Value m = Value::dict();
          const std::string pre = "decoder.layers.0.";
          m.set(pre + "mlp.linear_fc1.weight",
                Value::tensor(filled<float>(DType::F32, {4, 8}, float(100 * p + 10 * t + v), 1.f)));
          m.set(pre + "mlp.linear_fc1._extra_state", mg::extra_state(mg::ExtraState::None));
          st.model_chunks.push_back(m);
        }
        mg::save_rank(dir + "/a", mg::CheckpointTag::release_tag(), {t, p, 0}, sz, st, opt);
      }
    mg::write_tracker(dir + "/a", mg::CheckpointTag::release_tag());
  }
  // (b) iteration 1234, EP=2 without PP -> mp_rank_00_000 / mp_rank_00_001, TE 2.9 FP8 experts
  {
    mg::ParallelSizes sz{1, 1, 2};
    mg::CheckpointArgs a;
    a.num_layers = 2; a.hidden_size = 256; a.num_attention_heads = 4;
    a.expert_model_parallel_size = 2;
    a.max_position_embeddings = 128; a.padded_vocab_size = 512;
    a.vocab_file = "vocab.json"; a.tokenizer_type = "HuggingFaceTokenizer";
    for (int e = 0; e < 2; ++e) {
      mg::RankState st;
      st.args = a.to_namespace();
      st.iteration = 1234;
      Value m = Value::ordered_dict();
      m.set("decoder.layers.0.mlp.experts.linear_fc1.weight0",
            format::te_fp8_blockwise_tensor(te_tensor(256, 256, e, true, 0.0), format::TeVersion{2, 9}));
      m.set("decoder.layers.0.mlp.experts.linear_fc1._extra_state", mg::extra_state(mg::ExtraState::EmptyUint8));
      st.model_chunks.push_back(m);
      mg::save_rank(dir + "/b", mg::CheckpointTag::at(1234), {0, 0, e}, sz, st, opt);
    }
    mg::write_tracker(dir + "/b", mg::CheckpointTag::at(1234));
  }
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: tw_save <simple|mixed> <out> [torch1|torch2]\n"
                         "       tw_save te <out> <major.minor>\n       tw_save megatron <dir>\n");
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
    else if (sc == "te" && argc > 3) {
      format::TeVersion tv;
      char by_name = 0;  // "2.17n": Python 3.11 enum pickling
      if (std::sscanf(argv[3], "%d.%d%c", &tv.major, &tv.minor, &by_name) < 2) {
        std::fprintf(stderr, "bad TE version %s\n", argv[3]);
        return 2;
      }
      tv.intenum_by_name = by_name == 'n';
      v = te_dict(tv);
      opt.flavor = format::TorchFlavor::Torch2;
    } else if (sc == "fp8") {
      // float8 tensors use _rebuild_tensor_v3 + torch.storage.UntypedStorage (torch >= 2.1)
      v = Value::dict();
      Tensor a(DType::F8_E4M3, {2, 3}), b(DType::F8_E5M2, {4}), c(DType::F8_E8M0, {2});
      for (int i = 0; i < 6; ++i) a.data()[i] = std::byte(0x38 + i);
      for (int i = 0; i < 4; ++i) b.data()[i] = std::byte(0x3C + i);
      c.data()[0] = std::byte(127), c.data()[1] = std::byte(130);
      auto at = std::make_shared<Tensor>(std::move(a));
      auto st = Value::make_storage(std::as_const(*at).view(), at);
      v.set("e4m3", Value::tensor(st, 0, {2, 3}, {3, 1}));
      v.set("e4m3_t", Value::tensor(st, 1, {2, 2}, {1, 3}));  // a transposed view of the same storage
      v.set("e5m2", Value::tensor(std::move(b)));
      v.set("e8m0", Value::tensor(std::move(c)));
      v.set("bf16", Value::tensor(bf16_arange({3})));
    } else if (sc == "big") {
      // 4 GiB + 4 KiB of zeros between two small tensors: zip64 sizes, then zip64 offsets
      v = Value::dict();
      v.set("small0", Value::tensor(filled<float>(DType::F32, {3}, 0.f, 1.f)));
      const std::int64_t n = (std::int64_t(4) << 30) + 4096;
      v.set("big", Value::tensor(Value::zero_storage(DType::U8, n), 0, {n}, {1}));
      v.set("small1", Value::tensor(filled<float>(DType::F32, {3}, 1.f, 1.f)));
    } else if (sc == "megatron") {
      megatron(argv[2], opt);
      return 0;
    } else {
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

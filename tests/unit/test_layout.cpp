// Layout policies: every shard is compared with an expectation computed independently, with
// plain index loops written from LoongForge's rules (torch.chunk, transpose_shape0 + chunk,
// last-row vocabulary padding, get_ep_map), never by calling the policy; merge(split(x)) must
// give x back byte for byte; impossible splits must be refused with messages naming the
// tensor, its shape and the parallel size.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ckbridge/core/tensor.hpp"
#include "ckbridge/layout/layout.hpp"

using namespace ckbridge;
using namespace ckbridge::layout;

namespace {

// ---- compile-time: policies are literal types satisfying the concept ----
static_assert(Policy<Replicated> && Policy<SplitDim> && Policy<SwiGLUInterleave> && Policy<VocabPad> &&
              Policy<ExpertSlice> && Policy<Then<VocabPad, SplitDim>> && Policy<Fp8Blocks<SwiGLUInterleave>>);
static_assert(!Policy<int> && !Policy<Box>);
constexpr SplitDim kRowParallel{1};
static_assert(kRowParallel.dim == 1);
constexpr auto kVocab8 = vocab_parallel(129280, 128, 8);
static_assert(kVocab8.first.padded_rows() == 130048);
constexpr ExpertSlice kDsv3Ep{256, 32};
static_assert(kDsv3Ep.local_count() == 8 && kDsv3Ep.owner(17) == ExpertOwner{2, 1} && kDsv3Ep.global(2, 1) == 17);
constexpr Then<ExpertSlice, SwiGLUInterleave> kExpertFc1 = then(ExpertSlice{8, 2}, SwiGLUInterleave{1}, 2);
static_assert(kExpertFc1.first_size == 2);

using IndexFn = std::function<Shape(const Shape&)>;  // shard index -> full index

Tensor random_tensor(DType dt, const Shape& shape, std::mt19937& rng) {
  Tensor t(dt, shape);
  for (std::size_t i = 0; i < t.size_bytes(); ++i) t.data()[i] = std::byte(rng() & 0xFF);
  return t;
}

std::int64_t offset_of(const Shape& shape, const Shape& idx) {
  std::int64_t o = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) o = o * shape[d] + idx[d];
  return o;
}

// The expected shard: element by element, read the full tensor where `src` says.
Tensor expected_shard(const Tensor& full, const Shape& shard_shape, const IndexFn& src) {
  Tensor out(full.dtype(), shard_shape);
  const std::size_t es = dtype_size(full.dtype());
  Shape idx(shard_shape.size(), 0);
  for (std::int64_t i = 0; i < out.numel(); ++i) {
    std::int64_t rem = i;
    for (std::size_t d = shard_shape.size(); d-- > 0;) {
      idx[d] = rem % shard_shape[d];
      rem /= shard_shape[d];
    }
    const Shape f = src(idx);
    for (std::size_t d = 0; d < f.size(); ++d) BOOST_REQUIRE(f[d] >= 0 && f[d] < full.shape()[d]);
    std::memcpy(out.data() + i * es, full.data() + offset_of(full.shape(), f) * es, es);
  }
  return out;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         (a.size_bytes() == 0 || std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// torch.chunk(X, n, dim)[r]: chunk size ceil(D/n).
IndexFn chunk_rule(std::size_t dim, std::int64_t D, int n, int r) {
  return [=](Shape i) {
    i[dim] += r * ceil_div(D, n);
    return i;
  };
}
// LoongForge: transpose_shape0(X, 2, n) (view (2, n, D/2n), swap the first two axes, flatten)
// then torch.chunk(n). Row j of shard r.
std::int64_t swiglu_row(std::int64_t j, std::int64_t D, int n, int r) {
  const std::int64_t k = D / (2 * n);
  const std::int64_t t = r * ceil_div(D, n) + j;  // row of the transposed tensor
  const std::int64_t a = t / (2 * k), b = (t / k) % 2, c = t % k;
  return b * (n * k) + a * k + c;  // the same element in the (2, n, k) view
}
IndexFn swiglu_rule(std::size_t dim, std::int64_t D, int n, int r) {
  return [=](Shape i) {
    i[dim] = swiglu_row(i[dim], D, n, r);
    return i;
  };
}
// LoongForge add_embedding_padding: cat(X, X[-1] repeated Vp-V times), then chunk(n, dim 0).
IndexFn vocab_rule(std::int64_t V, std::int64_t Vp, int n, int r) {
  return [=](Shape i) {
    const std::int64_t p = r * ceil_div(Vp, n) + i[0];
    i[0] = p < V ? p : V - 1;
    return i;
  };
}
// get_ep_map: EP group g holds experts [g*n, (g+1)*n) with n = E // ep.
IndexFn expert_rule(std::size_t dim, std::int64_t E, int ep, int g) {
  return [=](Shape i) {
    i[dim] += g * (E / ep);
    return i;
  };
}

// split, compare each shard with the independent expectation, merge back, compare bytes.
template <Policy P>
void check_round_trip(const P& policy, const std::string& name, const Tensor& full, int size, const Shape& shard_shape,
                      const std::function<IndexFn(int)>& rule) {
  BOOST_TEST_CONTEXT(name << " " << shape_str(full.shape()) << " " << full.dtype() << " size " << size) {
    BOOST_REQUIRE(!policy.why_not(name, full.shape(), size));
    const std::vector<Tensor> shards = split(policy, name, full.cview(), size);
    BOOST_REQUIRE_EQUAL(shards.size(), std::size_t(size));
    for (int r = 0; r < size; ++r) {
      BOOST_REQUIRE(shards[r].shape() == shard_shape);
      BOOST_CHECK_MESSAGE(same(shards[r], expected_shard(full, shard_shape, rule(r))), "shard " << r << " differs");
      // one rank at a time, into a caller-owned buffer, gives the same bytes
      Tensor one(full.dtype(), shard_shape);
      copy_shard(policy, name, full.cview(), r, size, one.view());
      BOOST_CHECK(same(one, shards[r]));
    }
    BOOST_CHECK(same(merge(policy, name, shards), full));
    BOOST_CHECK(same(merge(policy, name, shards, MergeOptions{true}), full));
    BOOST_CHECK(policy.full_shape(shard_shape, size) == full.shape());
  }
}

template <class F>
bool throws_with(F&& f, std::vector<std::string> parts) {
  try {
    f();
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const auto& p : parts)
      if (m.find(p) == std::string::npos) {
        BOOST_TEST_MESSAGE("message lacks '" << p << "': " << m);
        return false;
      }
    return true;
  }
  return false;
}

const DType kDTypes[] = {DType::U8, DType::BF16, DType::F32, DType::F64, DType::F8_E4M3, DType::I16};
const int kSizes[] = {1, 2, 3, 4, 8};

}  // namespace

BOOST_AUTO_TEST_SUITE(layout)

BOOST_AUTO_TEST_CASE(random_single_policies) {
  std::mt19937 rng(1234);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iter = 0; iter < 300; ++iter) {
    const DType dt = kDTypes[pick(0, 5)];
    const int n = kSizes[pick(0, 4)];
    const std::size_t rank = std::size_t(pick(1, 3));
    Shape full(rank);
    for (auto& e : full) e = pick(1, 5);
    const std::size_t dim = std::size_t(pick(0, int(rank) - 1));
    switch (iter % 5) {
      case 0: {  // Replicated
        const Tensor x = random_tensor(dt, full, rng);
        check_round_trip(Replicated{}, "norm", x, n, full, [&](int) { return IndexFn([](Shape i) { return i; }); });
        break;
      }
      case 1: {  // SplitDim
        full[dim] *= n;
        const Tensor x = random_tensor(dt, full, rng);
        Shape sh = full;
        sh[dim] /= n;
        check_round_trip(SplitDim{dim}, "linear", x, n, sh, [&](int r) { return chunk_rule(dim, full[dim], n, r); });
        break;
      }
      case 2: {  // SwiGLUInterleave
        full[dim] = 2 * n * pick(1, 4);
        const Tensor x = random_tensor(dt, full, rng);
        Shape sh = full;
        sh[dim] /= n;
        check_round_trip(SwiGLUInterleave{dim}, "fc1", x, n, sh,
                         [&](int r) { return swiglu_rule(dim, full[dim], n, r); });
        break;
      }
      case 3: {  // ExpertSlice
        const std::int64_t E = n * pick(1, 4);
        full[dim] = E;
        const Tensor x = random_tensor(dt, full, rng);
        Shape sh = full;
        sh[dim] = E / n;
        check_round_trip(ExpertSlice{E, n, dim}, "experts", x, n, sh,
                         [&](int g) { return expert_rule(dim, E, n, g); });
        break;
      }
      case 4: {  // vocabulary: pad then split (composition)
        const std::int64_t V = pick(1, 300), div = pick(1, 8);
        const std::int64_t pad_to = pick(0, 1) ? ceil_div(V + pick(0, 40), n) * n : 0;
        full[0] = V;
        const Tensor x = random_tensor(dt, full, rng);
        const std::int64_t Vp = pad_to ? pad_to : ceil_div(V, div * n) * div * n;
        BOOST_REQUIRE_EQUAL(padded_vocab_size(V, div, n, pad_to), Vp);
        Shape sh = full;
        sh[0] = Vp / n;
        check_round_trip(vocab_parallel(V, div, n, pad_to), "embedding", x, n, sh,
                         [&](int r) { return vocab_rule(V, Vp, n, r); });
        break;
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(random_compositions) {
  std::mt19937 rng(99);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iter = 0; iter < 120; ++iter) {
    const DType dt = kDTypes[pick(0, 5)];
    const int a = kSizes[pick(0, 3)], b = kSizes[pick(0, 3)];
    switch (iter % 4) {
      case 0: {  // stacked experts [E, 2F, H]: EP over experts, then ETP SwiGLU interleave on dim 1
        const std::int64_t E = a * pick(1, 3), F = b * pick(1, 3), H = pick(1, 4);
        const Tensor x = random_tensor(dt, {E, 2 * F, H}, rng);
        check_round_trip(then(ExpertSlice{E, a}, SwiGLUInterleave{1}, a), "experts.fc1", x, a * b,
                         {E / a, 2 * F / b, H}, [&](int r) {
                           const int g = r / b, et = r % b;
                           return IndexFn([=](Shape i) {
                             return Shape{g * (E / a) + i[0], swiglu_row(i[1], 2 * F, b, et), i[2]};
                           });
                         });
        break;
      }
      case 1: {  // 2-D: SwiGLU rows over `a`, then columns over `b`
        const std::int64_t F = a * pick(1, 3), H = b * pick(1, 3);
        const Tensor x = random_tensor(dt, {2 * F, H}, rng);
        check_round_trip(then(SwiGLUInterleave{0}, SplitDim{1}, a), "fc1", x, a * b, {2 * F / a, H / b}, [&](int r) {
          const int ra = r / b, rb = r % b;
          return IndexFn([=](Shape i) { return Shape{swiglu_row(i[0], 2 * F, a, ra), i[1] + rb * (H / b)}; });
        });
        break;
      }
      case 2: {  // vocabulary pad on rows, then split columns (padding crosses into another dim's split)
        const std::int64_t V = pick(1, 40), H = b * pick(1, 3), div = pick(1, 16);
        const std::int64_t Vp = ceil_div(V, div) * div;
        const Tensor x = random_tensor(dt, {V, H}, rng);
        check_round_trip(then(VocabPad{div, V}, SplitDim{1}), "output_layer", x, b, {Vp, H / b}, [&](int r) {
          return IndexFn([=](Shape i) { return Shape{std::min(i[0], V - 1), i[1] + r * (H / b)}; });
        });
        break;
      }
      case 3: {  // three stages: pad + split rows over `a`, then columns over `b`
        const std::int64_t V = pick(1, 60), H = b * pick(1, 3);
        const std::int64_t Vp = ceil_div(V, 4 * a) * 4 * a;
        const Tensor x = random_tensor(dt, {V, H}, rng);
        check_round_trip(then(vocab_parallel(V, 4, a), SplitDim{1}, a), "embedding", x, a * b, {Vp / a, H / b},
                         [&](int r) {
                           const int ra = r / b, rb = r % b;
                           const IndexFn rows = vocab_rule(V, Vp, a, ra);
                           return IndexFn([=](Shape i) {
                             Shape f = rows(i);
                             f[1] = i[1] + rb * (H / b);
                             return f;
                           });
                         });
        break;
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(rank_one_and_scalar) {
  std::mt19937 rng(5);
  const Tensor bias = random_tensor(DType::BF16, {24}, rng);
  check_round_trip(SplitDim{0}, "bias", bias, 4, {6}, [](int r) { return chunk_rule(0, 24, 4, r); });
  check_round_trip(SwiGLUInterleave{}, "fc1.bias", bias, 3, {8}, [](int r) { return swiglu_rule(0, 24, 3, r); });
  check_round_trip(Replicated{}, "norm", bias, 8, {24}, [](int) { return IndexFn([](Shape i) { return i; }); });
  const Tensor scalar = random_tensor(DType::F32, {}, rng);
  check_round_trip(Replicated{}, "scalar", scalar, 2, {}, [](int) { return IndexFn([](Shape i) { return i; }); });
}

BOOST_AUTO_TEST_CASE(swiglu_order_is_gate_then_up_per_rank) {
  // [gate; up] with F = 4 at n = 2: rank 0 = g0 g1 u0 u1, rank 1 = g2 g3 u2 u3 (row values = row ids)
  Tensor x(DType::U8, {8});
  for (int i = 0; i < 8; ++i) x.data()[i] = std::byte(i);
  const auto shards = split(SwiGLUInterleave{}, "fc1", x.cview(), 2);
  const std::uint8_t want[2][4] = {{0, 1, 4, 5}, {2, 3, 6, 7}};
  for (int r = 0; r < 2; ++r)
    BOOST_CHECK(std::memcmp(shards[r].data(), want[r], 4) == 0);
}

BOOST_AUTO_TEST_CASE(vocab_padding_table) {
  // deepseek-v3-layout.md §4: V = 129280, make_vocab_size_divisible_by = 128
  const std::pair<int, std::int64_t> table[] = {{1, 129280}, {2, 129280}, {4, 129536}, {8, 130048}, {16, 131072}};
  for (auto [tp, vp] : table) {
    BOOST_CHECK_EQUAL(padded_vocab_size(129280, 128, tp), vp);
    const auto pol = vocab_parallel(129280, 128, tp);
    const ShardMap m = pol.shard_map("embedding.word_embeddings.weight", {129280, 7168}, tp - 1, tp);
    BOOST_CHECK(m.shard_shape == (Shape{vp / tp, 7168}));
  }
  BOOST_CHECK_EQUAL(padded_vocab_size(129280, 128, 8, 130000), 130000);  // --pad_vocab_size_to wins
  BOOST_CHECK(throws_with([] { padded_vocab_size(129280, 128, 8, 1000); }, {"1000", "129280"}));
  // the last rank at tp=8 holds real rows 113792..129279 then 768 copies of row 129279
  const ShardMap m = kVocab8.shard_map("emb", {129280, 7168}, 7, 8);
  BOOST_REQUIRE_EQUAL(m.pieces.size(), 2u);
  BOOST_CHECK(m.pieces[0].src == (Box{{113792, 0}, {15488, 7168}}));
  BOOST_CHECK(m.pieces[1].is_pad() && m.pieces[1].pad_rows == 768 && m.pieces[1].src.begin[0] == 129279);
}

BOOST_AUTO_TEST_CASE(merge_drops_or_checks_padding_and_replicas) {
  std::mt19937 rng(7);
  const Tensor x = random_tensor(DType::BF16, {5, 3}, rng);
  const auto pol = vocab_parallel(5, 4, 2);  // Vp = 8, rank 1 = rows 4, 4, 4, 4
  auto shards = split(pol, "emb", x.cview(), 2);
  BOOST_REQUIRE(shards[1].shape() == (Shape{4, 3}));
  shards[1].data()[3 * 3 * 2] = std::byte(~std::to_integer<int>(shards[1].data()[3 * 3 * 2]));  // trained pad row
  BOOST_CHECK(same(merge(pol, "emb", shards), x));                                            // dropped
  BOOST_CHECK(throws_with([&] { merge(pol, "emb", shards, MergeOptions{true}); }, {"emb", "padding"}));

  auto reps = split(Replicated{}, "norm", x.cview(), 3);
  reps[2].data()[0] = std::byte(~std::to_integer<int>(reps[2].data()[0]));
  BOOST_CHECK(same(merge(Replicated{}, "norm", reps), x));  // rank 0's copy, as LoongForge
  BOOST_CHECK(throws_with([&] { merge(Replicated{}, "norm", reps, MergeOptions{true}); }, {"norm", "rank 2"}));

  // copy_from_shard with the pad check: rank 0 first (holds the real last row), then rank 1
  Tensor back(DType::BF16, {5, 3});
  copy_from_shard(pol, "emb", shards[0].cview(), 0, 2, back.view());
  BOOST_CHECK(throws_with([&] { copy_from_shard(pol, "emb", shards[1].cview(), 1, 2, back.view(), true); },
                          {"emb", "padding"}));
  copy_from_shard(pol, "emb", shards[1].cview(), 1, 2, back.view());
  BOOST_CHECK(same(back, x));
}

BOOST_AUTO_TEST_CASE(refusals_name_tensor_shape_and_size) {
  BOOST_CHECK(throws_with([] { SplitDim{0}.shard_map("decoder.layers.0.self_attention.linear_qkv.weight", {10, 4}, 0, 3); },
                          {"'decoder.layers.0.self_attention.linear_qkv.weight'", "[10, 4]", "size 3", "not divisible"}));
  BOOST_CHECK(throws_with([] { SplitDim{2}.shard_map("w", {10, 4}, 0, 2); }, {"'w'", "[10, 4]", "dim 2"}));
  BOOST_CHECK(throws_with([] { SwiGLUInterleave{}.shard_map("fc1", {12, 4}, 0, 4); }, {"'fc1'", "[12, 4]", "size 4"}));
  BOOST_CHECK(throws_with([] { SwiGLUInterleave{}.shard_map("fc1", {7, 4}, 0, 1); }, {"'fc1'", "odd"}));
  BOOST_CHECK(throws_with([] { ExpertSlice{10, 4}.shard_map("experts", {10, 8}, 0, 4); },
                          {"'experts'", "[10, 8]", "size 4", "10 experts", "expert-parallel size 4"}));
  BOOST_CHECK(throws_with([] { ExpertSlice{8, 4}.shard_map("experts", {6, 8}, 0, 4); }, {"'experts'", "[6, 8]", "8 experts"}));
  BOOST_CHECK(throws_with([] { ExpertSlice{8, 4}.owner(8); }, {"expert 8"}));
  BOOST_CHECK(throws_with([] { ExpertSlice{10, 4}.owner(1); }, {"10 experts", "expert-parallel size 4"}));
  BOOST_CHECK(throws_with([] { SplitDim{0}.shard_map("w", {8, 4}, 4, 4); }, {"rank 4", "'w'", "[8, 4]"}));
  BOOST_CHECK(throws_with([] { VocabPad{128, 100}.shard_map("emb", {99, 4}, 0, 1); }, {"'emb'", "[99, 4]", "100"}));
  BOOST_CHECK(throws_with([] { VocabPad{128, 100}.shard_map("emb", {100, 4}, 0, 2); }, {"'emb'", "SplitDim"}));
  BOOST_CHECK(throws_with([] { vocab_parallel(100, 1, 3, 101).shard_map("emb", {100, 4}, 0, 3); },
                          {"'emb'", "[101, 4]", "size 3"}));
  BOOST_CHECK(throws_with([] { then(ExpertSlice{4, 2}, SplitDim{1}, 2).shard_map("e", {4, 6}, 0, 3); },
                          {"'e'", "size 3"}));
  // merge: wrong shard shapes, wrong count
  std::vector<Tensor> bad;
  bad.emplace_back(DType::F32, Shape{2, 4});
  bad.emplace_back(DType::F32, Shape{3, 4});
  BOOST_CHECK(throws_with([&] { merge(SplitDim{0}, "w", bad); }, {"'w'", "rank 1", "[3, 4]"}));
  std::vector<Tensor> three;
  for (int i = 0; i < 3; ++i) three.emplace_back(DType::F32, Shape{2, 4});
  BOOST_CHECK(throws_with([&] { merge(ExpertSlice{4, 2}, "experts", three); }, {"'experts'", "3 shards"}));
  // copy_shard into a buffer of the wrong shape or dtype
  Tensor full(DType::F32, {8, 4}), out(DType::F32, {3, 4}), out16(DType::BF16, {4, 4});
  BOOST_CHECK(throws_with([&] { copy_shard(SplitDim{0}, "w", full.cview(), 0, 2, out.view()); }, {"'w'", "[3, 4]"}));
  BOOST_CHECK(throws_with([&] { copy_shard(SplitDim{0}, "w", full.cview(), 0, 2, out16.view()); }, {"'w'", "BF16"}));
}

BOOST_AUTO_TEST_CASE(expert_maps) {
  for (int ep : {1, 2, 4, 8, 32}) {
    const ExpertSlice es{256, ep};
    for (std::int64_t e = 0; e < 256; ++e) {
      // LoongForge get_ep_map: n = E // ep, group g = e // n, local = e - g*n
      const std::int64_t n = 256 / ep;
      BOOST_CHECK(es.owner(e) == (ExpertOwner{int(e / n), e - (e / n) * n}));
      BOOST_CHECK_EQUAL(es.global(es.owner(e).rank, es.owner(e).local), e);
    }
  }
  // get_etp_map (loongforge-converter.md §5.2), brute force over t in [0, max(tp, etp*ep))
  for (auto [tp, ep, etp] : {std::tuple{8, 32, 1}, {8, 4, 2}, {4, 8, 2}, {2, 1, 2}, {8, 8, 1}}) {
    const ExpertGrid g{tp, ep, etp};
    BOOST_REQUIRE(!g.why_not());
    const int v = std::max(tp, etp * ep);
    std::map<std::pair<int, int>, int> etp_to_tp;
    for (int t = 0; t < v; ++t) {
      etp_to_tp[{(t / etp) % ep, t % etp}] = t % tp;  // LoongForge: later t overwrite
      if (t < tp) {
        BOOST_CHECK_EQUAL(g.ep_rank_of(t), (t / etp) % ep);
        BOOST_CHECK_EQUAL(g.etp_rank_of(t), t % etp);
      }
    }
    for (auto [key, t] : etp_to_tp) BOOST_CHECK_EQUAL(g.tp_rank_of(key.first, key.second), t);
  }
  BOOST_CHECK((ExpertGrid{6, 4, 1}.why_not().has_value()));
}

BOOST_AUTO_TEST_CASE(fp8_dsv3_shapes_tp8) {
  // loongforge-converter.md §4.3: per-shard data and scale shapes at tp=8 (maps only, no data)
  struct Row {
    const char* name;
    Shape full;
    int kind;  // 0 SplitDim0, 1 SplitDim1, 2 SwiGLU
    Shape shard, scale;
  };
  const Row rows[] = {
      {"q_b_proj", {24576, 1536}, 0, {3072, 1536}, {24, 12}},
      {"kv_b_proj", {32768, 512}, 0, {4096, 512}, {32, 4}},
      {"o_proj", {7168, 16384}, 1, {7168, 2048}, {56, 16}},
      {"dense fc1", {36864, 7168}, 2, {4608, 7168}, {36, 56}},
      {"dense fc2", {7168, 18432}, 1, {7168, 2304}, {56, 18}},
      {"shared fc1", {4096, 7168}, 2, {512, 7168}, {4, 56}},
      {"shared fc2", {7168, 2048}, 1, {7168, 256}, {56, 2}},
  };
  for (const Row& row : rows) {
    BOOST_TEST_CONTEXT(row.name) {
      for (int r = 0; r < 8; ++r) {
        ShardMap data, scale;
        if (row.kind == 2) {
          const Fp8Blocks<SwiGLUInterleave> p{};
          BOOST_REQUIRE(!p.why_not(row.name, row.full, 8));
          data = p.shard_map(row.name, row.full, r, 8);
          scale = p.scale_map(row.name, row.full, r, 8);
        } else {
          const Fp8Blocks<SplitDim> p{{std::size_t(row.kind)}};
          BOOST_REQUIRE(!p.why_not(row.name, row.full, 8));
          data = p.shard_map(row.name, row.full, r, 8);
          scale = p.scale_map(row.name, row.full, r, 8);
        }
        BOOST_CHECK(data.shard_shape == row.shard);
        BOOST_CHECK(scale.shard_shape == row.scale);
        BOOST_CHECK_NO_THROW(check_map(row.name, scale, fp8_scale_shape(row.full)));
      }
    }
  }
  // replicated FP8 with a partial last block (kv_a [576, 7168], scale [5, 56])
  const Fp8Blocks<Replicated> rep{};
  BOOST_CHECK(!rep.why_not("kv_a", {576, 7168}, 8));
  BOOST_CHECK(rep.scale_map("kv_a", {576, 7168}, 3, 8).shard_shape == (Shape{5, 56}));
}

BOOST_AUTO_TEST_CASE(fp8_refusals) {
  // q_a_proj split over 8: 192-row shards cut blocks (the BF16 layout cannot be copied as FP8)
  const Fp8Blocks<SplitDim> rows{};
  BOOST_CHECK(throws_with([&] { rows.shard_map("model.layers.0.self_attn.q_a_proj.weight", {1536, 7168}, 1, 8); },
                          {"'model.layers.0.self_attn.q_a_proj.weight'", "[1536, 7168]", "size 8", "128", "rank 1"}));
  BOOST_CHECK(rows.why_not("q_a", {1536, 7168}, 8).has_value());
  // shared experts at tp=32: 2048/32 = 64 rows (LoongForge bug B6)
  BOOST_CHECK(throws_with([] { Fp8Blocks<SwiGLUInterleave>{}.scale_map("shared fc1", {4096, 7168}, 0, 32); },
                          {"'shared fc1'", "[4096, 7168]", "size 32", "128"}));
  // a partial last block may not move into the middle of a shard
  BOOST_CHECK(throws_with([] { Fp8Blocks<SplitDim>{}.shard_map("kv_a", {576, 7168}, 0, 2); }, {"'kv_a'", "size 2"}));
  BOOST_CHECK(Fp8Blocks<SwiGLUInterleave>{}.why_not("fc1", {2 * 192, 256}, 1) == std::nullopt);  // n = 1: one piece
  BOOST_CHECK(Fp8Blocks<SwiGLUInterleave>{}.why_not("fc1", {2 * 192, 256}, 2).has_value());
  // padding cannot be carried by FP8 blocks
  BOOST_CHECK(throws_with([] { Fp8Blocks<VocabPad>{{128, 100}}.shard_map("emb", {100, 128}, 0, 1); }, {"'emb'", "pad"}));
  const auto norm = Fp8Blocks<Replicated>{}.why_not("norm", {128}, 1);
  BOOST_CHECK(norm && norm->find("'norm'") != std::string::npos && norm->find("2 dims") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(fp8_data_and_scale_round_trip) {
  std::mt19937 rng(2026);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iter = 0; iter < 24; ++iter) {
    const int n = kSizes[pick(0, 3)];
    const int kind = iter % 3;  // 0 rows, 1 cols, 2 SwiGLU
    std::int64_t M = pick(1, 300), N = pick(1, 300);
    if (kind == 0) M = 128 * n * pick(1, 2);
    if (kind == 1) N = 128 * n * pick(1, 2);
    if (kind == 2) M = 2 * 128 * n * pick(1, 2);
    // a partial block along the unsplit dim (or the only rank) is fine
    const Shape full{M, N}, sfull = fp8_scale_shape(full);
    BOOST_REQUIRE(sfull == (Shape{ceil_div(M, 128), ceil_div(N, 128)}));
    const Tensor data = random_tensor(DType::F8_E4M3, full, rng), scale = random_tensor(DType::F32, sfull, rng);
    auto run = [&](const auto& pol, std::size_t dim, bool swiglu) {
      const std::string name = std::string("fp8.").append(std::to_string(iter));
      Shape dsh = full, ssh = sfull;
      dsh[dim] /= n;
      ssh[dim] /= n;
      // data: the plain policy's rule; scale: the same rule on block coordinates (LoongForge
      // chunks / interleaves S with the weight's dim)
      check_round_trip(pol, name, data, n, dsh,
                       [&](int r) { return swiglu ? swiglu_rule(dim, full[dim], n, r) : chunk_rule(dim, full[dim], n, r); });
      const auto scales = pol.split_scales(name, full, scale.cview(), n);
      std::vector<AnyConstView> views;
      for (int r = 0; r < n; ++r) {
        const IndexFn rule = swiglu ? swiglu_rule(dim, sfull[dim], n, r) : chunk_rule(dim, sfull[dim], n, r);
        BOOST_CHECK(same(scales[r], expected_shard(scale, ssh, rule)));
        views.push_back(scales[r].cview());
      }
      BOOST_CHECK(same(pol.merge_scales(name, full, views, MergeOptions{true}), scale));
    };
    if (kind == 2) run(Fp8Blocks<SwiGLUInterleave>{}, 0, true);
    else run(Fp8Blocks<SplitDim>{{std::size_t(kind)}}, std::size_t(kind), false);
  }
  // stacked experts [E, 2F, H] with partial column blocks: EP then ETP interleave, data and scales
  const std::int64_t E = 4, F = 256, H = 200;
  const Shape full{E, 2 * F, H}, sfull = fp8_scale_shape(full);
  BOOST_REQUIRE(sfull == (Shape{4, 4, 2}));
  const Tensor data = random_tensor(DType::F8_E4M3, full, rng), scale = random_tensor(DType::F32, sfull, rng);
  const Fp8Blocks<Then<ExpertSlice, SwiGLUInterleave>> pol{then(ExpertSlice{E, 2}, SwiGLUInterleave{1}, 2)};
  const auto scales = pol.split_scales("experts.fc1", full, scale.cview(), 4);
  for (int r = 0; r < 4; ++r) {
    const int g = r / 2, et = r % 2;
    const Tensor want = expected_shard(scale, {2, 2, 2}, [=](Shape i) {
      return Shape{g * 2 + i[0], swiglu_row(i[1], 4, 2, et), i[2]};
    });
    BOOST_CHECK(same(scales[r], want));
  }
  check_round_trip(pol, "experts.fc1", data, 4, {2, F, H}, [&](int r) {
    const int g = r / 2, et = r % 2;
    return IndexFn([=](Shape i) { return Shape{g * 2 + i[0], swiglu_row(i[1], 2 * F, 2, et), i[2]}; });
  });
  BOOST_CHECK(throws_with([&] { pol.shard_map("experts.fc1", {E, 256, H}, 1, 4); },  // F/etp = 64 rows
                          {"'experts.fc1'", "[4, 256, 200]", "size 4", "128"}));
}

BOOST_AUTO_TEST_CASE(compose_is_exact_on_maps) {
  // pad 5 -> 8 rows then split 4: rank 3 = rows 6, 7 are both copies of row 4 (one pad piece)
  const ShardMap m = vocab_parallel(5, 2, 4).shard_map("emb", {5, 2}, 3, 4);
  BOOST_REQUIRE_EQUAL(m.pieces.size(), 1u);
  BOOST_CHECK(m.pieces[0].is_pad() && m.pieces[0].pad_rows == 2 && m.pieces[0].src == (Box{{4, 0}, {1, 2}}));
  // rank 2 = row 4 (data) + one pad row
  const ShardMap m2 = vocab_parallel(5, 2, 4).shard_map("emb", {5, 2}, 2, 4);
  BOOST_REQUIRE_EQUAL(m2.pieces.size(), 2u);
  BOOST_CHECK(!m2.pieces[0].is_pad() && m2.pieces[1].is_pad() && m2.pieces[1].at == (Shape{1, 0}));
  // composing with a single-rank split coalesces back into one piece
  const ShardMap one = then(SwiGLUInterleave{0}, SplitDim{1}, 2).shard_map("fc1", {8, 6}, 1, 2);
  BOOST_CHECK_EQUAL(one.pieces.size(), 2u);
  const ShardMap whole_map = then(SplitDim{0}, SplitDim{0}, 2).shard_map("w", {8, 6}, 0, 2);
  BOOST_REQUIRE_EQUAL(whole_map.pieces.size(), 1u);
  BOOST_CHECK(whole_map.pieces[0].src == (Box{{0, 0}, {4, 6}}));
}

BOOST_AUTO_TEST_SUITE_END()

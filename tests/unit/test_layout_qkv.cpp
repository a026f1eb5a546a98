// GroupedQkv (GQA fused QKV): every shard is compared with an expectation built independently by
// replaying LoongForge's HfAttnQkvConverter.cat_attn_qkv row permutation literally
// (transpose_shape0 on q, concat [q; k; v], transpose_shape0 on the whole, then torch.chunk),
// never by calling the policy; merge(split(x)) must give x back byte for byte; impossible layouts
// must be refused with messages naming the tensor, its shape and the parallel size.
#include <boost/test/unit_test.hpp>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ckbridge/core/tensor.hpp"
#include "ckbridge/layout/any_policy.hpp"
#include "ckbridge/layout/apply.hpp"
#include "ckbridge/layout/compose.hpp"
#include "ckbridge/layout/grouped_qkv.hpp"
#include "ckbridge/layout/vocab_pad.hpp"

using namespace ckbridge;
using namespace ckbridge::layout;

namespace {

static_assert(Policy<GroupedQkv>);
constexpr GroupedQkv kLlama3_8b{32, 8, 128};
static_assert(kLlama3_8b.q_per_group() == 4 && kLlama3_8b.rows() == 6144);

Tensor random_tensor(DType dt, const Shape& shape, std::mt19937& rng) {
  Tensor t(dt, shape);
  for (std::size_t i = 0; i < t.size_bytes(); ++i) t.data()[i] = std::byte(rng() & 0xFF);
  return t;
}

// Row permutations as index lists: out row o comes from in row perm[o].
using Perm = std::vector<std::int64_t>;

// transpose_shape0(X, a, b) of LoongForge: view rows as (a, b, c), swap the first two axes.
Perm transpose_shape0(std::int64_t rows, std::int64_t a, std::int64_t b) {
  const std::int64_t c = rows / (a * b);
  BOOST_REQUIRE_EQUAL(a * b * c, rows);
  Perm p(static_cast<std::size_t>(rows));
  for (std::int64_t j = 0; j < b; ++j)
    for (std::int64_t i = 0; i < a; ++i)
      for (std::int64_t k = 0; k < c; ++k) p[static_cast<std::size_t>((j * a + i) * c + k)] = (i * b + j) * c + k;
  return p;
}

// Applies perm to the rows of x.
Tensor permute_rows(const Tensor& x, const Perm& perm) {
  Tensor out(x.dtype(), x.shape());
  const std::size_t row_bytes = x.size_bytes() / static_cast<std::size_t>(x.shape()[0]);
  for (std::size_t o = 0; o < perm.size(); ++o)
    std::memcpy(out.data() + o * row_bytes, x.data() + static_cast<std::size_t>(perm[o]) * row_bytes, row_bytes);
  return out;
}

// The MCore linear_qkv tensor (before TP chunking), by LoongForge's recipe on row indices.
Tensor mcore_qkv(const Tensor& hf_qkv, std::int64_t heads, std::int64_t groups, std::int64_t hd) {
  const std::int64_t R = heads / groups, rows = (heads + 2 * groups) * hd;
  // q = transpose_shape0(q, groups, R); value = cat([q, k, v]) -- k, v rows keep their place
  Perm step1(static_cast<std::size_t>(rows));
  const Perm tq = transpose_shape0(heads * hd, groups, R);
  for (std::int64_t o = 0; o < rows; ++o)
    step1[static_cast<std::size_t>(o)] = o < heads * hd ? tq[static_cast<std::size_t>(o)] : o;
  const Tensor value = permute_rows(hf_qkv, step1);
  // value = transpose_shape0(value, R + 2, groups)
  return permute_rows(value, transpose_shape0(rows, R + 2, groups));
}

// torch.chunk(x, n, dim 0)[r]
Tensor chunk_rows(const Tensor& x, int n, int r) {
  Shape s = x.shape();
  s[0] /= n;
  Tensor out(x.dtype(), s);
  std::memcpy(out.data(), x.data() + static_cast<std::size_t>(r) * out.size_bytes(), out.size_bytes());
  return out;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         (a.size_bytes() == 0 || std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
}

std::string refusal(const GroupedQkv& p, const Shape& full, int size) {
  auto w = p.why_not("layers.0.qkv", full, size);
  return w ? *w : std::string();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(layout_qkv)

BOOST_AUTO_TEST_CASE(shards_match_loongforge_row_permutation) {
  std::mt19937 rng(7);
  struct Case {
    std::int64_t heads, groups, hd, cols;
  };
  // GQA (Llama 3 ratios), MHA (groups = heads), MQA (one group), odd widths, a 1-D bias (cols 0)
  for (const Case c : {Case{6, 2, 4, 3}, Case{8, 4, 2, 5}, Case{4, 4, 3, 2}, Case{6, 1, 2, 3}, Case{12, 4, 1, 1},
                       Case{8, 2, 4, 0}}) {
    const Shape full = c.cols ? Shape{(c.heads + 2 * c.groups) * c.hd, c.cols} : Shape{(c.heads + 2 * c.groups) * c.hd};
    for (DType dt : {DType::BF16, DType::F32, DType::F8_E4M3}) {
      const Tensor x = random_tensor(dt, full, rng);
      const Tensor want_full = mcore_qkv(x, c.heads, c.groups, c.hd);
      const GroupedQkv p{c.heads, c.groups, c.hd};
      for (int n = 1; n <= c.groups; ++n) {
        if (c.groups % n) continue;
        BOOST_TEST_CONTEXT("heads " << c.heads << " groups " << c.groups << " hd " << c.hd << " " << dt << " TP "
                                    << n) {
          const auto shards = split(p, "qkv", x.cview(), n);
          BOOST_REQUIRE_EQUAL(shards.size(), static_cast<std::size_t>(n));
          for (int r = 0; r < n; ++r) {
            check_map("qkv", p.shard_map("qkv", full, r, n), full);
            BOOST_TEST(same(shards[static_cast<std::size_t>(r)], chunk_rows(want_full, n, r)));
          }
          BOOST_TEST(same(merge(p, "qkv", shards, {.verify = true}), x));
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(size_one_still_permutes) {
  // MCore's layout differs from HF's [q; k; v] even without TP: group 0 is [q0 q1 q2; k0; v0].
  const GroupedQkv p{6, 2, 1};
  const ShardMap m = p.shard_map("qkv", {10, 4}, 0, 1);
  BOOST_REQUIRE_EQUAL(m.pieces.size(), 6u);
  const std::vector<std::int64_t> src_rows{0, 6, 8, 3, 7, 9}, extents{3, 1, 1, 3, 1, 1}, at_rows{0, 3, 4, 5, 8, 9};
  for (std::size_t i = 0; i < m.pieces.size(); ++i) {
    BOOST_TEST(m.pieces[i].src.begin[0] == src_rows[i]);
    BOOST_TEST(m.pieces[i].src.extent[0] == extents[i]);
    BOOST_TEST(m.pieces[i].at[0] == at_rows[i]);
    BOOST_TEST(m.pieces[i].src.extent[1] == 4);
  }
}

BOOST_AUTO_TEST_CASE(refusals_name_tensor_shape_and_size) {
  const GroupedQkv p{6, 2, 4};
  BOOST_TEST(refusal(p, {40, 8}, 1).empty());
  BOOST_TEST(refusal(p, {40, 8}, 2).empty());
  const std::string groups = refusal(p, {40, 8}, 4);  // 2 groups over 4 ranks
  BOOST_TEST(groups.find("'layers.0.qkv'") != std::string::npos);
  BOOST_TEST(groups.find("[40, 8]") != std::string::npos);
  BOOST_TEST(groups.find("parallel size 4") != std::string::npos);
  BOOST_TEST(groups.find("2 query groups are not divisible by 4") != std::string::npos);
  BOOST_TEST(refusal(p, {40, 8}, 3).find("not divisible by 3") != std::string::npos);
  BOOST_TEST(refusal(p, {36, 8}, 1).find("dim 0 has 36 rows") != std::string::npos);
  BOOST_TEST(refusal(GroupedQkv{6, 4, 4}, {56, 8}, 1).find("6 heads do not divide into 4") != std::string::npos);
  BOOST_TEST(refusal(GroupedQkv{6, 0, 4}, {24, 8}, 1).find("must all be > 0") != std::string::npos);
  BOOST_TEST(refusal(GroupedQkv{0, 2, 4}, {16, 8}, 1).find("must all be > 0") != std::string::npos);
  BOOST_TEST(refusal(p, {}, 1).find("cannot use dim 0") != std::string::npos);
  BOOST_TEST(refusal(p, {40, 8}, 0).find("size must be >= 1") != std::string::npos);
  BOOST_CHECK_THROW(p.shard_map("qkv", {40, 8}, 0, 4), Error);
  BOOST_CHECK_THROW(p.shard_map("qkv", {40, 8}, 2, 2), Error);  // rank out of range
  // merging shards that do not form a grouped QKV tensor
  std::vector<Tensor> bad;
  bad.emplace_back(DType::BF16, Shape{18, 8});
  bad.emplace_back(DType::BF16, Shape{18, 8});
  BOOST_CHECK_THROW(merge(p, "qkv", bad), Error);
  std::vector<Tensor> mixed;
  mixed.emplace_back(DType::BF16, Shape{20, 8});
  mixed.emplace_back(DType::BF16, Shape{10, 8});
  BOOST_CHECK_THROW(merge(p, "qkv", mixed), Error);
}

// GroupedQkv is built as QkvRegroup then SplitDim{0} (layout::Then): its maps equal the two maps
// composed by hand, the permutation alone refuses to split, and a type-erased AnyPolicy (what a
// model spec stores) answers exactly as the policy it wraps.
BOOST_AUTO_TEST_CASE(composed_and_type_erased) {
  const GroupedQkv p{6, 2, 4};
  const Shape full{40, 8};
  const ShardMap regrouped = QkvRegroup{6, 2, 4}.shard_map("qkv", full, 0, 1);  // the permutation alone
  BOOST_TEST(regrouped.pieces.size() == 6u);
  for (int r = 0; r < 2; ++r) {
    const ShardMap by_hand = compose("qkv", regrouped, SplitDim{0}.shard_map("qkv", regrouped.shard_shape, r, 2));
    BOOST_TEST((p.shard_map("qkv", full, r, 2).pieces == by_hand.pieces));
  }
  const QkvRegroup regroup{6, 2, 4};
  BOOST_TEST(regroup.why_not("qkv", full, 2).value_or("").find("does not split") != std::string::npos);
  const AnyPolicy any = p;
  for (int n : {1, 2}) {
    BOOST_TEST(!any.why_not("qkv", full, n).has_value());
    for (int r = 0; r < n; ++r) BOOST_TEST((any.shard_map("qkv", full, r, n).pieces == p.shard_map("qkv", full, r, n).pieces));
  }
  BOOST_TEST(any.why_not("qkv", full, 4).value_or("") == p.why_not("qkv", full, 4).value_or("-"));
  BOOST_CHECK_THROW(AnyPolicy{}.why_not("qkv", full, 1), Error);
  // VocabParallel: at every size n, vocab_parallel(V, div, n) = Then<VocabPad, SplitDim>
  const VocabParallel vp{300, 8, 0};
  const Shape emb{300, 4};
  for (int n : {1, 2, 4}) {
    const auto want = vocab_parallel(300, 8, n);
    for (int r = 0; r < n; ++r) {
      const ShardMap m = vp.shard_map("emb", emb, r, n);
      BOOST_TEST(m.shard_shape == want.shard_map("emb", emb, r, n).shard_shape);
      BOOST_TEST((m.pieces == want.shard_map("emb", emb, r, n).pieces));
    }
  }
  BOOST_TEST(vp.shard_map("emb", emb, 0, 1).shard_shape[0] == 304);  // padded even at size 1
  const Shape short_emb{299, 4};
  BOOST_TEST(vp.why_not("emb", short_emb, 2).value_or("").find("vocab size is 300") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()

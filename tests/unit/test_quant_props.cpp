// FP8 blockwise quantization: properties against independent double-precision references,
// dequantization bounds and bits, power-of-two detection, re-quantization, resharding without
// re-quantization, and error messages.
#include <boost/test/unit_test.hpp>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ckbridge/quant/dequantize.hpp"
#include "ckbridge/quant/fp8_blocks.hpp"
#include "ckbridge/quant/quantize.hpp"
#include "ckbridge/quant/reshard.hpp"

using namespace ckbridge;
using namespace ckbridge::quant;

namespace {

// ------------------------------------------------------------ independent references (double)
double e4m3_value(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  const double v = e ? std::ldexp(1.0 + m / 8.0, e - 7) : std::ldexp(m / 8.0, -6);
  return s ? -v : v;
}
// RNE onto E4M3FN by search over the 127 finite magnitudes; sat: > 464 -> 448, else -> NaN code.
std::uint8_t ref_e4m3(float f, bool sat) {
  const double v = f;
  if (std::isnan(v)) return 0x7F;  // CUDA canonical NaN / hardware sat both give 0x7F
  const std::uint8_t sign = std::signbit(v) ? 0x80 : 0;
  const double a = std::fabs(v);
  if (a > 464.0) return sign | (sat ? 0x7E : 0x7F);
  int lo = 0, hi = 0x7E;  // largest code with value <= a
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (e4m3_value(mid) <= a) lo = mid;
    else hi = mid - 1;
  }
  if (lo == 0x7E) return sign | 0x7E;
  const double dl = a - e4m3_value(lo), dh = e4m3_value(lo + 1) - a;
  const int c = dl < dh ? lo : dh < dl ? lo + 1 : ((lo & 1) ? lo + 1 : lo);
  return sign | std::uint8_t(c);
}
float canon(float v) { return std::isnan(v) ? f32_from_bits(0x7FFFFFFFu) : v; }

struct RefBlock {
  float scale_inv = 0;
  bool lf_nan = false;
};

double vmax_of(DType d) {
  return d == DType::F32 ? double(FLT_MAX) : d == DType::BF16 ? double(f32_from_bits(0x7F7F0000u)) : 65504.0;
}

// Reference quantizer over float values (already converted from the input dtype).
// method: 0 te, 1 pt (default, te fallback), 2 pt raw.
void ref_quantize(const std::vector<float>& x, std::int64_t m, std::int64_t n, DType dt, float eps, bool pow2,
                  int method, std::vector<std::uint8_t>& q, std::vector<float>& s, std::int64_t& fallbacks) {
  const std::int64_t bm = block_count(m), bn = block_count(n);
  q.assign(std::size_t(m * n), 0);
  s.assign(std::size_t(bm * bn), 0);
  fallbacks = 0;
  for (std::int64_t bi = 0; bi < bm; ++bi)
    for (std::int64_t bj = 0; bj < bn; ++bj) {
      double amax = 0;
      bool nan = false;
      for (std::int64_t i = bi * 128; i < std::min(m, bi * 128 + 128); ++i)
        for (std::int64_t j = bj * 128; j < std::min(n, bj * 128 + 128); ++j) {
          const double v = x[std::size_t(i * n + j)];
          if (std::isnan(v)) nan = true;
          else amax = std::max(amax, std::fabs(v));
        }
      // te
      double at = amax < double(eps) ? double(eps) : amax;
      float ts = 1.0f;
      if (at != 0 && std::isfinite(at)) {
        ts = float(448.0 / at);
        if (std::isinf(ts)) ts = float(vmax_of(dt));
        if (pow2) {
          int e;
          std::frexp(double(ts), &e);
          ts = float(std::ldexp(1.0, e - 1));
        }
      }
      const float te_inv = float(1.0 / double(ts));
      // pt
      double a = nan ? NAN : amax;
      if (a < double(eps)) a = eps;
      const float y = float(a * double(f32_from_bits(0x3B124925u)));
      float pscale, pmul;
      if (pow2) {
        if (std::isnan(y)) pscale = pmul = NAN;
        else if (y == 0) { pscale = 0; pmul = INFINITY; }
        else if (std::isinf(y)) { pscale = INFINITY; pmul = 0; }
        else {
          const int E = int(std::ceil(double(float(std::log2(double(y))))));
          pscale = float(std::ldexp(1.0, E));
          pmul = float(std::ldexp(1.0, -E));
        }
      } else {
        pscale = y;
        pmul = float(double(float(1.0 / a)) * 448.0);
      }
      const bool lf_nan = !std::isfinite(a) || !std::isfinite(pmul);
      const bool use_te = method == 0 || (method == 1 && lf_nan);
      if (method != 0 && lf_nan) ++fallbacks;
      s[std::size_t(bi * bn + bj)] = use_te ? te_inv : canon(pscale);
      for (std::int64_t i = bi * 128; i < std::min(m, bi * 128 + 128); ++i)
        for (std::int64_t j = bj * 128; j < std::min(n, bj * 128 + 128); ++j) {
          const double v = x[std::size_t(i * n + j)];
          q[std::size_t(i * n + j)] = use_te ? ref_e4m3(float(v * double(ts)), true)
                                             : ref_e4m3(canon(float(v * double(pmul))), false);
        }
    }
}

// ------------------------------------------------------------ random inputs
struct Input {
  Tensor t;
  std::vector<float> f;  // exact float values of t
};
Input make_input(DType dt, std::int64_t m, std::int64_t n, std::mt19937_64& rng, bool specials) {
  Input in{Tensor(dt, {m, n}), {}};
  std::normal_distribution<double> nd;
  std::uniform_real_distribution<double> ud(0, 1);
  const std::int64_t bm = block_count(m), bn = block_count(n);
  std::vector<double> mag(std::size_t(bm * bn));
  for (auto& g : mag) {
    const double r = ud(rng);
    g = r < 0.1 ? 0.0 : std::pow(10.0, -6 + 9 * ud(rng));  // some all-zero blocks
  }
  in.f.resize(std::size_t(m * n));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double v = nd(rng) * mag[std::size_t((i / 128) * bn + j / 128)];
      if (specials && ud(rng) < 2e-5) v = ud(rng) < 0.5 ? NAN : (ud(rng) < 0.5 ? INFINITY : -INFINITY);
      const std::size_t k = std::size_t(i * n + j);
      if (dt == DType::F32) {
        in.t.typed<float, 2>()(i, j) = float(v);
        in.f[k] = float(v);
      } else if (dt == DType::BF16) {
        const std::uint16_t b = f32_to_bf16_bits(float(v));
        in.t.typed<bf16_t, 2>()(i, j) = bf16_t{b};
        in.f[k] = bf16_bits_to_f32(b);
      } else {
        const std::uint16_t h = f32_to_f16_bits(float(v));
        in.t.typed<f16_t, 2>()(i, j) = f16_t{h};
        in.f[k] = f16_bits_to_f32(h);
      }
    }
  return in;
}

QuantOptions opts(float eps, bool pow2, unsigned threads = 0) {
  QuantOptions o;
  o.amax_epsilon = eps;
  o.force_pow_2_scales = pow2;
  o.device = Device::Cpu;
  o.threads = threads;
  o.name = "w";
  return o;
}

bool bytes_equal(const Tensor& a, const Tensor& b) {
  return a.size_bytes() == b.size_bytes() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

template <class M>
void check_against_ref(const Input& in, DType dt, std::int64_t m, std::int64_t n, float eps, bool pow2, int method) {
  std::vector<std::uint8_t> rq;
  std::vector<float> rs;
  std::int64_t rf;
  ref_quantize(in.f, m, n, dt, eps, pow2, method, rq, rs, rf);
  const QuantResult r = quantize<M>(in.t.view(), opts(eps, pow2));
  BOOST_TEST(r.fallback_blocks == rf);
  BOOST_TEST(std::memcmp(r.data.data(), rq.data(), rq.size()) == 0);
  const auto s = r.scale_inv.typed<float, 2>();
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < s.extent(0); ++i)
    for (std::int64_t j = 0; j < s.extent(1); ++j) bad += f32_bits(s(i, j)) != f32_bits(rs[std::size_t(i * s.extent(1) + j)]);
  BOOST_TEST(bad == 0);
}

const std::vector<std::pair<std::int64_t, std::int64_t>> kShapes = {{1, 1}, {129, 129}, {200, 300}, {128, 256},
                                                                    {257, 130}, {3, 1000}, {384, 127}};

}  // namespace

BOOST_AUTO_TEST_SUITE(quant_props)

BOOST_AUTO_TEST_CASE(fast_casts_equal_core_casts) {
  // the branch-free casts used by the kernels vs the readable ones in core/float_bits.hpp
  std::int64_t bad = 0;
  auto check = [&](std::uint32_t u) {
    const float f = f32_from_bits(u);
    bad += quant::detail::e4m3_sat(f) != f32_to_e4m3_sat(f);
    const std::uint8_t c = f32_to_e4m3_c10(f);
    bad += quant::detail::e4m3_c10_canon(f) != (f32_is_nan(u) ? 0x7F : c);
  };
  for (std::uint32_t hi = 0; hi < (1u << 20); ++hi)
    for (std::uint32_t lo : {0u, 1u, 0x7FFu, 0x800u, 0x801u, 0xFFFu}) check(hi << 12 | lo);
  std::mt19937 rng(7);
  for (int i = 0; i < (1 << 22); ++i) check(rng());
  BOOST_TEST(bad == 0);
  // dequant table: all 256 codes against the format definition
  for (int c = 0; c < 256; ++c) {
    const float v = quant::detail::e4m3_to_f32_fast(std::uint32_t(c));
    if ((c & 0x7F) == 0x7F) BOOST_TEST(std::isnan(v));
    else BOOST_TEST(f32_bits(v) == f32_bits(float(e4m3_value(c))), "code " << c);
  }
}

BOOST_AUTO_TEST_CASE(ceil_log2_matches_correctly_rounded_log2) {
  std::int64_t bad = 0, checked = 0;
  auto ref = [](float y) { return int(std::ceil(double(float(std::log2(double(y)))))); };
  for (int k = -149; k <= 127; ++k) {
    const std::uint32_t base = f32_bits(float(std::ldexp(1.0, k)));
    for (int d = -16; d <= 64; ++d) {
      const std::int64_t u = std::int64_t(base) + d;
      if (u <= 0 || u >= 0x7F800000) continue;
      const float y = f32_from_bits(std::uint32_t(u));
      bad += quant::detail::ceil_log2_f32(y) != ref(y);
      ++checked;
    }
  }
  std::mt19937 rng(11);
  for (int i = 0; i < 1000000; ++i) {
    const std::uint32_t u = rng() & 0x7FFFFFFFu;
    if (u == 0 || u >= 0x7F800000u) continue;
    bad += quant::detail::ceil_log2_f32(f32_from_bits(u)) != ref(f32_from_bits(u));
    ++checked;
  }
  BOOST_TEST(checked > 1000000);
  BOOST_TEST(bad == 0);
}

BOOST_AUTO_TEST_CASE(random_shapes_match_reference) {
  std::mt19937_64 rng(2024);
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (auto [m, n] : kShapes) {
      const Input in = make_input(dt, m, n, rng, /*specials=*/true);
      for (float eps : {0.0f, 1e-4f})
        for (bool p2 : {false, true}) {
          BOOST_TEST_CONTEXT(safetensors_name(dt) << " " << m << "x" << n << " eps=" << eps << " pow2=" << p2) {
            check_against_ref<te>(in, dt, m, n, eps, p2, 0);
            check_against_ref<pt>(in, dt, m, n, eps, p2, 1);
            check_against_ref<pt_loongforge_raw>(in, dt, m, n, eps, p2, 2);
          }
        }
    }
}

BOOST_AUTO_TEST_CASE(te_and_pt_agree_where_they_must) {
  // pow2, bf16 input, every block non-zero and finite: identical scales and codes (reference 5.3).
  // non-pow2: scales within 1 ulp, codes differ only rarely.
  std::mt19937_64 rng(5);
  std::normal_distribution<double> nd;
  for (auto [m, n] : kShapes) {
    Tensor x(DType::BF16, {m, n});
    auto v = x.typed<bf16_t, 2>();
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) v(i, j) = bf16_t{f32_to_bf16_bits(float(nd(rng) * 0.02 + 1e-3))};
    const QuantResult t1 = quantize<te>(x.view(), opts(0, true)), p1 = quantize<pt>(x.view(), opts(0, true));
    BOOST_TEST(bytes_equal(t1.data, p1.data));
    BOOST_TEST(bytes_equal(t1.scale_inv, p1.scale_inv));
    BOOST_TEST(p1.fallback_blocks == 0);
    const QuantResult t0 = quantize<te>(x.view(), opts(0, false)), p0 = quantize<pt>(x.view(), opts(0, false));
    const auto a = t0.scale_inv.typed<float, 2>(), b = p0.scale_inv.typed<float, 2>();
    for (std::int64_t i = 0; i < a.extent(0); ++i)
      for (std::int64_t j = 0; j < a.extent(1); ++j) {
        const std::int64_t d = std::int64_t(f32_bits(a(i, j))) - std::int64_t(f32_bits(b(i, j)));
        BOOST_TEST(std::abs(d) <= 1);
      }
    std::int64_t diff = 0;
    for (std::size_t k = 0; k < t0.data.size_bytes(); ++k) diff += t0.data.data()[k] != p0.data.data()[k];
    BOOST_TEST(double(diff) <= 0.01 * double(m * n) + 1);
  }
}

BOOST_AUTO_TEST_CASE(threads_and_strides_do_not_change_bytes) {
  std::mt19937_64 rng(9);
  const Input in = make_input(DType::BF16, 300, 520, rng, true);
  const QuantResult one = quantize<pt>(in.t.view(), opts(0, false, 1));
  const QuantResult many = quantize<pt>(in.t.view(), opts(0, false, 7));
  BOOST_TEST(bytes_equal(one.data, many.data));
  BOOST_TEST(bytes_equal(one.scale_inv, many.scale_inv));
  // a strided view: columns [8, 520) of a wider tensor
  const AnyConstView sub = in.t.view().slice(1, 8, 520);
  const Tensor dense = Tensor::copy_of(sub);
  const QuantResult a = quantize<te>(sub, opts(0, true)), b = quantize<te>(dense.view(), opts(0, true));
  BOOST_TEST(bytes_equal(a.data, b.data));
  BOOST_TEST(bytes_equal(a.scale_inv, b.scale_inv));
  // rank 3 input is flattened to [M, N]
  Tensor r3 = Tensor::copy_of(in.t.view());
  r3.reshape({3, 100, 520});
  const QuantResult c = quantize<te>(r3.view(), opts(0, true)), d = quantize<te>(in.t.view(), opts(0, true));
  BOOST_TEST((c.data.shape() == Shape{3, 100, 520}));
  BOOST_TEST(bytes_equal(c.scale_inv, d.scale_inv));
  BOOST_TEST(std::memcmp(c.data.data(), d.data.data(), d.data.size_bytes()) == 0);
}

BOOST_AUTO_TEST_CASE(dequantize_bits_and_error_bound) {
  std::mt19937_64 rng(3);
  for (DType dt : {DType::BF16, DType::F32, DType::F16})
    for (auto [m, n] : kShapes) {
      const Input in = make_input(dt, m, n, rng, false);
      for (bool p2 : {false, true}) {
        const QuantResult r = quantize<te>(in.t.view(), opts(0, p2));
        for (ScaleLayout lay : {ScaleLayout::Unpadded, ScaleLayout::TePadded}) {
          QuantOptions o = opts(0, p2);
          o.layout = lay;
          const QuantResult rl = quantize<te>(in.t.view(), o);
          const Tensor y32 = dequantize(rl.data.view(), rl.scale_inv.view(), DType::F32, {Device::Cpu});
          const Tensor y16 = dequantize(rl.data.view(), rl.scale_inv.view(), DType::BF16, {Device::Cpu});
          const auto s = r.scale_inv.typed<float, 2>();
          std::int64_t bad_bits = 0, bad_bound = 0;
          for (std::int64_t i = 0; i < m; ++i)
            for (std::int64_t j = 0; j < n; ++j) {
              const std::size_t k = std::size_t(i * n + j);
              const std::uint8_t q = std::uint8_t(rl.data.data()[k]);
              const double si = s(i / 128, j / 128);
              const float want = float(e4m3_value(q) * si);  // exact product, one rounding
              const float got = y32.typed<float, 2>()(i, j);
              bad_bits += f32_bits(got) != f32_bits(want);
              bad_bits += y16.typed<bf16_t, 2>()(i, j).bits != f32_to_bf16_bits(want);
              const double x = in.f[k];
              // half an e4m3 ulp (2^-4 relative) or half the subnormal step, plus scale rounding
              const double bound = std::fabs(x) * (0x1p-4 + 1e-6) + 0x1p-10 * si * 1.000001;
              bad_bound += std::fabs(double(got) - x) > bound;
            }
          BOOST_TEST(bad_bits == 0);
          BOOST_TEST(bad_bound == 0);
        }
      }
    }
}

BOOST_AUTO_TEST_CASE(dequantize_nan_is_canonical) {
  // pt_loongforge_raw NaN block -> 0x7FFFFFFF (f32) / 0x7FFF (bf16), as CUDA
  Tensor x(DType::BF16, {128, 128});
  std::memset(x.data(), 0, x.size_bytes());
  const QuantResult r = quantize<pt_loongforge_raw>(x.view(), opts(0, false));
  const Tensor y32 = dequantize(r.data.view(), r.scale_inv.view(), DType::F32, {Device::Cpu});
  const Tensor y16 = dequantize(r.data.view(), r.scale_inv.view(), DType::BF16, {Device::Cpu});
  const std::uint32_t b32 = f32_bits(y32.typed<float, 2>()(3, 4));
  const std::uint16_t b16 = y16.typed<bf16_t, 2>()(3, 4).bits;
  BOOST_TEST(b32 == 0x7FFFFFFFu);
  BOOST_TEST(b16 == 0x7FFF);
}

BOOST_AUTO_TEST_CASE(power_of_two_detection) {
  BOOST_TEST(is_power_of_two(1.0f));
  BOOST_TEST(is_power_of_two(f32_from_bits(0x00400000u)));  // 2^-127 (subnormal)
  BOOST_TEST(is_power_of_two(f32_from_bits(0x00000001u)));  // 2^-149
  BOOST_TEST(!is_power_of_two(f32_from_bits(0x00000003u)));
  BOOST_TEST(!is_power_of_two(0.0f));
  BOOST_TEST(!is_power_of_two(-2.0f));
  BOOST_TEST(!is_power_of_two(INFINITY));
  BOOST_TEST(!is_power_of_two(NAN));
  BOOST_TEST(!is_power_of_two(3.0f));
  // only the meaningful region counts: garbage in TE padding is ignored
  Tensor s(DType::F32, {2, 4});
  auto v = s.typed<float, 2>();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) v(i, j) = j < 2 ? 0.25f : 3.0f;
  BOOST_TEST(is_power_of_two(s.view(), 200, 250));
  BOOST_TEST(!is_power_of_two(s.view(), 200, 500));
  BOOST_TEST(needs_requantize(s.view(), 200, 250, false));
  BOOST_TEST(!needs_requantize(s.view(), 200, 250, true));
  BOOST_CHECK_THROW(is_power_of_two(s.view(), 300, 250), Error);  // 3 block rows expected
  // te pow2 output is pow2, te linear output generally is not
  std::mt19937_64 rng(1);
  const Input in = make_input(DType::BF16, 256, 384, rng, false);
  BOOST_TEST(is_power_of_two(quantize<te>(in.t.view(), opts(0, true)).scale_inv.view(), 256, 384));
}

BOOST_AUTO_TEST_CASE(requantize_roundtrip) {
  std::mt19937_64 rng(4);
  const Input in = make_input(DType::BF16, 300, 260, rng, false);
  const QuantResult lin = quantize<te>(in.t.view(), opts(0, false));
  // requantize = dequantize to fp32 + quantize
  const QuantResult rq = requantize<te>(lin.data.view(), lin.scale_inv.view(), opts(0, true));
  const Tensor w = dequantize(lin.data.view(), lin.scale_inv.view(), DType::F32, {Device::Cpu});
  const QuantResult direct = quantize<te>(w.view(), opts(0, true));
  BOOST_TEST(bytes_equal(rq.data, direct.data));
  BOOST_TEST(bytes_equal(rq.scale_inv, direct.scale_inv));
  // pow2 -> fp32 -> pow2 keeps the values (codes may double where the block max code is 224)
  const QuantResult p = quantize<te>(in.t.view(), opts(0, true));
  const QuantResult pp = requantize<te>(p.data.view(), p.scale_inv.view(), opts(0, true));
  const Tensor a = dequantize(p.data.view(), p.scale_inv.view(), DType::F32, {Device::Cpu});
  const Tensor b = dequantize(pp.data.view(), pp.scale_inv.view(), DType::F32, {Device::Cpu});
  BOOST_TEST(bytes_equal(a, b));
}

BOOST_AUTO_TEST_CASE(block_math) {
  BOOST_TEST(block_count(0) == 0);
  BOOST_TEST(block_count(1) == 1);
  BOOST_TEST(block_count(128) == 1);
  BOOST_TEST(block_count(129) == 2);
  BOOST_TEST((scale_shape(7168, 1536, ScaleLayout::Unpadded) == Shape{56, 12}));
  BOOST_TEST((scale_shape(200, 300, ScaleLayout::TePadded) == Shape{2, 4}));
  BOOST_TEST((scale_shape(1, 129 * 128, ScaleLayout::TePadded) == Shape{1, 132}));
  BOOST_TEST(is_block_aligned(Range{128, 256}, 300));
  BOOST_TEST(is_block_aligned(Range{256, 300}, 300));
  BOOST_TEST(!is_block_aligned(Range{100, 200}, 300));
  BOOST_TEST(!is_block_aligned(Range{0, 200}, 300));
  BOOST_TEST(!is_block_aligned(Range{0, 400}, 300));
  BOOST_TEST((scale_range(Range{256, 300}) == Range{2, 3}));
  try {
    check_block_aligned("layers.0.mlp.w", {300, 512}, 0, {0, 150}, "split");
    BOOST_FAIL("no throw");
  } catch (const Error& e) {
    const std::string msg = e.what();
    BOOST_TEST(msg.find("layers.0.mlp.w") != std::string::npos);
    BOOST_TEST(msg.find("[300, 512]") != std::string::npos);
    BOOST_TEST(msg.find("150") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(reshard_equals_quantizing_shards) {
  std::mt19937_64 rng(8);
  const std::int64_t m = 512, n = 700;  // columns: last block partial
  const Input in = make_input(DType::BF16, m, n, rng, false);
  for (ScaleLayout lay : {ScaleLayout::Unpadded, ScaleLayout::TePadded}) {
    QuantOptions o = opts(0, false);
    o.layout = lay;
    const QuantResult full = quantize<te>(in.t.view(), o);
    const Fp8View fv{full.data.view(), full.scale_inv.view()};
    // rows: 4 TP shards of 128
    const auto parts = split_fp8(fv, 0, 4, lay, "w");
    BOOST_TEST_REQUIRE(parts.size() == 4u);
    std::vector<Fp8View> views;
    for (std::int64_t p = 0; p < 4; ++p) {
      const QuantResult direct = quantize<te>(in.t.view().slice(0, p * 128, p * 128 + 128), o);
      BOOST_TEST(bytes_equal(parts[std::size_t(p)].data, direct.data));
      BOOST_TEST(bytes_equal(parts[std::size_t(p)].scale_inv, direct.scale_inv));
      views.push_back(parts[std::size_t(p)].view());
    }
    const Fp8Tensor back = concat_fp8(views, 0, lay, "w");
    BOOST_TEST(bytes_equal(back.data, full.data));
    BOOST_TEST(bytes_equal(back.scale_inv, full.scale_inv));
    // columns: sub-boxes [0,256), [256,512), [512,700) (last partial) and glue them back
    std::vector<Fp8Tensor> cols;
    for (Range c : {Range{0, 256}, Range{256, 512}, Range{512, 700}}) {
      cols.push_back(materialize(slice_fp8(fv, {0, m}, c, "w"), lay));
      const QuantResult direct = quantize<te>(in.t.view().slice(1, c.begin, c.end), o);
      BOOST_TEST(bytes_equal(cols.back().data, direct.data));
      BOOST_TEST(bytes_equal(cols.back().scale_inv, direct.scale_inv));
    }
    std::vector<Fp8View> cv;
    for (auto& c : cols) cv.push_back(c.view());
    const Fp8Tensor cb = concat_fp8(cv, 1, lay, "w");
    BOOST_TEST(bytes_equal(cb.data, full.data));
    BOOST_TEST(bytes_equal(cb.scale_inv, full.scale_inv));
    // a sub-box in the middle
    const Fp8View box = slice_fp8(fv, {128, 384}, {128, 640}, "w");
    BOOST_TEST((box.scale_inv.shape == Shape{2, 4}));
    // not block-aligned: refused with the tensor, its shape and the boundary
    BOOST_CHECK_THROW(split_fp8(fv, 1, 2, lay, "w"), Error);  // 350 columns each
    try {
      split_fp8(fv, 0, 8, lay, "experts.3.w1");  // 64 rows each
      BOOST_FAIL("no throw");
    } catch (const Error& e) {
      const std::string msg = e.what();
      BOOST_TEST(msg.find("experts.3.w1") != std::string::npos);
      BOOST_TEST(msg.find("[512, 700]") != std::string::npos);
      BOOST_TEST(msg.find("64") != std::string::npos);
    }
    std::vector<Fp8View> bad{cv[2], cv[0]};  // a partial piece that is not last
    BOOST_CHECK_THROW(concat_fp8(bad, 1, lay, "w"), Error);
  }
}

BOOST_AUTO_TEST_CASE(errors_name_the_tensor) {
  Tensor x(DType::I32, {4, 4});
  QuantOptions o = opts(0, false);
  o.name = "model.embed";
  try {
    quantize<te>(x.view(), o);
    BOOST_FAIL("no throw");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("model.embed") != std::string::npos);
  }
  Tensor y(DType::BF16, {4, 4});
  std::memset(y.data(), 0, y.size_bytes());
  o.amax_epsilon = -1.0f;
  BOOST_CHECK_THROW(quantize<te>(y.view(), o), Error);
  o.amax_epsilon = NAN;
  BOOST_CHECK_THROW(quantize<te>(y.view(), o), Error);
  BOOST_CHECK_THROW(method_from_string("fp4"), Error);
  BOOST_TEST((method_from_string("pt") == MethodId::Pt));
  // scales that do not fit the data
  Tensor q(DType::F8_E4M3, {256, 256}), s(DType::F32, {1, 2});
  BOOST_CHECK_THROW(dequantize(q.view(), s.view(), DType::F32), Error);
  BOOST_CHECK_THROW(dequantize(q.view(), s.view(), DType::F16), Error);
  // an empty tensor quantizes to empty outputs
  Tensor e(DType::F32, {0, 300});
  const QuantResult r = quantize<te>(e.view(), opts(0, false));
  BOOST_TEST((r.scale_inv.shape() == Shape{0, 3}));
  // Device::Cuda without the CUDA kernels compiled in is a clear error
  o.amax_epsilon = 0;
  o.device = Device::Cuda;
  if (!cuda_backend()) BOOST_CHECK_THROW(quantize<te>(y.view(), o), Error);
}

BOOST_AUTO_TEST_SUITE_END()

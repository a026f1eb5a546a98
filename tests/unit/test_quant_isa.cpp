// The CPU FP8 loops in every instruction-set variant this machine runs (cpu_isa.hpp) against a
// scalar reference built from the readable casts of core/float_bits.hpp: same codes, same scale
// bits, same fallback counts, same dequantized bits. Inputs mix every kind of block (all bit
// patterns incl. NaN / Inf / subnormals, zeros, tiny, huge, ordinary), dense and strided views,
// and shapes with partial edge blocks.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ckbridge/quant/cpu_isa.hpp"
#include "ckbridge/quant/dequantize.hpp"
#include "ckbridge/quant/quantize.hpp"

using namespace ckbridge;
using namespace ckbridge::quant;

namespace {

// Restores the ISA cap a test changed.
struct IsaCapGuard {
  int saved = quant::detail::isa_cap().load();
  ~IsaCapGuard() { quant::detail::isa_cap().store(saved); }
};

std::vector<CpuIsa> isas_here() {
  std::vector<CpuIsa> v{CpuIsa::Baseline};
  if (int(cpu_isa_supported()) >= int(CpuIsa::Avx2)) v.push_back(CpuIsa::Avx2);
  if (int(cpu_isa_supported()) >= int(CpuIsa::Avx512)) v.push_back(CpuIsa::Avx512);
  return v;
}

// fp32 bit pattern of one element of block kind `kind`.
std::uint32_t f32_pattern(int kind, std::mt19937& g) {
  std::uniform_int_distribution<std::uint32_t> u32;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  switch (kind) {
    case 0: return u32(g);                                                       // anything, NaN / Inf too
    case 1: return f32_bits(nd(g) * 0.02f);                                      // weights
    case 2: return (u32(g) & 1u) << 31;                                          // +-0
    case 3: return (u32(g) & 0x8000FFFFu);                                       // fp32 subnormals
    case 4: return f32_bits(nd(g) * 1e37f);                                      // huge
    case 5: return (u32(g) % 97 == 0) ? 0x7F800000u | (u32(g) & 0x80000000u) : f32_bits(nd(g));  // some Inf
    default: return f32_bits(nd(g) * 3e-39f);                                    // tiny, amax subnormal
  }
}
// 16-bit patterns: kind 0 takes any 16 bits, the others the fp32 kinds rounded to the format.
std::uint16_t bf16_pattern(int kind, std::mt19937& g) {
  if (kind == 0) return static_cast<std::uint16_t>(g());
  return f32_to_bf16_bits(f32_from_bits(f32_pattern(kind, g)));
}
std::uint16_t f16_pattern(int kind, std::mt19937& g) {
  if (kind == 0) return static_cast<std::uint16_t>(g());
  const float f = f32_from_bits(f32_pattern(kind, g));
  return f32_to_f16_bits(kind == 4 ? f * 1e-33f : kind == 6 ? f * 1e32f : f);  // keep huge / tiny in range
}

template <class T>
Tensor make_input(std::int64_t m, std::int64_t n, std::uint32_t seed) {
  Tensor t(dtype_of<T>, {m, n});
  auto v = t.typed<T, 2>();
  std::mt19937 g(seed);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      const int kind = int((i / kBlock) * 3 + (j / kBlock)) % 7;
      if constexpr (std::is_same_v<T, float>) v(i, j) = f32_from_bits(f32_pattern(kind, g));
      else if constexpr (std::is_same_v<T, bf16_t>) v(i, j) = bf16_t{bf16_pattern(kind, g)};
      else v(i, j) = f16_t{f16_pattern(kind, g)};
    }
  return t;
}

struct QuantOut {
  std::vector<std::uint8_t> codes;
  std::vector<std::uint32_t> scales;
  std::int64_t fallbacks = 0;
};

// Element by element with the readable definitions: Elem<T>::to_f32, f32_to_e4m3_sat / _c10.
template <class Method, class T>
QuantOut reference(TensorView<const T, 2> x, float eps, bool pow2) {
  using E = quant::detail::Elem<T>;
  const std::int64_t m = x.extent(0), n = x.extent(1), bm = block_count(m), bn = block_count(n);
  QuantOut r;
  r.codes.assign(std::size_t(m * n), 0);
  r.scales.assign(std::size_t(bm * bn), 0);
  for (std::int64_t bi = 0; bi < bm; ++bi)
    for (std::int64_t bj = 0; bj < bn; ++bj) {
      BlockStats st;
      for (std::int64_t i = bi * kBlock; i < std::min(m, (bi + 1) * kBlock); ++i)
        for (std::int64_t j = bj * kBlock; j < std::min(n, (bj + 1) * kBlock); ++j) {
          const float f = E::to_f32(x(i, j));
          if (std::isnan(f)) st.has_nan = true;
          else st.amax_bits = std::max(st.amax_bits, f32_bits(std::fabs(f)));
        }
      const BlockScale bs = Method::block_scale(st, eps, pow2, E::vmax_bits);
      r.scales[std::size_t(bi * bn + bj)] = f32_bits(bs.scale_inv);
      r.fallbacks += bs.fallback ? 1 : 0;
      for (std::int64_t i = bi * kBlock; i < std::min(m, (bi + 1) * kBlock); ++i)
        for (std::int64_t j = bj * kBlock; j < std::min(n, (bj + 1) * kBlock); ++j) {
          const float v = E::to_f32(x(i, j)) * bs.mul;
          std::uint8_t c;
          if (bs.te_cast) c = f32_to_e4m3_sat(v);
          else c = std::isnan(v) ? 0x7F : f32_to_e4m3_c10(v);  // CUDA's NaN is positive
          r.codes[std::size_t(i * n + j)] = c;
        }
    }
  return r;
}

template <class Method, class T>
QuantOut run_cpu(TensorView<const T, 2> x, float eps, bool pow2) {
  const std::int64_t m = x.extent(0), n = x.extent(1);
  Tensor q(DType::F8_E4M3, {m, n}), s(DType::F32, {block_count(m), block_count(n)});
  QuantOut r;
  r.fallbacks = quantize_cpu<Method, T>(x, q.typed<e4m3_t, 2>(), s.typed<float, 2>(), eps, pow2, 2);
  r.codes.resize(std::size_t(m * n));
  std::memcpy(r.codes.data(), q.data(), r.codes.size());
  r.scales.resize(std::size_t(s.numel()));
  std::memcpy(r.scales.data(), s.data(), r.scales.size() * 4);
  return r;
}

template <class Method, class T>
void check_quant(const char* what) {
  IsaCapGuard guard;
  const std::int64_t m = 7 * kBlock + 5, n = 3 * kBlock + 77;
  const Tensor x = make_input<T>(m, n, 17);
  const auto xv = TensorView<const T, 2>(x.typed<T, 2>());
  // the same data transposed twice: a column-strided view of a [n, m] buffer
  Tensor xt(dtype_of<T>, {n, m});
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) xt.typed<T, 2>()(j, i) = xv(i, j);
  const TensorView<const T, 2> strided(xt.typed<T, 2>().data(), {m, n}, {1, m});
  for (float eps : {0.0f, 1e-4f})
    for (bool pow2 : {false, true}) {
      const QuantOut ref = reference<Method, T>(xv, eps, pow2);
      for (CpuIsa isa : isas_here()) {
        set_cpu_isa(isa);
        BOOST_TEST_CONTEXT(what << " " << Method::name << " eps " << eps << " pow2 " << pow2 << " isa "
                                << cpu_isa_name(isa)) {
          BOOST_REQUIRE(cpu_isa() == isa);
          for (const auto& view : {xv, strided}) {
            const QuantOut got = run_cpu<Method, T>(view, eps, pow2);
            BOOST_TEST(got.fallbacks == ref.fallbacks);
            BOOST_TEST((got.scales == ref.scales));
            std::size_t bad = 0;
            for (std::size_t k = 0; k < ref.codes.size(); ++k) bad += got.codes[k] != ref.codes[k];
            BOOST_TEST(bad == 0u);
          }
        }
      }
    }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(quant_isa)

BOOST_AUTO_TEST_CASE(cap_and_names) {
  IsaCapGuard guard;
  set_cpu_isa(CpuIsa::Baseline);
  BOOST_TEST(int(cpu_isa()) == int(CpuIsa::Baseline));
  set_cpu_isa(CpuIsa::Avx512);
  BOOST_TEST(int(cpu_isa()) == int(cpu_isa_supported()));
  BOOST_TEST(std::string(cpu_isa_name(CpuIsa::Avx2)) == "avx2");
  BOOST_TEST_MESSAGE("CPU FP8 loops here: " << cpu_isa_name(cpu_isa_supported()));
}

BOOST_AUTO_TEST_CASE(quantize_bf16_all_isas) {
  check_quant<te, bf16_t>("bf16");
  check_quant<pt, bf16_t>("bf16");
  check_quant<pt_loongforge_raw, bf16_t>("bf16");
}
BOOST_AUTO_TEST_CASE(quantize_f16_all_isas) {
  check_quant<te, f16_t>("f16");
  check_quant<pt, f16_t>("f16");
  check_quant<pt_loongforge_raw, f16_t>("f16");
}
BOOST_AUTO_TEST_CASE(quantize_f32_all_isas) {
  check_quant<te, float>("f32");
  check_quant<pt, float>("f32");
  check_quant<pt_loongforge_raw, float>("f32");
}

// Every code under scales of every kind (normal, subnormal, huge, 0, negative, Inf, NaN), as a
// dense and a strided view, to fp32 and bf16.
BOOST_AUTO_TEST_CASE(dequantize_all_isas) {
  IsaCapGuard guard;
  const std::int64_t m = 3 * kBlock + 9, n = 4 * kBlock + 3, bm = block_count(m), bn = block_count(n);
  Tensor q(DType::F8_E4M3, {m, n}), qt(DType::F8_E4M3, {n, m}), s(DType::F32, {bm, bn});
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      const std::uint8_t c = static_cast<std::uint8_t>((i * 131 + j * 7) & 0xFF);
      q.typed<e4m3_t, 2>()(i, j).bits = c;
      qt.typed<e4m3_t, 2>()(j, i).bits = c;
    }
  const float scales[] = {1.0f, 0.5f, 3.0517578125e-05f, 1.17e-38f, 1e-40f, 3.0e38f, 0.0f, -0.25f,
                          INFINITY, NAN, 7.3e-3f, 1.5e-45f, 2.0f, 448.0f, -1e-39f, 6e37f};
  for (std::int64_t k = 0; k < bm * bn; ++k) s.typed<float, 2>().data()[k] = scales[k % 16];
  const auto sv = TensorView<const float, 2>(s.typed<float, 2>());
  const auto qv = TensorView<const e4m3_t, 2>(q.typed<e4m3_t, 2>());
  const TensorView<const e4m3_t, 2> strided(qt.typed<e4m3_t, 2>().data(), {m, n}, {1, m});
  std::vector<std::uint32_t> ref32(std::size_t(m * n));
  std::vector<std::uint16_t> ref16(std::size_t(m * n));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      const float y = e4m3_bits_to_f32(qv(i, j).bits) * sv(i / kBlock, j / kBlock);
      const std::uint32_t b = std::isnan(y) ? 0x7FFFFFFFu : f32_bits(y);
      ref32[std::size_t(i * n + j)] = b;
      ref16[std::size_t(i * n + j)] = f32_to_bf16_bits(f32_from_bits(b));
    }
  for (CpuIsa isa : isas_here()) {
    set_cpu_isa(isa);
    BOOST_TEST_CONTEXT("isa " << cpu_isa_name(isa)) {
      for (const auto& view : {qv, strided}) {
        Tensor y32(DType::F32, {m, n}), y16(DType::BF16, {m, n});
        dequantize_cpu<float>(view, sv, y32.typed<float, 2>(), 2);
        dequantize_cpu<bf16_t>(view, sv, y16.typed<bf16_t, 2>(), 2);
        BOOST_TEST(std::memcmp(y32.data(), ref32.data(), ref32.size() * 4) == 0);
        BOOST_TEST(std::memcmp(y16.data(), ref16.data(), ref16.size() * 2) == 0);
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

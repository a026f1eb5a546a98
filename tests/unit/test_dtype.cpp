// dtypes: names, sizes, and the bit-exact scalar conversions against independent references
// (brute-force nearest-value search over the target grid in double precision).
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/float_bits.hpp"

using namespace ckbridge;

namespace {
// Exact e4m3fn value from the format definition (independent of the code under test).
double e4m3_value(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  double v = e ? std::ldexp(1.0 + m / 8.0, e - 7) : std::ldexp(m / 8.0, -6);
  return s ? -v : v;
}
// Reference RNE onto the E4M3FN grid by search: the nearest finite code, ties to even mantissa.
int e4m3_nearest(double x) {
  int best = -1;
  double bd = 0;
  const int sign = std::signbit(x) ? 0x80 : 0;
  for (int c = 0; c <= 0x7E; ++c) {
    const double d = std::fabs(std::fabs(x) - e4m3_value(c));
    if (best < 0 || d < bd || (d == bd && (c & 1) == 0)) {
      best = c;
      bd = d;
    }
  }
  return sign | best;
}
float from_bits(std::uint32_t u) { return f32_from_bits(u); }
}  // namespace

BOOST_AUTO_TEST_SUITE(dtype)

BOOST_AUTO_TEST_CASE(names_sizes_round_trip) {
  for (const auto& i : kDTypeInfo) {
    BOOST_TEST(dtype_from_safetensors(i.safetensors).value() == i.dtype);
    if (!i.torch_storage.empty()) BOOST_TEST(dtype_from_torch_storage(i.torch_storage).value() == i.dtype);
    BOOST_TEST(dtype_from_torch_dtype(i.torch_dtype).value() == i.dtype);
    dispatch_dtype(i.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      BOOST_TEST(sizeof(T) == i.size);
      BOOST_TEST((dtype_of<T> == i.dtype));
    });
  }
  BOOST_TEST(!dtype_from_safetensors("F8_E4M3FN").has_value());
  BOOST_TEST(safetensors_name(DType::Bool) == "BOOL");
  BOOST_TEST(torch_storage_name(DType::BF16) == "BFloat16Storage");
}

BOOST_AUTO_TEST_CASE(e4m3_every_code_decodes_exactly) {
  for (int c = 0; c < 256; ++c) {
    const float f = e4m3_bits_to_f32(std::uint8_t(c));
    if ((c & 0x7F) == 0x7F) {
      BOOST_TEST(std::isnan(f));
      BOOST_TEST(std::signbit(f) == bool(c & 0x80));
      continue;
    }
    BOOST_TEST(double(f) == e4m3_value(c), "code " << c);
    BOOST_TEST(std::signbit(f) == bool(c & 0x80));
    // encode(decode(code)) == code for both casts
    BOOST_TEST(int(f32_to_e4m3_sat(f)) == c);
    BOOST_TEST(int(f32_to_e4m3_c10(f)) == c);
  }
  // the reference's spot values (fp8-blockwise.md section 3.3)
  BOOST_TEST(f32_bits(e4m3_bits_to_f32(0x01)) == 0x3B000000u);
  BOOST_TEST(f32_bits(e4m3_bits_to_f32(0x08)) == 0x3C800000u);
  BOOST_TEST(f32_bits(e4m3_bits_to_f32(0x7E)) == 0x43E00000u);
  BOOST_TEST(f32_bits(e4m3_bits_to_f32(0x80)) == 0x80000000u);
}

BOOST_AUTO_TEST_CASE(e4m3_edge_cases) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  // saturating (TE): |x| > 464 and Inf -> +-448, NaN -> 0x7F whatever its sign
  BOOST_TEST(int(f32_to_e4m3_sat(464.0f)) == 0x7E);
  BOOST_TEST(int(f32_to_e4m3_sat(std::nextafter(464.0f, 1e9f))) == 0x7E);
  BOOST_TEST(int(f32_to_e4m3_sat(1e30f)) == 0x7E);
  BOOST_TEST(int(f32_to_e4m3_sat(-inf)) == 0xFE);
  BOOST_TEST(int(f32_to_e4m3_sat(nan)) == 0x7F);
  BOOST_TEST(int(f32_to_e4m3_sat(-nan)) == 0x7F);
  BOOST_TEST(int(f32_to_e4m3_sat(-0.0f)) == 0x80);
  // c10 (PyTorch): > 464, Inf, NaN -> 0x7F | sign
  BOOST_TEST(int(f32_to_e4m3_c10(464.0f)) == 0x7E);
  BOOST_TEST(int(f32_to_e4m3_c10(std::nextafter(464.0f, 1e9f))) == 0x7F);
  BOOST_TEST(int(f32_to_e4m3_c10(479.0f)) == 0x7F);
  BOOST_TEST(int(f32_to_e4m3_c10(-480.0f)) == 0xFF);
  BOOST_TEST(int(f32_to_e4m3_c10(-inf)) == 0xFF);
  BOOST_TEST(int(f32_to_e4m3_c10(from_bits(0xFFC00000u))) == 0xFF);
  BOOST_TEST(int(f32_to_e4m3_c10(nan)) == 0x7F);
  // subnormals: 2^-10 is a tie between 0 and 2^-9 -> 0 (even); just above -> 0x01
  BOOST_TEST(int(f32_to_e4m3_sat(std::ldexp(1.0f, -10))) == 0x00);
  BOOST_TEST(int(f32_to_e4m3_sat(std::nextafter(std::ldexp(1.0f, -10), 1.0f))) == 0x01);
  BOOST_TEST(int(f32_to_e4m3_sat(3 * std::ldexp(1.0f, -10))) == 0x02);  // 1.5 * 2^-9 -> 2 (even)
  BOOST_TEST(int(f32_to_e4m3_sat(from_bits(0x00000001u))) == 0x00);      // fp32 subnormal
}

BOOST_AUTO_TEST_CASE(e4m3_sweep_against_nearest_search) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<std::uint32_t> bits;
  std::uniform_real_distribution<double> small(-470.0, 470.0);
  int checked = 0;
  for (int i = 0; i < 200000; ++i) {
    float x;
    if (i % 3 == 0) x = from_bits(bits(rng));
    else if (i % 3 == 1) x = float(small(rng));
    else x = float(std::ldexp(small(rng) / 470.0, -int(rng() % 14)));  // dense near the subnormals
    if (std::isnan(x) || std::fabs(x) > 464.0f) continue;
    const int ref = e4m3_nearest(double(x));
    BOOST_TEST_REQUIRE(int(f32_to_e4m3_sat(x)) == ref, "x bits " << std::hex << f32_bits(x));
    BOOST_TEST_REQUIRE(int(f32_to_e4m3_c10(x)) == ref);
    ++checked;
  }
  // every rounding midpoint and its neighbours
  for (int c = 0; c < 0x7E; ++c) {
    const double mid = (e4m3_value(c) + e4m3_value(c + 1)) / 2;
    const float m = float(mid);
    BOOST_TEST_REQUIRE(double(m) == mid);  // midpoints are exact in fp32
    for (float x : {std::nextafter(m, 0.0f), m, std::nextafter(m, 1e9f)}) {
      BOOST_TEST_REQUIRE(int(f32_to_e4m3_sat(x)) == e4m3_nearest(x));
      BOOST_TEST_REQUIRE(int(f32_to_e4m3_sat(-x)) == e4m3_nearest(-x));
      ++checked;
    }
  }
  BOOST_TEST(checked > 100000);
}

BOOST_AUTO_TEST_CASE(bf16_round_to_nearest_even) {
  // the reference's table (fp8-blockwise.md section 6)
  BOOST_TEST(f32_to_bf16_bits(from_bits(0x3F808000u)) == 0x3F80);
  BOOST_TEST(f32_to_bf16_bits(from_bits(0x3F818000u)) == 0x3F82);
  BOOST_TEST(f32_to_bf16_bits(from_bits(0x7F7FFFFFu)) == 0x7F80);
  BOOST_TEST(f32_to_bf16_bits(from_bits(0x00008000u)) == 0x0000);
  BOOST_TEST(f32_to_bf16_bits(from_bits(0x00018000u)) == 0x0002);
  BOOST_TEST(f32_to_bf16_bits(from_bits(0xFFC00001u)) == 0x7FFF);
  BOOST_TEST(f32_to_bf16_bits(std::nanf("")) == 0x7FFF);
  BOOST_TEST(f32_to_bf16_bits(-std::numeric_limits<float>::infinity()) == 0xFF80);
  // sweep: the result is one of the two neighbours, the nearer one, ties to even
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const std::uint32_t u = rng();
    const float x = from_bits(u);
    if (std::isnan(x)) continue;
    const std::uint16_t r = f32_to_bf16_bits(x);
    const std::uint16_t lo = std::uint16_t(u >> 16);
    const double dlo = std::fabs(double(bf16_bits_to_f32(lo)) - double(x));
    const double dhi = std::fabs(double(bf16_bits_to_f32(std::uint16_t(lo + 1))) - double(x));
    const std::uint16_t expect = (dlo < dhi || (dlo == dhi && !(lo & 1))) ? lo : std::uint16_t(lo + 1);
    if ((u & 0x7FFFFFFFu) >= 0x7F7F8000u) {  // IEEE: at or past max + half ulp -> Inf
      BOOST_TEST_REQUIRE(r == std::uint16_t(((u >> 16) & 0x8000u) | 0x7F80u));
      continue;
    }
    BOOST_TEST_REQUIRE(r == expect, "x bits " << std::hex << u);
    BOOST_TEST_REQUIRE(f32_bits(bf16_bits_to_f32(r)) == (std::uint32_t(r) << 16));
  }
}

BOOST_AUTO_TEST_CASE(f16_matches_compiler_conversion) {
  std::mt19937 rng(99);
  for (int i = 0; i < 200000; ++i) {
    const float x = (i & 1) ? from_bits(rng()) : float(std::ldexp(double(int(rng() % 2001) - 1000), -int(rng() % 40)));
    const _Float16 h = static_cast<_Float16>(x);
    std::uint16_t hb;
    std::memcpy(&hb, &h, 2);
    if (std::isnan(x)) {
      BOOST_TEST_REQUIRE(std::isnan(f16_bits_to_f32(f32_to_f16_bits(x))));
      continue;
    }
    BOOST_TEST_REQUIRE(f32_to_f16_bits(x) == hb, "x bits " << std::hex << f32_bits(x));
    BOOST_TEST_REQUIRE(f32_bits(f16_bits_to_f32(hb)) == f32_bits(static_cast<float>(h)));
  }
}

BOOST_AUTO_TEST_CASE(e5m2_and_e8m0) {
  for (int c = 0; c < 256; ++c) {
    const float f = e5m2_bits_to_f32(std::uint8_t(c));
    const int e = (c >> 2) & 31, m = c & 3;
    if (e == 31) {
      BOOST_TEST((m ? std::isnan(f) : std::isinf(f)));
      continue;
    }
    const double v = e ? std::ldexp(1.0 + m / 4.0, e - 15) : std::ldexp(m / 4.0, -14);
    BOOST_TEST(std::fabs(double(f)) == v);
    BOOST_TEST(int(f32_to_e5m2(f)) == c);
  }
  BOOST_TEST(int(f32_to_e5m2(61440.0f)) == 0x7C);                          // tie to even -> Inf
  BOOST_TEST(int(f32_to_e5m2(std::nextafter(61440.0f, 0.0f))) == 0x7B);    // 57344
  BOOST_TEST(f32_bits(e8m0_bits_to_f32(127)) == 0x3F800000u);
  BOOST_TEST(f32_bits(e8m0_bits_to_f32(0)) == 0x00400000u);
  BOOST_TEST(std::isnan(e8m0_bits_to_f32(0xFF)));
}

BOOST_AUTO_TEST_SUITE_END()

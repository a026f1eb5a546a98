#pragma once
// The 16 FP8 test-vector inputs (reference "fp8-blockwise" 5.5), regenerated bit for bit from
// their construction rules, and the published expected outputs (5.4). Shared by the CPU unit
// tests and the CUDA comparison program. Test-only.
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/float_bits.hpp"
#include "ckbridge/core/tensor.hpp"

namespace ckbridge::test {

struct Fp8Case {
  std::string name;
  std::int64_t m = 0, n = 0;
  Tensor x;  // BF16 or F32 [m, n]
};

// The shared random source: LCG, doubles in [0,1), Box-Muller cosine branch.
class VectorRng {
public:
  double U() {
    s_ = s_ * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(s_ >> 11) * 0x1p-53;
  }
  double Nrm() {
    double u1 = U();
    const double u2 = U();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }
  double S() { return U() * 2.0 - 1.0; }

private:
  std::uint64_t s_ = 0x9E3779B97F4A7C15ull;
};

// double -> float32 (RNE) -> bf16 bits (RNE): two roundings, as the reference specifies.
inline std::uint16_t R16(double v) {
  const std::uint32_t u = f32_bits(static_cast<float>(v));
  return static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline std::vector<Fp8Case> make_fp8_vector_cases() {
  VectorRng g;
  std::vector<Fp8Case> cs;
  auto bf = [&](const char* name, std::int64_t m, std::int64_t n) -> TensorView<bf16_t, 2> {
    cs.push_back({name, m, n, Tensor(DType::BF16, {m, n})});
    std::memset(cs.back().x.data(), 0, cs.back().x.size_bytes());
    return cs.back().x.typed<bf16_t, 2>();
  };
  auto f32 = [&](const char* name, std::int64_t m, std::int64_t n) -> TensorView<float, 2> {
    cs.push_back({name, m, n, Tensor(DType::F32, {m, n})});
    std::memset(cs.back().x.data(), 0, cs.back().x.size_bytes());
    return cs.back().x.typed<float, 2>();
  };
  {
    auto x = bf("c01", 256, 384);
    for (int i = 0; i < 256; ++i)
      for (int j = 0; j < 384; ++j) {
        const int b = 3 * (i / 128) + j / 128;
        x(i, j).bits = R16(g.Nrm() * 0.02 * std::ldexp(1.0, 3 * b - 6));
      }
  }
  {
    auto x = bf("c02", 128, 256);
    for (int i = 0; i < 128; ++i)
      for (int j = 128; j < 256; ++j) x(i, j).bits = R16(g.Nrm() * 0.5);
  }
  {
    auto x = bf("c03", 128, 128);
    for (int i = 0; i < 128; ++i)
      for (int j = 0; j < 128; ++j) x(i, j).bits = 0x8000;
  }
  {
    auto x = bf("c04", 128, 128);
    for (int i = 0; i < 128; ++i)
      for (int j = 0; j < 128; ++j) {
        const double mm = 1.0 + std::floor(g.U() * 127.0);
        const double v = mm * std::ldexp(1.0, -133);
        x(i, j).bits = R16(g.U() < 0.5 ? -v : v);
      }
  }
  {
    auto x = f32("c05", 128, 768);
    const double thr = 448.0 / static_cast<double>(FLT_MAX);
    const double f[6] = {0.5, 0.999999, 1.0, 1.000001, 2.0, 8.0};
    for (int b = 0; b < 6; ++b) {
      const float am = static_cast<float>(thr * f[b]);
      for (int i = 0; i < 128; ++i)
        for (int j = 0; j < 128; ++j) x(i, 128 * b + j) = static_cast<float>(static_cast<double>(am) * g.S());
      x((5 * b) % 128, 128 * b + 3) = am;
    }
  }
  {
    auto x = bf("c06", 128, 256);
    for (int i = 0; i < 128; ++i)
      for (int j = 0; j < 256; ++j) {
        const double am = j < 128 ? 448.0 * std::ldexp(1.0, -10) : 448.0;
        x(i, j).bits = R16(am * g.S());
      }
    x(7, 9).bits = R16(0.4375);
    x(9, 200).bits = R16(-448.0);
  }
  {
    auto x = f32("c07", 128, 6144);
    const int ks[6] = {-14, -10, -7, -3, 0, 4};
    const int ns[8] = {-2, -1, 1, 2, 3, 4, 6, 8};
    for (int a = 0; a < 6; ++a)
      for (int u = 0; u < 8; ++u) {
        const int b = 8 * a + u;
        const float am =
            f32_from_bits(f32_bits(static_cast<float>(448.0 * std::ldexp(1.0, ks[a]))) + static_cast<std::uint32_t>(ns[u]));
        for (int i = 0; i < 128; ++i)
          for (int j = 0; j < 128; ++j)
            x(i, 128 * b + j) = static_cast<float>(static_cast<double>(am) * g.S() * 0.9);
        x((7 * b) % 128, 128 * b + (b % 128)) = am;
      }
  }
  {
    auto x = f32("c08", 128, 128);
    const float v[26] = {448.0f, 432.0f, 433.0f, 431.0f, 440.0f, 416.0f, 17.0f, 19.0f, 18.0f,
                         15.5f, 0.015625f, 0.0087890625f, 0.0009765625f, 0.0029296875f, 0.0048828125f,
                         0.00146484375f, 0.0009765626f, 0.00097656f, -432.0f, -17.0f, -0.0029296875f,
                         240.0f, 232.0f, 248.0f, 1e-30f, 2.0e-3f};
    for (int j = 0; j < 26; ++j) x(0, j) = v[j];
  }
  {
    auto x = bf("c09", 200, 300);
    for (int i = 0; i < 200; ++i)
      for (int j = 0; j < 300; ++j) {
        const int b = 3 * (i / 128) + j / 128;
        x(i, j).bits = R16(g.Nrm() * std::ldexp(1.0, -b - 2));
      }
  }
  {
    auto x = bf("c09b", 1, 1);
    x(0, 0).bits = R16(0.3);
  }
  {
    auto x = bf("c09c", 129, 129);
    for (int i = 0; i < 129; ++i)
      for (int j = 0; j < 129; ++j) x(i, j).bits = R16(g.Nrm() * 0.01);
    x(128, 128).bits = R16(3.0);
  }
  {
    auto x = bf("c10", 128, 512);
    for (int i = 0; i < 128; ++i)
      for (int j = 0; j < 384; ++j) x(i, j).bits = R16(g.Nrm() * 0.1);
    x(5, 7).bits = 0x7FC0;
    x(0, 128).bits = 0x7F80;
    x(1, 256).bits = 0xFF80;
    x(2, 256).bits = R16(1000.0);
    x(3, 256).bits = R16(-600.0);
    x(4, 256).bits = R16(464.0);
    x(5, 256).bits = R16(472.0);
    x(6, 256).bits = 0x8000;
    for (int i = 0; i < 128; ++i)
      for (int j = 384; j < 512; ++j) x(i, j).bits = ((i + j) & 1) ? 0xFFC0 : 0x7FC0;
  }
  {
    auto x = bf("c12", 128, 128);
    for (int i = 0; i < 128; ++i)
      for (int j = 0; j < 128; ++j) x(i, j).bits = R16(1e38 * g.S());
    x(0, 17).bits = 0x7F7F;
  }
  {
    auto x = bf("c13", 128, 128);
    for (int i = 0; i < 128; ++i)
      for (int j = 0; j < 128; ++j) x(i, j).bits = R16(0.3 * g.S());
    x(0, 77).bits = R16(-0.5);
  }
  {
    auto x = f32("c14", 512, 512);
    for (int i = 0; i < 512; ++i)
      for (int j = 0; j < 512; ++j) {
        const int b = 4 * (i / 128) + j / 128;
        x(i, j) = static_cast<float>(g.Nrm() * 0.013 * (1.0 + 0.37 * b));
      }
  }
  {
    auto x = bf("c15", 128, 256);
    for (int i = 0; i < 128; ++i)
      for (int j = 0; j < 128; ++j) x(i, j).bits = R16(1e-6 * g.S());
  }
  return cs;
}

}  // namespace ckbridge::test

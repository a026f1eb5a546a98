// A program outside the ckbridge tree that uses the installed package.
#include <ckbridge/ckbridge.hpp>

#include <cstdio>

int main() {
  ckbridge::Tensor t(ckbridge::DType::BF16, {2, 3});
  auto v = t.typed<ckbridge::bf16_t, 2>();
  for (std::int64_t i = 0; i < 2; ++i)
    for (std::int64_t j = 0; j < 3; ++j) v(i, j).bits = ckbridge::f32_to_bf16_bits(float(i * 3 + j));
  const float last = ckbridge::bf16_bits_to_f32(v(1, 2).bits);
  std::printf("consumer ok: %s [2, 3], last = %g\n", std::string(ckbridge::safetensors_name(t.dtype())).c_str(), last);
  return last == 5.0f ? 0 : 1;
}

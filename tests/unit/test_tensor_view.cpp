#include <boost/test/unit_test.hpp>

#include <numeric>

#include "ckbridge/core/copy.hpp"
#include "ckbridge/core/mapped_file.hpp"
#include "ckbridge/core/tensor.hpp"

using namespace ckbridge;

BOOST_AUTO_TEST_SUITE(tensor_view)

BOOST_AUTO_TEST_CASE(typed_view_slice_and_contiguity) {
  std::vector<int> buf(4 * 6);
  std::iota(buf.begin(), buf.end(), 0);
  TensorView<int, 2> v(buf.data(), {4, 6});
  BOOST_TEST(v.is_contiguous());
  BOOST_TEST(v(2, 3) == 15);
  auto rows = v.slice(0, 1, 3);
  BOOST_TEST(rows.is_contiguous());
  BOOST_TEST(rows(0, 0) == 6);
  auto cols = v.slice(1, 2, 5);
  BOOST_TEST(!cols.is_contiguous());
  BOOST_TEST(cols(3, 2) == 22);
  BOOST_CHECK_THROW(v.slice(1, 2, 7), Error);
  TensorView<const int, 2> cv = v;
  BOOST_TEST(cv(3, 5) == 23);
}

BOOST_AUTO_TEST_CASE(any_view_dispatch_and_copy) {
  Tensor t(DType::I32, {3, 5});
  auto tv = t.typed<std::int32_t, 2>();
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 5; ++j) tv(i, j) = i * 10 + j;
  AnyConstView cols = t.cview().slice(1, 1, 4);
  Tensor c = Tensor::copy_of(cols);
  BOOST_TEST((c.shape() == Shape{3, 3}));
  BOOST_TEST((c.typed<std::int32_t, 2>()(2, 0) == 21));
  const std::int64_t sum = cols.visit<2>([](auto view) {
    std::int64_t s = 0;
    using T = std::remove_const_t<typename decltype(view)::element_type>;
    if constexpr (std::is_arithmetic_v<T>)
      for (std::int64_t i = 0; i < view.extent(0); ++i)
      for (std::int64_t j = 0; j < view.extent(1); ++j) s += static_cast<std::int64_t>(view(i, j));
    return s;
  });
  BOOST_TEST(sum == (1 + 2 + 3) + (11 + 12 + 13) + (21 + 22 + 23));
  BOOST_CHECK_THROW((t.view().as<float, 2>()), Error);
  BOOST_CHECK_THROW((t.view().as<std::int32_t, 3>()), Error);
}

BOOST_AUTO_TEST_CASE(mapped_file_ranges) {
  const auto p = std::filesystem::temp_directory_path() / "ckb_mapped_file_test.bin";
  {
    std::FILE* f = std::fopen(p.c_str(), "wb");
    for (int i = 0; i < 1000; ++i) std::fputc(i & 0xFF, f);
    std::fclose(f);
  }
  MappedFile m(p);
  BOOST_TEST(m.size() == 1000u);
  BOOST_TEST(int(m.bytes(999, 1)[0]) == (999 & 0xFF));
  BOOST_CHECK_THROW(m.bytes(999, 2), Error);
  BOOST_CHECK_THROW(MappedFile(p.string() + ".missing"), Error);
  std::filesystem::remove(p);
}

BOOST_AUTO_TEST_SUITE_END()

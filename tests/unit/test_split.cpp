// The multi-process work split (convert::split_by_bytes): whole files, largest first onto the
// least-loaded process. Expectations: a hand-worked example, the partition properties, and
// Graham's bound for largest-first scheduling (makespan <= (4/3 - 1/(3m)) x the optimum, the
// optimum found by exhaustive search over small cases).
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "ckbridge/convert/split.hpp"
#include "ckbridge/core/error.hpp"

using namespace ckbridge;
using namespace ckbridge::convert;

namespace {
using U = std::vector<std::uint64_t>;

std::uint64_t makespan(const std::vector<RankShare>& s) {
  std::uint64_t m = 0;
  for (const auto& r : s) m = std::max(m, r.bytes);
  return m;
}

// The best makespan over every assignment of `sizes` to `m` processes (exhaustive).
std::uint64_t optimum(const U& sizes, int m) {
  std::vector<std::uint64_t> load(static_cast<std::size_t>(m), 0);
  std::uint64_t best = UINT64_MAX;
  std::function<void(std::size_t)> go = [&](std::size_t i) {
    if (i == sizes.size()) {
      best = std::min(best, *std::max_element(load.begin(), load.end()));
      return;
    }
    for (auto& l : load) {
      l += sizes[i];
      if (l < best) go(i + 1);
      l -= sizes[i];
    }
  };
  go(0);
  return best;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(split)

BOOST_AUTO_TEST_CASE(hand_example) {
  // sizes 7, 10, 1, 9, 8 (plan order) over 2: 10 -> r0, 9 -> r1, 8 -> r1 (9 < 10), 7 -> r0
  // (10 < 17), 1 -> r0 (17 = 17: the lower rank)
  const auto s = split_by_bytes(U{7, 10, 1, 9, 8}, 2);
  BOOST_TEST(s.size() == 2u);
  BOOST_TEST(s[0].files == (std::vector<std::size_t>{1, 0, 2}), boost::test_tools::per_element());
  BOOST_TEST(s[1].files == (std::vector<std::size_t>{3, 4}), boost::test_tools::per_element());
  BOOST_TEST(s[0].bytes == 18u);
  BOOST_TEST(s[1].bytes == 17u);
  // equal sizes keep plan order, round-robin over the processes
  const auto e = split_by_bytes(U{5, 5, 5, 5, 5}, 3);
  BOOST_TEST(e[0].files == (std::vector<std::size_t>{0, 3}), boost::test_tools::per_element());
  BOOST_TEST(e[1].files == (std::vector<std::size_t>{1, 4}), boost::test_tools::per_element());
  BOOST_TEST(e[2].files == (std::vector<std::size_t>{2}), boost::test_tools::per_element());
  // more processes than files: the rest get nothing
  const auto f = split_by_bytes(U{3}, 4);
  BOOST_TEST(f[0].files.size() == 1u);
  BOOST_TEST((f[1].files.empty() && f[2].files.empty() && f[3].files.empty()));
  BOOST_TEST(split_by_bytes(U{}, 2)[0].files.empty());
  BOOST_CHECK_THROW(split_by_bytes(U{1}, 0), Error);
}

BOOST_AUTO_TEST_CASE(properties_and_graham_bound) {
  std::mt19937_64 rng(14);
  for (int trial = 0; trial < 300; ++trial) {
    const int m = 1 + static_cast<int>(rng() % 4);
    const std::size_t n = rng() % 9;
    U sizes(n);
    for (auto& x : sizes) x = rng() % 4 == 0 ? 1000 : 1 + rng() % 1000;  // ties are common
    const auto s = split_by_bytes(sizes, m);
    BOOST_TEST_REQUIRE(s.size() == static_cast<std::size_t>(m));
    BOOST_TEST(s == split_by_bytes(sizes, m), "deterministic");
    std::vector<int> seen(n, 0);
    std::uint64_t lo = UINT64_MAX, hi = 0, largest = 0;
    for (auto x : sizes) largest = std::max(largest, x);
    for (const auto& r : s) {
      std::uint64_t sum = 0;
      for (std::size_t k = 0; k < r.files.size(); ++k) {
        ++seen.at(r.files[k]);
        sum += sizes[r.files[k]];
        if (k) BOOST_TEST(sizes[r.files[k - 1]] >= sizes[r.files[k]]);  // largest first
      }
      BOOST_TEST(sum == r.bytes);
      lo = std::min(lo, r.bytes);
      hi = std::max(hi, r.bytes);
    }
    for (int c : seen) BOOST_TEST(c == 1);  // every file exactly once
    BOOST_TEST(hi - lo <= largest);
    // Graham (1969): largest-first is within 4/3 - 1/(3m) of the optimum
    const std::uint64_t opt = optimum(sizes, m);
    BOOST_TEST(3 * m * makespan(s) <= (4 * m - 1) * opt);
  }
}

BOOST_AUTO_TEST_SUITE_END()

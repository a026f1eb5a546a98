#pragma once
// How a multi-process run shares out a plan: whole output files, balanced by bytes. Files are
// taken largest first (plan order among equal sizes) and each goes to the process with the fewest
// bytes so far (the lowest rank among equals), so every process computes the same split from the
// plan alone, and no process ends more than one file's bytes above another.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "ckbridge/convert/plan.hpp"
#include "ckbridge/core/error.hpp"

namespace ckbridge::convert {

struct RankShare {
  std::vector<std::size_t> files;  // indices into Plan::files, largest first
  std::uint64_t bytes = 0;         // their output bytes
  bool operator==(const RankShare&) const = default;
};

// Sizes of the files to share (one per file, in plan order) -> one share per process.
inline std::vector<RankShare> split_by_bytes(const std::vector<std::uint64_t>& sizes, int world_size) {
  if (world_size <= 0) fail("the number of processes must be > 0, got ", world_size);
  std::vector<std::size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sizes[a] > sizes[b]; });
  std::vector<RankShare> out(static_cast<std::size_t>(world_size));
  for (const std::size_t i : order) {
    auto least = std::min_element(out.begin(), out.end(),
                                  [](const RankShare& a, const RankShare& b) { return a.bytes < b.bytes; });
    least->files.push_back(i);
    least->bytes += sizes[i];
  }
  return out;
}

inline std::vector<RankShare> split_files(const Plan& plan, int world_size) {
  std::vector<std::uint64_t> sizes;
  sizes.reserve(plan.files.size());
  for (const auto& f : plan.files) sizes.push_back(f.bytes());
  return split_by_bytes(sizes, world_size);
}

}  // namespace ckbridge::convert

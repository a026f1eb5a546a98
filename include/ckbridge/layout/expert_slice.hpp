#pragma once
// Expert parallelism (LoongForge get_ep_map / get_etp_map, MCore local_expert_indices_offset).
// Experts are placed contiguously: EP rank g holds experts [g*n, (g+1)*n), n = E / ep, and
// expert e is local index e % n there. ExpertSlice is also the policy that splits a tensor
// stacked over experts ([E, ...], e.g. transformers' fused gate_up_proj [E, 2F, H]) along `dim`.
// Unlike LoongForge, E not divisible by ep is refused (bug B21) instead of giving more than ep
// groups.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ckbridge/layout/policy.hpp"

namespace ckbridge::layout {

struct ExpertOwner {
  int rank;             // EP rank holding the expert
  std::int64_t local;   // its index among that rank's experts (the MCore weight<i> / local_experts.i)
  friend constexpr bool operator==(ExpertOwner, ExpertOwner) = default;
};

struct ExpertSlice {
  std::int64_t num_experts = 0;
  int ep = 1;
  std::size_t dim = 0;

  constexpr bool valid() const { return num_experts > 0 && ep > 0 && num_experts % ep == 0; }
  constexpr std::int64_t local_count() const {
    check();
    return num_experts / ep;
  }
  constexpr ExpertOwner owner(std::int64_t expert) const {
    check();
    if (expert < 0 || expert >= num_experts) fail("expert ", expert, " out of range [0, ", num_experts, ")");
    const std::int64_t n = num_experts / ep;
    return ExpertOwner{static_cast<int>(expert / n), expert % n};
  }
  constexpr std::int64_t global(int rank, std::int64_t local) const {
    check();
    const std::int64_t n = num_experts / ep;
    if (rank < 0 || rank >= ep || local < 0 || local >= n)
      fail("expert (rank ", rank, ", local ", local, ") out of range for ", num_experts, " experts at EP size ", ep);
    return rank * n + local;
  }

  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    if (auto w = detail::bad_size(tensor, full, size)) return w;
    if (auto w = detail::bad_dim("ExpertSlice", tensor, full, size, dim)) return w;
    if (!valid())
      return ckbridge::detail::concat("cannot split experts of ", detail::subject(tensor, full, size), ": ",
                                      num_experts, " experts are not divisible by expert-parallel size ", ep);
    if (size != ep)
      return ckbridge::detail::concat("cannot split experts of ", detail::subject(tensor, full, size),
                                      ": the policy's expert-parallel size is ", ep);
    if (full[dim] != num_experts)
      return ckbridge::detail::concat("cannot split experts of ", detail::subject(tensor, full, size), ": dim ", dim,
                                      " has ", full[dim], " entries, expected ", num_experts, " experts");
    return std::nullopt;
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    detail::require(why_not(tensor, full, size));
    detail::require_rank(tensor, full, rank, size);
    Shape shard = full;
    shard[dim] = num_experts / ep;
    Box src{Shape(full.size(), 0), shard};
    src.begin[dim] = global(rank, 0);
    return ShardMap{shard, dim, {Piece{src, Shape(full.size(), 0)}}};
  }
  Shape full_shape(const Shape& shard, int /*size*/) const {
    if (dim >= shard.size() || !valid() || shard[dim] != num_experts / ep)
      fail("ExpertSlice: shard shape ", shape_str(shard), " does not hold ", valid() ? num_experts / ep : 0,
           " experts along dim ", dim);
    Shape full = shard;
    full[dim] = num_experts;
    return full;
  }

private:
  constexpr void check() const {
    if (!valid()) fail(num_experts, " experts are not divisible by expert-parallel size ", ep);
  }
};

// Megatron's rank grid inside one pipeline stage, as LoongForge's get_etp_map reads it: global
// rank r has attention-TP rank r % tp, expert-TP rank r % etp and EP rank (r / etp) % ep. It
// tells which TP-indexed file (mp_rank_<t>_..._<e>) holds expert shard (e, et).
struct ExpertGrid {
  int tp = 1, ep = 1, etp = 1;

  std::optional<std::string> why_not() const {
    if (tp < 1 || ep < 1 || etp < 1)
      return ckbridge::detail::concat("tp ", tp, ", ep ", ep, " and etp ", etp, " must be >= 1");
    if (tp % (etp * ep) != 0 && (etp * ep) % tp != 0)
      return ckbridge::detail::concat("tp ", tp, " and etp x ep = ", etp * ep, " must divide one another");
    return std::nullopt;
  }
  // TP rank of the file that holds expert shard et of EP rank e (the first such rank; when
  // tp > etp*ep several TP ranks hold copies, where LoongForge keeps only the last, bug B22).
  constexpr int tp_rank_of(int e, int et) const { return (e * etp + et) % tp; }
  // EP / expert-TP rank that TP rank t holds.
  constexpr int ep_rank_of(int t) const { return (t / etp) % ep; }
  constexpr int etp_rank_of(int t) const { return t % etp; }
};

}  // namespace ckbridge::layout

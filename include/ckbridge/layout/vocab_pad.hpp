#pragma once
// Vocabulary padding of embedding / output-layer weights (LoongForge tc/utils/utils.py
// vocab_size_with_padding + add_embedding_padding, Megatron's vocab_utils):
//   padded = ceil(V / (make_vocab_size_divisible_by * tp)) * (make_vocab_size_divisible_by * tp)
//   or exactly --pad_vocab_size_to when given.
// Appended rows are copies of the LAST real row (not zeros), as LoongForge and Megatron's saver
// write them; merging drops them (MCore -> HF keeps rows [0, V)).
// VocabPad only pads; vocab_parallel() composes it with SplitDim{0} for the TP split.
// Deliberate differences from LoongForge: with pad_vocab_size_to the result has exactly that many
// rows (LoongForge double counts rows missing below V, bug B16), a target below V is refused
// instead of truncating, and the tensor must have exactly V rows.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ckbridge/layout/compose.hpp"
#include "ckbridge/layout/policy.hpp"
#include "ckbridge/layout/split_dim.hpp"

namespace ckbridge::layout {

// The padded vocabulary size for `vocab` real rows at tensor-parallel size `tp`.
constexpr std::int64_t padded_vocab_size(std::int64_t vocab, std::int64_t make_vocab_size_divisible_by, int tp,
                                         std::int64_t pad_vocab_size_to = 0) {
  if (vocab < 1) fail("vocab size must be >= 1, got ", vocab);
  if (pad_vocab_size_to > 0) {
    if (pad_vocab_size_to < vocab) fail("pad_vocab_size_to ", pad_vocab_size_to, " is smaller than vocab size ", vocab);
    return pad_vocab_size_to;
  }
  if (make_vocab_size_divisible_by < 1 || tp < 1)
    fail("make_vocab_size_divisible_by (", make_vocab_size_divisible_by, ") and tp (", tp, ") must be >= 1");
  const std::int64_t m = make_vocab_size_divisible_by * tp;
  return (vocab + m - 1) / m * m;
}

struct VocabPad {
  std::int64_t divisible_by = 128;   // make_vocab_size_divisible_by, already multiplied by TP
  std::int64_t unpadded_rows = 0;    // V, the real vocabulary size
  std::int64_t pad_to = 0;           // pad_vocab_size_to; > 0 overrides divisible_by
  std::size_t dim = 0;

  constexpr std::int64_t padded_rows() const {
    if (pad_to > 0) return pad_to;
    if (divisible_by < 1) return -1;
    return (unpadded_rows + divisible_by - 1) / divisible_by * divisible_by;
  }

  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    if (auto w = detail::bad_size(tensor, full, size)) return w;
    if (size != 1)
      return ckbridge::detail::concat("VocabPad pads but does not split ", detail::subject(tensor, full, size),
                                      ": compose it with SplitDim (vocab_parallel)");
    if (auto w = detail::bad_dim("VocabPad", tensor, full, size, dim)) return w;
    if (unpadded_rows < 1 || full[dim] != unpadded_rows)
      return ckbridge::detail::concat("cannot pad ", detail::subject(tensor, full, size), ": it has ", full[dim],
                                      " rows along dim ", dim, " but the vocab size is ", unpadded_rows);
    if (pad_to <= 0 && divisible_by < 1)
      return ckbridge::detail::concat("cannot pad ", detail::subject(tensor, full, size),
                                      ": make_vocab_size_divisible_by x tp is ", divisible_by);
    if (padded_rows() < unpadded_rows)
      return ckbridge::detail::concat("cannot pad ", detail::subject(tensor, full, size), ": pad_vocab_size_to ",
                                      pad_to, " is smaller than vocab size ", unpadded_rows);
    return std::nullopt;
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    detail::require(why_not(tensor, full, size));
    detail::require_rank(tensor, full, rank, size);
    Shape shard = full;
    shard[dim] = padded_rows();
    ShardMap m{shard, dim, {Piece{whole(full), Shape(full.size(), 0)}}};
    if (const std::int64_t extra = padded_rows() - unpadded_rows; extra > 0) {
      Piece pad{whole(full), Shape(full.size(), 0), extra, dim};
      pad.src.begin[dim] = unpadded_rows - 1;  // the last real row, repeated
      pad.src.extent[dim] = 1;
      pad.at[dim] = unpadded_rows;
      m.pieces.push_back(pad);
    }
    return m;
  }
  Shape full_shape(const Shape& shard, int /*size*/) const {
    if (dim >= shard.size() || shard[dim] != padded_rows())
      fail("VocabPad: shard shape ", shape_str(shard), " does not have ", padded_rows(), " padded rows along dim ", dim,
           " (vocab size ", unpadded_rows, ")");
    Shape full = shard;
    full[dim] = unpadded_rows;
    return full;
  }
};

// VocabPad for LoongForge's flags: --make_vocab_size_divisible_by (default 128), tp and
// --pad_vocab_size_to (0 = unset).
constexpr VocabPad vocab_pad(std::int64_t vocab, std::int64_t make_vocab_size_divisible_by, int tp,
                             std::int64_t pad_vocab_size_to = 0) {
  return VocabPad{make_vocab_size_divisible_by * tp, vocab, pad_vocab_size_to, 0};
}

// Embedding / output layer at tensor-parallel size tp: pad, then split dim 0 (use with size = tp).
constexpr Then<VocabPad, SplitDim> vocab_parallel(std::int64_t vocab, std::int64_t make_vocab_size_divisible_by, int tp,
                                                  std::int64_t pad_vocab_size_to = 0) {
  return then(vocab_pad(vocab, make_vocab_size_divisible_by, tp, pad_vocab_size_to), SplitDim{0});
}

// The embedding / output-layer policy for any parallel size: at size n it is vocab_parallel(...,
// n, ...), i.e. Then<VocabPad, SplitDim> with the padding that n ranks need (size 1: the padding
// alone, as for a replicated copy).
struct VocabParallel {
  std::int64_t vocab = 0;                           // real rows
  std::int64_t make_vocab_size_divisible_by = 128;  // per rank
  std::int64_t pad_vocab_size_to = 0;               // 0 = unset

  constexpr Then<VocabPad, SplitDim> at(int size) const {
    return vocab_parallel(vocab, make_vocab_size_divisible_by, size, pad_vocab_size_to);
  }
  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    if (auto w = detail::bad_size(tensor, full, size)) return w;
    return at(size).why_not(tensor, full, size);
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    detail::require(detail::bad_size(tensor, full, size));
    return at(size).shard_map(tensor, full, rank, size);
  }
  Shape full_shape(const Shape& shard, int size) const { return at(size).full_shape(shard, size); }
};

}  // namespace ckbridge::layout

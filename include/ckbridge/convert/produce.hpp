#pragma once
// Producers for one output tensor (a TP shard on the MCore side, a [gate|up] part or a whole
// tensor on the HF side) from one logical source tensor, choosing between zero-copy views,
// copies, direct FP8 block copies, quantization, dequantization and re-quantization. Both
// conversion directions describe their target as a ShardMap over the logical full tensor.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ckbridge/convert/gather.hpp"
#include "ckbridge/convert/plan.hpp"
#include "ckbridge/layout/fp8_split.hpp"
#include "ckbridge/quant/dequantize.hpp"
#include "ckbridge/quant/fp8_blocks.hpp"
#include "ckbridge/quant/quantize.hpp"

namespace ckbridge::convert {

// A target covering the box `region` of the full tensor (HF outputs: a whole tensor or one part).
inline layout::ShardMap region_map(const layout::Box& region) {
  layout::ShardMap m;
  m.shard_shape = region.extent;
  m.concat_dim = 0;
  m.pieces.push_back(layout::Piece{region, Shape(region.rank(), 0)});
  return m;
}

// One logical full tensor as the source holds it.
struct LogicalSource {
  std::string name;           // for messages
  Shape full;                 // logical shape
  DType dtype = DType::BF16;  // element type of `data` (F8_E4M3 for FP8 sources)
  std::vector<Placed> data;   // placed pieces (HF parts, or MCore shard pieces)
  // FP8 only: scale pieces placed in block coordinates (unpadded), and per-piece dequantization
  // inputs for the requantization path.
  bool fp8 = false;
  std::vector<Placed> scale;
  bool pow2 = false;               // every meaningful scale is a power of two
  bool blocks_tile = true;         // the pieces' scales tile the full tensor's block grid
  // Each stored FP8 tensor with its own scales and the map placing it in the full tensor (an HF
  // part: a region; an MCore shard: its layout map), for the dequantization paths.
  struct Fp8Piece {
    AnyConstView data;   // F8_E4M3
    AnyConstView scale;  // F32, [ceil(m/128), >= ceil(n/128)]
    layout::ShardMap map;
  };
  std::vector<Fp8Piece> fp8_pieces;
  // Tensors of the source that must hold the same bytes as this one but are not written (HF
  // DeepSeek MTP blocks' copies of the embedding and output layer: MCore keeps one). Compared
  // while the data streams, not at plan time: every producer compares the region of the full
  // tensor it reads with the same region of each copy, and fails before its file is committed.
  struct Copy {
    std::string name;
    AnyConstView view;  // same dtype and shape as `full`
  };
  std::vector<Copy> must_equal;
  // Checks to run before the data is read (CRCs of the stored records): plans read no data.
  std::vector<std::function<void()>> verify_reads;
};

// FP8 settings for producers.
struct Fp8Settings {
  quant::MethodId method = quant::MethodId::Te;
  float amax_epsilon = 0.0f;
  bool pow2 = true;             // wanted scale kind of newly quantized tensors
  bool force_no_requant = false;
  quant::Device device = quant::Device::Auto;
  quant::ScaleLayout layout = quant::ScaleLayout::Unpadded;
  DType dequant_dtype = DType::BF16;  // output of dequantization
  bool allow_nonfinite = false;        // quantize Inf / NaN inputs instead of refusing them
  std::atomic<std::uint64_t>* nonfinite = nullptr;  // counts them (when allowed)
};

enum class Fp8Target { Keep, Quantize, Dequantize };

namespace produce_detail {

inline std::size_t bytes_of(DType d, const Shape& s) { return static_cast<std::size_t>(numel(s)) * dtype_size(d); }

// Zero-filled copy with TE's scale column padding.
inline Tensor pad_scale(const AnyConstView& s, quant::ScaleLayout layout, std::int64_t data_cols) {
  const Shape want = quant::scale_shape(0, data_cols, layout);
  Tensor t(DType::F32, Shape{s.shape[0], want[1]});
  std::memset(t.data(), 0, t.size_bytes());
  copy(s, t.view().slice(1, 0, s.shape[1]));
  return t;
}

inline std::int64_t cols_of(const Shape& s) { return s.empty() ? 1 : s.back(); }

// The full tensor dequantized (piece by piece with each piece's own scales).
inline Tensor dequantize_full(const LogicalSource& src, DType out) {
  Tensor full(out, src.full);
  for (const auto& p : src.fp8_pieces) {
    const Tensor part = quant::dequantize(p.data, p.scale, out, {.name = src.name});
    layout::copy_from_shard(src.name, p.map, part.cview(), full.view());
  }
  return full;
}

inline AnyConstView gather_into(const LogicalSource& src, const std::vector<Placed>& pieces, DType dt,
                                const layout::ShardMap& m, Tensor& scratch) {
  if (auto v = shard_view(pieces, m)) return *v;
  scratch = Tensor(dt, m.shard_shape);
  gather_shard(src.name, pieces, m, scratch.view());
  return scratch.cview();
}

// Whether two views of the same dtype and shape hold the same bytes (any strides).
inline bool views_equal(const AnyConstView& a, const AnyConstView& b) {
  if (a.is_contiguous() && b.is_contiguous()) return std::memcmp(a.data, b.data, a.size_bytes()) == 0;
  if (a.rank() == 0) return std::memcmp(a.data, b.data, a.element_size()) == 0;
  auto sub = [](const AnyConstView& v, std::int64_t i) {  // v[i], one dim less
    const auto es = static_cast<std::int64_t>(v.element_size());
    return AnyConstView(v.data + i * v.strides[0] * es, v.dtype, Shape(v.shape.begin() + 1, v.shape.end()),
                        Shape(v.strides.begin() + 1, v.strides.end()));
  };
  for (std::int64_t i = 0; i < a.shape[0]; ++i)
    if (!views_equal(sub(a, i), sub(b, i))) return false;
  return true;
}

// The region `box` of the full tensor, from its placed pieces and from each required copy, must
// match (LogicalSource::must_equal). Reads only what the producer of that region reads anyway,
// plus the same bytes of the copies.
inline void check_copies(const LogicalSource& src, const layout::Box& box) {
  for (const auto& c : src.must_equal)
    for (const auto& p : src.data) {
      const layout::Box have{p.origin, p.view.shape};
      const auto part = layout::intersect(box, have);
      if (!part) continue;
      AnyConstView x = p.view, y = c.view;
      for (std::size_t d = 0; d < part->rank(); ++d) {
        const std::int64_t b = part->begin[d], e = b + part->extent[d];
        x = x.slice(d, b - p.origin[d], e - p.origin[d]);
        y = y.slice(d, b, e);
      }
      if (!views_equal(x, y))
        fail("'", c.name, "' differs from '", src.name, "' (found in ", shape_str(part->begin), " + ",
             shape_str(part->extent), "); the target keeps only '", src.name,
             "', so converting would lose the copy's data");
    }
}

inline quant::QuantResult quantize_shard(const std::string& name, const AnyConstView& x, const Fp8Settings& s) {
  if (const std::uint64_t bad = quant::count_nonfinite(x)) {
    if (!s.allow_nonfinite)
      fail("FP8 quantization of tensor '", name, "': ", bad,
           " non-finite input values (Inf or NaN); E4M3 has no infinity, so they would become +-448 or NaN and "
           "flush the rest of their 128x128 blocks to zero. Fix the source, or pass --allow_nonfinite to quantize "
           "them anyway (they are counted in the summary)");
    if (s.nonfinite) s.nonfinite->fetch_add(bad);
  }
  return quant::quantize(s.method, x,
                         {.amax_epsilon = s.amax_epsilon, .force_pow_2_scales = s.pow2, .layout = s.layout,
                          .device = s.device, .threads = 0, .name = name});
}

// Whether `other` (contiguous, dtype `dt`, the shard of map `m`) holds the bytes the pieces give
// the shard, compared in place (no copy). Throws like gather() when the pieces do not cover a
// region. Maps that pad are not compared here (the caller assembles the shard instead).
inline bool gather_equal(const LogicalSource& src, const std::vector<Placed>& pieces, DType dt, const layout::ShardMap& m,
                         const AnyConstView& other) {
  if (other.dtype != dt || other.shape != m.shard_shape) return false;
  for (const auto& p : m.pieces) {
    const AnyConstView want = layout::detail::sub(other, p.dst());
    std::int64_t covered = 0;
    for (const auto& pc : pieces) {
      const layout::Box pb{pc.origin, pc.view.shape};
      const auto hit = layout::intersect(pb, p.src);
      if (!hit) continue;
      layout::Box in_src{hit->begin, hit->extent}, in_out{hit->begin, hit->extent};
      for (std::size_t d = 0; d < p.src.rank(); ++d) {
        in_src.begin[d] -= pc.origin[d];
        in_out.begin[d] -= p.src.begin[d];
      }
      if (pc.view.dtype != dt) return false;
      if (!views_equal(layout::detail::sub(pc.view, in_src), layout::detail::sub(want, in_out))) return false;
      covered += hit->volume();
    }
    if (covered != p.src.volume())
      fail("tensor '", src.name, "': the available pieces cover ", covered, " of ", p.src.volume(),
           " elements of region ", layout::box_str(p.src), " (missing or overlapping shards)");
  }
  return true;
}

inline bool map_pads(const layout::ShardMap& m) {
  return std::any_of(m.pieces.begin(), m.pieces.end(), [](const auto& p) { return p.is_pad(); });
}

}  // namespace produce_detail

// Whether the target `m` can take whole FP8 blocks of the source without re-quantization.
inline bool fp8_direct_ok(const LogicalSource& src, const layout::ShardMap& m) {
  return src.fp8 && src.blocks_tile && !layout::fp8_why_not(src.name, src.full, m, 0, 1).has_value();
}

// Builds the entry for target `m` (key and dict filled in by the caller). `target` says whether
// the output is FP8 (Keep = FP8 if the source is, Quantize = FP8, Dequantize = plain).
// Returns a description of the path taken in entry.how.
inline OutEntry make_entry_unchecked(std::shared_ptr<const LogicalSource> src, const layout::ShardMap& m,
                                     bool target_fp8, const Fp8Settings& fs) {
  using namespace produce_detail;
  OutEntry e;
  const std::string& name = src->name;
  const Shape shard = m.shard_shape;
  if (!target_fp8) {
    e.kind = EntryKind::Tensor;
    if (!src->fp8) {
      e.data = Producer{src->dtype, shard, shard_view(src->data, m) ? 0 : bytes_of(src->dtype, shard),
                        [src, m](Tensor& scratch) { return gather_into(*src, src->data, src->dtype, m, scratch); }};
      if (!map_pads(m))
        e.data.equals = [src, m](const AnyConstView& o) { return gather_equal(*src, src->data, src->dtype, m, o); };
      e.how = m.pieces.size() == 1 && shard == src->full ? "copy" : "reshard";
      return e;
    }
    // FP8 -> plain: dequantize whole blocks of this target when possible, else the full tensor.
    const DType out = fs.dequant_dtype;
    if (fp8_direct_ok(*src, m)) {
      const layout::ShardMap sm = layout::fp8_scale_map(name, src->full, m, 0, 1);
      e.data = Producer{out, shard, bytes_of(out, shard) + bytes_of(DType::F8_E4M3, shard),
                        [src, m, sm, out](Tensor& scratch) {
                          Tensor d, s;
                          const AnyConstView dv = gather_into(*src, src->data, DType::F8_E4M3, m, d);
                          const AnyConstView sv = gather_into(*src, src->scale, DType::F32, sm, s);
                          scratch = quant::dequantize(dv, sv, out, {.name = src->name});
                          return scratch.cview();
                        }};
      e.how = "dequantize blocks";
    } else {
      e.data = Producer{out, shard, bytes_of(out, src->full) + bytes_of(out, shard), [src, m, out](Tensor& scratch) {
                          Tensor full = dequantize_full(*src, out);
                          scratch = Tensor(out, m.shard_shape);
                          gather_shard(src->name, {Placed{full.cview(), Shape(src->full.size(), 0), {}}}, m, scratch.view());
                          return scratch.cview();
                        }};
      e.how = "dequantize full";
    }
    return e;
  }

  e.kind = EntryKind::Fp8;
  e.pow2 = fs.pow2;
  const Shape scale_shape = quant::scale_shape(quant::as_matrix(shard).m, cols_of(shard), fs.layout);
  const bool direct =
      src->fp8 && fp8_direct_ok(*src, m) && (fs.force_no_requant || src->pow2 == fs.pow2);
  if (direct) {
    e.pow2 = src->pow2;
    const layout::ShardMap sm = layout::fp8_scale_map(name, src->full, m, 0, 1);
    e.data = Producer{DType::F8_E4M3, shard, shard_view(src->data, m) ? 0 : bytes_of(DType::F8_E4M3, shard),
                      [src, m](Tensor& scratch) { return gather_into(*src, src->data, DType::F8_E4M3, m, scratch); }};
    if (!map_pads(m))
      e.data.equals = [src, m](const AnyConstView& o) { return gather_equal(*src, src->data, DType::F8_E4M3, m, o); };
    const std::int64_t cols = cols_of(shard);
    e.scale = Producer{DType::F32, scale_shape, 2 * bytes_of(DType::F32, scale_shape),
                       [src, sm, layout = fs.layout, cols](Tensor& scratch) {
                         Tensor tmp;
                         const AnyConstView sv = gather_into(*src, src->scale, DType::F32, sm, tmp);
                         if (layout == quant::ScaleLayout::Unpadded) {
                           if (tmp.size_bytes() == 0) return sv;
                           scratch = std::move(tmp);
                           return scratch.cview();
                         }
                         scratch = pad_scale(sv, layout, cols);
                         return scratch.cview();
                       }};
    e.how = "fp8 direct";
    return e;
  }
  if (src->fp8 && fs.force_no_requant)
    fail("tensor '", name, "': --fp8_force_no_requant, but its FP8 blocks cannot be carried over: ",
         layout::fp8_why_not(name, src->full, m, 0, 1).value_or("its scales do not tile the block grid"));
  // Quantize (BF16 source) or re-quantize (FP8 source): data and scale come from one computation.
  const std::size_t work = src->fp8 ? bytes_of(DType::F32, src->full) + bytes_of(DType::F32, shard)
                                    : bytes_of(src->dtype, shard);
  auto cache = std::make_shared<PairCache>([src, m, fs]() -> std::pair<Tensor, Tensor> {
    Tensor tmp;
    AnyConstView x;
    Tensor full;
    if (src->fp8) {
      full = produce_detail::dequantize_full(*src, DType::F32);
      tmp = Tensor(DType::F32, m.shard_shape);
      gather_shard(src->name, {Placed{full.cview(), Shape(src->full.size(), 0), {}}}, m, tmp.view());
      x = tmp.cview();
    } else {
      x = produce_detail::gather_into(*src, src->data, src->dtype, m, tmp);
    }
    quant::QuantResult r = produce_detail::quantize_shard(src->name, x, fs);
    return {std::move(r.data), std::move(r.scale_inv)};
  });
  e.data = Producer{DType::F8_E4M3, shard, work + bytes_of(DType::F8_E4M3, shard), [cache](Tensor& scratch) {
                      scratch = cache->take_first();
                      return scratch.cview();
                    }};
  e.scale = Producer{DType::F32, scale_shape, bytes_of(DType::F32, scale_shape), [cache](Tensor& scratch) {
                       scratch = cache->take_second();
                       return scratch.cview();
                     }};
  e.how = src->fp8 ? "fp8 requantize" : "quantize";
  return e;
}

// The source label of element `idx` of the target `m` (of its 128x128 scale grid when `scale`).
inline std::string locate_in_source(const LogicalSource& src, const layout::ShardMap& m, Shape idx, bool scale) {
  if (scale)
    for (std::size_t d = idx.size() >= 2 ? idx.size() - 2 : 0; d < idx.size(); ++d) idx[d] *= 128;
  for (const auto& p : m.pieces) {
    if (p.is_pad()) continue;
    const layout::Box b = p.dst();
    if (b.rank() != idx.size()) continue;
    bool in = true;
    for (std::size_t d = 0; d < idx.size() && in; ++d) in = idx[d] >= b.begin[d] && idx[d] < b.begin[d] + b.extent[d];
    if (!in) continue;
    Shape full(idx.size());
    for (std::size_t d = 0; d < idx.size(); ++d) full[d] = p.src.begin[d] + idx[d] - b.begin[d];
    return placed_origin(src.data, full);
  }
  return {};
}

// make_entry_unchecked, plus the comparison of the source with its required copies (if any) in
// the data producer: before it returns the bytes, so a file with a differing copy never commits;
// and `locate`, which names where an element of the output is stored in the source.
inline OutEntry make_entry(std::shared_ptr<const LogicalSource> src, const layout::ShardMap& m, bool target_fp8,
                           const Fp8Settings& fs) {
  OutEntry e = make_entry_unchecked(src, m, target_fp8, fs);
  if (!src->must_equal.empty()) {
    std::vector<layout::Box> boxes;
    for (const auto& p : m.pieces)
      if (!p.is_pad()) boxes.push_back(p.src);
    e.data.run = [src, boxes, run = std::move(e.data.run)](Tensor& scratch) {
      for (const auto& b : boxes) produce_detail::check_copies(*src, b);
      return run(scratch);
    };
    if (e.data.equals)
      e.data.equals = [src, boxes, eq = std::move(e.data.equals)](const AnyConstView& o) {
        for (const auto& b : boxes) produce_detail::check_copies(*src, b);
        return eq(o);
      };
  }
  if (!src->verify_reads.empty()) {
    auto wrap = [src](std::function<AnyConstView(Tensor&)> run) {
      return [src, run = std::move(run)](Tensor& scratch) {
        for (const auto& v : src->verify_reads) v();
        return run(scratch);
      };
    };
    e.data.run = wrap(std::move(e.data.run));
    if (e.scale.run) e.scale.run = wrap(std::move(e.scale.run));
    if (e.data.equals)
      e.data.equals = [src, eq = std::move(e.data.equals)](const AnyConstView& o) {
        for (const auto& v : src->verify_reads) v();
        return eq(o);
      };
  }
  e.locate = [src, m](const Shape& idx, bool scale) { return locate_in_source(*src, m, idx, scale); };
  return e;
}

}  // namespace ckbridge::convert

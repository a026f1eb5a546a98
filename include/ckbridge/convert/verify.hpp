#pragma once
// Compares two checkpoints of one model in the HF tensor namespace. Each side is a map
// HF key -> item that produces the tensor's bytes on demand: an HF checkpoint's stored tensors
// (zero-copy views), or an MCore checkpoint's tensors assembled by its MCore -> HF plan (the same
// layout objects the converter uses: TP/EP/PP shards merged, interleaves undone, FP8 blocks kept).
//  - same dtype: exact bytes (the first differing element is located in both sources);
//  - FP8 vs FP8: codes and unpadded scales, both exact (the scales are their own keys);
//  - FP8 vs BF16/F16/F32, or two float dtypes: the FP8 side dequantized with its scales, both
//    compared in float32: max abs error and max error relative to the tensor's largest magnitude,
//    which must be <= `tolerance`.
// Tensors are compared by `threads` workers, largest first; memory is a few tensors per worker.
// Where one side's tensor is stored pieces of the other's dtype (an MCore shard, an FP8 block
// carried over), the pieces are compared in place with the other side, nothing assembled.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ckbridge/convert/plan.hpp"
#include "ckbridge/core/float_bits.hpp"
#include "ckbridge/format/safetensors_checkpoint.hpp"
#include "ckbridge/quant/dequantize.hpp"

namespace ckbridge::convert {

struct VerifyItem {
  DType dtype = DType::BF16;
  Shape shape;
  std::function<AnyConstView(Tensor& scratch)> run;           // the tensor (possibly strided)
  std::function<std::string(const Shape& index)> where;       // where an element is stored
  // Optional: whether the tensor equals a contiguous view of the same dtype and shape, compared
  // in place against the stored pieces (Producer::equals); saves assembling it.
  std::function<bool(const AnyConstView& other)> equals;
  std::uint64_t bytes() const { return static_cast<std::uint64_t>(numel(shape)) * dtype_size(dtype); }
};
using VerifyItems = std::map<std::string, VerifyItem>;

// The stored tensors of an HF checkpoint.
inline VerifyItems hf_verify_items(const safetensors::Checkpoint& ck) {
  VerifyItems out;
  for (const auto& name : ck.names()) {
    const auto l = ck.locate(name);
    VerifyItem it;
    const AnyConstView v = l.file.view(l.info);
    it.dtype = v.dtype;
    it.shape = v.shape;
    it.run = [&ck, name](Tensor&) { return ck.view(name); };
    const std::string file = l.file.path().filename().string();
    it.where = [file, name](const Shape&) { return file + ": " + name; };
    out.emplace(name, std::move(it));
  }
  return out;
}

// The tensors of an HF-side plan (an MCore checkpoint's MCore -> HF plan), by HF key.
inline VerifyItems plan_verify_items(const Plan& plan) {
  VerifyItems out;
  for (const auto& f : plan.files) {
    if (f.format != FileFormat::Safetensors) continue;
    for (const auto& e : f.entries) {
      if (e.kind == EntryKind::None) continue;
      if (e.kind == EntryKind::Fp8) fail("verify: plan entry '", e.key, "' keeps data and scale together");
      VerifyItem it;
      it.dtype = e.data.dtype;
      it.shape = e.data.shape;
      it.run = e.data.run;
      it.equals = e.data.equals;
      if (e.locate) it.where = [l = e.locate](const Shape& i) { return l(i, false); };
      out.emplace(e.key, std::move(it));
    }
  }
  return out;
}

enum class VerifyStatus { Identical, WithinTolerance, Differs, MissingInB, ExtraInB, ScaleOfDequantized };

inline const char* verify_status_name(VerifyStatus s) {
  switch (s) {
    case VerifyStatus::Identical: return "identical";
    case VerifyStatus::WithinTolerance: return "within tolerance";
    case VerifyStatus::Differs: return "differs";
    case VerifyStatus::MissingInB: return "missing in B";
    case VerifyStatus::ExtraInB: return "extra in B";
    case VerifyStatus::ScaleOfDequantized: return "scale (used to dequantize)";
  }
  return "?";
}

struct TensorVerdict {
  std::string key;
  VerifyStatus status = VerifyStatus::Identical;
  DType dtype_a = DType::U8, dtype_b = DType::U8;
  Shape shape_a, shape_b;
  std::int64_t elements = 0, differing = 0;
  Shape first;                      // first differing element
  double value_a = 0, value_b = 0;  // at `first` (float32 view; FP8 codes dequantized where scales are known)
  std::string where_a, where_b;     // where `first` is stored on each side
  double max_abs = 0, max_rel = 0;  // float comparisons
  std::string note;
  bool ok() const {
    return status == VerifyStatus::Identical || status == VerifyStatus::WithinTolerance ||
           status == VerifyStatus::ScaleOfDequantized;
  }
};

struct VerifyOptions {
  double tolerance = 0.08;          // max |a - b| / max|b| for dequantized / cross-dtype comparisons
  unsigned threads = 0;             // 0: hardware concurrency
  std::string scale_suffix = "weight_scale_inv";
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;  // called from workers
};

struct VerifyReport {
  std::vector<TensorVerdict> tensors;  // sorted by key
  std::uint64_t bytes = 0;             // bytes produced and compared (both sides)
  std::size_t count(VerifyStatus s) const {
    return static_cast<std::size_t>(
        std::count_if(tensors.begin(), tensors.end(), [s](const TensorVerdict& t) { return t.status == s; }));
  }
  bool ok() const {
    return std::all_of(tensors.begin(), tensors.end(), [](const TensorVerdict& t) { return t.ok(); });
  }
};

namespace verify_detail {

inline bool is_float_kind(DType d) {
  return d == DType::BF16 || d == DType::F16 || d == DType::F32 || d == DType::F8_E4M3;
}

inline double element(const std::byte* p, DType d) {
  switch (d) {
    case DType::BF16: { std::uint16_t u; std::memcpy(&u, p, 2); return bf16_bits_to_f32(u); }
    case DType::F16: { std::uint16_t u; std::memcpy(&u, p, 2); return f16_bits_to_f32(u); }
    case DType::F32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::F8_E4M3: return e4m3_bits_to_f32(static_cast<std::uint8_t>(*p));
    default: break;
  }
  const std::size_t n = dtype_size(d);
  std::int64_t v = 0;
  std::memcpy(&v, p, std::min<std::size_t>(n, 8));
  return static_cast<double>(v);
}

inline Shape unravel(std::int64_t flat, const Shape& shape) {
  Shape idx(shape.size(), 0);
  for (std::size_t d = shape.size(); d-- > 0;) {
    if (shape[d] == 0) break;
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  return idx;
}

// A contiguous view (copying a strided one into `hold`).
inline AnyConstView contiguous(const AnyConstView& v, Tensor& hold) {
  if (v.is_contiguous()) return v;
  hold = Tensor::copy_of(v);
  return hold.cview();
}

// float32 values of a tensor; FP8 dequantized with its scales when given.
inline std::vector<float> as_f32(const AnyConstView& v, const AnyConstView* scale, std::string_view name) {
  std::vector<float> out(static_cast<std::size_t>(v.numel()));
  if (v.dtype == DType::F8_E4M3 && scale) {
    Tensor t = quant::dequantize(v, *scale, DType::F32, {.device = quant::Device::Cpu, .threads = 1, .name = name});
    std::memcpy(out.data(), t.data(), out.size() * 4);
    return out;
  }
  const auto* p = v.data;
  const std::size_t es = dtype_size(v.dtype);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(element(p + i * es, v.dtype));
  return out;
}

inline std::string scale_key_of(const std::string& weight_key, const std::string& suffix) {
  constexpr std::string_view w = "weight";
  if (weight_key.size() < w.size() || weight_key.compare(weight_key.size() - w.size(), w.size(), w) != 0) return {};
  return weight_key.substr(0, weight_key.size() - w.size()) + suffix;
}

}  // namespace verify_detail

// Compares every key of `a` and `b`.
inline VerifyReport verify(const VerifyItems& a, const VerifyItems& b, const VerifyOptions& o = {}) {
  using namespace verify_detail;
  std::set<std::string> keys;
  for (const auto& [k, v] : a) keys.insert(k);
  for (const auto& [k, v] : b) keys.insert(k);
  // FP8 weights compared against a plain one: their scales are inputs, not tensors to compare.
  std::set<std::string> scale_inputs;
  for (const auto& k : keys) {
    auto ia = a.find(k), ib = b.find(k);
    if (ia == a.end() || ib == b.end()) continue;
    const bool fa = ia->second.dtype == DType::F8_E4M3, fb = ib->second.dtype == DType::F8_E4M3;
    if (fa != fb) scale_inputs.insert(scale_key_of(k, o.scale_suffix));
  }
  VerifyReport rep;
  rep.tensors.resize(keys.size());
  std::vector<std::string> order(keys.begin(), keys.end());
  std::vector<std::size_t> work(order.size());
  for (std::size_t i = 0; i < work.size(); ++i) work[i] = i;
  auto size_of = [&](const std::string& k) {
    auto ia = a.find(k), ib = b.find(k);
    return (ia == a.end() ? 0 : ia->second.bytes()) + (ib == b.end() ? 0 : ib->second.bytes());
  };
  std::stable_sort(work.begin(), work.end(), [&](std::size_t x, std::size_t y) { return size_of(order[x]) > size_of(order[y]); });
  std::uint64_t total = 0;
  for (const auto& k : order) total += size_of(k);
  std::atomic<std::uint64_t> done{0};
  std::atomic<std::size_t> next{0};
  std::exception_ptr err;
  std::mutex err_mu;

  auto one = [&](std::size_t idx) {
    const std::string& k = order[idx];
    TensorVerdict& t = rep.tensors[idx];
    t.key = k;
    auto ia = a.find(k), ib = b.find(k);
    if (ia == a.end() || ib == b.end()) {
      const bool scale_only = scale_inputs.count(k) != 0;
      t.status = scale_only ? VerifyStatus::ScaleOfDequantized
                            : (ia == a.end() ? VerifyStatus::ExtraInB : VerifyStatus::MissingInB);
      const VerifyItem& it = ia == a.end() ? ib->second : ia->second;
      (ia == a.end() ? t.dtype_b : t.dtype_a) = it.dtype;
      (ia == a.end() ? t.shape_b : t.shape_a) = it.shape;
      if (it.where) (ia == a.end() ? t.where_b : t.where_a) = it.where(Shape(it.shape.size(), 0));
      return;
    }
    const VerifyItem &A = ia->second, &B = ib->second;
    t.dtype_a = A.dtype;
    t.dtype_b = B.dtype;
    t.shape_a = A.shape;
    t.shape_b = B.shape;
    t.elements = numel(A.shape);
    if (A.shape != B.shape) {
      t.status = VerifyStatus::Differs;
      t.note = "shape " + shape_str(A.shape) + " vs " + shape_str(B.shape);
      return;
    }
    Tensor sa, sb, ha, hb;
    AnyConstView va, vb;
    // Same dtype and one side compares in place: produce only the other side (a zero-copy view
    // for an HF tensor) and compare it with the stored pieces; only a difference (or an
    // unreadable source) goes on to assemble both sides and locate it.
    if (A.dtype == B.dtype && (A.equals || B.equals)) {
      const bool b_in_place = static_cast<bool>(B.equals);
      const VerifyItem& made = b_in_place ? A : B;
      bool same = false;
      try {
        Tensor s, h;
        const AnyConstView v = contiguous(made.run(s), h);
        same = (b_in_place ? B : A).equals(v);
      } catch (const Error&) {
        same = false;  // reported below, naming the side
      }
      if (same) {
        t.status = VerifyStatus::Identical;
        return;
      }
    }
    try {  // an unreadable source (damaged record, inconsistent copy) is a finding, not the end
      va = contiguous(A.run(sa), ha);
    } catch (const Error& e) {
      t.status = VerifyStatus::Differs;
      t.note = std::string("A cannot be read: ") + e.what();
      return;
    }
    try {
      vb = contiguous(B.run(sb), hb);
    } catch (const Error& e) {
      t.status = VerifyStatus::Differs;
      t.note = std::string("B cannot be read: ") + e.what();
      return;
    }
    if (A.dtype == B.dtype) {
      const std::size_t es = dtype_size(A.dtype), n = static_cast<std::size_t>(t.elements);
      if (std::memcmp(va.data, vb.data, n * es) == 0) {
        t.status = VerifyStatus::Identical;
      } else {
        t.status = VerifyStatus::Differs;
        std::int64_t first = -1;
        for (std::size_t i = 0; i < n; ++i) {
          if (std::memcmp(va.data + i * es, vb.data + i * es, es) == 0) continue;
          if (first < 0) first = static_cast<std::int64_t>(i);
          ++t.differing;
          if (is_float_kind(A.dtype)) {
            const double x = element(va.data + i * es, A.dtype), y = element(vb.data + i * es, B.dtype);
            if (std::isfinite(x) && std::isfinite(y)) t.max_abs = std::max(t.max_abs, std::fabs(x - y));
          }
        }
        t.first = unravel(first, A.shape);
        t.value_a = element(va.data + static_cast<std::size_t>(first) * es, A.dtype);
        t.value_b = element(vb.data + static_cast<std::size_t>(first) * es, B.dtype);
        if (A.dtype == DType::F8_E4M3) t.note = "FP8 codes differ (values shown undequantized)";
      }
    } else if (is_float_kind(A.dtype) && is_float_kind(B.dtype)) {
      // dequantize the FP8 side(s) with their scales and compare in float32
      auto scale_of = [&](const VerifyItems& side, const AnyConstView& v, Tensor& hold, Tensor& hold2,
                          bool& have) -> AnyConstView {
        have = false;
        if (v.dtype != DType::F8_E4M3) return {};
        const std::string sk = scale_key_of(k, o.scale_suffix);
        auto is = side.find(sk);
        if (is == side.end()) fail("verify: FP8 tensor '", k, "' has no scale '", sk, "'");
        have = true;
        return contiguous(is->second.run(hold), hold2);
      };
      Tensor s1, s2, s3, s4;
      bool ha_s = false, hb_s = false;
      const AnyConstView sca = scale_of(a, va, s1, s2, ha_s), scb = scale_of(b, vb, s3, s4, hb_s);
      const std::vector<float> fa = as_f32(va, ha_s ? &sca : nullptr, k), fb = as_f32(vb, hb_s ? &scb : nullptr, k);
      double amax = 0;
      for (float y : fb) if (std::isfinite(y)) amax = std::max(amax, static_cast<double>(std::fabs(y)));
      std::int64_t first = -1;
      for (std::size_t i = 0; i < fa.size(); ++i) {
        const double x = fa[i], y = fb[i];
        const bool same = x == y || (std::isnan(x) && std::isnan(y));
        if (same) continue;
        if (first < 0) first = static_cast<std::int64_t>(i);
        ++t.differing;
        t.max_abs = std::max(t.max_abs, std::isfinite(x - y) ? std::fabs(x - y) : INFINITY);
      }
      t.max_rel = amax > 0 ? t.max_abs / amax : (t.max_abs > 0 ? INFINITY : 0);
      if (first >= 0) {
        t.first = unravel(first, A.shape);
        t.value_a = fa[static_cast<std::size_t>(first)];
        t.value_b = fb[static_cast<std::size_t>(first)];
      }
      t.note = std::string("compared in float32") + (ha_s || hb_s ? " (FP8 dequantized)" : "");
      t.status = t.differing == 0 ? VerifyStatus::Identical
                                  : (t.max_rel <= o.tolerance ? VerifyStatus::WithinTolerance : VerifyStatus::Differs);
    } else {
      t.status = VerifyStatus::Differs;
      t.note = "dtypes cannot be compared";
    }
    if (t.status == VerifyStatus::Differs && !t.first.empty()) {
      if (A.where) t.where_a = A.where(t.first);
      if (B.where) t.where_b = B.where(t.first);
    }
  };
  auto worker = [&] {
    while (true) {
      const std::size_t n = next++;
      if (n >= work.size()) return;
      {
        std::lock_guard lk(err_mu);
        if (err) return;
      }
      try {
        one(work[n]);
        const std::uint64_t d = (done += size_of(order[work[n]]));
        if (o.progress) o.progress(d, total);
      } catch (...) {
        std::lock_guard lk(err_mu);
        if (!err) err = std::current_exception();
        return;
      }
    }
  };
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const unsigned nthreads = std::max(1u, std::min<unsigned>(o.threads ? o.threads : hw, static_cast<unsigned>(work.size())));
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < nthreads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  if (err) std::rethrow_exception(err);
  rep.bytes = total;
  return rep;
}

}  // namespace ckbridge::convert

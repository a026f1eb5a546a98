#pragma once
// Pipeline (PP) and virtual-pipeline (VPP) layer distribution, compatible with LoongForge's
// converter: the per-virtual-partition layer counts (custom list, uneven first/last stage,
// balanced default split), the (pp rank, virtual stage) -> virtual partition map (standard and
// DualPipeV), MTP placement, and Megatron's --pipeline_model_parallel_layout strings.
//
// Where LoongForge has bugs we refuse the input with a ckbridge::Error instead of producing a
// broken checkpoint; each such place cites the bug id of docs/loongforge-deviations.md.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/core/error.hpp"

namespace ckbridge::convert {

// Upper bound on layers (decoder + MTP) and on pipeline partitions: far above any real model,
// low enough that counts never overflow int and plans never allocate without bound.
inline constexpr int kMaxPipelineLayers = 1 << 20;

namespace detail {

// Strict non-negative integer parse of a whole token (no sign, no spaces inside).
inline std::optional<long long> parse_count(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  if (s.empty()) return std::nullopt;
  long long v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || v < 0) return std::nullopt;
  return v;
}

// LoongForge's _lprobe: greedy probe of a bottleneck over the inclusive prefix sums w[i] = i+1
// (unit layer weights). parts has P+1 entries; unfilled parts stay at n.
inline bool lprobe(int n, int P, double bottleneck, std::vector<int>& parts) {
  auto w = [](std::int64_t i) { return static_cast<double>(i + 1); };
  parts.assign(static_cast<std::size_t>(P) + 1, n);
  parts[0] = 0;
  double bsum = bottleneck;
  // 64-bit positions: step may run past n by up to one chunk, which overflows int near INT_MAX.
  const std::int64_t chunk = n / P;
  std::int64_t step = chunk;
  for (int q = 1; q < P; ++q) {
    while (step < n && w(step) < bsum) step += chunk;
    // bisect_left over [step - chunk, min(step, n))
    std::int64_t lo = step - chunk, hi = std::min<std::int64_t>(step, n);
    while (lo < hi) {
      const std::int64_t mid = lo + (hi - lo) / 2;
      if (w(mid) < bsum) lo = mid + 1; else hi = mid;
    }
    parts[static_cast<std::size_t>(q)] = static_cast<int>(lo);
    if (lo == n) return (w(n - 1) - w(parts[static_cast<std::size_t>(q) - 1])) < bottleneck;
    // Python's w[-1] wraps to the last element; lo >= 1 always holds here because bsum > 1.
    bsum = (lo >= 1 ? w(lo - 1) : w(n - 1)) + bottleneck;
  }
  return bsum >= w(n - 1);
}

}  // namespace detail

// LoongForge's partition_balanced(num_layers, num_parts), ported exactly (binary search on the
// bottleneck in double precision with eps 1e-3, then one probe). Usually "ceil(N/P) per part,
// remainder last", but not always: 16/3 -> [5,5,6], 64/7 -> [9,9,9,9,9,9,10]. Trailing parts
// may be 0 (28/8 -> [4,4,4,4,4,4,4,0]).
inline std::vector<int> partition_balanced(int num_layers, int num_parts) {
  if (num_parts <= 0) fail("partition_balanced: number of partitions must be > 0, got ", num_parts);
  if (num_layers < 0) fail("partition_balanced: num_layers must be >= 0, got ", num_layers);
  std::vector<int> counts(static_cast<std::size_t>(num_parts), 0);
  if (num_layers <= num_parts) {
    for (int i = 0; i < num_layers; ++i) counts[static_cast<std::size_t>(i)] = 1;
    return counts;
  }
  constexpr double eps = 1e-3;
  double lower = static_cast<double>(num_layers) / num_parts;
  double upper = static_cast<double>(num_layers);
  std::vector<int> parts;
  while (upper > lower + eps) {
    const double mid = lower + (upper - lower) / 2;
    if (detail::lprobe(num_layers, num_parts, mid, parts)) upper = mid; else lower = mid + eps;
  }
  if (!detail::lprobe(num_layers, num_parts, upper, parts))
    fail("partition_balanced: internal error: no partition of ", num_layers, " layers into ",
         num_parts, " parts");
  for (int i = 1; i <= num_parts; ++i)
    counts[static_cast<std::size_t>(i) - 1] = parts[static_cast<std::size_t>(i)] - parts[static_cast<std::size_t>(i) - 1];
  return counts;
}

// LoongForge's uneven_vpp_partition (--decoder-first/last-pipeline-num-layers). Only defined for
// vpp == 2 with DualPipeV's V-shaped indexing. LoongForge silently drops the remainder when the
// middle ranks do not divide evenly (B10); we refuse that.
inline std::vector<int> uneven_vpp_partition(int num_layers, int pp, int vpp, std::optional<int> first,
                                             std::optional<int> last) {
  if (num_layers <= 0) fail("uneven pipeline split: num_layers must be > 0, got ", num_layers);
  if (pp <= 1) fail("--decoder-first/last-pipeline-num-layers need --pipeline_model_parallel_size > 1, got ", pp);
  if (vpp != 2)
    fail("--decoder-first/last-pipeline-num-layers need --num-virtual-stages-per-pipeline-rank 2 "
         "(DualPipeV shape), got ", vpp);
  if (!first && !last) fail("uneven pipeline split: give --decoder-first-pipeline-num-layers or --decoder-last-pipeline-num-layers");
  if ((first && *first < 0) || (last && *last < 0)) fail("uneven pipeline split: negative layer count");
  if (num_layers > kMaxPipelineLayers || pp > kMaxPipelineLayers || (first && *first > num_layers) ||
      (last && *last > num_layers))
    fail("uneven pipeline split: first/last stage layers ", first.value_or(0), "/", last.value_or(0),
         ", num_layers ", num_layers, ", pp ", pp, " out of range (at most num_layers, and num_layers at most ",
         kMaxPipelineLayers, ")");
  int rest = num_layers, ranks_left = pp;
  std::vector<int> c(static_cast<std::size_t>(2 * pp), 0);
  auto at = [&](int i) -> int& { return c[static_cast<std::size_t>(i)]; };
  if (first) {
    rest -= *first;
    at(0) = (*first + 1) / 2;
    at(2 * pp - 1) = *first - at(0);
    --ranks_left;
  }
  if (last) {
    rest -= *last;
    at(pp - 1) = (*last + 1) / 2;
    at(pp) = *last - at(pp - 1);
    --ranks_left;
  }
  if (rest < 0) fail("uneven pipeline split: first + last stage layers exceed num_layers ", num_layers);
  if (ranks_left <= 0) {
    if (rest != 0)
      fail("uneven pipeline split: --decoder-first/last-pipeline-num-layers with pp=", pp, " leave ", rest,
           " of ", num_layers, " layers unassigned");
    return c;
  }
  if (rest % ranks_left != 0)
    fail("uneven pipeline split: ", rest, " remaining layers do not divide over ", ranks_left,
         " middle pipeline ranks (LoongForge would silently drop ", rest % ranks_left, " layers, bug B10)");
  const int k = rest / ranks_left;
  for (int i = 1; i < pp - 1; ++i) {
    at(i) = k / 2;
    at(2 * pp - 1 - i) = k - at(i);
  }
  if (!first) { at(0) = k / 2; at(2 * pp - 1) = k - at(0); }
  if (!last) { at(pp - 1) = k / 2; at(pp) = k - at(pp - 1); }
  return c;
}

// Parses --custom_pipeline_layers ("8,7,8,8,8,8,8,6"): one count per virtual partition in vp
// order. Accepts a single number (LoongForge requires a comma, B11), spaces around numbers.
inline std::vector<int> parse_custom_pipeline_layers(std::string_view s) {
  std::vector<int> out;
  std::size_t pos = 0;
  while (true) {
    const std::size_t comma = s.find(',', pos);
    const std::string_view tok = s.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos);
    const auto v = detail::parse_count(tok);
    if (!v || *v > 1'000'000)
      fail("--custom_pipeline_layers '", s, "': entry ", out.size(), " ('", tok, "') is not a non-negative integer");
    out.push_back(static_cast<int>(*v));
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return out;
}

// One stage of a Megatron --pipeline_model_parallel_layout: E (embedding), t (decoder layer),
// m (MTP layer), L (loss / output layer).
struct LayoutStage {
  int decoder = 0;
  int mtp = 0;
  bool embedding = false;
  bool loss = false;
};

namespace detail {
// Recursive-descent expansion of the layout grammar:  seq := item* ; item := atom ('*' n)? ;
// atom := 'E' | 't' | 'm' | 'L' | '|' | '(' seq ')'. Commas and spaces are cosmetic.
// (Megatron/LoongForge use two regex passes, which do not support nested parentheses.)
struct LayoutParser {
  std::string_view s;
  std::size_t i = 0;
  [[noreturn]] void bad(std::string_view why) const {
    fail("--pipeline_model_parallel_layout '", s, "': ", why, " at offset ", i);
  }
  void skip() {
    while (i < s.size() && (s[i] == ',' || std::isspace(static_cast<unsigned char>(s[i])))) ++i;
  }
  std::string seq(int depth) {
    if (depth > 32) bad("parentheses nested too deeply");
    std::string out;
    while (true) {
      skip();
      if (i >= s.size() || s[i] == ')') return out;
      std::string atom;
      const char c = s[i];
      if (c == '(') {
        ++i;
        atom = seq(depth + 1);
        skip();
        if (i >= s.size() || s[i] != ')') bad("missing ')'");
        ++i;
      } else if (c == 'E' || c == 't' || c == 'm' || c == 'L' || c == '|') {
        atom = std::string(1, c);
        ++i;
      } else {
        bad(std::string("unknown layer character '") + c + "' (known: E t m L | ( ) *n)");
      }
      skip();
      if (i < s.size() && s[i] == '*') {
        ++i;
        skip();
        const std::size_t b = i;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
        const auto n = parse_count(s.substr(b, i - b));
        if (!n) bad("'*' must be followed by a repeat count");
        // A repeat count is bounded by itself too: an empty atom ("()*99999999999") expands to
        // nothing, but a loop over the count would still run that many times.
        if (*n > 1'000'000 || static_cast<double>(*n) * static_cast<double>(atom.size()) > 1e6)
          bad("expansion too large");
        std::string rep;
        if (!atom.empty()) {
          rep.reserve(atom.size() * static_cast<std::size_t>(*n));
          for (long long k = 0; k < *n; ++k) rep += atom;
        }
        atom = std::move(rep);
      }
      // The whole expansion is bounded, not only each repeat: "(t*999999)" many times over
      // would otherwise grow without limit.
      if (out.size() + atom.size() > 1'000'000) bad("expansion too large");
      out += atom;
    }
  }
};
}  // namespace detail

// Parses a Megatron layout string, e.g. "Et*3|(tt|)*29,m|L" -> 32 stages. Validates that E appears
// only in the first stage and L only in the last.
inline std::vector<LayoutStage> parse_pipeline_layout(std::string_view layout) {
  detail::LayoutParser p{layout};
  const std::string flat = p.seq(0);
  if (p.i != layout.size()) p.bad("unbalanced ')'");
  std::vector<LayoutStage> stages(1);
  for (char c : flat) {
    switch (c) {
      case '|': stages.emplace_back(); break;
      case 't': ++stages.back().decoder; break;
      case 'm': ++stages.back().mtp; break;
      case 'E': stages.back().embedding = true; break;
      case 'L': stages.back().loss = true; break;
      default: break;
    }
  }
  for (std::size_t k = 0; k < stages.size(); ++k) {
    if (stages[k].embedding && k != 0)
      fail("--pipeline_model_parallel_layout '", layout, "': 'E' (embedding) must be in the first stage, found in stage ", k);
    if (stages[k].loss && k + 1 != stages.size())
      fail("--pipeline_model_parallel_layout '", layout, "': 'L' (loss) must be in the last stage, found in stage ", k);
  }
  return stages;
}

// LoongForge's convert_layout_to_custom_pipeline_layers: decoder layers per stage, "5,8,6,8".
inline std::vector<int> layout_to_custom_pipeline_layers(std::string_view layout) {
  std::vector<int> out;
  for (const auto& st : parse_pipeline_layout(layout)) out.push_back(st.decoder);
  return out;
}

// Inputs of the layer distribution (LoongForge flag names in comments).
struct PipelineOptions {
  int num_layers = 0;                      // args.common.num_layers
  int pp = 1;                              // --pipeline_model_parallel_size
  int vpp = 1;                             // --num-virtual-stages-per-pipeline-rank
  int mtp_num_layers = 0;                  // --mtp_num_layers / args.common.mtp_num_layers
  std::optional<std::vector<int>> custom;  // --custom_pipeline_layers (vp order)
  std::optional<std::string> layout;       // --pipeline_model_parallel_layout
  std::optional<int> first;                // --decoder-first-pipeline-num-layers
  std::optional<int> last;                 // --decoder-last-pipeline-num-layers
  bool dualpipev = false;                  // --vpp-scheduler dualpipev
  bool allow_empty_partitions = false;     // B28: default split may leave 0-layer partitions
  bool mtp_from_layout = true;             // B11: honour 'm' in a layout (LoongForge ignores it)
};

// get_num_layers_in_vp_map: decoder+MTP layers per virtual partition (length pp*vpp, vp order).
// All MTP layers go to the last virtual partition (as LoongForge), unless a layout places them.
inline std::vector<int> num_layers_in_vp_map(int vpp, int num_layers, int pp, int mtp_num_layers = 0,
                                             const std::optional<std::vector<int>>& custom = std::nullopt,
                                             std::optional<int> first = std::nullopt,
                                             std::optional<int> last = std::nullopt,
                                             bool allow_empty_partitions = false) {
  if (pp <= 0) fail("--pipeline_model_parallel_size must be > 0, got ", pp);
  if (vpp <= 0) fail("--num-virtual-stages-per-pipeline-rank must be > 0, got ", vpp);
  if (num_layers <= 0) fail("num_layers must be > 0, got ", num_layers);
  if (mtp_num_layers < 0) fail("mtp_num_layers must be >= 0, got ", mtp_num_layers);
  if (std::int64_t{num_layers} + mtp_num_layers > kMaxPipelineLayers)
    fail("num_layers ", num_layers, " + mtp_num_layers ", mtp_num_layers, " exceeds ", kMaxPipelineLayers);
  if (std::int64_t{pp} * vpp > kMaxPipelineLayers)
    fail("pipeline size x virtual stages = ", pp, " x ", vpp, " exceeds ", kMaxPipelineLayers);
  const int P = pp * vpp;
  std::vector<int> c;
  if (custom) {
    if (first || last)
      fail("--custom_pipeline_layers cannot be combined with --decoder-first/last-pipeline-num-layers");
    if (static_cast<int>(custom->size()) != P)
      fail("--custom_pipeline_layers has ", custom->size(), " entries, expected pipeline size x virtual stages = ",
           pp, " x ", vpp, " = ", P);
    long long sum = 0;
    for (int v : *custom) {
      if (v < 0) fail("--custom_pipeline_layers: negative layer count ", v);
      sum += v;
    }
    if (sum != num_layers)
      fail("--custom_pipeline_layers sums to ", sum, " layers, but the model has num_layers = ", num_layers);
    c = *custom;
  } else if (first || last) {
    c = uneven_vpp_partition(num_layers, pp, vpp, first, last);
  } else {
    c = partition_balanced(num_layers, P);
    if (!allow_empty_partitions) {
      for (std::size_t k = 0; k < c.size(); ++k)
        if (c[k] == 0)
          fail("default pipeline split of ", num_layers, " layers over ", P, " (virtual) partitions leaves partition ",
               k, " without layers (LoongForge bug B28); pass --custom_pipeline_layers");
    }
  }
  c.back() += mtp_num_layers;
  return c;
}

// --num_layers_per_virtual_pipeline_stage n -> virtual stages per PP rank (LoongForge crashes on
// this flag, B9; Megatron's rule: vpp = num_layers / pp / n, exact).
inline int vpp_from_layers_per_virtual_stage(int num_layers, int pp, int layers_per_stage) {
  if (pp <= 0 || layers_per_stage <= 0)
    fail("--num_layers_per_virtual_pipeline_stage ", layers_per_stage, " with --pipeline_model_parallel_size ", pp,
         ": both must be > 0");
  const std::int64_t per_vstage = std::int64_t{pp} * layers_per_stage;  // int would overflow
  if (num_layers <= 0) fail("--num_layers_per_virtual_pipeline_stage: num_layers must be > 0, got ", num_layers);
  if (num_layers % per_vstage != 0)
    fail("--num_layers_per_virtual_pipeline_stage ", layers_per_stage, ": num_layers ", num_layers,
         " is not divisible by pipeline size x layers per virtual stage = ", per_vstage);
  return static_cast<int>(num_layers / per_vstage);
}

// Virtual partition index of virtual stage s on PP rank p.
inline int virtual_partition(bool dualpipev, int s, int p, int pp) {
  if (dualpipev) return s == 0 ? p : pp * s + (pp - 1 - p);
  return p + pp * s;
}

// Where one layer lives.
struct LayerPlacement {
  int global_id = 0;    // 0..N-1 decoder, N.. MTP (LoongForge's "layer id")
  int pp_rank = 0;
  int vp_stage = 0;     // virtual stage s on that PP rank (model{s})
  int vp_index = 0;     // virtual partition index
  int local_index = 0;  // MCore local index: position in the chunk (decoder) or MTP index
  bool is_mtp = false;
};

// The complete layer distribution of a run.
class PipelinePlan {
public:
  explicit PipelinePlan(const PipelineOptions& o) : opt_(o) {
    if (o.pp <= 0) fail("--pipeline_model_parallel_size must be > 0, got ", o.pp);
    if (o.num_layers <= 0) fail("num_layers must be > 0, got ", o.num_layers);
    if (o.mtp_num_layers < 0) fail("mtp_num_layers must be >= 0, got ", o.mtp_num_layers);
    if (std::int64_t{o.num_layers} + o.mtp_num_layers > kMaxPipelineLayers)
      fail("num_layers ", o.num_layers, " + mtp_num_layers ", o.mtp_num_layers, " exceeds ", kMaxPipelineLayers);
    if (o.dualpipev && o.vpp != 2)
      fail("--vpp-scheduler dualpipev needs --num-virtual-stages-per-pipeline-rank 2, got ", o.vpp);
    vpp_ = o.vpp;
    std::optional<std::vector<int>> custom = o.custom;
    if (o.layout) {
      if (o.custom) fail("--pipeline_model_parallel_layout and --custom_pipeline_layers are mutually exclusive");
      const auto stages = parse_pipeline_layout(*o.layout);
      const int n = static_cast<int>(stages.size());
      if (n % o.pp != 0)
        fail("--pipeline_model_parallel_layout has ", n, " stages, not a multiple of --pipeline_model_parallel_size ", o.pp);
      if (o.vpp != 1 && o.vpp != n / o.pp)
        fail("--pipeline_model_parallel_layout has ", n, " stages = ", n / o.pp,
             " virtual stages per rank, but --num-virtual-stages-per-pipeline-rank is ", o.vpp);
      vpp_ = n / o.pp;
      std::vector<int> dec;
      int mtp_in_layout = 0;
      for (const auto& st : stages) {
        dec.push_back(st.decoder);
        mtp_in_layout += st.mtp;
      }
      custom = dec;
      if (o.mtp_from_layout && mtp_in_layout > 0) {
        if (mtp_in_layout != o.mtp_num_layers)
          fail("--pipeline_model_parallel_layout places ", mtp_in_layout, " MTP layers ('m'), but mtp_num_layers is ",
               o.mtp_num_layers);
        for (const auto& st : stages) mtp_.push_back(st.mtp);
      }
    }
    if (mtp_.empty()) {
      counts_ = num_layers_in_vp_map(vpp_, o.num_layers, o.pp, o.mtp_num_layers, custom, o.first, o.last,
                                     o.allow_empty_partitions);
      mtp_.assign(counts_.size(), 0);
      mtp_.back() = o.mtp_num_layers;
    } else {
      counts_ = num_layers_in_vp_map(vpp_, o.num_layers, o.pp, 0, custom, o.first, o.last, o.allow_empty_partitions);
      for (std::size_t vp = 0; vp < counts_.size(); ++vp) counts_[vp] += mtp_[vp];
    }
    build();
  }

  int pp() const { return opt_.pp; }
  int vpp() const { return vpp_; }
  int num_layers() const { return opt_.num_layers; }
  int mtp_num_layers() const { return opt_.mtp_num_layers; }
  // Layers (decoder + MTP) per virtual partition, vp order, as LoongForge's num_layers_in_vp.
  const std::vector<int>& vp_counts() const { return counts_; }
  // MTP layers per virtual partition.
  const std::vector<int>& vp_mtp_counts() const { return mtp_; }
  int virtual_partition(int p, int s) const { return convert::virtual_partition(opt_.dualpipev, s, p, opt_.pp); }

  // Global layer ids of PP rank p in virtual-stage order (LoongForge get_layer_ids).
  std::vector<int> layer_ids(int p) const {
    check_p(p);
    std::vector<int> out;
    for (int s = 0; s < vpp_; ++s)
      for (const auto& lp : stage_layers(p, s)) out.push_back(lp.global_id);
    return out;
  }
  // Layers of (p, s) in order, with their MCore local indices.
  std::vector<LayerPlacement> stage_layers(int p, int s) const {
    check_p(p);
    if (s < 0 || s >= vpp_) fail("virtual stage ", s, " out of range [0, ", vpp_, ")");
    const int vp = virtual_partition(p, s);
    std::vector<LayerPlacement> out;
    for (const auto& lp : all_) if (lp.vp_index == vp) out.push_back(lp);
    return out;
  }
  const LayerPlacement& placement(int global_id) const {
    if (global_id < 0 || global_id >= static_cast<int>(all_.size()))
      fail("layer id ", global_id, " out of range [0, ", all_.size(), ")");
    return all_[static_cast<std::size_t>(global_id)];
  }
  // Stage (p, s) holding the word embedding (vp 0), the final norm + output layer (the partition
  // with decoder layer N-1) and MTP layers (their partition; also gets an embedding copy).
  bool has_embedding(int p, int s) const { return virtual_partition(p, s) == 0; }
  bool has_final_layers(int p, int s) const { return virtual_partition(p, s) == placement(opt_.num_layers - 1).vp_index; }
  bool has_mtp(int p, int s) const { return mtp_[static_cast<std::size_t>(virtual_partition(p, s))] > 0; }
  // State-dict key of virtual stage s: "model" without VPP, else "model<s>".
  std::string model_key(int s) const { return vpp_ > 1 ? "model" + std::to_string(s) : std::string("model"); }

private:
  void check_p(int p) const {
    if (p < 0 || p >= opt_.pp) fail("pipeline rank ", p, " out of range [0, ", opt_.pp, ")");
  }
  // Decoder ids are assigned in vp order; MTP ids N.. in vp order of their partitions; inside a
  // partition decoder layers come first (MTP follows the decoder, as in Megatron).
  void build() {
    const int N = opt_.num_layers, P = static_cast<int>(counts_.size());
    all_.assign(static_cast<std::size_t>(N + opt_.mtp_num_layers), {});
    std::vector<int> vp_of_p(static_cast<std::size_t>(P)), s_of_p(static_cast<std::size_t>(P));
    for (int p = 0; p < opt_.pp; ++p)
      for (int s = 0; s < vpp_; ++s) {
        const int vp = virtual_partition(p, s);
        vp_of_p[static_cast<std::size_t>(vp)] = p;
        s_of_p[static_cast<std::size_t>(vp)] = s;
      }
    int dec = 0, mtp = 0;
    for (int vp = 0; vp < P; ++vp) {
      const auto v = static_cast<std::size_t>(vp);
      const int nm = mtp_[v];
      for (int k = 0; k < counts_[v] - nm && dec < N; ++k, ++dec)
        all_[static_cast<std::size_t>(dec)] = LayerPlacement{dec, vp_of_p[v], s_of_p[v], vp, k, false};
      for (int k = 0; k < nm && mtp < opt_.mtp_num_layers; ++k, ++mtp)
        all_[static_cast<std::size_t>(N + mtp)] = LayerPlacement{N + mtp, vp_of_p[v], s_of_p[v], vp, mtp, true};
    }
    if (dec != N || mtp != opt_.mtp_num_layers)
      fail("pipeline plan: internal error: placed ", dec, " decoder and ", mtp, " MTP layers of ", N, " and ",
           opt_.mtp_num_layers);
  }

  PipelineOptions opt_;
  int vpp_ = 1;
  std::vector<int> counts_, mtp_;
  std::vector<LayerPlacement> all_;
};

}  // namespace ckbridge::convert

// libFuzzer target: pipeline layout strings (--pipeline_model_parallel_layout,
// --custom_pipeline_layers) and the layer distribution (PipelinePlan and the functions it is
// built from) with sizes taken from the input. Only ckbridge::Error may escape; a plan that is
// built must place every decoder and MTP layer exactly once (checked here, trap otherwise).
//
// Input: 12 header bytes, then the text used as layout / custom list.
//   [0] flags: 1 dualpipev, 2 allow_empty_partitions, 4 mtp_from_layout, 8 use layout,
//       16 use custom list, 32 first, 64 last, 128 extreme integers
//   [1] num_layers  [2] pp  [3] vpp  [4] mtp  [5] first  [6] last  [7] layers per virtual stage
//   [8..11] a 32-bit value mixed into the "extreme" integers
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckbridge/convert/pipeline_layout.hpp"
#include "ckbridge/core/error.hpp"

namespace {
namespace cv = ckbridge::convert;

// Small value, or with `extreme` one near the int limits (overflow probes).
int pick(std::uint8_t b, bool extreme, std::uint32_t salt) {
  if (!extreme) return b;
  switch (b % 6) {
    case 0: return INT_MAX - static_cast<int>(b / 6);
    case 1: return INT_MIN + static_cast<int>(b / 6);
    case 2: return static_cast<int>(salt);
    case 3: return 1 << (b % 31);
    case 4: return -static_cast<int>(b);
    default: return b;
  }
}

template <class F>
void guarded(F&& f) {
  try {
    f();
  } catch (const ckbridge::Error&) {
  }
}

void check_plan(const cv::PipelinePlan& plan) {
  const int total = plan.num_layers() + plan.mtp_num_layers();
  std::vector<int> seen(static_cast<std::size_t>(total), 0);
  long long sum = 0;
  for (int c : plan.vp_counts()) sum += c;
  if (sum != total) __builtin_trap();
  if (plan.vp_counts().size() != static_cast<std::size_t>(plan.pp()) * static_cast<std::size_t>(plan.vpp()))
    __builtin_trap();
  for (int p = 0; p < plan.pp(); ++p) {
    for (int s = 0; s < plan.vpp(); ++s) {
      int local = 0;
      for (const auto& lp : plan.stage_layers(p, s)) {
        if (lp.global_id < 0 || lp.global_id >= total) __builtin_trap();
        if (lp.pp_rank != p || lp.vp_stage != s) __builtin_trap();
        if (!lp.is_mtp && lp.local_index != local++) __builtin_trap();
        ++seen[static_cast<std::size_t>(lp.global_id)];
      }
      (void)plan.has_embedding(p, s);
      (void)plan.has_final_layers(p, s);
      (void)plan.has_mtp(p, s);
      (void)plan.model_key(s);
    }
    (void)plan.layer_ids(p);
  }
  for (int v : seen)
    if (v != 1) __builtin_trap();
  for (int id = 0; id < total; ++id)
    if (plan.placement(id).global_id != id) __builtin_trap();
  guarded([&] { (void)plan.placement(total); });
  guarded([&] { (void)plan.stage_layers(plan.pp(), 0); });
  guarded([&] { (void)plan.stage_layers(0, plan.vpp()); });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::uint8_t h[12] = {};
  std::memcpy(h, data, size < sizeof h ? size : sizeof h);
  const std::string_view text = size > sizeof h ? std::string_view(reinterpret_cast<const char*>(data) + sizeof h, size - sizeof h)
                                                 : std::string_view();
  const bool extreme = h[0] & 128;
  std::uint32_t salt = 0;
  std::memcpy(&salt, h + 8, 4);

  // The string parsers on their own.
  guarded([&] { (void)cv::parse_pipeline_layout(text); });
  guarded([&] { (void)cv::layout_to_custom_pipeline_layers(text); });
  std::optional<std::vector<int>> custom;
  guarded([&] { custom = cv::parse_custom_pipeline_layers(text); });

  // Arithmetic helpers with unbounded integers (they allocate O(pp * vpp) at most).
  const int n_any = pick(h[1], extreme, salt), pp_small = h[2] % 17, vpp_small = h[3] % 5;
  guarded([&] { (void)cv::partition_balanced(n_any, pp_small * vpp_small); });
  guarded([&] { (void)cv::vpp_from_layers_per_virtual_stage(n_any, pick(h[2], extreme, salt), pick(h[7], extreme, ~salt)); });
  guarded([&] {
    (void)cv::uneven_vpp_partition(n_any, pp_small, vpp_small, (h[0] & 32) ? std::optional<int>(pick(h[5], extreme, salt)) : std::nullopt,
                                   (h[0] & 64) ? std::optional<int>(pick(h[6], extreme, ~salt)) : std::nullopt);
  });
  guarded([&] {
    (void)cv::num_layers_in_vp_map(vpp_small, n_any, pp_small, pick(h[4], extreme, salt), (h[0] & 16) ? custom : std::nullopt,
                                   (h[0] & 32) ? std::optional<int>(pick(h[5], extreme, salt)) : std::nullopt,
                                   (h[0] & 64) ? std::optional<int>(pick(h[6], extreme, ~salt)) : std::nullopt, h[0] & 2);
  });

  // A whole plan. Layer counts stay small unless `extreme` (the plan must then refuse, not
  // allocate without bound).
  cv::PipelineOptions o;
  o.num_layers = extreme ? n_any : h[1] % 97;
  o.pp = h[2] % 17;
  o.vpp = h[3] % 5;
  o.mtp_num_layers = extreme ? pick(h[4], true, ~salt) : h[4] % 4;
  o.dualpipev = h[0] & 1;
  o.allow_empty_partitions = h[0] & 2;
  o.mtp_from_layout = h[0] & 4;
  if (h[0] & 8) o.layout = std::string(text);
  if (h[0] & 16) o.custom = custom;
  if (h[0] & 32) o.first = extreme ? pick(h[5], true, salt) : h[5] % 64;
  if (h[0] & 64) o.last = extreme ? pick(h[6], true, ~salt) : h[6] % 64;
  guarded([&] {
    const cv::PipelinePlan plan(o);
    check_plan(plan);
  });
  return 0;
}

// Pipeline / expert-parallel placement against tables written out by hand from the rules and
// worked examples of LoongForge's converter (never by calling the code under test).
#include <boost/test/unit_test.hpp>

#include <iomanip>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "ckbridge/convert/parallel_layout.hpp"
#include "ckbridge/convert/pipeline_layout.hpp"
#include "ckbridge/core/error.hpp"

using namespace ckbridge;
using namespace ckbridge::convert;
using V = std::vector<int>;

namespace {
V range(int a, int b) {  // [a, b)
  V v;
  for (int i = a; i < b; ++i) v.push_back(i);
  return v;
}
// Independent formatting of Megatron's directory names.
std::string dir(int t, int p, int e, bool with_p, bool with_e) {
  std::ostringstream os;
  os << "mp_rank_" << std::setw(2) << std::setfill('0') << t;
  if (with_p) os << '_' << std::setw(3) << std::setfill('0') << p;
  if (with_e) os << '_' << std::setw(3) << std::setfill('0') << e;
  return os.str();
}
template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    BOOST_ERROR("expected ckbridge::Error containing '" << needle << "'");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find(needle) != std::string::npos, "message: " << e.what());
  }
}
}  // namespace

BOOST_AUTO_TEST_SUITE(parallel_layout)

BOOST_AUTO_TEST_CASE(partition_balanced_table) {
  // Verified outputs of LoongForge's partition_balanced (reference §6.1), including the cases
  // where it differs from the naive "ceil per part" split.
  BOOST_TEST(partition_balanced(61, 8) == (V{8, 8, 8, 8, 8, 8, 8, 5}), boost::test_tools::per_element());
  BOOST_TEST(partition_balanced(28, 8) == (V{4, 4, 4, 4, 4, 4, 4, 0}), boost::test_tools::per_element());
  BOOST_TEST(partition_balanced(16, 3) == (V{5, 5, 6}), boost::test_tools::per_element());
  BOOST_TEST(partition_balanced(64, 7) == (V{9, 9, 9, 9, 9, 9, 10}), boost::test_tools::per_element());
  BOOST_TEST(partition_balanced(16, 5) == (V{3, 3, 3, 3, 4}), boost::test_tools::per_element());
  V v61_32(32, 2);
  v61_32[30] = 1;
  v61_32[31] = 0;
  BOOST_TEST(partition_balanced(61, 32) == v61_32, boost::test_tools::per_element());
  BOOST_TEST(partition_balanced(3, 5) == (V{1, 1, 1, 0, 0}), boost::test_tools::per_element());
  BOOST_TEST(partition_balanced(16, 8) == V(8, 2), boost::test_tools::per_element());
  // Property: every split sums to N and is non-increasing in no particular way, but the
  // bottleneck never exceeds ceil(N/P) + 1.
  for (int n = 1; n <= 70; ++n)
    for (int p = 1; p <= 12; ++p) {
      const V c = partition_balanced(n, p);
      BOOST_TEST(static_cast<int>(c.size()) == p);
      BOOST_TEST(std::accumulate(c.begin(), c.end(), 0) == n);
      for (int x : c) BOOST_TEST(x <= (n + p - 1) / p + 1);
    }
}

BOOST_AUTO_TEST_CASE(dsv3_custom_61_over_pp8) {
  PipelineOptions o;
  o.num_layers = 61;
  o.pp = 8;
  o.mtp_num_layers = 1;
  o.custom = parse_custom_pipeline_layers("8,7,8,8,8,8,8,6");
  PipelinePlan plan(o);
  BOOST_TEST(plan.vp_counts() == (V{8, 7, 8, 8, 8, 8, 8, 7}), boost::test_tools::per_element());
  const std::vector<V> ids = {range(0, 8),   range(8, 15),  range(15, 23), range(23, 31),
                              range(31, 39), range(39, 47), range(47, 55), range(55, 62)};
  for (int p = 0; p < 8; ++p) BOOST_TEST(plan.layer_ids(p) == ids[p], boost::test_tools::per_element());
  const auto last = plan.stage_layers(7, 0);
  BOOST_TEST(last.size() == 7u);
  for (int k = 0; k < 6; ++k) {
    BOOST_TEST(last[k].global_id == 55 + k);
    BOOST_TEST(last[k].local_index == k);
    BOOST_TEST(!last[k].is_mtp);
  }
  BOOST_TEST(last[6].global_id == 61);
  BOOST_TEST(last[6].is_mtp);
  BOOST_TEST(last[6].local_index == 0);  // mtp.layers.0
  BOOST_TEST(plan.placement(14).pp_rank == 1);
  BOOST_TEST(plan.placement(14).local_index == 6);
  BOOST_TEST(plan.has_embedding(0, 0));
  BOOST_TEST(!plan.has_embedding(7, 0));
  BOOST_TEST(plan.has_final_layers(7, 0));
  BOOST_TEST(!plan.has_final_layers(6, 0));
  BOOST_TEST(plan.has_mtp(7, 0));
  BOOST_TEST(plan.model_key(0) == "model");
}

BOOST_AUTO_TEST_CASE(dsv3_default_split) {
  PipelineOptions o;
  o.num_layers = 61;
  o.pp = 8;
  o.mtp_num_layers = 1;
  BOOST_TEST(PipelinePlan(o).vp_counts() == (V{8, 8, 8, 8, 8, 8, 8, 6}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(uneven_default_16_over_pp3) {
  PipelineOptions o;
  o.num_layers = 16;
  o.pp = 3;
  PipelinePlan plan(o);
  BOOST_TEST(plan.vp_counts() == (V{5, 5, 6}), boost::test_tools::per_element());
  BOOST_TEST(plan.layer_ids(0) == range(0, 5), boost::test_tools::per_element());
  BOOST_TEST(plan.layer_ids(1) == range(5, 10), boost::test_tools::per_element());
  BOOST_TEST(plan.layer_ids(2) == range(10, 16), boost::test_tools::per_element());
  BOOST_TEST(plan.stage_layers(2, 0)[5].local_index == 5);
}

BOOST_AUTO_TEST_CASE(vpp2_standard_and_dualpipev) {
  PipelineOptions o;
  o.num_layers = 16;
  o.pp = 4;
  o.vpp = 2;
  o.mtp_num_layers = 1;
  {
    PipelinePlan plan(o);  // vp = p + 4 s, 2 layers per partition, MTP on vp 7 = (p 3, s 1)
    BOOST_TEST(plan.vp_counts() == (V{2, 2, 2, 2, 2, 2, 2, 3}), boost::test_tools::per_element());
    BOOST_TEST(plan.layer_ids(0) == (V{0, 1, 8, 9}), boost::test_tools::per_element());
    BOOST_TEST(plan.layer_ids(1) == (V{2, 3, 10, 11}), boost::test_tools::per_element());
    BOOST_TEST(plan.layer_ids(3) == (V{6, 7, 14, 15, 16}), boost::test_tools::per_element());
    const auto s1 = plan.stage_layers(0, 1);
    BOOST_TEST(s1[0].local_index == 0);  // local index restarts per chunk
    BOOST_TEST(s1[1].local_index == 1);
    BOOST_TEST(plan.has_final_layers(3, 1));
    BOOST_TEST(plan.has_mtp(3, 1));
    BOOST_TEST(plan.model_key(1) == "model1");
  }
  o.dualpipev = true;
  {
    PipelinePlan plan(o);  // s = 1: vp = 4 + (3 - p)
    BOOST_TEST(plan.layer_ids(0) == (V{0, 1, 14, 15, 16}), boost::test_tools::per_element());
    BOOST_TEST(plan.layer_ids(1) == (V{2, 3, 12, 13}), boost::test_tools::per_element());
    BOOST_TEST(plan.layer_ids(3) == (V{6, 7, 8, 9}), boost::test_tools::per_element());
    BOOST_TEST(plan.has_final_layers(0, 1));
    BOOST_TEST(plan.has_mtp(0, 1));
    BOOST_TEST(plan.has_embedding(0, 0));
    BOOST_TEST(plan.placement(16).pp_rank == 0);
    BOOST_TEST(plan.placement(16).vp_stage == 1);
  }
}

BOOST_AUTO_TEST_CASE(custom_vpp_order) {
  PipelineOptions o;
  o.num_layers = 20;
  o.pp = 4;
  o.vpp = 2;
  o.custom = parse_custom_pipeline_layers(" 1, 2,3,4,4,3,2,1");
  PipelinePlan plan(o);
  // prefix sums: 0 1 3 6 10 14 17 19 20 ; p0 = vp0 + vp4, p3 = vp3 + vp7
  BOOST_TEST(plan.layer_ids(0) == (V{0, 10, 11, 12, 13}), boost::test_tools::per_element());
  BOOST_TEST(plan.layer_ids(3) == (V{6, 7, 8, 9, 19}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(uneven_first_last) {
  BOOST_TEST(num_layers_in_vp_map(2, 61, 4, 0, std::nullopt, 7, 6) == (V{4, 12, 12, 3, 3, 12, 12, 3}),
             boost::test_tools::per_element());
  // first only: rest 56 over 3 ranks is not integral -> refused (LoongForge drops layers, B10)
  expect_error([] { num_layers_in_vp_map(2, 61, 4, 0, std::nullopt, 8, std::nullopt); }, "B10");
  // first only, divisible: 61 - 7 = 54 over 3 -> 18 = 9 + 9
  BOOST_TEST(num_layers_in_vp_map(2, 61, 4, 1, std::nullopt, 7, std::nullopt) == (V{4, 9, 9, 9, 9, 9, 9, 4}),
             boost::test_tools::per_element());
  expect_error([] { num_layers_in_vp_map(1, 61, 4, 0, std::nullopt, 7, 6); }, "virtual");
}

BOOST_AUTO_TEST_CASE(custom_validation) {
  BOOST_TEST(parse_custom_pipeline_layers("61") == V{61}, boost::test_tools::per_element());
  expect_error([] { parse_custom_pipeline_layers("8,x,8"); }, "entry 1");
  expect_error([] { parse_custom_pipeline_layers("8,,8"); }, "entry 1");
  expect_error([] { parse_custom_pipeline_layers("8,-1"); }, "entry 1");
  expect_error([] { num_layers_in_vp_map(1, 61, 8, 1, V{8, 8, 8, 8, 8, 8, 8, 6}, std::nullopt, std::nullopt); },
               "sums to 62");
  expect_error([] { num_layers_in_vp_map(1, 61, 4, 1, V{8, 8, 8, 8, 8, 8, 8, 5}, std::nullopt, std::nullopt); },
               "8 entries");
  expect_error([] { num_layers_in_vp_map(1, 28, 8, 0, std::nullopt, std::nullopt, std::nullopt); }, "B28");
  BOOST_TEST(num_layers_in_vp_map(1, 28, 8, 1, std::nullopt, std::nullopt, std::nullopt, true) ==
                 (V{4, 4, 4, 4, 4, 4, 4, 1}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(layout_strings) {
  BOOST_TEST(layout_to_custom_pipeline_layers("Et*5|t*8|t*6|t*8L") == (V{5, 8, 6, 8}), boost::test_tools::per_element());
  const auto st = parse_pipeline_layout("Ettt|(tt|)*29,m|L");
  BOOST_TEST(st.size() == 32u);
  BOOST_TEST(st[0].decoder == 3);
  BOOST_TEST(st[0].embedding);
  for (int k = 1; k < 30; ++k) BOOST_TEST(st[k].decoder == 2);
  BOOST_TEST(st[30].mtp == 1);
  BOOST_TEST(st[30].decoder == 0);
  BOOST_TEST(st[31].loss);
  BOOST_TEST(layout_to_custom_pipeline_layers("((t|)*2)*2") == (V{1, 1, 1, 1, 0}), boost::test_tools::per_element());
  BOOST_TEST(layout_to_custom_pipeline_layers("t*0|t") == (V{0, 1}), boost::test_tools::per_element());
  expect_error([] { parse_pipeline_layout("Et*|t"); }, "repeat count");
  expect_error([] { parse_pipeline_layout("Etx"); }, "unknown layer character 'x'");
  expect_error([] { parse_pipeline_layout("t|Et"); }, "first stage");
  expect_error([] { parse_pipeline_layout("tL|t"); }, "last stage");
  expect_error([] { parse_pipeline_layout("(t|t"); }, "missing ')'");
  expect_error([] { parse_pipeline_layout("t)|t"); }, "unbalanced");
}

BOOST_AUTO_TEST_CASE(layout_places_mtp) {
  PipelineOptions o;
  o.num_layers = 6;
  o.pp = 4;
  o.mtp_num_layers = 1;
  o.layout = "Et*2|t*2|t*2m|L";
  PipelinePlan plan(o);
  BOOST_TEST(plan.vp_counts() == (V{2, 2, 3, 0}), boost::test_tools::per_element());
  BOOST_TEST(plan.placement(6).pp_rank == 2);
  BOOST_TEST(plan.placement(6).is_mtp);
  BOOST_TEST(plan.layer_ids(2) == (V{4, 5, 6}), boost::test_tools::per_element());
  BOOST_TEST(plan.layer_ids(3).empty());
  // vpp derived from the layout: 8 stages over pp 4 -> 2 virtual stages
  PipelineOptions o2;
  o2.num_layers = 8;
  o2.pp = 4;
  o2.layout = "E(t|)*7,tL";
  PipelinePlan p2(o2);
  BOOST_TEST(p2.vpp() == 2);
  BOOST_TEST(p2.layer_ids(0) == (V{0, 4}), boost::test_tools::per_element());
  o2.layout = "Et|t|tL";
  expect_error([&] { PipelinePlan x(o2); }, "not a multiple");
  o.layout = "Et*2|t*2|t*2|L";  // no 'm': MTP goes last, as in LoongForge
  BOOST_TEST(PipelinePlan(o).placement(6).pp_rank == 3);
  o.custom = V{2, 2, 2, 0};
  expect_error([&] { PipelinePlan x(o); }, "mutually exclusive");
}

BOOST_AUTO_TEST_CASE(ep_maps) {
  const auto m = ep_map(256, 32);
  BOOST_TEST(m.per_rank == 8);
  for (int e = 0; e < 32; ++e) BOOST_TEST(m.ep_experts[e] == range(8 * e, 8 * e + 8), boost::test_tools::per_element());
  BOOST_TEST(m.expert_ep[201] == 25);
  BOOST_TEST(m.expert_local[201] == 1);
  const auto m2 = ep_map(8, 2);
  BOOST_TEST(m2.ep_experts[1] == (V{4, 5, 6, 7}), boost::test_tools::per_element());
  expect_error([] { ep_map(10, 4); }, "not divisible");
  expect_error([] { ep_map(4, 8); }, "exceeds");
  expect_error([] { ep_map(4, 0); }, "--expert_parallel_size");
}

BOOST_AUTO_TEST_CASE(etp_maps_as_loongforge) {
  {  // tp 8, ep 32, etp 1: etp_to_tp[e][0] = e % 8, tp_to_ep[t] = t
    const auto m = etp_map(8, 32, 1);
    for (int e = 0; e < 32; ++e) BOOST_TEST(m.etp_to_tp[e] == V{e % 8}, boost::test_tools::per_element());
    BOOST_TEST(m.tp_to_ep == range(0, 32), boost::test_tools::per_element());
  }
  {  // tp 4, ep 2, etp 2
    const auto m = etp_map(4, 2, 2);
    BOOST_TEST(m.etp_to_tp[0] == (V{0, 1}), boost::test_tools::per_element());
    BOOST_TEST(m.etp_to_tp[1] == (V{2, 3}), boost::test_tools::per_element());
    BOOST_TEST(m.tp_to_ep == (V{0, 0, 1, 1}), boost::test_tools::per_element());
  }
  {  // tp 2, ep 2, etp 1
    const auto m = etp_map(2, 2, 1);
    BOOST_TEST(m.etp_to_tp[0] == V{0}, boost::test_tools::per_element());
    BOOST_TEST(m.etp_to_tp[1] == V{1}, boost::test_tools::per_element());
  }
  {  // tp 8, ep 2, etp 2: LoongForge's last-writer-wins map (B22)
    const auto m = etp_map(8, 2, 2);
    BOOST_TEST(m.etp_to_tp[0] == (V{4, 5}), boost::test_tools::per_element());
    BOOST_TEST(m.etp_to_tp[1] == (V{6, 7}), boost::test_tools::per_element());
  }
  expect_error([] { etp_map(6, 4, 1); }, "divide");
}

BOOST_AUTO_TEST_CASE(appendix_a_file_list) {
  // tp 8, pp 8, ep 32, etp 1, 256 experts: 256 files, (p, e) -> mp_rank_{e%8}_{p}_{e}, experts 8e..8e+7
  McoreFileLayout L({8, 8, 32, 1, 256});
  const auto files = L.all_files();
  BOOST_TEST(files.size() == 256u);
  std::set<std::string> want, got;
  for (int p = 0; p < 8; ++p)
    for (int e = 0; e < 32; ++e) want.insert(dir(e % 8, p, e, true, true));
  for (const auto& f : files) {
    got.insert(f.dir);
    BOOST_TEST(f.tp_rank == f.ep_rank % 8);
    BOOST_TEST(f.expert_tp_rank == 0);
    BOOST_TEST(f.experts == range(8 * f.ep_rank, 8 * f.ep_rank + 8), boost::test_tools::per_element());
  }
  BOOST_TEST(got == want, boost::test_tools::per_element());
  BOOST_TEST(L.stage_files(3).size() == 32u);
  BOOST_TEST(L.dense_source(5, 2).dir == "mp_rank_05_002_005");
}

BOOST_AUTO_TEST_CASE(file_sets_small) {
  {  // tp 4, ep 2, etp 2, pp 1: files (t, e, et) = (0,0,0) (1,0,1) (2,1,0) (3,1,1)
    const auto f = McoreFileLayout({4, 1, 2, 2, 8}).stage_files(0);
    BOOST_TEST(f.size() == 4u);
    const int want[4][3] = {{0, 0, 0}, {1, 0, 1}, {2, 1, 0}, {3, 1, 1}};
    for (int k = 0; k < 4; ++k) {
      BOOST_TEST(f[k].tp_rank == want[k][0]);
      BOOST_TEST(f[k].ep_rank == want[k][1]);
      BOOST_TEST(f[k].expert_tp_rank == want[k][2]);
      BOOST_TEST(f[k].dir == dir(want[k][0], 0, want[k][1], false, true));
    }
    BOOST_TEST(f[2].experts == (V{4, 5, 6, 7}), boost::test_tools::per_element());
  }
  {  // tp 2, ep 2, etp 1, pp 2
    const auto f = McoreFileLayout({2, 2, 2, 1, 4}).stage_files(1);
    BOOST_TEST(f.size() == 2u);
    BOOST_TEST(f[0].dir == dir(0, 1, 0, true, true));
    BOOST_TEST(f[1].dir == dir(1, 1, 1, true, true));
    BOOST_TEST(f[1].experts == (V{2, 3}), boost::test_tools::per_element());
  }
  {  // etp unset = tp: tp*ep files, expert shard = TP rank
    const auto f = McoreFileLayout({2, 1, 2, std::nullopt, 4}).stage_files(0);
    BOOST_TEST(f.size() == 4u);
    for (const auto& x : f) BOOST_TEST(x.expert_tp_rank == x.tp_rank);
  }
  {  // tp 8, ep 2, etp 2: every TP rank gets a file (fix of B22), expert shard t % 2, EP (t/2) % 2
    const auto f = McoreFileLayout({8, 1, 2, 2, 4}).stage_files(0);
    BOOST_TEST(f.size() == 8u);
    std::set<int> tps;
    for (const auto& x : f) {
      tps.insert(x.tp_rank);
      BOOST_TEST(x.expert_tp_rank == x.tp_rank % 2);
      BOOST_TEST(x.ep_rank == (x.tp_rank / 2) % 2);
    }
    BOOST_TEST(tps.size() == 8u);
  }
  {  // ep 1 MoE, tp 2, etp 1: no EP suffix; both TP files hold all experts
    const auto f = McoreFileLayout({2, 2, 1, 1, 4}).stage_files(0);
    BOOST_TEST(f.size() == 2u);
    BOOST_TEST(f[1].dir == "mp_rank_01_000");
    BOOST_TEST(f[1].experts == (V{0, 1, 2, 3}), boost::test_tools::per_element());
  }
  {  // dense
    const auto f = McoreFileLayout({2, 1, 1, std::nullopt, 0}).all_files();
    BOOST_TEST(f.size() == 2u);
    BOOST_TEST(f[1].dir == "mp_rank_01");
  }
  expect_error([] { McoreFileLayout({2, 1, 1, 4, 4}); }, "not representable");
  expect_error([] { McoreFileLayout({2, 1, 2, std::nullopt, 0}); }, "dense model");
}

BOOST_AUTO_TEST_CASE(vpp_from_layers) {
  BOOST_TEST(vpp_from_layers_per_virtual_stage(64, 4, 8) == 2);
  expect_error([] { vpp_from_layers_per_virtual_stage(61, 8, 2); }, "not divisible");
}

// Regressions found by tests/fuzz/fuzz_pipeline_layout.cpp (int overflow, division by zero,
// unbounded allocation).
BOOST_AUTO_TEST_CASE(fuzz_findings) {
  // pp x layers per stage = 2^32 wrapped to 0 in int: division by zero.
  expect_error([] { vpp_from_layers_per_virtual_stage(64, 65536, 65536); }, "not divisible");
  expect_error([] { vpp_from_layers_per_virtual_stage(0, 4, 8); }, "num_layers must be > 0");
  // The balanced split probes past n near INT_MAX (int overflow in the probe).
  const int big = 2147483640;
  const auto parts = partition_balanced(big, 12);
  BOOST_TEST(parts.size() == 12u);
  BOOST_TEST(std::accumulate(parts.begin(), parts.end(), 0LL) == big);
  for (int c : parts) BOOST_TEST(c == big / 12);  // 12 divides it: equal parts
  // Layer counts that overflowed int or would allocate without bound are refused.
  expect_error([] { num_layers_in_vp_map(1, 8, 8, 2147483647); }, "exceeds");
  expect_error([] { num_layers_in_vp_map(65536, 8, 65536); }, "exceeds");
  expect_error([] { uneven_vpp_partition(4, 2, 2, 2147483647, 2147483647); }, "out of range");
  expect_error([] { uneven_vpp_partition(4, 2, 2, 5, std::nullopt); }, "out of range");
  // The whole layout expansion is bounded, not only each repeat.
  std::string layout;
  for (int k = 0; k < 3; ++k) layout += "(t*400000)";
  expect_error([&] { parse_pipeline_layout(layout); }, "expansion too large");
  // Fuzz findings (timeouts): a huge repeat of an empty group expands to nothing, but a loop over
  // the count ran for minutes. A count is bounded by itself now.
  expect_error([] { parse_pipeline_layout("t()*66667666666"); }, "expansion too large");
  expect_error([] { parse_pipeline_layout("Et*3|(tt|()*2922222222222222222)"); }, "expansion too large");
  expect_error([] { parse_pipeline_layout("((t)*0)*1000001"); }, "expansion too large");
  BOOST_TEST(layout_to_custom_pipeline_layers("t()*1000000|t") == (V{1, 1}), boost::test_tools::per_element());
  PipelineOptions o;
  o.num_layers = 4;
  o.pp = 2;
  o.mtp_num_layers = 2147483647;
  expect_error([&] { PipelinePlan p(o); }, "exceeds");
}

BOOST_AUTO_TEST_SUITE_END()

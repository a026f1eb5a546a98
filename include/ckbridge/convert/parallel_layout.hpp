#pragma once
// Expert parallel (EP) and expert-tensor parallel (ETP) maps and the Megatron legacy file set
// (release/mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt) as LoongForge's converter computes them,
// with its bugs refused instead of reproduced (docs/loongforge-deviations.md, B21 and B22).
#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "ckbridge/convert/pipeline_layout.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/layout/expert_slice.hpp"

namespace ckbridge::convert {

// get_ep_map: experts are chunked consecutively; EP rank g owns [g*n, (g+1)*n), n = E / ep
// (layout::ExpertSlice's owner(); an expert's own tensors are then split by its kind's layout
// over expert TP).
struct EpMap {
  int num_experts = 0;
  int ep = 1;
  int per_rank = 0;
  std::vector<int> expert_local;             // expert id -> local index on its EP rank
  std::vector<int> expert_ep;                // expert id -> EP rank
  std::vector<std::vector<int>> ep_experts;  // EP rank -> expert ids (ascending)
};

inline EpMap ep_map(int num_experts, int ep) {
  if (num_experts <= 0) fail("num_experts must be > 0, got ", num_experts);
  if (ep <= 0) fail("--expert_parallel_size must be > 0, got ", ep);
  // LoongForge accepts these and then crashes or builds more than ep groups (B21).
  if (ep > num_experts) fail("--expert_parallel_size ", ep, " exceeds num_experts ", num_experts);
  if (num_experts % ep != 0)
    fail("num_experts ", num_experts, " is not divisible by --expert_parallel_size ", ep);
  EpMap m;
  m.num_experts = num_experts;
  m.ep = ep;
  m.per_rank = num_experts / ep;
  m.expert_local.resize(static_cast<std::size_t>(num_experts));
  m.expert_ep.resize(static_cast<std::size_t>(num_experts));
  m.ep_experts.resize(static_cast<std::size_t>(ep));
  const layout::ExpertSlice slice{num_experts, ep, 0};  // the EP split of the experts (layout/)
  for (int e = 0; e < num_experts; ++e) {
    const layout::ExpertOwner own = slice.owner(e);
    m.expert_ep[static_cast<std::size_t>(e)] = own.rank;
    m.expert_local[static_cast<std::size_t>(e)] = static_cast<int>(own.local);
    m.ep_experts[static_cast<std::size_t>(own.rank)].push_back(e);
  }
  return m;
}

// get_etp_map exactly as LoongForge computes it: over v = max(tp, etp*ep) virtual ranks t,
// et = t % etp, g = (t / etp) % ep; etp_to_tp[g][et] = t % tp (a later t overwrites an earlier
// one, which is why tp > etp*ep loses TP ranks: B22), tp_to_ep[t] = g.
struct EtpMap {
  int tp = 1, ep = 1, etp = 1;
  std::vector<std::vector<int>> etp_to_tp;  // [EP rank][expert-TP rank] -> TP rank of the file
  std::vector<int> tp_to_ep;                // [virtual rank t < v] -> EP rank
};

inline EtpMap etp_map(int tp, int ep, int etp) {
  if (tp <= 0) fail("--tensor_model_parallel_size must be > 0, got ", tp);
  if (ep <= 0) fail("--expert_parallel_size must be > 0, got ", ep);
  if (etp <= 0) fail("--expert_tensor_parallel_size must be > 0, got ", etp);
  const int ee = etp * ep;
  if (tp % ee != 0 && ee % tp != 0)
    fail("--tensor_model_parallel_size ", tp, " and --expert_tensor_parallel_size x --expert_parallel_size = ", etp,
         " x ", ep, " = ", ee, ": one must divide the other");
  EtpMap m{tp, ep, etp, {}, {}};
  const int v = std::max(tp, ee);
  m.etp_to_tp.assign(static_cast<std::size_t>(ep), std::vector<int>(static_cast<std::size_t>(etp), -1));
  m.tp_to_ep.resize(static_cast<std::size_t>(v));
  for (int t = 0; t < v; ++t) {
    const int et = t % etp, g = (t / etp) % ep;
    m.etp_to_tp[static_cast<std::size_t>(g)][static_cast<std::size_t>(et)] = t % tp;
    m.tp_to_ep[static_cast<std::size_t>(t)] = g;
  }
  return m;
}

// Directory name of one rank's file: mp_rank_{t:02d}[_{p:03d}][_{e:03d}]. The PP part appears
// when pp > 1, the EP part when the model has experts and ep > 1 (Megatron legacy naming).
inline std::string mp_rank_dir(int t, int p, int e, int pp, int ep, bool moe) {
  char buf[64];
  int n = std::snprintf(buf, sizeof buf, "mp_rank_%02d", t);
  if (pp > 1) n += std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), "_%03d", p);
  if (moe && ep > 1) std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), "_%03d", e);
  return buf;
}

// Parallel sizes (LoongForge flag names).
struct ParallelOptions {
  int tp = 1;                 // --tensor_model_parallel_size
  int pp = 1;                 // --pipeline_model_parallel_size
  int ep = 1;                 // --expert_parallel_size
  std::optional<int> etp;     // --expert_tensor_parallel_size (unset: experts use tp)
  int num_experts = 0;        // 0 = dense model
};

// One output (or input) file of a pipeline stage and what it holds.
struct McoreFile {
  int tp_rank = 0;             // TP rank in the name, and the dense (non-expert) TP shard held
  int pp_rank = 0;
  int ep_rank = 0;             // EP rank in the name (0 for dense / ep == 1)
  int expert_tp_rank = 0;      // expert TP shard held (0..etp-1)
  std::vector<int> experts;    // global expert ids held (local index = position); empty if dense
  std::string dir;             // mp_rank_... directory name
};

// Which files a stage has and which experts each holds:
//  - dense model: one file per TP rank;
//  - MoE: for every virtual rank t in [0, max(tp, etp*ep)): file (t % tp, e = (t/etp) % ep)
//    holds dense shard t % tp and expert shard t % etp of EP group e. For tp <= etp*ep this is
//    LoongForge's etp_to_tp placement; for tp > etp*ep it also writes the TP ranks LoongForge
//    drops (B22), as Megatron expects (experts replicated over expert-data-parallel ranks).
//    etp unset means etp = tp (LoongForge: tp*ep files per stage).
class McoreFileLayout {
public:
  explicit McoreFileLayout(const ParallelOptions& o) : o_(o) {
    if (o.tp <= 0) fail("--tensor_model_parallel_size must be > 0, got ", o.tp);
    if (o.pp <= 0) fail("--pipeline_model_parallel_size must be > 0, got ", o.pp);
    if (o.num_experts < 0) fail("num_experts must be >= 0, got ", o.num_experts);
    etp_ = o.etp.value_or(o.tp);
    if (o.num_experts > 0) {
      epm_ = ep_map(o.num_experts, o.ep);
      etpm_ = etp_map(o.tp, o.ep, etp_);
      const int v = std::max(o.tp, etp_ * o.ep);
      for (int t = 0; t < v; ++t) {
        const int tt = t % o.tp, et = t % etp_, g = (t / etp_) % o.ep;
        bool dup = false;
        for (const auto& f : proto_) {
          if (f.tp_rank == tt && f.ep_rank == g) {
            if (f.expert_tp_rank != et)
              fail("--expert_tensor_parallel_size ", etp_, " with --tensor_model_parallel_size ", o.tp,
                   " and --expert_parallel_size ", o.ep, ": file mp_rank ", tt, " / EP ", g,
                   " would need expert shards ", f.expert_tp_rank, " and ", et,
                   " (not representable in the legacy format)");
            dup = true;
          }
        }
        if (!dup) proto_.push_back(McoreFile{tt, 0, g, et, epm_.ep_experts[static_cast<std::size_t>(g)], {}});
      }
      std::sort(proto_.begin(), proto_.end(), [](const McoreFile& a, const McoreFile& b) {
        return a.ep_rank != b.ep_rank ? a.ep_rank < b.ep_rank : a.tp_rank < b.tp_rank;
      });
    } else {
      if (o.ep != 1) fail("--expert_parallel_size ", o.ep, " given for a dense model (num_experts = 0)");
      for (int t = 0; t < o.tp; ++t) proto_.push_back(McoreFile{t, 0, 0, 0, {}, {}});
    }
  }

  bool moe() const { return o_.num_experts > 0; }
  int etp() const { return etp_; }
  const EpMap& experts() const { return epm_; }
  const EtpMap& etp_mapping() const { return etpm_; }

  // Files of pipeline stage p, ordered by (EP rank, TP rank).
  std::vector<McoreFile> stage_files(int p) const {
    if (p < 0 || p >= o_.pp) fail("pipeline rank ", p, " out of range [0, ", o_.pp, ")");
    std::vector<McoreFile> out = proto_;
    for (auto& f : out) {
      f.pp_rank = p;
      f.dir = mp_rank_dir(f.tp_rank, p, f.ep_rank, o_.pp, o_.ep, moe());
    }
    return out;
  }
  // All files of the checkpoint, stage by stage.
  std::vector<McoreFile> all_files() const {
    std::vector<McoreFile> out;
    for (int p = 0; p < o_.pp; ++p) {
      auto s = stage_files(p);
      out.insert(out.end(), s.begin(), s.end());
    }
    return out;
  }
  // The file to read dense TP shard t of stage p from (reading side: LoongForge uses
  // (t, p, tp_to_ep[t])).
  McoreFile dense_source(int t, int p) const {
    if (t < 0 || t >= o_.tp) fail("TP rank ", t, " out of range [0, ", o_.tp, ")");
    for (const auto& f : stage_files(p))
      if (f.tp_rank == t) return f;
    fail("no file holds dense TP shard ", t, " of stage ", p);
  }

private:
  ParallelOptions o_;
  int etp_ = 1;
  EpMap epm_;
  EtpMap etpm_;
  std::vector<McoreFile> proto_;
};

}  // namespace ckbridge::convert

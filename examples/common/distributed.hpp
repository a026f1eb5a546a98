#pragma once
// The converter as one process, or as one process of an MPI job (--distributed_convert, when built
// with ckbridge::mpi): the calls below are collective in a job and plain local calls otherwise, so
// the converter's main() reads the same either way. Every collective step of a job is a check()
// (or follows one with nothing between that can fail), and a failing process joins the next check
// through failure(), so all processes end with the failing rank's message.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ckbridge/convert/executor.hpp"
#include "ckbridge/convert/resume.hpp"
#include "ckbridge/convert/split.hpp"
#include "ckbridge/core/error.hpp"
#if CKBRIDGE_MPI
#include "ckbridge/mpi/execute.hpp"
#endif

namespace ckbridge::examples {

struct RankRun {
  convert::ExecResult result;
  std::string report;
};

class Job {
public:
  explicit Job(bool distributed) {
#if CKBRIDGE_MPI
    if (!distributed && !mpi::World::launched()) return;
    if (!mpi::World::launched()) {
      std::fprintf(stderr, "note: --distributed_convert: not started by an MPI launcher (mpirun, srun); converting in "
                           "this one process\n");
      return;
    }
    world_ = std::make_unique<mpi::World>();
    if (!distributed) {
      // Refused at the first check(), not here: a throw from this constructor would end MPI before
      // the error is printed, and the launcher may kill a rank that has not printed it yet.
      if (world_->size() > 1) {
        refusal_ = "started as " + std::to_string(world_->size()) +
                   " MPI processes without --distributed_convert: each would convert the whole checkpoint into "
                   "the same directory; add --distributed_convert to share the work among them";
        return;
      }
      std::fprintf(stderr, "note: started by an MPI launcher without --distributed_convert: converting in this one "
                           "process\n");
      world_.reset();
    }
#else
    if (distributed)
      fail("--distributed_convert: this converter was built without MPI (install Open MPI, e.g. Debian's "
           "libopenmpi-dev, and configure again: CKBRIDGE_MPI)");
#endif
  }

  bool distributed() const { return world_ != nullptr; }
  int rank() const { return world_ ? world_->rank() : 0; }
  int size() const { return world_ ? world_->size() : 1; }
  bool leader() const { return rank() == 0; }

  // Collective: every process got here without failing (else this throws the agreed failure).
  void check() {
#if CKBRIDGE_MPI
    if (world_) world_->check(refusal_);
#endif
  }
  // From the error handler: the message to report, the same on every process of a job.
  std::string failure(const std::exception& e) {
#if CKBRIDGE_MPI
    if (world_ && !dynamic_cast<const mpi::JobFailed*>(&e))
      if (auto f = world_->agree(*e.what() ? e.what() : "unknown error")) return f->what();
#endif
    return e.what();
  }
  // Collective (right after a check()): rank 0's value everywhere.
  bool broadcast(bool v) {
#if CKBRIDGE_MPI
    if (world_) return world_->broadcast(v);
#endif
    return v;
  }
  std::uint64_t sum(std::uint64_t v) {
#if CKBRIDGE_MPI
    if (world_) return world_->sum(v);
#endif
    return v;
  }

  // Collective: every process planned the same conversion (same files, tensors, producers' kinds).
  void same_plan(const convert::Plan& plan) {
    (void)plan;
    check();
#if CKBRIDGE_MPI
    if (!world_) return;
    const std::string mine = convert::plan_fingerprint(plan, "").substr(0, 16);
    const std::string first = world_->broadcast(mine);
    world_->step([&] {
      if (mine != first)
        fail("planned a different conversion than rank 0 (plan ", mine, ", rank 0's ", first,
             "): every process must see the same source checkpoint and config files");
    });
#endif
  }

  // Collective: the run state of the output directory (rank 0 prepares it, the others join).
  std::unique_ptr<convert::RunState> open_state(const std::filesystem::path& out, const std::string& fingerprint) {
#if CKBRIDGE_MPI
    if (world_) return mpi::open_run_state(*world_, out, fingerprint);
#endif
    return std::make_unique<convert::RunState>(out, fingerprint);
  }

  // Collective: the run (mpi::execute / convert::execute). Returns every process's result on rank
  // 0 (one entry without MPI); `before_tracker` gets them there.
  std::vector<RankRun> run(const convert::Plan& plan, const std::filesystem::path& out, int workers,
                           const convert::FileWriterFn& writer, bool quiet, convert::RunState* state,
                           const convert::ExecHooks& hooks, const std::function<std::string()>& report,
                           const std::function<void(const std::vector<std::string>&)>& before_tracker) {
#if CKBRIDGE_MPI
    if (world_) {
      std::vector<RankRun> out_runs;
      const auto all = mpi::execute(*world_, plan, out, workers, writer, quiet || !leader(), state, hooks, report,
                                    [&](const std::vector<mpi::RankResult>& rs) {
                                      std::vector<std::string> reports;
                                      for (const auto& r : rs) reports.push_back(r.report);
                                      before_tracker(reports);
                                    });
      for (const auto& r : all) out_runs.push_back({r.result, r.report});
      return out_runs;
    }
#endif
    (void)report;
    return {{convert::execute(plan, out, workers, writer, quiet, state, [&] { before_tracker({}); }, hooks), {}}};
  }

private:
#if CKBRIDGE_MPI
  std::unique_ptr<mpi::World> world_;
  std::string refusal_;  // a job started without --distributed_convert: refused at the first check()
#else
  struct NoWorld {  // never made: one process
    int rank() const { return 0; }
    int size() const { return 1; }
  };
  std::unique_ptr<NoWorld> world_;
#endif
};

}  // namespace ckbridge::examples

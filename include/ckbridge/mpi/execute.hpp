#pragma once
// A conversion run over the processes of an MPI job. Every process plans the same conversion
// (each reads the source headers itself), takes its share of the output files
// (convert::split_files: whole files balanced by bytes) and writes them with its own worker
// threads, reading only the source bytes those files need. The small files (index, config.json,
// the manifest, the Megatron tracker) are written by rank 0 only after every process reported
// success; a failure anywhere ends every process with the failing rank's message and no tracker.
// The output directory must be one directory that every process sees (a shared file system when
// the processes run on several nodes).
#include <filesystem>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "ckbridge/convert/executor.hpp"
#include "ckbridge/convert/resume.hpp"
#include "ckbridge/convert/split.hpp"
#include "ckbridge/mpi/world.hpp"

namespace ckbridge::mpi {

// Collective. Rank 0 prepares the output directory for the run (lock, fresh start or resume, as
// convert::RunState) with its fingerprint, then the others join its run state. (Only rank 0's
// fingerprint counts: the others' may differ in what does not shape the output, such as the
// modification times of node-local copies of the source.)
inline std::unique_ptr<convert::RunState> open_run_state(World& w, const std::filesystem::path& out,
                                                         const std::string& fingerprint) {
  w.check();
  const std::string fp = w.broadcast(fingerprint);
  std::unique_ptr<convert::RunState> st;
  w.step([&] {
    if (w.rank() == 0) st = std::make_unique<convert::RunState>(out, fp);
  });
  w.step([&] {
    if (w.rank() != 0) st = std::make_unique<convert::RunState>(out, fp, convert::RunState::Join{w.rank()});
  });
  return st;
}

// What one process did, and what it reports to rank 0 (the caller's `report`, e.g. the hashes of
// the files it wrote).
struct RankResult {
  convert::ExecResult result;
  std::string report;
};

// Collective: the whole run. This process writes its share of `plan.files` (skipping files
// `state` lists as finished by any process of any earlier attempt), calling `hooks` for each;
// then every process's result and `report()` go to rank 0, which runs convert::finish_run with
// `before_tracker(results)`. Returns every process's result in rank order on rank 0, this
// process's alone elsewhere. Throws JobFailed on every process when any failed.
inline std::vector<RankResult> execute(World& w, const convert::Plan& plan, const std::filesystem::path& out, int workers,
                                       const convert::FileWriterFn& torch_writer, bool quiet, convert::RunState* state,
                                       const convert::ExecHooks& hooks = {},
                                       const std::function<std::string()>& report = {},
                                       const std::function<void(const std::vector<RankResult>&)>& before_tracker = {}) {
  const auto shares = convert::split_files(plan, w.size());
  RankResult mine;
  w.step([&] {
    mine.result = convert::execute_files(plan, &shares[static_cast<std::size_t>(w.rank())].files, out, workers,
                                         torch_writer, quiet, state, hooks);
    if (report) mine.report = report();
    if (state && w.rank() != 0) state->close_done();
  });
  std::ostringstream os;
  os.precision(17);
  os << mine.result.bytes << " " << mine.result.seconds << " " << mine.result.files << "\n" << mine.report;
  const std::vector<std::string> got = w.gather(os.str());
  std::vector<RankResult> all;
  for (const auto& g : got) {
    RankResult r;
    std::istringstream is(g);
    is >> r.result.bytes >> r.result.seconds >> r.result.files;
    is.ignore(1);
    r.report = g.substr(static_cast<std::size_t>(is.tellg()));
    all.push_back(std::move(r));
  }
  w.step([&] {
    if (w.rank() == 0)
      convert::finish_run(plan, out, state, before_tracker ? std::function<void()>([&] { before_tracker(all); })
                                                           : std::function<void()>());
  });
  return w.rank() == 0 ? all : std::vector<RankResult>{mine};
}

}  // namespace ckbridge::mpi

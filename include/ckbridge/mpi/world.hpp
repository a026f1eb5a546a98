#pragma once
// The MPI job a multi-process conversion runs in (link the `ckbridge::mpi` CMake target; nothing
// else in ckbridge needs MPI). Only the main thread calls MPI (MPI_THREAD_FUNNELED); the worker
// threads of each process never do.
//
// Failures are agreed collectively: every collective step of a run is an `agree` (or follows one
// that succeeded), and a process that fails joins the next `agree` with its message, so every
// process learns the lowest failing rank and its message instead of waiting for it forever. A
// process that dies outright (a signal) is the launcher's to handle: mpirun and srun end the job.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ckbridge/core/error.hpp"

namespace ckbridge::mpi {

// A failure agreed by every process of the job; the message starts with the failing rank.
class JobFailed : public Error {
public:
  JobFailed(int rank, const std::string& message)
      : Error("rank " + std::to_string(rank) + ": " + message), rank_(rank) {}
  int rank() const { return rank_; }

private:
  int rank_;
};

class World {
public:
  // True when this process was started by an MPI launcher (mpirun / mpiexec of Open MPI or an
  // MPICH-style PMI, srun with PMIx), judged by the environment the launcher sets.
  static bool launched() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"})
      if (std::getenv(v)) return true;
    return false;
  }

  World() {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) {
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        fail("MPI_Init_thread failed");
      owned_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~World() {
    int fin = 0;
    MPI_Finalized(&fin);
    if (owned_ && !fin) MPI_Finalize();
  }
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Collective. `error` is this process's failure (empty: none). Returns the lowest failing
  // rank's failure, the same on every process, or nothing when all succeeded.
  std::optional<JobFailed> agree(const std::string& error = {}) {
    quiet_barrier();
    int mine = error.empty() ? INT_MAX : rank_, first = INT_MAX;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (first == INT_MAX) return std::nullopt;
    return JobFailed(first, broadcast(error, first));
  }
  // Collective: agree, and throw the agreed failure on every process.
  void check(const std::string& error = {}) {
    if (auto f = agree(error)) throw *f;
  }
  // Collective: runs `step` here, then agrees on its outcome (a thrown exception is this process's
  // failure; an already agreed JobFailed passes through).
  template <class F>
  void step(F&& f) {
    std::string err;
    try {
      f();
    } catch (const JobFailed&) {
      throw;
    } catch (const std::exception& e) {
      err = e.what();
      if (err.empty()) err = "unknown error";
    } catch (...) {
      err = "unknown error";
    }
    check(err);
  }

  // Collective: `s` of `root` on every process.
  std::string broadcast(std::string s, int root = 0) {
    std::uint64_t n = s.size();
    MPI_Bcast(&n, 1, MPI_UINT64_T, root, MPI_COMM_WORLD);
    s.resize(n);
    for (std::uint64_t o = 0; o < n; o += kChunk)
      MPI_Bcast(s.data() + o, static_cast<int>(std::min<std::uint64_t>(kChunk, n - o)), MPI_CHAR, root, MPI_COMM_WORLD);
    return s;
  }
  bool broadcast(bool b, int root = 0) {
    int v = b ? 1 : 0;
    MPI_Bcast(&v, 1, MPI_INT, root, MPI_COMM_WORLD);
    return v != 0;
  }
  // Collective: every process's `s`, in rank order, on `root` (empty elsewhere). Sent one rank
  // at a time, so the root holds the strings and never one buffer of them all at once per call.
  std::vector<std::string> gather(const std::string& s, int root = 0) {
    std::uint64_t n = s.size();
    std::vector<std::uint64_t> sizes(rank_ == root ? static_cast<std::size_t>(size_) : 0);
    MPI_Gather(&n, 1, MPI_UINT64_T, sizes.data(), 1, MPI_UINT64_T, root, MPI_COMM_WORLD);
    std::vector<std::string> out;
    if (rank_ == root) {
      out.resize(static_cast<std::size_t>(size_));
      for (int r = 0; r < size_; ++r) {
        auto& o = out[static_cast<std::size_t>(r)];
        if (r == root) {
          o = s;
          continue;
        }
        o.resize(sizes[static_cast<std::size_t>(r)]);
        for (std::uint64_t k = 0; k < o.size(); k += kChunk)
          MPI_Recv(o.data() + k, static_cast<int>(std::min<std::uint64_t>(kChunk, o.size() - k)), MPI_CHAR, r, kTag,
                   MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      }
    } else {
      for (std::uint64_t k = 0; k < n; k += kChunk)
        MPI_Send(s.data() + k, static_cast<int>(std::min<std::uint64_t>(kChunk, n - k)), MPI_CHAR, root, kTag,
                 MPI_COMM_WORLD);
    }
    return out;
  }
  // Collective: the sum over every process.
  std::uint64_t sum(std::uint64_t v) {
    std::uint64_t r = 0;
    MPI_Allreduce(&v, &r, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    return r;
  }

  // Collective: waits for every process without spinning. A blocking MPI collective busy-polls;
  // a process that finished its share early would burn a core that the processes still writing
  // on the same node need. This one polls a non-blocking barrier, sleeping 1 ms between polls
  // after the first hundred.
  void quiet_barrier() {
    MPI_Request req;
    MPI_Ibarrier(MPI_COMM_WORLD, &req);
    for (int polls = 0;; ++polls) {
      int done = 0;
      MPI_Test(&req, &done, MPI_STATUS_IGNORE);
      if (done) return;
      if (polls >= 100) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

private:
  static constexpr std::uint64_t kChunk = 1u << 30;  // MPI counts are ints
  static constexpr int kTag = 14;
  int rank_ = 0, size_ = 1;
  bool owned_ = false;
};

}  // namespace ckbridge::mpi

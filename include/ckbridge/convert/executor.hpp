#pragma once
// Runs a plan: output files are written by `max_workers` threads, each file front to back
// through a temporary name and an atomic rename; every tensor's bytes come from its producer just
// before they are written, so resident memory stays at the producers' scratch (plus the page
// cache of the memory-mapped sources). Small files (index, tracker) are written last, so a
// checkpoint never looks complete before all its parts are.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "ckbridge/convert/plan.hpp"
#include "ckbridge/convert/resume.hpp"
#include "ckbridge/format/atomic_file.hpp"
#include "ckbridge/format/safetensors_writer.hpp"

namespace ckbridge::convert {

struct Progress {
  std::uint64_t total = 0;
  std::atomic<std::uint64_t> done{0};
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  bool tty = ::isatty(2) != 0;
  bool quiet = false;
  std::mutex mu;
  std::chrono::steady_clock::time_point last{};
  std::function<void()> release;  // called every release_every bytes
  std::uint64_t release_every = 64ull << 20;  // bounds the resident source pages between releases
  std::atomic<std::uint64_t> since_release{0};

  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  std::function<void(std::uint64_t)> on_bytes;  // the caller's hook (ExecHooks::on_bytes)
  void add(std::uint64_t n) {
    const std::uint64_t now_done = done += n;
    if (on_bytes) on_bytes(now_done);
    if (release && (since_release += n) >= release_every) {
      since_release = 0;
      release();
    }
    report(false);
  }
  void report(bool final) {
    if (quiet) return;
    std::lock_guard lk(mu);
    const auto now = std::chrono::steady_clock::now();
    if (!final && now - last < (tty ? std::chrono::milliseconds(200) : std::chrono::seconds(10))) return;
    last = now;
    const double s = seconds(), gb = double(done) / 1e9, rate = s > 0 ? gb / s : 0;
    const double eta = rate > 0 ? (double(total) - double(done)) / 1e9 / rate : 0;
    const double frac = total ? double(done) / double(total) : 1.0;
    if (tty) {
      const int w = 30, filled = static_cast<int>(frac * w);
      std::fprintf(stderr, "\r[%.*s%*s] %5.1f%% %.2f/%.2f GB %.2f GB/s ETA %.0fs ", filled,
                   "==============================", w - filled, "", 100 * frac, gb, double(total) / 1e9, rate, eta);
      if (final) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "[ckbridge] %.1f%% %.2f/%.2f GB %.2f GB/s ETA %.0fs\n", 100 * frac, gb,
                   double(total) / 1e9, rate, eta);
    }
  }
};

// Writes one file of the plan (format-specific writers plug in here).
using FileWriterFn = std::function<void(const OutFile&, const std::filesystem::path& path, Progress&)>;

inline void write_safetensors_file(const OutFile& f, const std::filesystem::path& path, Progress& prog) {
  std::vector<safetensors::TensorSpec> specs;
  for (const auto& e : f.entries) {
    if (e.kind == EntryKind::None) continue;
    specs.push_back({e.key, e.data.dtype, e.data.shape});
    if (e.kind == EntryKind::Fp8) specs.push_back({e.scale_key, e.scale.dtype, e.scale.shape});
  }
  safetensors::FileWriter w(path, std::move(specs));
  auto put = [&](const std::string& key, const Producer& p) {
    Tensor scratch;
    const AnyConstView v = p.run(scratch);
    if (v.dtype != p.dtype || v.shape != p.shape)
      fail(path.string(), ": tensor '", key, "' was planned as ", p.dtype, " ", shape_str(p.shape), " but produced ",
           v.dtype, " ", shape_str(v.shape));
    w.write(key, v);
    prog.add(v.size_bytes());
  };
  for (const auto& e : f.entries) {
    if (e.kind == EntryKind::None) continue;
    put(e.key, e.data);
    if (e.kind == EntryKind::Fp8) put(e.scale_key, e.scale);
  }
  w.commit();
}

// Refuses a plan whose working memory (the `workers` largest per-file scratch needs) exceeds the
// machine's physical memory, before any output exists, naming the tensor that needs the most
// (a huge --pad_vocab_size_to otherwise ends in a bare std::bad_alloc half-way through).
inline void check_memory(const Plan& plan, int workers, std::uint64_t available = 0) {
  if (available == 0) {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return;
    available = static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page);
  }
  const std::uint64_t need = plan.peak_memory(workers);
  if (need <= available) return;
  const OutFile* wf = nullptr;
  const OutEntry* we = nullptr;
  std::size_t most = 0;
  for (const auto& f : plan.files)
    for (const auto& e : f.entries)
      if (e.data.scratch_bytes + e.scale.scratch_bytes >= most) {
        most = e.data.scratch_bytes + e.scale.scratch_bytes;
        wf = &f;
        we = &e;
      }
  fail("the conversion needs ", double(need) / 1e9, " GB of working memory with --max_workers ", workers,
       ", more than this machine's ", double(available) / 1e9, " GB (the largest need: tensor '",
       we ? we->key : std::string("?"), "' of ", wf ? wf->rel.string() : std::string("?"), ", ",
       double(most) / 1e9, " GB, shape ", we ? shape_str(we->data.shape) : std::string("?"),
       "); check --pad_vocab_size_to, --vocab_size and the model config, or lower --max_workers");
}

struct ExecResult {
  std::uint64_t bytes = 0;
  double seconds = 0;
  std::size_t files = 0;
};

// Called for each file of the run once it is complete under its final name (written now, or
// finished by an earlier attempt), from the worker thread that wrote it.
using FileDoneFn = std::function<void(const OutFile&)>;

// What a caller may observe of a run, from the worker threads (both optional): the application
// decides what to do with it (hash files for a manifest; the converter's test seams stop or kill
// the process at a byte count).
struct ExecHooks {
  FileDoneFn file_done;
  std::function<void(std::uint64_t bytes_done)> on_bytes;  // after each piece written, this process's total
};

// Writes the output files `only` lists (indices into plan.files; null: all of them), with no
// small files: the part of a run one process of a multi-process run does. `state` (optional)
// makes it resumable: finished files are skipped and recorded.
inline ExecResult execute_files(const Plan& plan, const std::vector<std::size_t>* only,
                                const std::filesystem::path& out_root, int workers, const FileWriterFn& torch_writer,
                                bool quiet = false, RunState* state = nullptr, const ExecHooks& hooks = {}) {
  std::vector<std::size_t> order;
  if (only) order = *only;
  else
    for (std::size_t i = 0; i < plan.files.size(); ++i) order.push_back(i);
  Progress prog;
  for (const std::size_t i : order) prog.total += plan.files.at(i).bytes();
  prog.quiet = quiet;
  prog.release = plan.release_sources;
  prog.on_bytes = hooks.on_bytes;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return plan.files[a].bytes() > plan.files[b].bytes(); });
  for (const std::size_t i : order) std::filesystem::create_directories((out_root / plan.files[i].rel).parent_path());

  std::atomic<std::size_t> next{0};
  std::exception_ptr err;
  std::mutex err_mu;
  auto work = [&] {
    while (true) {
      const std::size_t k = next++;
      if (k >= order.size()) return;
      {
        std::lock_guard lk(err_mu);
        if (err) return;
      }
      const OutFile& f = plan.files[order[k]];
      try {
        const auto path = out_root / f.rel;
        if (state && state->finished(f.rel, 0)) {
          prog.add(f.bytes());
        } else {
          if (f.format == FileFormat::Safetensors) write_safetensors_file(f, path, prog);
          else torch_writer(f, path, prog);
          if (state) state->mark_done(f.rel);
        }
        if (hooks.file_done) hooks.file_done(f);
      } catch (const std::bad_alloc&) {
        std::lock_guard lk(err_mu);
        if (!err)
          err = std::make_exception_ptr(Error(ckbridge::detail::concat(
              (out_root / f.rel).string(), ": out of memory while producing this file (the plan estimated ",
              double(f.peak_scratch()) / 1e9, " GB of working memory for it)")));
        return;
      } catch (...) {
        std::lock_guard lk(err_mu);
        if (!err) err = std::current_exception();
        return;
      }
    }
  };
  const int n = std::max(1, std::min<int>(workers, static_cast<int>(order.size())));
  std::vector<std::thread> pool;
  for (int i = 1; i < n; ++i) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (err) std::rethrow_exception(err);
  prog.report(true);
  return {prog.done.load(), prog.seconds(), order.size()};
}

// The end of a run, once every output file is complete: the small files (index, config.json),
// then `before_tracker` (optional: the manifest is written there), then the Megatron tracker, so an
// output with a tracker is complete and described; then the run state is removed.
inline void finish_run(const Plan& plan, const std::filesystem::path& out_root, RunState* state = nullptr,
                       const std::function<void()>& before_tracker = {}) {
  auto is_tracker = [](const std::filesystem::path& rel) { return rel.filename() == "latest_checkpointed_iteration.txt"; };
  for (int last = 0; last < 2; ++last) {
    if (last && before_tracker) before_tracker();
    for (const auto& [rel, text] : plan.small_files) {
      if (is_tracker(rel) != (last == 1)) continue;
      std::filesystem::create_directories((out_root / rel).parent_path());
      AtomicFile::write_all(out_root / rel, text);
    }
  }
  if (state) state->finish();
}

// A whole run in one process: every output file, then finish_run.
inline ExecResult execute(const Plan& plan, const std::filesystem::path& out_root, int workers,
                          const FileWriterFn& torch_writer, bool quiet = false, RunState* state = nullptr,
                          const std::function<void()>& before_tracker = {}, const ExecHooks& hooks = {}) {
  const auto t0 = std::chrono::steady_clock::now();
  ExecResult r = execute_files(plan, nullptr, out_root, workers, torch_writer, quiet, state, hooks);
  finish_run(plan, out_root, state, before_tracker);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace ckbridge::convert

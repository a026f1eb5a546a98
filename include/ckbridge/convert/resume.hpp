#pragma once
// Resumable runs. A run writes `<out>/.ckbridge-run/fingerprint` (what the run will produce)
// before any output, appends each output file to `.ckbridge-run/done` after its atomic rename,
// and removes the directory after the last small file (tracker, index) is in place. A run started
// again with the same fingerprint skips the finished files and produces the same bytes; a
// different fingerprint over a partial output is refused, and so is any other non-empty directory.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>

#include "ckbridge/convert/plan.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/format/atomic_file.hpp"

namespace ckbridge::convert {

// A fingerprint of a plan: every output file with its tensors (key, dtype, shape, how), plus the
// caller's description of the arguments that shape the bytes.
inline std::string plan_fingerprint(const Plan& plan, const std::string& arguments) {
  std::ostringstream os;
  os << "ckbridge run v1\n" << arguments << "\n";
  for (const auto& f : plan.files) {
    os << f.rel.string() << " " << f.bytes() << "\n";
    for (const auto& e : f.entries)
      os << " " << e.dict << "/" << e.key << " " << static_cast<int>(e.kind) << " " << e.data.dtype << " "
         << shape_str(e.data.shape) << " " << e.how << "\n";
  }
  for (const auto& [rel, text] : plan.small_files) os << rel.string() << " " << text.size() << "\n";
  // FNV-1a over the description: short enough to compare, and the description is kept too.
  const std::string d = os.str();
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : d) h = (h ^ c) * 1099511628211ull;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return std::string(buf) + "\n" + d;
}

class RunState {
public:
  // Prepares `out` for the plan: fresh start, resume, or a clear refusal.
  RunState(const std::filesystem::path& out, const std::string& fingerprint) : out_(out), dir_(out / ".ckbridge-run") {
    namespace fs = std::filesystem;
    if (fs::exists(out) && !fs::is_directory(out)) fail("--save_ckpt_path ", out.string(), ": exists and is not a directory");
    const bool nonempty = fs::exists(out) && !fs::is_empty(out);
    if (nonempty) {
      if (!fs::exists(dir_ / "fingerprint"))
        fail("--save_ckpt_path ", out.string(),
             ": directory is not empty (it already holds a checkpoint or other files) and is not an interrupted "
             "ckbridge run; choose a new directory");
      std::ifstream in(dir_ / "fingerprint", std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      if (ss.str() != fingerprint)
        fail("--save_ckpt_path ", out.string(),
             ": holds a partial output of a different conversion (started with other arguments or another source); "
             "rerun with the original arguments to resume, or choose a new directory");
      resumed_ = true;
      load_done();
      remove_temporaries();
    } else {
      fs::create_directories(dir_);
      AtomicFile::write_all(dir_ / "fingerprint", fingerprint);
    }
    fd_ = ::open((dir_ / "done").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) fail((dir_ / "done").string(), ": cannot open: ", std::strerror(errno));
  }
  RunState(const RunState&) = delete;
  RunState& operator=(const RunState&) = delete;
  ~RunState() {
    if (fd_ >= 0) ::close(fd_);
  }

  bool resumed() const { return resumed_; }
  std::size_t done_count() const { return done_.size(); }

  // True if `rel` was finished by an earlier attempt (listed, present, right size).
  bool finished(const std::filesystem::path& rel, std::uint64_t expected_size) const {
    auto it = done_.find(rel.string());
    if (it == done_.end()) return false;
    std::error_code ec;
    const auto sz = std::filesystem::file_size(out_ / rel, ec);
    return !ec && sz == it->second && (expected_size == 0 || sz >= expected_size);
  }
  // Records a file that is complete under its final name.
  void mark_done(const std::filesystem::path& rel) {
    const auto sz = std::filesystem::file_size(out_ / rel);
    const std::string line = rel.string() + "\t" + std::to_string(sz) + "\n";
    std::lock_guard lk(mu_);
    if (::write(fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size()) || ::fsync(fd_) != 0)
      fail((dir_ / "done").string(), ": cannot record progress: ", std::strerror(errno));
  }
  // The run is complete: forget the state.
  void finish() {
    ::close(fd_);
    fd_ = -1;
    std::filesystem::remove_all(dir_);
  }

private:
  void load_done() {
    std::ifstream in(dir_ / "done");
    std::string line;
    while (std::getline(in, line)) {
      const auto tab = line.find('\t');
      if (tab == std::string::npos) continue;  // a torn last line: that file is redone
      try {
        done_[line.substr(0, tab)] = std::stoull(line.substr(tab + 1));
      } catch (...) {
      }
    }
  }
  // Temporary files of writers that were killed (<final>.tmp-<random>, <final>.ckb-tmp-<pid>-<n>).
  void remove_temporaries() {
    for (const auto& e : std::filesystem::recursive_directory_iterator(out_)) {
      const std::string n = e.path().filename().string();
      if (e.is_regular_file() && (n.find(".tmp-") != std::string::npos || n.find(".ckb-tmp-") != std::string::npos))
        std::filesystem::remove(e.path());
    }
  }
  std::filesystem::path out_, dir_;
  bool resumed_ = false;
  std::map<std::string, std::uint64_t> done_;
  int fd_ = -1;
  std::mutex mu_;
};

}  // namespace ckbridge::convert

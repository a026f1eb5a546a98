#pragma once
// Resumable runs. A run writes `<out>/.ckbridge-run/fingerprint` (what the run will produce)
// before any output, appends each output file to `.ckbridge-run/done` after its atomic rename,
// and removes the directory after the last small file (tracker, index) is in place. A run started
// again with the same fingerprint skips the finished files and produces the same bytes; a
// different fingerprint over a partial output is refused, and so is any other non-empty directory.
// The fingerprint covers the plan, every option that shapes the output bytes and the source
// files (size, mtime and a hash of their first and last 64 KiB). A run holds an exclusive
// `flock` on the output directory from start to end, so a second run into the same directory
// fails at once instead of mixing its files with the first's.
// In a multi-process run the first process prepares the directory (and holds the lock) as above;
// the others join it once that is done (RunState::Join) and record their files in
// `.ckbridge-run/done.<rank>`. Every `done*` list counts, so a run resumed with another number of
// processes skips the files finished by any process of an earlier attempt.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>

#include "ckbridge/convert/options.hpp"
#include "ckbridge/convert/plan.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/format/atomic_file.hpp"

namespace ckbridge::convert {

// Refuses an output path that cannot be meant: empty (it would resolve to the current
// directory) or a flag taken as the value (`--save_ckpt_path= --safetensors`).
inline void check_output_path(const std::string& path, const char* flag = "--save_ckpt_path") {
  if (path.find_first_not_of(" \t\n") == std::string::npos)
    fail(flag, ": empty path (it would write into the current directory); give the output directory");
  if (path[0] == '-')
    fail(flag, " '", path, "': looks like a flag, not a directory (a missing value?); write ./", path,
         " if that is the directory's name");
}

namespace detail {
inline std::uint64_t fnv1a(const void* p, std::size_t n, std::uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}
inline std::string hex64(std::uint64_t h) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}
inline void put_arg(std::ostream& os, const ArgValue& v) {
  if (std::holds_alternative<std::monostate>(v)) os << "None";
  else if (auto b = std::get_if<bool>(&v)) os << (*b ? "True" : "False");
  else if (auto i = std::get_if<std::int64_t>(&v)) os << *i;
  else if (auto d = std::get_if<double>(&v)) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", *d);
    os << buf;
  } else os << '"' << std::get<std::string>(v) << '"';
}
}  // namespace detail

// Every regular file under `root` (or `root` itself, a file): relative path, size, mtime (ns)
// and a hash of its first and last 64 KiB. Cheap (two small reads per file), and it changes
// when a source file is replaced, grows, shrinks or is edited in place (mtime). Entries under
// `exclude` (an output directory inside the source) are skipped; symlinks to files are followed
// (HF cache snapshots are links to blobs), links to directories are not.
inline std::string source_fingerprint(const std::filesystem::path& root, const std::filesystem::path& exclude = {}) {
  namespace fs = std::filesystem;
  std::vector<std::pair<std::string, fs::path>> files;
  std::error_code ec;
  const fs::path ex = exclude.empty() ? fs::path() : fs::weakly_canonical(fs::absolute(exclude), ec);
  if (fs::is_regular_file(root)) {
    files.emplace_back(root.filename().string(), root);
  } else if (fs::is_directory(root)) {
    for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (!ex.empty() && it->is_directory() && fs::weakly_canonical(fs::absolute(it->path()), ec) == ex) {
        it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file()) files.emplace_back(fs::relative(it->path(), root).string(), it->path());
    }
    if (ec) fail(root.string(), ": cannot list the source: ", ec.message());
  } else {
    fail(root.string(), ": source not found");
  }
  std::sort(files.begin(), files.end());
  std::ostringstream os;
  constexpr std::size_t kSample = 64 << 10;
  std::vector<char> buf(kSample);
  for (const auto& [rel, path] : files) {
    struct stat st {};
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::fstat(fd, &st) != 0) {
      if (fd >= 0) ::close(fd);
      fail(path.string(), ": cannot read the source file: ", std::strerror(errno));
    }
    std::uint64_t h = 1469598103934665603ull;
    const auto size = static_cast<std::uint64_t>(st.st_size);
    for (const std::uint64_t off : {std::uint64_t{0}, size > kSample ? size - kSample : std::uint64_t{0}}) {
      const ssize_t n = ::pread(fd, buf.data(), kSample, static_cast<off_t>(off));
      if (n < 0) {
        ::close(fd);
        fail(path.string(), ": cannot read the source file: ", std::strerror(errno));
      }
      h = detail::fnv1a(buf.data(), static_cast<std::size_t>(n), h);
    }
    ::close(fd);
    os << "source " << rel << " " << size << " " << st.st_mtim.tv_sec << "." << st.st_mtim.tv_nsec << " "
       << detail::hex64(h) << "\n";
  }
  return os.str();
}

// The options that shape output bytes, with their resolved values (not their spelling).
// max_workers and device are left out: they change speed, never bytes; so is allow_nonfinite:
// a file finished without it holds no non-finite input, so a run refused for one may resume
// with it.
inline std::string options_fingerprint(const ConvertOptions& o) {
  std::ostringstream os;
  auto opt = [](const auto& v) { return v ? std::to_string(*v) : std::string("unset"); };
  os << "tp " << o.tp << " ep " << o.ep << " etp " << opt(o.etp) << " grouped_gemm " << o.grouped_gemm << "\n";
  const auto& p = o.pipeline;
  os << "pipeline num_layers " << p.num_layers << " pp " << p.pp << " vpp " << p.vpp << " mtp " << p.mtp_num_layers
     << " custom";
  if (p.custom) for (int v : *p.custom) os << " " << v;
  else os << " unset";
  os << " layout '" << p.layout.value_or("unset") << "' first " << opt(p.first) << " last " << opt(p.last)
     << " dualpipev " << p.dualpipev << " allow_empty " << p.allow_empty_partitions << " mtp_from_layout "
     << p.mtp_from_layout << "\n";
  char eps[40];
  std::snprintf(eps, sizeof eps, "%a", static_cast<double>(o.amax_epsilon));
  os << "vocab divisible_by " << o.make_vocab_size_divisible_by << " pad_to " << o.pad_vocab_size_to << "\n"
     << "fp8 convert " << o.convert_to_fp8 << " pow2 " << (o.force_pow_2_scales ? int(*o.force_pow_2_scales) : -1)
     << " eps " << eps << " method " << static_cast<int>(o.quant_method) << " no_requant " << o.fp8_force_no_requant
     << " dequantize " << o.dequantize_fp8 << " dtype " << o.torch_dtype
     << "\n"
     << "files shard " << o.hf_max_shard_bytes << " te " << o.te_major << "." << o.te_minor << " iteration "
     << o.iteration << "\n";
  return os.str();
}

// A fingerprint of a plan: every output file with its tensors (key, dtype, shape, how), the
// MCore `args` and the small files in full, plus the caller's description of the arguments
// and sources that shape the bytes.
inline std::string plan_fingerprint(const Plan& plan, const std::string& arguments) {
  std::ostringstream os;
  os << "ckbridge run v2\n" << arguments << "\n";
  for (const auto& [k, v] : plan.mcore_args) {
    os << "arg " << k << "=";
    detail::put_arg(os, v);
    os << "\n";
  }
  for (const auto& f : plan.files) {
    os << f.rel.string() << " " << f.bytes() << "\n";
    for (const auto& e : f.entries)
      os << " " << e.dict << "/" << e.key << " " << static_cast<int>(e.kind) << " " << e.data.dtype << " "
         << shape_str(e.data.shape) << " " << e.how << "\n";
  }
  for (const auto& [rel, text] : plan.small_files) {
    os << rel.string() << " " << text.size() << " " << detail::hex64(detail::fnv1a(text.data(), text.size())) << "\n";
  }
  // FNV-1a over the description: short enough to compare, and the description is kept too.
  const std::string d = os.str();
  return detail::hex64(detail::fnv1a(d.data(), d.size())) + "\n" + d;
}

class RunState {
public:
  // Prepares `out` for the plan: fresh start, resume, or a clear refusal. Holds an exclusive lock
  // on `out` until destroyed.
  RunState(const std::filesystem::path& out, const std::string& fingerprint) : out_(out), dir_(out / ".ckbridge-run") {
    namespace fs = std::filesystem;
    if (out.empty()) fail("--save_ckpt_path: empty path");
    if (fs::exists(out) && !fs::is_directory(out)) fail("--save_ckpt_path ", out.string(), ": exists and is not a directory");
    fs::create_directories(out);
    lock_ = ::open(out.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock_ < 0) fail("--save_ckpt_path ", out.string(), ": cannot open: ", std::strerror(errno));
    if (::flock(lock_, LOCK_EX | LOCK_NB) != 0) {
      const int e = errno;
      ::close(lock_);
      lock_ = -1;
      if (e == EWOULDBLOCK)
        fail("--save_ckpt_path ", out.string(),
             ": another conversion is writing to this directory (it holds the directory's lock); wait for it to "
             "finish or choose another directory");
      fail("--save_ckpt_path ", out.string(), ": cannot lock: ", std::strerror(e));
    }
    try {
      prepare(fingerprint);
    } catch (...) {
      ::close(lock_);
      lock_ = -1;
      throw;
    }
    fd_ = ::open((dir_ / "done").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd_ < 0) {
      ::close(lock_);
      fail((dir_ / "done").string(), ": cannot open: ", std::strerror(errno));
    }
  }
  // Joins the run state that another process of the same run prepared (see above): no lock, no
  // preparation; the fingerprint must be the one that process wrote. Progress goes to done.<id>.
  struct Join {
    int id = 1;
  };
  RunState(const std::filesystem::path& out, const std::string& fingerprint, Join join)
      : out_(out), dir_(out / ".ckbridge-run") {
    std::ifstream in(dir_ / "fingerprint", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!in || ss.str() != fingerprint)
      fail("--save_ckpt_path ", out.string(), ": ", (dir_ / "fingerprint").string(),
           in ? " differs from this process's plan" : " is missing",
           " (the first process prepared it; is the output directory the same shared directory on every node?)");
    load_done();
    const auto done = dir_ / ("done." + std::to_string(join.id));
    fd_ = ::open(done.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd_ < 0) fail(done.string(), ": cannot open: ", std::strerror(errno));
    done_file_ = done;
  }
  RunState(const RunState&) = delete;
  RunState& operator=(const RunState&) = delete;
  ~RunState() {
    if (fd_ >= 0) ::close(fd_);
    if (lock_ >= 0) ::close(lock_);  // releases the flock
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
      fail(done_file_.string(), ": cannot record progress: ", std::strerror(errno));
  }
  // This process records no more files (a process that joined the run, before the first process
  // finishes it: an open file would keep the state directory from being removed on NFS).
  void close_done() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // The run is complete: forget the state.
  void finish() {
    close_done();
    std::filesystem::remove_all(dir_);
  }

private:
  void prepare(const std::string& fingerprint) {
    namespace fs = std::filesystem;
    // A run killed while writing its fingerprint left only `.ckbridge-run/fingerprint.tmp-*`
    // (the fingerprint is written before any output): nothing to resume, start afresh.
    if (fs::is_directory(dir_) && !fs::is_symlink(dir_) && !fs::exists(dir_ / "fingerprint") && only_entry(out_, ".ckbridge-run")) {
      bool temps_only = true;
      for (const auto& e : fs::directory_iterator(dir_))
        temps_only &= e.is_regular_file() && e.path().filename().string().rfind("fingerprint.tmp-", 0) == 0;
      if (temps_only) fs::remove_all(dir_);
    }
    if (!fs::is_empty(out_)) {
      if (fs::is_symlink(dir_) || !fs::exists(dir_ / "fingerprint"))
        fail("--save_ckpt_path ", out_.string(),
             ": directory is not empty (it already holds a checkpoint or other files) and is not an interrupted "
             "ckbridge run; choose a new directory");
      std::ifstream in(dir_ / "fingerprint", std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      if (ss.str() != fingerprint)
        fail("--save_ckpt_path ", out_.string(),
             ": holds a partial output of a different conversion (started with other arguments or another source; "
             "first difference: ", first_difference(ss.str(), fingerprint),
             "); rerun with the original arguments to resume, or choose a new directory");
      refuse_links();
      resumed_ = true;
      load_done();
      remove_temporaries();
    } else {
      fs::create_directories(dir_);
      AtomicFile::write_all(dir_ / "fingerprint", fingerprint);
    }
  }
  static bool only_entry(const std::filesystem::path& dir, const std::string& name) {
    std::size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      if (e.path().filename() != name) return false;
      ++n;
    }
    return n == 1;
  }
  // The first line (after the hash) that differs between two fingerprints, for the message.
  static std::string first_difference(const std::string& was, const std::string& now) {
    std::istringstream a(was), b(now);
    std::string la, lb;
    bool first = true;
    while (true) {
      const bool ga = static_cast<bool>(std::getline(a, la)), gb = static_cast<bool>(std::getline(b, lb));
      if (!ga && !gb) return "none";
      if (!first && (ga != gb || la != lb)) {
        std::string s = "was '" + (ga ? la : std::string("<end>")) + "', now '" + (gb ? lb : std::string("<end>")) + "'";
        return s.size() > 400 ? s.substr(0, 400) + "..." : s;
      }
      first = false;
    }
  }
  // A partial output holding symbolic links (a rank directory replaced by a link) would make the
  // resumed run write outside the output directory: refused.
  void refuse_links() const {
    namespace fs = std::filesystem;
    for (auto it = fs::recursive_directory_iterator(out_); it != fs::recursive_directory_iterator(); ++it)
      if (it->is_symlink())
        fail("--save_ckpt_path ", out_.string(), ": the partial output holds a symbolic link, ", it->path().string(),
             " (a resumed run would write through it, outside the output directory); remove it or choose a new "
             "directory");
  }
  // Every process's list: `done` and `done.<rank>`.
  void load_done() {
    for (const auto& e : std::filesystem::directory_iterator(dir_)) {
      const std::string n = e.path().filename().string();
      if (!e.is_regular_file() || (n != "done" && n.rfind("done.", 0) != 0)) continue;
      std::ifstream in(e.path());
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
  }
  // Temporary files of writers that were killed (<final>.tmp-<random>, <final>.ckb-tmp-<pid>-<n>).
  void remove_temporaries() {
    for (const auto& e : std::filesystem::recursive_directory_iterator(out_)) {
      const std::string n = e.path().filename().string();
      if (e.is_regular_file() && (n.find(".tmp-") != std::string::npos || n.find(".ckb-tmp-") != std::string::npos))
        std::filesystem::remove(e.path());
    }
  }
  std::filesystem::path out_, dir_, done_file_ = dir_ / "done";
  bool resumed_ = false;
  std::map<std::string, std::uint64_t> done_;
  int fd_ = -1, lock_ = -1;
  std::mutex mu_;
};

}  // namespace ckbridge::convert

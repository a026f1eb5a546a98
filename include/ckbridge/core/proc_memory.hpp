#pragma once
// The process's memory as the kernel counts it (/proc/self/status, Linux): anonymous memory
// (heap, scratch buffers: what a conversion really needs) apart from mapped file pages (the
// memory-mapped sources: page cache the kernel can drop at any time), and the peak resident set.
// Returns numbers only; printing is the caller's business.
#include <cstdint>
#include <fstream>
#include <string>

namespace ckbridge {

struct ProcMemory {
  bool valid = false;          // false where /proc/self/status is unavailable
  std::uint64_t rss = 0;       // VmRSS: resident set (= anon + file + shmem)
  std::uint64_t rss_anon = 0;  // RssAnon: anonymous pages
  std::uint64_t rss_file = 0;  // RssFile: mapped file pages (e.g. memory-mapped safetensors)
  std::uint64_t rss_shmem = 0; // RssShmem
  std::uint64_t hwm = 0;       // VmHWM: peak resident set (anon + file) so far
};

// Reads /proc/<pid>/status ("self" by default); sizes in bytes.
inline ProcMemory proc_memory(const std::string& pid = "self") {
  ProcMemory m;
  std::ifstream in("/proc/" + pid + "/status");
  std::string key;
  while (in >> key) {
    std::uint64_t kb = 0;
    std::uint64_t* dst = key == "VmRSS:"      ? &m.rss
                         : key == "RssAnon:"  ? &m.rss_anon
                         : key == "RssFile:"  ? &m.rss_file
                         : key == "RssShmem:" ? &m.rss_shmem
                         : key == "VmHWM:"    ? &m.hwm
                                              : nullptr;
    if (dst && (in >> kb)) {
      *dst = kb * 1024;
      m.valid = true;
    }
    in.ignore(1 << 20, '\n');
  }
  return m;
}

}  // namespace ckbridge

#pragma once
// The converter's test seams, read from the environment by the application (never by the
// library): the kill-and-resume and concurrent-run tests stop or kill a conversion at an exact
// byte count through convert::ExecHooks::on_bytes.
//   CKBRIDGE_TEST_KILL_AFTER_BYTES=N  SIGKILL (no cleanup) once this process has written N bytes
//   CKBRIDGE_TEST_STOP_AFTER_BYTES=N  SIGSTOP once (holding the output's lock) after N bytes; the
//                                     test continues the process with SIGCONT
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>

namespace ckbridge::examples {

inline std::function<void(std::uint64_t)> test_seams_from_env() {
  if (const char* k = std::getenv("CKBRIDGE_TEST_KILL_AFTER_BYTES")) {
    const std::uint64_t limit = std::strtoull(k, nullptr, 10);
    return [limit](std::uint64_t done) {
      if (done >= limit) ::kill(::getpid(), SIGKILL);
    };
  }
  if (const char* k = std::getenv("CKBRIDGE_TEST_STOP_AFTER_BYTES")) {
    const std::uint64_t limit = std::strtoull(k, nullptr, 10);
    auto stopped = std::make_shared<std::atomic<bool>>(false);
    return [limit, stopped](std::uint64_t done) {
      if (done >= limit && !stopped->exchange(true)) ::raise(SIGSTOP);
    };
  }
  return {};
}

}  // namespace ckbridge::examples

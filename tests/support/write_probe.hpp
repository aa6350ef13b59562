#pragma once
// A write (create + write + fsync a new file) in a child process, so that a
// frozen filesystem blocks the child and not the caller. No doctest here:
// the benchmark uses it too (a fork failure throws).

#include <sys/types.h>

#include <chrono>
#include <string>

namespace quiesce::test {

class WriteProbe {
 public:
  explicit WriteProbe(const std::string& directory);
  ~WriteProbe();
  WriteProbe(const WriteProbe&) = delete;
  WriteProbe& operator=(const WriteProbe&) = delete;
  // True when the write finished (successfully) within `timeout`.
  [[nodiscard]] bool finished_within(std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
  bool done_ = false;
  bool ok_ = false;
};

// True when a write to `directory` completes within `timeout` (the
// filesystem is not frozen). A probe that blocks is left to finish later.
[[nodiscard]] bool writable_within(const std::string& directory, std::chrono::milliseconds timeout);

}  // namespace quiesce::test

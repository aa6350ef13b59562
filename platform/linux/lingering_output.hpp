#pragma once
// Keeps reading the output pipes of programs that have exited but left
// something running that still holds the pipe's write end: a freeze hook's
// background helper (qemu's mysql-flush.sh keeps a subshell that holds
// FLUSH TABLES WITH READ LOCK until the thaw hook ends it, and writes to
// its inherited stderr along the way).
//
// Closing the read end when the hook exits would kill such a helper with
// SIGPIPE at its next write, and with it whatever it holds and its cleanup.
// qemu-guest-agent avoids that by sending hook output to a log file; a file
// is not an option here, since the agent does no I/O on filesystems that
// may be frozen (DESIGN.md invariant 4) and a helper's write to a frozen
// filesystem would block it. So the pipes stay open and are read on one
// thread of their own until every writer has closed them; what arrives
// goes to the caller's line handler (the agent's log, which holds lines in
// memory while frozen). Nothing here ever blocks a phase.

#include <cstddef>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "platform/linux/subprocess.hpp"

namespace quiesce::platform {

class LingeringOutput {
 public:
  using LineHandler = std::function<void(OutputStream, std::string_view)>;
  // Called once when every writer closed the pipe (or it was given up),
  // with the number of bytes read beyond the bound and not passed on.
  using ClosedHandler = std::function<void(std::size_t dropped_bytes)>;

  // `max_pipes`: a bound on pipes held at once, so helpers that never exit
  // (a daemon a hook started) cannot pile up descriptors without end.
  explicit LingeringOutput(std::size_t max_pipes = 64);
  // Stops reading and closes every pipe still held: what a helper writes
  // after that meets a closed pipe, as it would after the agent exits.
  ~LingeringOutput();
  LingeringOutput(const LingeringOutput&) = delete;
  LingeringOutput& operator=(const LingeringOutput&) = delete;

  // Takes ownership of `fd` (a non-blocking read end). Lines are split as
  // run_subprocess does, at most `max_bytes` are passed on. Returns false
  // when the bound on pipes is reached; the fd is closed then.
  [[nodiscard]] bool adopt(int fd, OutputStream stream, LineHandler on_line,
                           ClosedHandler on_closed, std::size_t max_bytes,
                           std::size_t max_line_bytes = 4096);

  // Pipes still held (some writer has not closed them yet).
  [[nodiscard]] std::size_t held() const;

 private:
  struct Pipe;
  void run();
  void wake();

  const std::size_t max_pipes_;
  int wake_fd_ = -1;
  mutable std::mutex mutex_;
  std::vector<Pipe*> pipes_;  // owned; guarded by mutex_
  bool stopping_ = false;
  std::thread thread_;  // started with the first pipe
};

}  // namespace quiesce::platform

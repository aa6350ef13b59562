#pragma once
// One running exec-writer child: its process (group), the pipes to it, and
// line-by-line I/O bounded by a deadline and a stop token. One poll loop on
// the calling thread does everything (no thread per child or per request):
// while it waits for a reply it also forwards the child's stderr, line by
// line, and notices the child's exit through a pidfd.
//
// It knows the framing (one line per message) but not the messages; the
// protocol lives in exec_writer.cpp.

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

namespace quiesce::writers::exec {

using Clock = std::chrono::steady_clock;

enum class IoResult {
  done,     // a line was read / written
  timeout,  // the deadline passed first
  stopped,  // the stop token fired first
  closed,   // the child closed its end or exited
  too_long  // a stdout line exceeded the bound
};

class ExecChild {
 public:
  using StderrSink = std::function<void(std::string_view line)>;

  // Starts argv (argv[0] absolute) with exactly `env`. On failure returns
  // nullptr and sets `error`.
  static std::unique_ptr<ExecChild> start(const std::vector<std::string>& argv,
                                          const std::vector<std::string>& env, StderrSink sink,
                                          std::string& error);
  // Closes stdin (the polite way to ask the child to go), waits a moment,
  // then kills its process group and reaps it.
  ~ExecChild();
  ExecChild(const ExecChild&) = delete;
  ExecChild& operator=(const ExecChild&) = delete;

  [[nodiscard]] pid_t pid() const { return pid_; }

  [[nodiscard]] IoResult write_line(std::string_view line, Clock::time_point deadline,
                                    const std::stop_token& stop);
  [[nodiscard]] IoResult read_line(std::string& line, Clock::time_point deadline,
                                   const std::stop_token& stop);

  // True once the child has exited (reaps it without blocking).
  [[nodiscard]] bool exited();
  // Kills the whole process group now (its state is unknown) and reaps it,
  // waiting at most a bounded time.
  void kill();
  // How it ended: "exited with status 3", "was killed by signal 9
  // (SIGKILL)". Waits (bounded) for the exit when it has not been seen yet.
  [[nodiscard]] std::string describe_exit();

 private:
  ExecChild() = default;
  // Moves whatever stderr holds to the sink; false once it is closed.
  void drain_stderr();
  void flush_stderr();
  [[nodiscard]] bool reap(std::chrono::milliseconds wait);
  void close_fd(int& fd);

  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  int stderr_fd_ = -1;
  int pid_fd_ = -1;
  bool reaped_ = false;
  int wait_status_ = 0;
  std::string stdout_buffer_;
  std::string stderr_buffer_;
  StderrSink sink_;
};

}  // namespace quiesce::writers::exec

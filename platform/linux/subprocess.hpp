#pragma once
// Runs one program to completion the careful way an agent must: argv only
// (execve, no shell, no PATH search), an explicit environment, stdin from
// /dev/null, every other descriptor closed, in a process group of its own so
// that a timeout or a stop request kills everything it started (SIGTERM,
// then SIGKILL after a grace), with stdout and stderr captured separately,
// line by line and bounded in size.
//
// It knows nothing of writers or sessions; hooks and exec writers build on it.
//
// What it deliberately does not do: kill what the program left running
// after a normal exit. A freeze script may start a helper that holds a lock
// until the thaw script ends it (qemu's mysql-flush.sh does); killing the
// group on success would break such scripts. Its output is read by this
// call until the program has exited and a short drain has passed; a pipe
// such a helper still holds after that is closed, or handed to
// `SubprocessSpec::hand_over` to be read on (LingeringOutput) so the
// helper's next write does not die of SIGPIPE.

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

namespace quiesce::platform {

enum class OutputStream { out, err };

struct SubprocessSpec {
  // argv[0] is the path of the executable, absolute or relative to the
  // caller's working directory; it is passed to execve as is.
  std::vector<std::string> argv;
  // The complete environment, "NAME=value" each; nothing is inherited.
  std::vector<std::string> env;
  // Where the program starts ("" keeps the caller's).
  std::string working_dir = "/";
  // When it is still running at `deadline`, or when `stop` fires, its
  // process group gets SIGTERM, and SIGKILL `kill_grace` later.
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  std::stop_token stop;
  std::chrono::milliseconds kill_grace{1000};
  // At most this much of each stream is kept and passed to `on_line`; the
  // rest is read (so the program never blocks on a full pipe) and counted.
  std::size_t max_output_bytes = 64 * 1024;
  // A line longer than this is cut into pieces of this size.
  std::size_t max_line_bytes = 4096;
  // Called on the caller's thread for each complete line (without its
  // newline), as it arrives.
  std::function<void(OutputStream, std::string_view)> on_line;
  // When set, called after the drain with each pipe read end that something
  // the program left running still holds open, instead of closing it; it
  // takes ownership of the (non-blocking) descriptor.
  std::function<void(OutputStream, int fd)> hand_over;
};

enum class Outcome {
  exited,        // ran to the end; see exit_code
  signaled,      // killed by a signal nobody here sent; see signal
  timed_out,     // the deadline passed; its process group was killed
  stopped,       // the stop token fired; its process group was killed
  spawn_failed,  // it never ran; see error
};

struct [[nodiscard]] SubprocessResult {
  Outcome outcome = Outcome::spawn_failed;
  int exit_code = -1;  // when exited (or exited on its own after SIGTERM)
  int signal = 0;      // the signal that ended it, when one did
  pid_t pid = -1;
  std::string stdout_text;  // the first max_output_bytes of each stream
  std::string stderr_text;
  std::size_t dropped_bytes = 0;  // output beyond the bounds, both streams
  std::string last_stderr_line;   // the last non-empty one, even past the bound
  std::string error;              // spawn_failed: why
  std::chrono::milliseconds elapsed{0};

  [[nodiscard]] bool success() const { return outcome == Outcome::exited && exit_code == 0; }
  // "exit status 3", "killed by signal 9 (SIGKILL)", "timed out after 200 ms", ...
  [[nodiscard]] std::string describe() const;
};

// A program started to run alongside the caller (an exec writer's
// long-lived child): the same careful start as run_subprocess (argv only,
// explicit environment, own process group, every other descriptor closed,
// default signal dispositions), but with pipes on its stdin, stdout and
// stderr that the caller reads and writes itself, and no waiting.
struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0]: the path passed to execve
  std::vector<std::string> env;   // the complete environment, "NAME=value" each
  std::string working_dir = "/";
};

// Ownership: on success the caller owns the three descriptors (all
// close-on-exec; stdout and stderr non-blocking) and must reap `pid`, which
// is also the id of the child's process group.
struct [[nodiscard]] SpawnedProcess {
  pid_t pid = -1;
  int stdin_fd = -1;   // write end of the child's stdin
  int stdout_fd = -1;  // read end of the child's stdout
  int stderr_fd = -1;  // read end of the child's stderr
  std::string error;   // pid < 0: why it did not start
};

[[nodiscard]] SpawnedProcess spawn_process(const SpawnSpec& spec);

// Runs `spec.argv` and waits for it (bounded by the deadline plus the kill
// grace). Safe to call from several threads at once.
[[nodiscard]] SubprocessResult run_subprocess(const SubprocessSpec& spec);

}  // namespace quiesce::platform

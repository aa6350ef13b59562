#pragma once
// The OS-neutral subprocess interface (Linux: platform/linux/subprocess.cpp,
// Windows: platform/win/subprocess.cpp). On Linux:
//
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
//
// On Windows (platform/win/subprocess.cpp) the same contract, with what
// Windows has instead: CreateProcessW started suspended and put in a job
// object (JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE) before it runs, so that a
// timeout or a stop kills the program and everything it started; argv[0]
// ending in .bat/.cmd runs through cmd.exe /c, .ps1 through powershell
// -File; stdin is NUL; only the two pipes are inherited. Windows has no
// SIGTERM for a windowless process tree, so the kill is at once
// (`kill_grace` is not used), and no SIGPIPE: a helper left running that
// writes to the closed pipe gets ERROR_NO_DATA and lives on, so
// `hand_over` is never called there.

#include <chrono>
#include <cstddef>
#include <cstdint>
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
  // process group gets SIGTERM, and SIGKILL `kill_grace` later (Windows:
  // its job object is terminated at once).
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
  // takes ownership of the (non-blocking) descriptor. POSIX only (see above).
  std::function<void(OutputStream, int fd)> hand_over;
};

enum class Outcome {
  exited,        // ran to the end; see exit_code
  signaled,      // killed by a signal nobody here sent; see signal (POSIX only)
  timed_out,     // the deadline passed; its process group was killed
  stopped,       // the stop token fired; its process group was killed
  spawn_failed,  // it never ran; see error
};

struct [[nodiscard]] SubprocessResult {
  Outcome outcome = Outcome::spawn_failed;
  int exit_code = -1;  // when exited (or exited on its own after SIGTERM)
  int signal = 0;      // the signal that ended it, when one did
  std::int64_t pid = -1;  // the process id it had
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

// Runs `spec.argv` and waits for it (bounded by the deadline plus the kill
// grace). Safe to call from several threads at once.
[[nodiscard]] SubprocessResult run_subprocess(const SubprocessSpec& spec);

// The agent's own process id (for records a restarted agent reads).
[[nodiscard]] std::int64_t current_process_id();

}  // namespace quiesce::platform

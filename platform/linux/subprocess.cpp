#include "platform/linux/subprocess.hpp"
#include "platform/subprocess_output.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>
#include <cstdint>
#include <optional>
#include <utility>

namespace quiesce::platform {

namespace {

using Clock = std::chrono::steady_clock;

// Output still arriving after the program exited is read this long, so the
// last lines of a program that wrote and exited are not lost, but a helper
// it left running (holding the pipe) cannot keep us waiting.
constexpr std::chrono::milliseconds drain_after_exit{200};

// Without a pidfd, a child's exit is noticed by polling this often.
constexpr std::chrono::milliseconds exit_poll_interval{20};

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  [[nodiscard]] int get() const { return fd_; }
  [[nodiscard]] bool valid() const { return fd_ >= 0; }
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

 private:
  int fd_ = -1;
};

std::string errno_text(int error) { return std::strerror(error); }

// The child maps its pipes onto 0, 1 and 2; if an end already sits there (an
// agent started with a closed stdio), dup2 order would clobber it. Lift
// every descriptor the child uses above 2 first.
[[nodiscard]] bool lift_above_stdio(Fd& fd) {
  if (fd.get() > 2) {
    return true;
  }
  int lifted = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
  if (lifted < 0) {
    return false;
  }
  fd = Fd(lifted);
  return true;
}

struct Pipe {
  Fd read;
  Fd write;
};

[[nodiscard]] std::optional<Pipe> make_pipe(std::string& error) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    error = "pipe2: " + errno_text(errno);
    return std::nullopt;
  }
  Pipe pipe{Fd(fds[0]), Fd(fds[1])};
  if (!lift_above_stdio(pipe.read) || !lift_above_stdio(pipe.write)) {
    error = "fcntl(F_DUPFD_CLOEXEC): " + errno_text(errno);
    return std::nullopt;
  }
  return pipe;
}

// What the child reports through the exec pipe when it cannot start.
struct ChildFailure {
  int stage;  // 0: chdir, 1: execve, 2: stdio setup
  int error;
};

// Between fork and execve in a threaded process only async-signal-safe
// calls are allowed: no allocation, no locks. Everything is prepared before.
[[noreturn]] void exec_child(char* const* argv, char* const* envp, const char* working_dir,
                             int null_fd, int out_fd, int err_fd, int report_fd) {
  ::setpgid(0, 0);

  // Signal dispositions set to "ignore" and the blocked mask survive execve;
  // the agent ignores SIGPIPE and blocks signals in its threads, and a hook
  // must start with neither.
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);
  for (int signo = 1; signo < NSIG; ++signo) {
    ::sigaction(signo, &default_action, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  auto fail = [report_fd](int stage) {
    ChildFailure failure{stage, errno};
    [[maybe_unused]] auto written = ::write(report_fd, &failure, sizeof failure);
    ::_exit(127);
  };

  if (::dup2(null_fd, 0) < 0 || ::dup2(out_fd, 1) < 0 || ::dup2(err_fd, 2) < 0) {
    fail(2);
  }
  if (working_dir[0] != '\0' && ::chdir(working_dir) != 0) {
    fail(0);
  }
  // Close everything but stdio and the report pipe (which is close-on-exec,
  // so a successful execve closes it and the parent reads EOF).
  const auto report = static_cast<unsigned int>(report_fd);
  bool closed = true;
  if (report > 3 && ::close_range(3, report - 1, 0) != 0) {
    closed = false;
  }
  if (closed && ::close_range(report + 1, UINT_MAX, 0) != 0) {
    closed = false;
  }
  if (!closed) {
    // Kernels before 5.9 lack close_range.
    struct rlimit limit {};
    rlim_t max_fd = 65536;
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
      max_fd = std::min<rlim_t>(limit.rlim_cur, 1 << 20);
    }
    for (rlim_t fd = 3; fd < max_fd; ++fd) {
      if (static_cast<int>(fd) != report_fd) {
        ::close(static_cast<int>(fd));
      }
    }
  }
  ::execve(argv[0], argv, envp);
  fail(1);
  ::_exit(127);  // not reached; fail() exits
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> result;
  result.reserve(strings.size() + 1);
  for (auto& s : strings) {
    result.push_back(s.data());
  }
  result.push_back(nullptr);
  return result;
}

// Reads what is available without blocking; false at EOF or a read error.
[[nodiscard]] bool read_available(int fd, StreamCollector& collector) {
  std::array<char, 16384> buffer{};
  for (;;) {
    ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n > 0) {
      collector.add(std::string_view(buffer.data(), static_cast<std::size_t>(n)));
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return true;
    }
    return false;
  }
}

int poll_timeout_ms(Clock::time_point now, Clock::time_point until) {
  if (until <= now) {
    return 0;
  }
  auto remaining = std::chrono::ceil<std::chrono::milliseconds>(until - now).count();
  return static_cast<int>(std::min<long long>(remaining, INT_MAX));
}

std::string signal_name(int signo) {
  const char* abbrev = ::sigabbrev_np(signo);
  return std::to_string(signo) + (abbrev != nullptr ? std::string(" (SIG") + abbrev + ")" : "");
}

// A child forked and exec'd the careful way both entry points share.
struct StartedChild {
  pid_t pid = -1;  // also set (and already reaped) when execve failed
  Fd stdout_read;  // non-blocking
  Fd stderr_read;  // non-blocking
  std::string error;  // not empty: why it did not start

  [[nodiscard]] bool started() const { return error.empty(); }
};

// Forks and execs argv with `child_stdin` as its stdin, stdout and stderr on
// fresh pipes, in a process group of its own. Returns once execve succeeded
// (the report pipe closed) or failed (the child is reaped, `error` says
// which stage failed).
StartedChild start_child(const std::vector<std::string>& argv_in,
                         const std::vector<std::string>& env_in, const std::string& working_dir,
                         int child_stdin) {
  StartedChild child;
  std::string error;
  auto out_pipe = make_pipe(error);
  auto err_pipe = out_pipe ? make_pipe(error) : std::nullopt;
  auto report_pipe = err_pipe ? make_pipe(error) : std::nullopt;
  if (!report_pipe) {
    child.error = error;
    return child;
  }
  auto argv_storage = argv_in;
  auto env_storage = env_in;
  auto argv = c_strings(argv_storage);
  auto envp = c_strings(env_storage);

  const pid_t pid = ::fork();
  if (pid < 0) {
    child.error = "fork: " + errno_text(errno);
    return child;
  }
  if (pid == 0) {
    exec_child(argv.data(), envp.data(), working_dir.c_str(), child_stdin, out_pipe->write.get(),
               err_pipe->write.get(), report_pipe->write.get());
  }
  // Also here, so a kill aimed at the group cannot miss the child because
  // it had not yet run setpgid (EACCES once it has exec'd is harmless).
  ::setpgid(pid, pid);
  out_pipe->write.reset();
  err_pipe->write.reset();
  report_pipe->write.reset();

  // EOF means execve succeeded; a ChildFailure means it never ran.
  ChildFailure failure{};
  ssize_t got = 0;
  do {
    got = ::read(report_pipe->read.get(), &failure, sizeof failure);
  } while (got < 0 && errno == EINTR);
  if (got == static_cast<ssize_t>(sizeof failure)) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    static constexpr std::array<const char*, 3> stages{"cannot change to directory ",
                                                       "cannot execute ", "cannot set up stdio for "};
    const char* stage = stages.at(static_cast<std::size_t>(std::clamp(failure.stage, 0, 2)));
    child.pid = pid;
    child.error = std::string(stage) + (failure.stage == 0 ? working_dir : argv_in[0]) + ": " +
                    errno_text(failure.error);
    return child;
  }
  ::fcntl(out_pipe->read.get(), F_SETFL, O_NONBLOCK);
  ::fcntl(err_pipe->read.get(), F_SETFL, O_NONBLOCK);
  child.pid = pid;
  child.stdout_read = std::move(out_pipe->read);
  child.stderr_read = std::move(err_pipe->read);
  return child;
}

}  // namespace

std::string SubprocessResult::describe() const {
  auto ended = [this]() -> std::string {
    if (signal != 0) {
      return "killed by signal " + signal_name(signal);
    }
    if (exit_code >= 0) {
      return "exited with status " + std::to_string(exit_code);
    }
    return "ended";
  };
  switch (outcome) {
    case Outcome::exited:
      return "exit status " + std::to_string(exit_code);
    case Outcome::signaled:
      return "killed by signal " + signal_name(signal);
    case Outcome::timed_out:
      return "timed out after " + std::to_string(elapsed.count()) +
             " ms; its process group was killed (" + ended() + ")";
    case Outcome::stopped:
      return "stopped after " + std::to_string(elapsed.count()) +
             " ms; its process group was killed (" + ended() + ")";
    case Outcome::spawn_failed:
      return "could not start: " + error;
  }
  return "unknown outcome";
}

SubprocessResult run_subprocess(const SubprocessSpec& spec) {
  SubprocessResult result;
  const auto start = Clock::now();
  if (spec.argv.empty() || spec.argv.front().empty()) {
    result.error = "no program given";
    return result;
  }
  // Never start what would be killed at once.
  if (spec.stop.stop_requested()) {
    result.outcome = Outcome::stopped;
    result.error = "stop requested before start";
    return result;
  }
  if (spec.deadline <= start) {
    result.outcome = Outcome::timed_out;
    result.error = "deadline passed before start";
    return result;
  }

  Fd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null_fd.valid() || !lift_above_stdio(null_fd)) {
    result.error = "cannot open /dev/null: " + errno_text(errno);
    return result;
  }
  auto child = start_child(spec.argv, spec.env, spec.working_dir, null_fd.get());
  null_fd.reset();
  result.pid = child.pid;
  if (!child.started()) {
    result.error = child.error;
    result.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    return result;
  }
  const pid_t pid = child.pid;
  // A pidfd turns "the child exited" into a poll event; without one
  // (kernels before 5.3) exits are noticed by polling.
  Fd pid_fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  Fd stop_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  std::optional<std::stop_callback<std::function<void()>>> on_stop;
  if (stop_fd.valid()) {
    on_stop.emplace(spec.stop, std::function<void()>([fd = stop_fd.get()] {
                      const std::uint64_t one = 1;
                      [[maybe_unused]] auto written = ::write(fd, &one, sizeof one);
                    }));
  }

  StreamCollector out(OutputStream::out, spec, result.stdout_text, result.dropped_bytes, nullptr);
  StreamCollector err(OutputStream::err, spec, result.stderr_text, result.dropped_bytes,
                      &result.last_stderr_line);
  Fd& out_fd = child.stdout_read;
  Fd& err_fd = child.stderr_read;

  std::optional<Outcome> killed_for;  // timed_out or stopped, once SIGTERM went out
  Clock::time_point sigkill_at = Clock::time_point::max();
  bool sigkill_sent = false;
  std::optional<int> status;

  auto read_ready = [&](pollfd& entry, Fd& fd, StreamCollector& collector) {
    if (entry.fd >= 0 && entry.revents != 0) {
      if (!read_available(fd.get(), collector)) {
        fd.reset();
      }
    }
  };

  while (!status) {
    auto now = Clock::now();
    if (!killed_for) {
      if (spec.stop.stop_requested()) {
        killed_for = Outcome::stopped;
      } else if (now >= spec.deadline) {
        killed_for = Outcome::timed_out;
      }
      if (killed_for) {
        ::kill(-pid, SIGTERM);
        sigkill_at = now + spec.kill_grace;
      }
    }
    if (killed_for && !sigkill_sent && now >= sigkill_at) {
      ::kill(-pid, SIGKILL);
      sigkill_sent = true;
    }
    int wait_status = 0;
    pid_t reaped = ::waitpid(pid, &wait_status, WNOHANG);
    if (reaped == pid) {
      status = wait_status;
      break;
    }

    Clock::time_point wake = killed_for ? (sigkill_sent ? Clock::time_point::max() : sigkill_at)
                                        : spec.deadline;
    if (!pid_fd.valid()) {
      wake = std::min(wake, now + exit_poll_interval);
    }
    std::array<pollfd, 4> fds{};
    fds[0] = {out_fd.valid() ? out_fd.get() : -1, POLLIN, 0};
    fds[1] = {err_fd.valid() ? err_fd.get() : -1, POLLIN, 0};
    fds[2] = {pid_fd.get(), POLLIN, 0};
    // Once signalled, the stop event has done its job; leaving it in would spin.
    fds[3] = {killed_for ? -1 : stop_fd.get(), POLLIN, 0};
    const int timeout = wake == Clock::time_point::max() ? -1 : poll_timeout_ms(now, wake);
    if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) {
      // Cannot wait properly; fall back to short sleeps through the loop.
      ::usleep(10000);
      continue;
    }
    read_ready(fds[0], out_fd, out);
    read_ready(fds[1], err_fd, err);
  }

  if (killed_for) {
    // Whatever in its group survived SIGTERM (or ignored it) goes now.
    ::kill(-pid, SIGKILL);
  }
  const auto drain_until = Clock::now() + drain_after_exit;
  while (out_fd.valid() || err_fd.valid()) {
    auto now = Clock::now();
    if (now >= drain_until) {
      break;
    }
    std::array<pollfd, 2> fds{};
    fds[0] = {out_fd.valid() ? out_fd.get() : -1, POLLIN, 0};
    fds[1] = {err_fd.valid() ? err_fd.get() : -1, POLLIN, 0};
    if (::poll(fds.data(), fds.size(), poll_timeout_ms(now, drain_until)) < 0 && errno != EINTR) {
      break;
    }
    read_ready(fds[0], out_fd, out);
    read_ready(fds[1], err_fd, err);
  }
  out.finish();
  err.finish();
  if (spec.hand_over && !killed_for) {
    // Only a program that ended on its own may leave a helper whose output
    // matters; after a kill its whole group is gone.
    if (out_fd.valid()) {
      spec.hand_over(OutputStream::out, out_fd.release());
    }
    if (err_fd.valid()) {
      spec.hand_over(OutputStream::err, err_fd.release());
    }
  }

  result.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  if (WIFEXITED(*status)) {
    result.exit_code = WEXITSTATUS(*status);
  } else if (WIFSIGNALED(*status)) {
    result.signal = WTERMSIG(*status);
  }
  if (killed_for) {
    result.outcome = *killed_for;
  } else if (WIFSIGNALED(*status)) {
    result.outcome = Outcome::signaled;
  } else {
    result.outcome = Outcome::exited;
  }
  return result;
}

SpawnedProcess spawn_process(const SpawnSpec& spec) {
  SpawnedProcess spawned;
  if (spec.argv.empty() || spec.argv.front().empty()) {
    spawned.error = "no program given";
    return spawned;
  }
  std::string error;
  auto in_pipe = make_pipe(error);
  if (!in_pipe) {
    spawned.error = error;
    return spawned;
  }
  auto child = start_child(spec.argv, spec.env, spec.working_dir, in_pipe->read.get());
  in_pipe->read.reset();
  if (!child.started()) {
    spawned.error = child.error;
    return spawned;
  }
  spawned.pid = child.pid;
  spawned.stdin_fd = in_pipe->write.release();
  spawned.stdout_fd = child.stdout_read.release();
  spawned.stderr_fd = child.stderr_read.release();
  return spawned;
}

}  // namespace quiesce::platform

namespace quiesce::platform {

std::int64_t current_process_id() { return static_cast<std::int64_t>(::getpid()); }

}  // namespace quiesce::platform

#include "writers/exec/exec_child.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>

#include "platform/linux/subprocess.hpp"

namespace quiesce::writers::exec {

namespace {

// Bounds on what a child can make the agent buffer.
constexpr std::size_t max_stdout_line = 1024 * 1024;
constexpr std::size_t max_stderr_line = 4096;
// How long the destructor lets a child exit on its own after stdin closes.
constexpr std::chrono::milliseconds polite_exit_wait{500};
// How long kill() waits for the exit after SIGKILL. A process stuck in the
// kernel (D state) may take longer; it is then reaped later, never waited for.
constexpr std::chrono::milliseconds reap_wait{2000};
// Without a pidfd (kernels before 5.3), exits are noticed this often.
constexpr std::chrono::milliseconds exit_poll_interval{50};

int poll_timeout_ms(Clock::time_point now, Clock::time_point until) {
  if (until == Clock::time_point::max()) {
    return -1;
  }
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

// Wakes a poll loop when a stop token fires. Registered for one I/O call.
class StopEvent {
 public:
  explicit StopEvent(const std::stop_token& stop)
      : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (fd_ >= 0) {
      callback_.emplace(stop, Notify{fd_});
    }
  }
  ~StopEvent() {
    callback_.reset();  // before the descriptor it writes to goes
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  StopEvent(const StopEvent&) = delete;
  StopEvent& operator=(const StopEvent&) = delete;
  [[nodiscard]] int fd() const { return fd_; }

 private:
  struct Notify {
    int fd;
    void operator()() const {
      const std::uint64_t one = 1;
      [[maybe_unused]] auto written = ::write(fd, &one, sizeof one);
    }
  };
  int fd_;
  std::optional<std::stop_callback<Notify>> callback_;
};

// Writing to a pipe whose reader is gone raises SIGPIPE, which would kill a
// process that has not ignored it (the conformance tool, a test binary).
// Blocking it in this thread for the write turns it into EPIPE; a SIGPIPE
// raised meanwhile is consumed before unblocking.
class SigpipeBlock {
 public:
  SigpipeBlock() {
    sigemptyset(&pipe_set_);
    sigaddset(&pipe_set_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    ::pthread_sigmask(SIG_BLOCK, &pipe_set_, &old_);
  }
  ~SigpipeBlock() {
    if (!was_pending_) {
      const timespec zero{0, 0};
      while (::sigtimedwait(&pipe_set_, nullptr, &zero) == SIGPIPE) {
      }
    }
    ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  sigset_t pipe_set_{};
  sigset_t old_{};
  bool was_pending_ = false;
};

}  // namespace

std::unique_ptr<ExecChild> ExecChild::start(const std::vector<std::string>& argv,
                                            const std::vector<std::string>& env, StderrSink sink,
                                            std::string& error) {
  auto spawned = platform::spawn_process(platform::SpawnSpec{argv, env, "/"});
  if (spawned.pid < 0) {
    error = spawned.error;
    return nullptr;
  }
  std::unique_ptr<ExecChild> child(new ExecChild());
  child->pid_ = spawned.pid;
  child->stdin_fd_ = spawned.stdin_fd;
  child->stdout_fd_ = spawned.stdout_fd;
  child->stderr_fd_ = spawned.stderr_fd;
  child->sink_ = std::move(sink);
  // Requests are written with poll for room, never by blocking in write().
  ::fcntl(child->stdin_fd_, F_SETFL, O_NONBLOCK);
  child->pid_fd_ = static_cast<int>(::syscall(SYS_pidfd_open, spawned.pid, 0));
  return child;
}

ExecChild::~ExecChild() {
  close_fd(stdin_fd_);
  if (!reaped_ && !reap(polite_exit_wait)) {
    kill();
  } else {
    // Helpers it started may still hold the group; they go with it.
    ::kill(-pid_, SIGKILL);
  }
  drain_stderr();
  flush_stderr();
  close_fd(stdout_fd_);
  close_fd(stderr_fd_);
  close_fd(pid_fd_);
}

void ExecChild::close_fd(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

void ExecChild::drain_stderr() {
  if (stderr_fd_ < 0) {
    return;
  }
  std::array<char, 8192> buffer{};
  for (;;) {
    ssize_t n = ::read(stderr_fd_, buffer.data(), buffer.size());
    if (n > 0) {
      for (ssize_t i = 0; i < n; ++i) {
        char c = buffer[static_cast<std::size_t>(i)];
        if (c == '\n') {
          flush_stderr();
          continue;
        }
        stderr_buffer_.push_back(c);
        if (stderr_buffer_.size() >= max_stderr_line) {
          flush_stderr();
        }
      }
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      close_fd(stderr_fd_);
    }
    return;
  }
}

void ExecChild::flush_stderr() {
  if (stderr_buffer_.empty()) {
    return;
  }
  std::string_view line = stderr_buffer_;
  if (line.back() == '\r') {
    line.remove_suffix(1);
  }
  if (sink_) {
    sink_(line);
  }
  stderr_buffer_.clear();
}

IoResult ExecChild::write_line(std::string_view line, Clock::time_point deadline,
                               const std::stop_token& stop) {
  std::string data(line);
  data.push_back('\n');
  std::size_t offset = 0;
  StopEvent stop_event(stop);
  SigpipeBlock no_sigpipe;
  while (offset < data.size()) {
    if (stop.stop_requested()) {
      return IoResult::stopped;
    }
    if (stdin_fd_ < 0) {
      return IoResult::closed;
    }
    ssize_t n = ::write(stdin_fd_, data.data() + offset, data.size() - offset);
    if (n > 0) {
      offset += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      close_fd(stdin_fd_);  // EPIPE: the child is gone or closed its stdin
      return IoResult::closed;
    }
    const auto now = Clock::now();
    if (now >= deadline) {
      return IoResult::timeout;
    }
    std::array<pollfd, 3> fds{};
    fds[0] = {stdin_fd_, POLLOUT, 0};
    fds[1] = {stderr_fd_, POLLIN, 0};
    fds[2] = {stop_event.fd(), POLLIN, 0};
    if (::poll(fds.data(), fds.size(), poll_timeout_ms(now, deadline)) < 0 && errno != EINTR) {
      return IoResult::closed;
    }
    if (fds[1].revents != 0) {
      drain_stderr();
    }
  }
  return IoResult::done;
}

IoResult ExecChild::read_line(std::string& line, Clock::time_point deadline,
                              const std::stop_token& stop) {
  StopEvent stop_event(stop);
  bool exit_seen = false;
  for (;;) {
    if (auto newline = stdout_buffer_.find('\n'); newline != std::string::npos) {
      line.assign(stdout_buffer_, 0, newline);
      if (!line.empty() && line.back() == '\r') {
        line.pop_back();
      }
      stdout_buffer_.erase(0, newline + 1);
      return IoResult::done;
    }
    if (stdout_buffer_.size() > max_stdout_line) {
      return IoResult::too_long;
    }
    if (stdout_fd_ < 0 || exit_seen) {
      drain_stderr();
      return IoResult::closed;
    }
    if (stop.stop_requested()) {
      return IoResult::stopped;
    }
    auto now = Clock::now();
    if (now >= deadline) {
      return IoResult::timeout;
    }
    auto wake = deadline;
    if (pid_fd_ < 0) {
      wake = std::min(wake, now + exit_poll_interval);
    }
    std::array<pollfd, 4> fds{};
    fds[0] = {stdout_fd_, POLLIN, 0};
    fds[1] = {stderr_fd_, POLLIN, 0};
    fds[2] = {pid_fd_, POLLIN, 0};
    fds[3] = {stop_event.fd(), POLLIN, 0};
    if (::poll(fds.data(), fds.size(), poll_timeout_ms(now, wake)) < 0 && errno != EINTR) {
      return IoResult::closed;
    }
    if (fds[1].revents != 0) {
      drain_stderr();
    }
    // Read stdout before believing an exit: a child may answer and then exit.
    std::array<char, 16384> buffer{};
    for (;;) {
      ssize_t n = ::read(stdout_fd_, buffer.data(), buffer.size());
      if (n > 0) {
        stdout_buffer_.append(buffer.data(), static_cast<std::size_t>(n));
        if (stdout_buffer_.size() > max_stdout_line) {
          break;
        }
        continue;
      }
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        close_fd(stdout_fd_);
      }
      break;
    }
    if (fds[2].revents != 0 || (pid_fd_ < 0 && exited())) {
      // Whatever it wrote before exiting has been read above; one more pass
      // returns a complete line if there is one, then reports the exit.
      exit_seen = true;
    }
  }
}

bool ExecChild::reap(std::chrono::milliseconds wait) {
  if (reaped_) {
    return true;
  }
  const auto until = Clock::now() + wait;
  for (;;) {
    int status = 0;
    pid_t got = ::waitpid(pid_, &status, WNOHANG);
    if (got == pid_) {
      reaped_ = true;
      wait_status_ = status;
      return true;
    }
    if (got < 0 && errno != EINTR) {
      reaped_ = true;  // not ours to wait for any more (ECHILD)
      wait_status_ = 0;
      return true;
    }
    auto now = Clock::now();
    if (now >= until) {
      return false;
    }
    pollfd entry{pid_fd_, POLLIN, 0};
    if (pid_fd_ >= 0) {
      ::poll(&entry, 1, poll_timeout_ms(now, until));
    } else {
      ::usleep(10000);
    }
  }
}

bool ExecChild::exited() { return reap(std::chrono::milliseconds(0)); }

void ExecChild::kill() {
  if (!reaped_) {
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);  // in case it left its group
    [[maybe_unused]] bool gone = reap(reap_wait);
  }
  close_fd(stdin_fd_);
}

std::string ExecChild::describe_exit() {
  if (!reaped_ && !reap(reap_wait)) {
    return "closed its output but did not exit";
  }
  if (WIFEXITED(wait_status_)) {
    return "exited with status " + std::to_string(WEXITSTATUS(wait_status_));
  }
  if (WIFSIGNALED(wait_status_)) {
    return "was killed by signal " + signal_name(WTERMSIG(wait_status_));
  }
  return "ended";
}

}  // namespace quiesce::writers::exec

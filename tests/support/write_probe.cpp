#include "tests/support/write_probe.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>
#include <thread>

namespace quiesce::test {

WriteProbe::WriteProbe(const std::string& directory) {
  static std::atomic<int> counter{0};
  const std::string path = directory + "/probe-" + std::to_string(::getpid()) + "-" +
                           std::to_string(counter++);
  pid_ = ::fork();
  if (pid_ < 0) {
    throw std::runtime_error("fork failed for a write probe");
  }
  if (pid_ == 0) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
      ::_exit(2);
    }
    const char data[] = "quiesce write probe\n";
    if (::write(fd, data, sizeof data) != static_cast<ssize_t>(sizeof data) || ::fsync(fd) != 0) {
      ::_exit(3);
    }
    ::close(fd);
    ::_exit(0);
  }
}

WriteProbe::~WriteProbe() {
  if (pid_ > 0 && !done_) {
    // Blocked on a frozen filesystem that the test's cleanup thaws: the kill
    // lands once the write returns. Wait a bounded time so no zombie stays.
    ::kill(pid_, SIGKILL);
    (void)finished_within(std::chrono::seconds(5));
  }
}

bool WriteProbe::finished_within(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done_) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      done_ = true;
      ok_ = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return ok_;
}

bool writable_within(const std::string& directory, std::chrono::milliseconds timeout) {
  WriteProbe probe(directory);
  return probe.finished_within(timeout);
}

}  // namespace quiesce::test

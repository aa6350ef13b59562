#include "platform/linux/socket_wait.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>

namespace quiesce::platform {

namespace {

// An eventfd that a stop_callback writes to.
class StopWakeup {
 public:
  explicit StopWakeup(const std::stop_token& stop)
      : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
        callback_(stop, [this] {
          const std::uint64_t one = 1;
          if (fd_ >= 0) {
            (void)!::write(fd_, &one, sizeof one);
          }
        }) {}
  ~StopWakeup() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  StopWakeup(const StopWakeup&) = delete;
  StopWakeup& operator=(const StopWakeup&) = delete;
  [[nodiscard]] int fd() const { return fd_; }

 private:
  int fd_;
  std::stop_callback<std::function<void()>> callback_;
};

}  // namespace

std::string wait_socket(int fd, SocketWait what, std::chrono::steady_clock::time_point deadline,
                        const std::stop_token& stop) {
  using std::chrono::milliseconds;
  if (fd < 0) {
    return "the connection has no socket";
  }
  StopWakeup wakeup(stop);
  const short events = static_cast<short>((what.read ? POLLIN : 0) | (what.write ? POLLOUT : 0) |
                                          (what.except ? POLLPRI : 0));
  for (;;) {
    if (stop.stop_requested()) {
      return "stopped (the call was aborted or timed out)";
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      return "no answer before the deadline";
    }
    pollfd fds[2] = {{fd, events, 0}, {wakeup.fd(), POLLIN, 0}};
    // Capped so a deadline of time_point::max() does not overflow.
    const auto left = std::min<std::int64_t>(
        std::chrono::duration_cast<milliseconds>(deadline - now).count() + 1, 60'000);
    const int rc = ::poll(fds, wakeup.fd() >= 0 ? 2 : 1, static_cast<int>(left));
    if (rc < 0 && errno != EINTR) {
      return std::string("poll failed: ") + std::strerror(errno);
    }
    // POLLHUP/POLLERR count as ready: the library's next call reports what
    // happened to the connection better than we could.
    if (rc > 0 && fds[0].revents != 0) {
      return "";
    }
  }
}

}  // namespace quiesce::platform

#include "platform/linux/systemd_notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace quiesce::platform {

namespace {

// An environment variable holding a decimal number, or nullopt.
std::optional<std::uint64_t> number_from_env(const char* name) {
  const char* text = std::getenv(name);
  if (text == nullptr) {
    return std::nullopt;
  }
  const std::string_view view(text);
  std::uint64_t value = 0;
  const auto parsed = std::from_chars(view.data(), view.data() + view.size(), value);
  if (parsed.ec != std::errc{} || parsed.ptr != view.data() + view.size()) {
    return std::nullopt;
  }
  return value;
}

}  // namespace

SystemdNotifier::SystemdNotifier() {
  if (const char* socket = std::getenv("NOTIFY_SOCKET")) {
    under_systemd_ = true;
    socket_ = socket;
  }
  // sd_watchdog_enabled(3): WATCHDOG_USEC, for this process when
  // WATCHDOG_PID is set (a child that inherited the variables must not ping).
  const auto usec = number_from_env("WATCHDOG_USEC");
  const auto pid = number_from_env("WATCHDOG_PID");
  const bool for_us = !pid || *pid == static_cast<std::uint64_t>(::getpid());
  if (usec && *usec > 0 && for_us) {
    watchdog_interval_ = std::chrono::microseconds(*usec / 2);
  }
}

void SystemdNotifier::send(const std::string& message) const {
  // As sd_notify: an absolute path, or '@' for the abstract namespace;
  // anything else is not a socket this systemd could have given us.
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (socket_.size() < 2 || socket_.size() > sizeof(address.sun_path) ||
      (socket_[0] != '/' && socket_[0] != '@')) {
    return;
  }
  std::memcpy(address.sun_path, socket_.data(), socket_.size());
  socklen_t length = offsetof(sockaddr_un, sun_path) + socket_.size();
  if (socket_[0] == '@') {
    address.sun_path[0] = '\0';
  } else if (socket_.size() < sizeof(address.sun_path)) {
    length += 1;  // the path's terminating NUL, as sd_notify passes it
  }
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return;
  }
  // Best effort, like sd_notify: systemd gone or not listening is no error
  // for the agent.
  (void)::sendto(fd, message.data(), message.size(), MSG_NOSIGNAL,
                 reinterpret_cast<const sockaddr*>(&address), length);
  ::close(fd);
}

void SystemdNotifier::ready(const std::string& status) const {
  if (under_systemd_) {
    send("READY=1\nSTATUS=" + status);
  }
}

void SystemdNotifier::status(const std::string& status) const {
  if (under_systemd_) {
    send("STATUS=" + status);
  }
}

void SystemdNotifier::stopping() const {
  if (under_systemd_) {
    send("STOPPING=1");
  }
}

void SystemdNotifier::watchdog() const {
  if (under_systemd_) {
    send("WATCHDOG=1");
  }
}

}  // namespace quiesce::platform

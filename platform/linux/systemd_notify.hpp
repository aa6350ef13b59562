#pragma once
// sd_notify for the agent when it runs as a systemd service: READY, STATUS,
// STOPPING and the watchdog ping. Every call is a no-op outside systemd.
// The protocol is one datagram of "KEY=value" lines to the AF_UNIX socket
// named by $NOTIFY_SOCKET (sd_notify(3)), spoken here without libsystemd so
// that the agent does not map it for this alone.

#include <chrono>
#include <optional>
#include <string>

namespace quiesce::platform {

class SystemdNotifier {
 public:
  SystemdNotifier();
  [[nodiscard]] bool under_systemd() const { return under_systemd_; }
  // Half of WATCHDOG_USEC when the unit has WatchdogSec=, else nullopt.
  [[nodiscard]] std::optional<std::chrono::microseconds> watchdog_interval() const {
    return watchdog_interval_;
  }

  void ready(const std::string& status) const;
  void status(const std::string& status) const;
  void stopping() const;
  void watchdog() const;

 private:
  void send(const std::string& message) const;

  bool under_systemd_ = false;
  std::string socket_;  // $NOTIFY_SOCKET: a path, or "@name" (abstract)
  std::optional<std::chrono::microseconds> watchdog_interval_;
};

}  // namespace quiesce::platform

#include "platform/linux/systemd_notify.hpp"

#include <systemd/sd-daemon.h>

#include <cstdlib>

namespace quiesce::platform {

SystemdNotifier::SystemdNotifier() {
  under_systemd_ = std::getenv("NOTIFY_SOCKET") != nullptr;
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    watchdog_interval_ = std::chrono::microseconds(usec / 2);
  }
}

void SystemdNotifier::ready(const std::string& status) const {
  if (under_systemd_) {
    sd_notifyf(0, "READY=1\nSTATUS=%s", status.c_str());
  }
}

void SystemdNotifier::status(const std::string& status) const {
  if (under_systemd_) {
    sd_notifyf(0, "STATUS=%s", status.c_str());
  }
}

void SystemdNotifier::stopping() const {
  if (under_systemd_) {
    sd_notify(0, "STOPPING=1");
  }
}

void SystemdNotifier::watchdog() const {
  if (under_systemd_) {
    sd_notify(0, "WATCHDOG=1");
  }
}

}  // namespace quiesce::platform

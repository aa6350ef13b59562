// SystemdNotifier: the sd_notify datagram protocol, spoken without
// libsystemd (sd_notify(3)): one datagram of "KEY=value" lines to the
// AF_UNIX socket $NOTIFY_SOCKET names (a path, or '@' for the abstract
// namespace); WATCHDOG_USEC, for this process only when WATCHDOG_PID says so.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include <doctest/doctest.h>

#include "platform/linux/systemd_notify.hpp"
#include "tests/support/temp_dir.hpp"

using quiesce::platform::SystemdNotifier;

namespace {

// Sets or unsets environment variables for one test, restoring them after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) {
      old_ = old;
      had_ = true;
    }
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (had_) {
      ::setenv(name_, old_.c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

// A bound datagram socket, as systemd's notify socket.
class Listener {
 public:
  // `name`: a path, or "@name" for the abstract namespace.
  explicit Listener(const std::string& name) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, name.data(), name.size());
    if (name[0] == '@') {
      address.sun_path[0] = '\0';
    }
    const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    REQUIRE(::bind(fd_, reinterpret_cast<const sockaddr*>(&address), length) == 0);
    timeval timeout{2, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  }
  ~Listener() { ::close(fd_); }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  std::string receive() const {
    char buffer[512];
    const auto got = ::recv(fd_, buffer, sizeof buffer, 0);
    return got > 0 ? std::string(buffer, static_cast<std::size_t>(got)) : std::string();
  }

 private:
  int fd_ = -1;
};

}  // namespace

TEST_CASE("systemd notify: every message is one datagram to the socket path") {
  quiesce::test::TempDir dir("quiesce-notify");
  const auto path = (dir.path() / "notify").string();
  Listener listener(path);
  ScopedEnv socket("NOTIFY_SOCKET", path.c_str());
  ScopedEnv usec("WATCHDOG_USEC", nullptr);
  SystemdNotifier notifier;
  CHECK(notifier.under_systemd());
  CHECK_FALSE(notifier.watchdog_interval());
  notifier.ready("ready: 1 writer");
  CHECK(listener.receive() == "READY=1\nSTATUS=ready: 1 writer");
  notifier.status("frozen");
  CHECK(listener.receive() == "STATUS=frozen");
  notifier.watchdog();
  CHECK(listener.receive() == "WATCHDOG=1");
  notifier.stopping();
  CHECK(listener.receive() == "STOPPING=1");
}

TEST_CASE("systemd notify: an abstract socket ('@name')") {
  const std::string name = "@quiesce-notify-test-" + std::to_string(::getpid());
  Listener listener(name);
  ScopedEnv socket("NOTIFY_SOCKET", name.c_str());
  SystemdNotifier notifier;
  notifier.ready("ok");
  CHECK(listener.receive() == "READY=1\nSTATUS=ok");
}

TEST_CASE("systemd notify: outside systemd nothing is sent and nothing fails") {
  ScopedEnv socket("NOTIFY_SOCKET", nullptr);
  SystemdNotifier notifier;
  CHECK_FALSE(notifier.under_systemd());
  notifier.ready("ok");
  notifier.watchdog();
  // An address systemd never gives (relative) is ignored, as sd_notify does.
  ScopedEnv relative("NOTIFY_SOCKET", "relative/path");
  SystemdNotifier odd;
  odd.ready("ok");
}

TEST_CASE("systemd notify: the watchdog interval is half of WATCHDOG_USEC, for this process") {
  ScopedEnv usec("WATCHDOG_USEC", "4000000");
  {
    ScopedEnv pid("WATCHDOG_PID", nullptr);
    SystemdNotifier notifier;
    REQUIRE(notifier.watchdog_interval());
    CHECK(notifier.watchdog_interval()->count() == 2000000);
  }
  {
    const auto ours = std::to_string(::getpid());
    ScopedEnv pid("WATCHDOG_PID", ours.c_str());
    CHECK(SystemdNotifier().watchdog_interval());
  }
  {
    // Inherited from a parent the watchdog is meant for.
    const auto other = std::to_string(::getpid() + 1);
    ScopedEnv pid("WATCHDOG_PID", other.c_str());
    CHECK_FALSE(SystemdNotifier().watchdog_interval());
  }
  {
    ScopedEnv bad("WATCHDOG_USEC", "soon");
    CHECK_FALSE(SystemdNotifier().watchdog_interval());
  }
}

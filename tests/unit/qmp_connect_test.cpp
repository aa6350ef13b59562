// QmpClient::connect_if_running: how the host side tells "no QEMU", "QEMU is
// exiting" and "QEMU is busy with another client" apart on a QMP socket. A
// QEMU killed during a memory save resets connections for a moment before
// its socket refuses them; taking that for a busy QEMU once left a failed
// checkpoint's overlay behind (tests/vm/qemu_vm_test.cpp, "QEMU killed during
// the save"). Plain Unix sockets stand in for QEMU's end here: what is under
// test is the client's reading of the socket's behaviour, not QMP.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "host-bridge/checkpoint/qmp_client.hpp"
#include "tests/support/temp_dir.hpp"

namespace {

using namespace std::chrono_literals;
using quiesce::host::ErrorKind;
using quiesce::host::QmpClient;

int listen_on(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::listen(fd, 8) == 0);
  return fd;
}

}  // namespace

TEST_CASE("qmp connect: no socket file, or a socket nobody listens on, is no QEMU running") {
  quiesce::test::TempDir dir;
  auto none = QmpClient::connect_if_running((dir / "absent.sock").string(), 200ms);
  REQUIRE(none);
  CHECK_FALSE(none->has_value());

  // What a killed QEMU leaves: the socket file, with no listener.
  const auto stale = (dir / "stale.sock").string();
  ::close(listen_on(stale));
  auto refused = QmpClient::connect_if_running(stale, 200ms);
  REQUIRE(refused);
  CHECK_FALSE(refused->has_value());
}

TEST_CASE("qmp connect: connections reset while the listener goes away are QEMU exiting, not a busy QEMU") {
  quiesce::test::TempDir dir;
  const auto path = (dir / "exiting.sock").string();
  const int listener = listen_on(path);
  std::atomic<int> resets{0};
  // Accepts and drops the first connections, as an exiting QEMU's socket
  // does, then stops listening altogether.
  std::thread exiting([&] {
    while (resets < 3) {
      const int peer = ::accept(listener, nullptr, nullptr);
      if (peer < 0) {
        break;
      }
      ::close(peer);
      ++resets;
    }
    ::close(listener);
  });
  auto result = QmpClient::connect_if_running(path, 1s);
  exiting.join();
  REQUIRE_MESSAGE(result, (result ? std::string() : result.error().message));
  CHECK_FALSE(result->has_value());
  CHECK(resets == 3);
}

TEST_CASE("qmp connect: a QEMU that accepts and stays silent (another client holds QMP) is a conflict") {
  quiesce::test::TempDir dir;
  const auto path = (dir / "busy.sock").string();
  const int listener = listen_on(path);  // the connect lands in its backlog; nothing is ever written
  auto result = QmpClient::connect_if_running(path, 200ms);
  ::close(listener);
  REQUIRE_FALSE(result);
  CHECK(result.error().kind == ErrorKind::conflict);
  CHECK(result.error().message.find("does not answer") != std::string::npos);
}

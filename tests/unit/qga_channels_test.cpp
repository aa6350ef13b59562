// The qga channels move bytes between a stream and a QgaConnection. Here the
// connection is a small one of the test's own (it answers "got <bytes>" and
// asks to close on "close"), so what is checked is the channel: listeners,
// limits, stop, and the wait for a virtio-serial port.
//
// A real virtio-serial port exists only in a guest (tests/vm). Its waiting
// logic runs here against a pty pair standing in for the port: the slave is
// the port (made to appear at the configured path after the channel
// started), the master is the host. A pty's slave reports POLLHUP for as
// long as its master is closed, as virtio_console does while no host is
// connected, which is what the no-spinning case needs.

#include "agent/qga/qga_channels.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "platform/linux/vsock.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/qga_socket.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
using namespace quiesce::agent::qga;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

class EchoConnection : public QgaConnection {
 public:
  explicit EchoConnection(bool can_close) : can_close_(can_close) {}
  QgaOutput feed(std::string_view bytes) override {
    QgaOutput out;
    out.bytes = "got " + std::string(bytes) + "\n";
    out.close = can_close_ && bytes.find("close") != std::string_view::npos;
    return out;
  }

 private:
  bool can_close_;
};

struct Factory {
  std::atomic<int> connections{0};
  std::atomic<int> closable{0};
  QgaConnectionFactory make() {
    return [this](const std::string&, bool can_close) {
      ++connections;
      if (can_close) {
        ++closable;
      }
      return std::make_unique<EchoConnection>(can_close);
    };
  }
};

std::shared_ptr<spdlog::logger> quiet_logger() {
  if (std::getenv("QGA_TEST_LOG") != nullptr) {
    return spdlog::stderr_color_mt("qga-test-" +
                                   std::to_string(Clock::now().time_since_epoch().count()));
  }
  return std::make_shared<spdlog::logger>("qga-test",
                                          std::make_shared<spdlog::sinks::null_sink_mt>());
}

double cpu_seconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

// A pty pair: the master is the host's end, the slave the port.
struct FakePort {
  int master = -1;
  // Held open so the master does not see a hangup before the channel opens
  // the port (a pty master reports POLLHUP while no slave is open).
  int slave = -1;
  std::string slave_path;
  FakePort() {
    master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    REQUIRE(master >= 0);
    REQUIRE(::grantpt(master) == 0);
    REQUIRE(::unlockpt(master) == 0);
    slave_path = ::ptsname(master);
    // Raw: no echo, no line editing, 0xFF and newlines pass unchanged, as on
    // a virtio-serial port.
    slave = ::open(slave_path.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
    REQUIRE(slave >= 0);
    termios mode{};
    REQUIRE(::tcgetattr(slave, &mode) == 0);
    ::cfmakeraw(&mode);
    REQUIRE(::tcsetattr(slave, TCSANOW, &mode) == 0);
  }
  ~FakePort() { ::close(slave); }
  FakePort(const FakePort&) = delete;
  FakePort& operator=(const FakePort&) = delete;
};

}  // namespace

TEST_CASE("qga unix socket: replies, the socket's mode, oversize input closes, reconnects") {
  test::TempDir dir;
  Factory factory;
  QgaChannelsConfig config;
  config.virtio_serial_path.clear();
  config.unix_socket = QgaUnixSocket{(dir / "qga.sock").string(), 0640};
  QgaChannels channels(config, factory.make(), quiet_logger());
  channels.start();

  struct stat info {};
  REQUIRE(::stat((dir / "qga.sock").c_str(), &info) == 0);
  CHECK((info.st_mode & 0777) == 0640);

  for (int round = 0; round < 3; ++round) {
    test::QgaSocket client(dir / "qga.sock");
    REQUIRE(client.send("ping"));
    CHECK(client.lines(1) == std::vector<std::string>{"got ping"});
  }
  test::QgaSocket closing(dir / "qga.sock");
  REQUIRE(closing.send("close"));
  CHECK(closing.lines(1) == std::vector<std::string>{"got close"});
  CHECK(closing.closed_within(5s));
  CHECK(factory.closable == 4);
  channels.stop();
  CHECK_FALSE(std::filesystem::exists(dir / "qga.sock"));
}

TEST_CASE("qga unix socket: a client over the limit is closed at once, a freed slot is reused") {
  test::TempDir dir;
  Factory factory;
  QgaChannelsConfig config;
  config.virtio_serial_path.clear();
  config.unix_socket = QgaUnixSocket{(dir / "qga.sock").string(), 0600};
  config.max_connections = 3;
  QgaChannels channels(config, factory.make(), quiet_logger());
  channels.start();

  std::vector<test::QgaSocket> held;
  for (int i = 0; i < 3; ++i) {
    held.emplace_back(dir / "qga.sock");
    REQUIRE(held.back().send("hello"));
    REQUIRE(held.back().lines(1).size() == 1);  // served
  }
  test::QgaSocket over(dir / "qga.sock");
  CHECK(over.closed_within(5s));
  held.front().close();
  // The slot frees when its thread ends; a new client is served then.
  CHECK(test::eventually(5s, [&] {
    test::QgaSocket again(dir / "qga.sock");
    return again.send("again") && again.lines(1, 500ms).size() == 1;
  }));
}

TEST_CASE("qga channels stop at once with idle clients and a missing port") {
  test::TempDir dir;
  Factory factory;
  QgaChannelsConfig config;
  config.virtio_serial_path = (dir / "no" / "such" / "port").string();
  config.unix_socket = QgaUnixSocket{(dir / "qga.sock").string(), 0600};
  QgaChannels channels(config, factory.make(), quiet_logger());
  channels.start();
  test::QgaSocket idle(dir / "qga.sock");  // blocked in read on the agent side
  REQUIRE(idle.send("x"));
  REQUIRE(idle.lines(1).size() == 1);
  const auto start = Clock::now();
  channels.stop();
  const auto took = Clock::now() - start;
  CHECK(took < 2s);
  MESSAGE("stop with an idle client and a missing port: "
          << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(idle.closed_within(2s));
}

TEST_CASE("a socket path that is not a socket is refused, not deleted") {
  test::TempDir dir;
  Factory factory;
  { std::ofstream(dir / "file") << "keep me"; }
  QgaChannelsConfig config;
  config.virtio_serial_path.clear();
  config.unix_socket = QgaUnixSocket{(dir / "file").string(), 0600};
  QgaChannels channels(config, factory.make(), quiet_logger());
  CHECK_THROWS_WITH_AS(channels.start(), doctest::Contains("not a socket"), std::runtime_error);
  CHECK(std::filesystem::is_regular_file(dir / "file"));
}

TEST_CASE(
    "virtio-serial (a pty standing in): the port is waited for, served, and a hung-up host "
    "costs no CPU") {
  test::TempDir dir;
  Factory factory;
  FakePort port;
  QgaChannelsConfig config;
  // Neither the port nor its directory exist yet, as before udev made them.
  config.virtio_serial_path = (dir / "virtio-ports" / "org.qemu.guest_agent.0").string();
  QgaChannels channels(config, factory.make(), quiet_logger());
  channels.start();
  std::this_thread::sleep_for(200ms);
  CHECK(factory.connections == 0);

  const auto appeared = Clock::now();
  std::filesystem::create_directory(dir / "virtio-ports");
  std::filesystem::create_symlink(port.slave_path, config.virtio_serial_path);
  auto host = test::QgaSocket::adopt(port.master);
  REQUIRE(host.send("{\"execute\":\"guest-ping\"}"));
  const auto replies = host.lines(1, 5s);
  const auto served = Clock::now() - appeared;
  REQUIRE(replies.size() == 1);
  CHECK(replies[0] == "got {\"execute\":\"guest-ping\"}");
  CHECK(factory.connections == 1);
  CHECK(factory.closable == 0);  // the port is never closed by the guest
  CHECK(channels.virtio_serial_sessions() == 1);
  MESSAGE("port appeared -> first reply: "
          << std::chrono::duration_cast<std::chrono::microseconds>(served).count() << " us");

  // The host goes away: the slave reports POLLHUP from now on. The channel
  // must wait for an event, not spin on poll().
  host.close();
  std::this_thread::sleep_for(200ms);
  const double cpu_before = cpu_seconds();
  std::this_thread::sleep_for(1s);
  const double cpu_used = cpu_seconds() - cpu_before;
  MESSAGE("CPU used in 1 s with the host gone: " << cpu_used * 1000 << " ms");
  CHECK(cpu_used < 0.1);

  // The port is unplugged and plugged again (a new node at the same path):
  // the channel notices the node going, waits, and serves the new one.
  std::filesystem::remove(config.virtio_serial_path);
  FakePort replugged;
  std::this_thread::sleep_for(100ms);
  std::filesystem::create_symlink(replugged.slave_path, config.virtio_serial_path);
  auto host_again = test::QgaSocket::adopt(replugged.master);
  REQUIRE(host_again.send("again"));
  CHECK(host_again.lines(1, 5s) == std::vector<std::string>{"got again"});
  CHECK(channels.virtio_serial_sessions() == 2);

  const auto start = Clock::now();
  channels.stop();
  CHECK(Clock::now() - start < 2s);
}

// Connects to the local vsock (VMADDR_CID_LOCAL, vsock_loopback); -1 when
// this kernel cannot.
int connect_local_vsock(std::uint32_t port) {
  const int fd = ::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -1;
  }
  const auto address = platform::make_vsock_sockaddr(VMADDR_CID_LOCAL, port);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

TEST_CASE("qga vsock: only allowed CIDs are served, without vsock a warning, the rest starts") {
  test::TempDir dir;
  Factory factory;
  // A port of its own per run: other test binaries may run at the same time.
  const auto port = static_cast<std::uint32_t>(20'000 + ::getpid() % 20'000);
  for (const std::uint32_t allowed : {2U, static_cast<std::uint32_t>(VMADDR_CID_LOCAL)}) {
    CAPTURE(allowed);
    QgaChannelsConfig config;
    config.virtio_serial_path.clear();
    config.unix_socket = QgaUnixSocket{(dir / "qga.sock").string(), 0600};
    config.vsock = QgaVsock{port, {allowed}};
    QgaChannels channels(config, factory.make(), quiet_logger());
    channels.start();
    test::QgaSocket unix_client(dir / "qga.sock");
    REQUIRE(unix_client.send("still here"));
    CHECK(unix_client.lines(1).size() == 1);
    if (!channels.vsock_listening()) {
      MESSAGE("no vsock in this kernel: the vsock half is not exercised");
      return;
    }
    const int fd = connect_local_vsock(port);
    if (fd < 0) {
      MESSAGE("vsock binds but has no loopback transport: the vsock half is not exercised");
      return;
    }
    auto vsock_client = test::QgaSocket::adopt(fd);
    if (allowed == 2) {
      CHECK(vsock_client.closed_within(5s));  // the local CID is not the host's
    } else {
      REQUIRE(vsock_client.send("over vsock"));
      CHECK(vsock_client.lines(1) == std::vector<std::string>{"got over vsock"});
    }
  }
}

TEST_CASE("virtio-serial off: \"\" starts no port channel") {
  Factory factory;
  QgaChannelsConfig config;
  config.virtio_serial_path.clear();
  QgaChannels channels(config, factory.make(), quiet_logger());
  channels.start();
  channels.stop();
  CHECK(factory.connections == 0);
  CHECK(channels.virtio_serial_sessions() == 0);
}

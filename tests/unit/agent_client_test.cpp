// AgentClient: endpoint strings, deadlines, the retry rules, error parsing,
// typed calls, and the hybrid vsock handshake through an in-test proxy.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include <doctest/doctest.h>

#include "host-bridge/client/agent_client.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/unit/http_test_helpers.hpp"

using namespace std::chrono_literals;
using quiesce::client::AgentClient;
using quiesce::client::ClientOptions;
using quiesce::client::Endpoint;
using quiesce::client::TransportError;

namespace {

ClientOptions options_for(const std::string& endpoint, std::chrono::milliseconds timeout = 5s) {
  ClientOptions options;
  options.endpoint = Endpoint::parse(endpoint);
  options.timeout = timeout;
  options.retry_delay = 20ms;
  return options;
}

// Accepts connections on a Unix socket from a thread; what it does with each
// is up to `serve`. Counts connections.
class FakeUnixPeer {
 public:
  FakeUnixPeer(const std::string& path, std::function<void(int)> serve)
      : listener_(path), serve_(std::move(serve)) {
    thread_ = std::thread([this] { loop(); });
  }
  ~FakeUnixPeer() {
    stop_ = true;
    thread_.join();
    for (auto& worker : workers_) {
      worker.join();
    }
  }
  FakeUnixPeer(const FakeUnixPeer&) = delete;
  FakeUnixPeer& operator=(const FakeUnixPeer&) = delete;
  [[nodiscard]] int connections() const { return connections_.load(); }

 private:
  void loop() {
    while (!stop_) {
      pollfd p{listener_.fd(), POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) {
        continue;
      }
      const int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        continue;
      }
      ++connections_;
      workers_.emplace_back([this, fd] {
        serve_(fd);
        ::close(fd);
      });
    }
  }

  quiesce::test::SilentUnixListener listener_;
  std::function<void(int)> serve_;
  std::thread thread_;
  std::vector<std::thread> workers_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
};

// Reads up to and including the first '\n'.
std::string read_line(int fd) {
  std::string line;
  char c = 0;
  while (::recv(fd, &c, 1, 0) == 1) {
    line.push_back(c);
    if (c == '\n') {
      break;
    }
  }
  return line;
}

int connect_unix(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {  // NOLINT
    ::close(fd);
    return -1;
  }
  return fd;
}

// Copies bytes both ways until either side closes.
void splice_both_ways(int a, int b) {
  char buffer[4096];
  while (true) {
    pollfd fds[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
    if (::poll(fds, 2, 5000) <= 0) {
      return;
    }
    for (int i = 0; i < 2; ++i) {
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
        continue;
      }
      const int from = i == 0 ? a : b;
      const int to = i == 0 ? b : a;
      const auto n = ::recv(from, buffer, sizeof buffer, 0);
      if (n <= 0 || ::send(to, buffer, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) {
        return;
      }
    }
  }
}

}  // namespace

TEST_CASE("client: endpoint strings") {
  const auto unix_ep = Endpoint::parse("unix:/run/quiesce/agent.sock");
  CHECK(unix_ep.kind == Endpoint::Kind::unix_socket);
  CHECK(unix_ep.path == "/run/quiesce/agent.sock");
  CHECK(Endpoint::parse("/tmp/a.sock").path == "/tmp/a.sock");

  const auto tcp = Endpoint::parse("tcp:127.0.0.1:7700");
  CHECK(tcp.kind == Endpoint::Kind::tcp);
  CHECK(tcp.host == "127.0.0.1");
  CHECK(tcp.port == 7700);
  const auto tcp6 = Endpoint::parse("tcp:[::1]:80");
  CHECK(tcp6.host == "::1");
  CHECK(tcp6.to_string() == "tcp:[::1]:80");
  CHECK(Endpoint::parse("tcp:agent.example:443").host == "agent.example");

  const auto vsock = Endpoint::parse("vsock:3:7700");
  CHECK(vsock.kind == Endpoint::Kind::vsock);
  CHECK(vsock.cid == 3);
  CHECK(vsock.port == 7700);
  CHECK(vsock.to_string() == "vsock:3:7700");

  const auto hybrid = Endpoint::parse("hvsock:/var/lib/fc/v.sock:7700");
  CHECK(hybrid.kind == Endpoint::Kind::hybrid_vsock);
  CHECK(hybrid.path == "/var/lib/fc/v.sock");
  CHECK(hybrid.port == 7700);
  CHECK(hybrid.to_string() == "hvsock:/var/lib/fc/v.sock:7700");

  const auto qga = Endpoint::parse("qga:/var/lib/libvirt/qemu/channel/target/vm.org.qemu.guest_agent.0");
  CHECK(qga.kind == Endpoint::Kind::qga);
  CHECK(qga.path == "/var/lib/libvirt/qemu/channel/target/vm.org.qemu.guest_agent.0");
  CHECK(qga.to_string() == "qga:" + qga.path);

  for (const char* bad : {"", "agent.sock", "unix:", "tcp:host", "tcp:host:", "tcp:host:http", "tcp::80",
                          "tcp:host:0", "tcp:host:70000", "tcp:::1:80", "vsock:3", "vsock:x:1", "vsock:3:-1",
                          "vsock:3:1:2", "hvsock:7700", "hvsock::7700", "http://x", "ftp:a:1", "qga:", "qga:relative.sock"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS((void)Endpoint::parse(bad), std::invalid_argument);
  }
}

TEST_CASE("client: ids are encoded into paths") {
  CHECK(quiesce::client::encode_path_segment("abc-1_2.3~") == "abc-1_2.3~");
  CHECK(quiesce::client::encode_path_segment("a/b c?") == "a%2Fb%20c%3F");
  CHECK(quiesce::client::encode_path_segment("..%") == "..%25");
}

TEST_CASE("client: a server that never answers times out within the deadline") {
  quiesce::test::TempDir dir;
  const auto path = (dir / "silent.sock").string();
  quiesce::test::SilentUnixListener silent(path);  // connects succeed via the backlog

  AgentClient client(options_for("unix:" + path, 300ms));
  const auto started = std::chrono::steady_clock::now();
  try {
    (void)client.health();
    FAIL("expected a timeout");
  } catch (const TransportError& e) {
    CHECK(e.kind() == TransportError::Kind::timeout);
    CHECK(e.request_sent());
    CHECK(std::string(e.what()).find("timed out") != std::string::npos);
  }
  const auto elapsed = std::chrono::steady_clock::now() - started;
  CHECK(elapsed >= 250ms);
  CHECK(elapsed < 2s);  // the deadline covers the retries too
}

TEST_CASE("client: connect failures are retried, and say nothing was sent") {
  quiesce::test::TempDir dir;
  auto options = options_for("unix:" + (dir / "nobody.sock").string());
  options.retries = 2;
  AgentClient client(options);
  const auto started = std::chrono::steady_clock::now();
  try {
    (void)client.freeze("s1");
    FAIL("expected a connect failure");
  } catch (const TransportError& e) {
    CHECK(e.kind() == TransportError::Kind::connect);
    CHECK_FALSE(e.request_sent());
  }
  // Two retries: 20 ms + 40 ms of back-off.
  CHECK(std::chrono::steady_clock::now() - started >= 60ms);
}

TEST_CASE("client: GETs are retried after a broken answer, freeze/thaw/complete never") {
  quiesce::test::TempDir dir;
  const auto path = (dir / "rude.sock").string();
  // Reads the request, then hangs up without answering.
  FakeUnixPeer rude(path, [](int fd) { (void)read_line(fd); });
  auto options = options_for("unix:" + path);
  options.retries = 2;
  AgentClient client(options);

  CHECK_THROWS_AS((void)client.health(), TransportError);
  CHECK(quiesce::test::eventually(1s, [&] { return rude.connections() == 3; }));

  for (const auto& call : {std::function<void()>([&] { (void)client.freeze("s"); }),
                           std::function<void()>([&] { (void)client.thaw("s"); }),
                           std::function<void()>([&] { (void)client.complete("s", "snap"); })}) {
    const int before = rude.connections();
    try {
      call();
      FAIL("expected a transport error");
    } catch (const TransportError& e) {
      CHECK(e.request_sent());
    }
    std::this_thread::sleep_for(100ms);
    CHECK(rude.connections() == before + 1);
  }
}

TEST_CASE("client: typed calls use the v1 routes and parse API errors") {
  quiesce::test::TempDir dir;
  quiesce::test::FakeHandler fake;
  fake.respond = [](const quiesce::api::Request& request) {
    quiesce::api::Response response;
    if (request.target == "/v1/sessions/busy/freeze") {
      quiesce::wire::ApiError error;
      error.http_status = 409;
      error.code = "conflict";
      error.message = "session s0 is active";
      error.writer = "pg";
      error.retryable = true;
      response.status = 409;
      response.body = quiesce::wire::error_body(error);
    } else if (request.target == "/metrics") {
      response.content_type = "text/plain; version=0.0.4";
      response.body = "quiesce_up 1\n";
    } else if (request.target == "/plain-error") {
      response.status = 502;
      response.content_type = "text/plain";
      response.body = "bad gateway";
    } else {
      response.status = request.method == "POST" && request.target == "/v1/sessions" ? 201 : 200;
      response.body = nlohmann::json{{"method", request.method}, {"target", request.target}}.dump();
    }
    return response;
  };
  quiesce::api::ServerConfig config;
  config.unix_socket = quiesce::api::UnixListener{};
  config.unix_socket->path = (dir / "agent.sock").string();
  quiesce::test::RunningServer running(config, fake.handler());
  AgentClient client(options_for("unix:" + config.unix_socket->path));

  CHECK(client.writers().body["target"] == "/v1/writers");
  const auto created = client.create_session({{"freeze_window_ms", 5000}});
  CHECK(created.status == 201);
  CHECK(created.ok());
  CHECK(client.session("a/b").body["target"] == "/v1/sessions/a%2Fb");
  CHECK(client.thaw("s1").body["target"] == "/v1/sessions/s1/thaw");
  CHECK(client.complete("s1", "snap-7").body["target"] == "/v1/sessions/s1/complete");
  const auto aborted = client.abort("s1");
  CHECK(aborted.body["method"] == "DELETE");
  CHECK(aborted.body["target"] == "/v1/sessions/s1");

  const auto requests = fake.requests();
  REQUIRE(requests.size() == 6);
  CHECK(nlohmann::json::parse(requests[1].body) == nlohmann::json{{"freeze_window_ms", 5000}});
  CHECK(nlohmann::json::parse(requests[4].body) == nlohmann::json{{"snapshot_id", "snap-7"}});

  const auto conflict = client.freeze("busy");
  CHECK(conflict.status == 409);
  REQUIRE(conflict.error);
  CHECK(conflict.error->code == "conflict");
  CHECK(conflict.error->writer == "pg");
  CHECK(conflict.error->retryable);

  const auto metrics = client.metrics();
  CHECK(metrics.ok());
  CHECK(metrics.raw_body == "quiesce_up 1\n");
  CHECK(metrics.body.is_null());

  const auto plain = client.request("GET", "/plain-error");
  REQUIRE(plain.error);
  CHECK(plain.error->code == "http_502");
  CHECK(plain.error->message == "bad gateway");
}

TEST_CASE("client: hybrid vsock handshake through a proxy") {
  quiesce::test::TempDir dir;
  quiesce::test::FakeHandler fake;
  quiesce::api::ServerConfig config;
  config.unix_socket = quiesce::api::UnixListener{};
  config.unix_socket->path = (dir / "agent.sock").string();
  quiesce::test::RunningServer running(config, fake.handler());

  const auto proxy_path = (dir / "vmm.sock").string();
  std::atomic<bool> saw_connect{false};
  // Plays the VMM: "CONNECT 7700\n" → "OK <host port>\n", then splices to the agent.
  FakeUnixPeer vmm(proxy_path, [&](int fd) {
    const auto line = read_line(fd);
    if (line != "CONNECT 7700\n") {
      const std::string refusal = "ERR unknown port\n";
      (void)::send(fd, refusal.data(), refusal.size(), MSG_NOSIGNAL);
      return;
    }
    saw_connect = true;
    const int agent = connect_unix(config.unix_socket->path);
    const std::string ok = "OK 1073741824\n";
    (void)::send(fd, ok.data(), ok.size(), MSG_NOSIGNAL);
    splice_both_ways(fd, agent);
    ::close(agent);
  });

  AgentClient client(options_for("hvsock:" + proxy_path + ":7700"));
  const auto health = client.health();
  CHECK(saw_connect);
  CHECK(health.status == 200);
  CHECK(health.body["echo"] == "/v1/health");

  auto refused_options = options_for("hvsock:" + proxy_path + ":9999");
  refused_options.retries = 0;
  AgentClient refused(refused_options);
  try {
    (void)refused.freeze("s");
    FAIL("expected the handshake to fail");
  } catch (const TransportError& e) {
    CHECK(e.kind() == TransportError::Kind::connect);
    CHECK_FALSE(e.request_sent());
    CHECK(std::string(e.what()).find("ERR unknown port") != std::string::npos);
  }
}

TEST_CASE("client: vsock connect fails cleanly without a vsock peer") {
  // No vsock loopback here: CID 1 (local) has no listener or no transport.
  auto options = options_for("vsock:1:7700", 1s);
  options.retries = 0;
  AgentClient client(options);
  CHECK_THROWS_AS((void)client.health(), TransportError);
}

// HttpServer over real sockets (temp Unix sockets, TCP port 0), driven by the
// host client and by raw sockets that send what a client should not.
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <future>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "host-bridge/client/agent_client.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/unit/http_test_helpers.hpp"

using namespace std::chrono_literals;
using quiesce::test::FakeHandler;
using quiesce::test::Gate;
using quiesce::test::RawSocket;
using quiesce::test::RunningServer;

namespace {

quiesce::api::ServerConfig unix_config(const quiesce::test::TempDir& dir) {
  quiesce::api::ServerConfig config;
  config.unix_socket = quiesce::api::UnixListener{};
  config.unix_socket->path = (dir / "run" / "agent.sock").string();
  config.unix_socket->mode = 0600;
  return config;
}

quiesce::client::AgentClient unix_client(const quiesce::api::ServerConfig& config,
                                         std::chrono::milliseconds timeout = 5s) {
  quiesce::client::ClientOptions options;
  options.endpoint = quiesce::client::Endpoint::parse("unix:" + config.unix_socket->path);
  options.timeout = timeout;
  return quiesce::client::AgentClient(options);
}

std::string error_code_of(const std::string& body) {
  const auto json = nlohmann::json::parse(body, nullptr, false);
  if (!json.is_object() || !json.contains("error")) {
    return "<not an error body: " + body + ">";
  }
  return json["error"].value("code", "");
}

}  // namespace

TEST_CASE("http: requests reach the handler with peer info, off the I/O thread") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  const auto config = unix_config(dir);
  RunningServer running(config, fake.handler());
  auto client = unix_client(config);

  const auto health = client.health();
  CHECK(health.status == 200);
  CHECK(health.body["echo"] == "/v1/health");

  const auto created = client.create_session({{"writers", {"a", "b"}}});
  CHECK(created.status == 200);

  const auto requests = fake.requests();
  REQUIRE(requests.size() == 2);
  CHECK(requests[0].method == "GET");
  CHECK(requests[0].target == "/v1/health");
  CHECK(requests[0].peer.transport == quiesce::api::Transport::unix_socket);
  CHECK(requests[0].peer.unix_uid == ::getuid());
  CHECK(requests[0].peer.unix_pid == ::getpid());
  CHECK(requests[0].peer.description.find("unix pid " + std::to_string(::getpid())) == 0);
  CHECK(requests[1].method == "POST");
  CHECK(requests[1].target == "/v1/sessions");
  CHECK(nlohmann::json::parse(requests[1].body) == nlohmann::json{{"writers", {"a", "b"}}});

  for (const auto& id : fake.threads()) {
    CHECK(id != running.io_thread());
    CHECK(id != std::this_thread::get_id());
  }

  struct stat st {};
  REQUIRE(::stat(config.unix_socket->path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("http: malformed requests get a 400 JSON error") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  const auto config = unix_config(dir);
  RunningServer running(config, fake.handler());

  SUBCASE("garbage request line") {
    auto raw = RawSocket::unix_socket(config.unix_socket->path);
    raw.send("NOT HTTP AT ALL\r\n\r\n");
    auto response = raw.read_response();
    REQUIRE(response);
    CHECK(response->status == 400);
    CHECK(response->headers["content-type"] == "application/json");
    CHECK(error_code_of(response->body) == "bad_request");
    CHECK(raw.closed_by_peer());
  }
  SUBCASE("bad header line") {
    auto raw = RawSocket::unix_socket(config.unix_socket->path);
    raw.send("GET / HTTP/1.1\r\nHost test\r\n\r\n");
    auto response = raw.read_response();
    REQUIRE(response);
    CHECK(response->status == 400);
    CHECK(error_code_of(response->body) == "bad_request");
  }
  SUBCASE("target that is not a path") {
    auto raw = RawSocket::unix_socket(config.unix_socket->path);
    raw.send("GET http://example.com/v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    auto response = raw.read_response();
    REQUIRE(response);
    CHECK(response->status == 400);
  }
  SUBCASE("unknown method") {
    auto raw = RawSocket::unix_socket(config.unix_socket->path);
    raw.send("BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n");
    auto response = raw.read_response();
    REQUIRE(response);
    CHECK(response->status == 405);
    CHECK(error_code_of(response->body) == "method_not_allowed");
    CHECK(response->headers.count("allow") == 1);
  }
  CHECK(fake.count() == 0);
}

TEST_CASE("http: HEAD answers the GET headers without a body") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  const auto config = unix_config(dir);
  RunningServer running(config, fake.handler());
  auto raw = RawSocket::unix_socket(config.unix_socket->path);
  raw.expect_head_response(true);
  raw.send("HEAD /v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
  auto response = raw.read_response();
  REQUIRE(response);
  CHECK(response->status == 200);
  CHECK(response->headers["content-length"] == std::to_string(std::string(R"({"echo":"/v1/health"})").size()));
  CHECK(response->body.empty());
  REQUIRE(fake.count() == 1);
  CHECK(fake.requests()[0].method == "GET");
}

TEST_CASE("http: an oversize body gets 413 and never reaches the handler") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  auto config = unix_config(dir);
  config.limits.max_body_bytes = 1024;
  RunningServer running(config, fake.handler());

  SUBCASE("declared by Content-Length") {
    auto raw = RawSocket::unix_socket(config.unix_socket->path);
    raw.send("POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n" +
             std::string(4096, 'x'));
    auto response = raw.read_response();
    REQUIRE(response);
    CHECK(response->status == 413);
    CHECK(error_code_of(response->body) == "body_too_large");
  }
  SUBCASE("chunked") {
    auto raw = RawSocket::unix_socket(config.unix_socket->path);
    raw.send("POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" +
             std::string(0x800, 'x') + "\r\n0\r\n\r\n");
    auto response = raw.read_response();
    REQUIRE(response);
    CHECK(response->status == 413);
  }
  SUBCASE("through the client") {
    auto client = unix_client(config);
    const auto result = client.request("POST", "/v1/sessions", nlohmann::json{{"pad", std::string(5000, 'y')}});
    CHECK(result.status == 413);
    REQUIRE(result.error);
    CHECK(result.error->code == "body_too_large");
  }
  CHECK(fake.count() == 0);
}

TEST_CASE("http: oversize headers get 431") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  auto config = unix_config(dir);
  config.limits.max_header_bytes = 1024;
  RunningServer running(config, fake.handler());
  auto raw = RawSocket::unix_socket(config.unix_socket->path);
  raw.send(quiesce::test::http_get("/v1/health", "X-Big: " + std::string(4000, 'h') + "\r\n"));
  auto response = raw.read_response();
  REQUIRE(response);
  CHECK(response->status == 431);
  CHECK(error_code_of(response->body) == "headers_too_large");
  CHECK(fake.count() == 0);
}

TEST_CASE("http: a stalled client times out while others are served") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  auto config = unix_config(dir);
  config.limits.read_timeout = 400ms;
  RunningServer running(config, fake.handler());

  auto slow = RawSocket::unix_socket(config.unix_socket->path);
  slow.send("GET /v1/health HTTP/1.1\r\nHost:");  // and then nothing

  auto client = unix_client(config);
  const auto started = std::chrono::steady_clock::now();
  CHECK(client.health().status == 200);
  CHECK(std::chrono::steady_clock::now() - started < 400ms);

  auto response = slow.read_response(3s);
  REQUIRE(response);
  CHECK(response->status == 408);
  CHECK(error_code_of(response->body) == "timeout");
  CHECK(slow.closed_by_peer());
  CHECK(fake.count() == 1);
}

TEST_CASE("http: keep-alive serves several requests on one connection, idle ones close") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  auto config = unix_config(dir);
  config.limits.keepalive_timeout = 300ms;
  RunningServer running(config, fake.handler());

  auto raw = RawSocket::unix_socket(config.unix_socket->path);
  for (int i = 0; i < 3; ++i) {
    REQUIRE(raw.send(quiesce::test::http_get("/n/" + std::to_string(i))));
    auto response = raw.read_response();
    REQUIRE(response);
    CHECK(response->status == 200);
    CHECK(response->body == R"({"echo":"/n/)" + std::to_string(i) + R"("})");
  }
  // Pipelined: two requests in one write.
  REQUIRE(raw.send(quiesce::test::http_get("/p/1") + quiesce::test::http_get("/p/2")));
  CHECK(raw.read_response()->body == R"({"echo":"/p/1"})");
  CHECK(raw.read_response()->body == R"({"echo":"/p/2"})");
  CHECK(fake.count() == 5);
  // Idle past the keep-alive timeout: closed without a response.
  CHECK(raw.closed_by_peer(3s));
}

TEST_CASE("http: connections beyond max_connections get 503 with Retry-After, also past twice the limit") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  auto config = unix_config(dir);
  config.limits.max_connections = 2;
  RunningServer running(config, fake.handler());

  std::vector<RawSocket> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(RawSocket::unix_socket(config.unix_socket->path));
    REQUIRE(held.back().send(quiesce::test::http_get("/held")));
    REQUIRE(held.back().read_response());  // accepted and counted
  }
  // Connected before any sends: the first two wait for their header in a
  // 503 session; past twice the limit (issue #15 item 4: these were reset
  // unanswered) the same 503 is written at accept.
  std::vector<RawSocket> extra;
  for (int i = 0; i < 6; ++i) {
    extra.push_back(RawSocket::unix_socket(config.unix_socket->path));
  }
  for (std::size_t i = 0; i < extra.size(); ++i) {
    CAPTURE(i);
    if (i < 2) {
      REQUIRE(extra[i].send(quiesce::test::http_get("/extra")));
    }
    auto response = extra[i].read_response();
    REQUIRE(response);
    CHECK(response->status == 503);
    CHECK(response->headers["retry-after"] == "1");
    CHECK(error_code_of(response->body) == "too_many_connections");
    CHECK(extra[i].closed_by_peer());
  }

  held.clear();  // frees the slots
  auto client = unix_client(config);
  CHECK(quiesce::test::eventually(2s, [&] { return client.health().status == 200; }));
  CHECK(fake.count() == 3);
}

TEST_CASE("http: TCP requires the bearer token") {
  FakeHandler fake;
  quiesce::api::ServerConfig config;
  config.tcp = quiesce::api::TcpListener{"127.0.0.1", 0, "s3cret-token"};
  RunningServer running(config, fake.handler());
  REQUIRE(running.tcp_port() != 0);

  const auto call = [&](std::optional<std::string> token) {
    quiesce::client::ClientOptions options;
    options.endpoint = quiesce::client::Endpoint::parse("tcp:127.0.0.1:" + std::to_string(running.tcp_port()));
    options.token = std::move(token);
    options.timeout = 5s;
    return quiesce::client::AgentClient(options).health();
  };

  const auto missing = call(std::nullopt);
  CHECK(missing.status == 401);
  REQUIRE(missing.error);
  CHECK(missing.error->code == "unauthorized");
  CHECK(call("wrong-token").status == 401);
  CHECK(call("s3cret-toke").status == 401);
  CHECK(call("s3cret-token-and-more").status == 401);
  CHECK(fake.count() == 0);

  const auto good = call("s3cret-token");
  CHECK(good.status == 200);
  REQUIRE(fake.count() == 1);
  const auto peer = fake.requests()[0].peer;
  CHECK(peer.transport == quiesce::api::Transport::tcp);
  CHECK(peer.description.find("tcp 127.0.0.1:") == 0);

  // Unauthenticated uploads are refused before the body is read.
  auto raw = RawSocket::tcp(running.tcp_port());
  raw.send("POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n");
  auto response = raw.read_response();
  REQUIRE(response);
  CHECK(response->status == 401);
  CHECK(response->headers["www-authenticate"] == "Bearer");
}

TEST_CASE("http: a TCP listener without a token is refused") {
  FakeHandler fake;
  quiesce::api::ServerConfig config;
  config.tcp = quiesce::api::TcpListener{"127.0.0.1", 0, ""};
  quiesce::api::HttpServer server(config, fake.handler(), quiesce::test::quiet_logger());
  CHECK_THROWS_AS(server.start(), std::runtime_error);
}

TEST_CASE("http: a stale socket file is replaced - a live one or a regular file is not") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  const auto config = unix_config(dir);
  std::filesystem::create_directories(dir / "run");

  SUBCASE("stale socket") {
    {
      // Bound then closed without unlink: what a killed agent leaves behind.
      quiesce::test::SilentUnixListener dead(config.unix_socket->path);
    }
    REQUIRE(std::filesystem::is_socket(config.unix_socket->path));
    RunningServer running(config, fake.handler());
    CHECK(unix_client(config).health().status == 200);
  }
  SUBCASE("live socket") {
    quiesce::test::SilentUnixListener live(config.unix_socket->path);
    quiesce::api::HttpServer server(config, fake.handler(), quiesce::test::quiet_logger());
    CHECK_THROWS_WITH_AS(server.start(), doctest::Contains("another process is listening"), std::runtime_error);
    CHECK(std::filesystem::is_socket(config.unix_socket->path));
  }
  SUBCASE("regular file") {
    std::ofstream(config.unix_socket->path) << "precious";
    quiesce::api::HttpServer server(config, fake.handler(), quiesce::test::quiet_logger());
    CHECK_THROWS_WITH_AS(server.start(), doctest::Contains("not a socket"), std::runtime_error);
    CHECK(std::filesystem::is_regular_file(config.unix_socket->path));
  }
}

TEST_CASE("http: the socket file is removed on stop") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  const auto config = unix_config(dir);
  {
    RunningServer running(config, fake.handler());
    CHECK(std::filesystem::is_socket(config.unix_socket->path));
  }
  CHECK_FALSE(std::filesystem::exists(config.unix_socket->path));
}

TEST_CASE("http: a slow handler does not block other requests") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  Gate gate;
  fake.respond = [&](const quiesce::api::Request& request) {
    if (request.target == "/slow") {
      gate.wait_for(10s);
    }
    quiesce::api::Response response;
    response.body = R"({"target":")" + request.target + R"("})";
    return response;
  };
  const auto config = unix_config(dir);
  RunningServer running(config, fake.handler());

  auto slow = std::async(std::launch::async, [&] { return unix_client(config, 15s).request("POST", "/slow"); });
  REQUIRE(quiesce::test::eventually(2s, [&] { return fake.count() == 1; }));
  auto client = unix_client(config);
  const auto started = std::chrono::steady_clock::now();
  CHECK(client.health().status == 200);
  CHECK(std::chrono::steady_clock::now() - started < 2s);
  CHECK(slow.wait_for(0ms) == std::future_status::timeout);

  gate.open();
  CHECK(slow.get().status == 200);
}

TEST_CASE("http: a handler may answer early and keep working, its return value then ignored") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  Gate gate;
  std::atomic<bool> finished{false};
  fake.respond = [&](const quiesce::api::Request& request) {
    REQUIRE(request.respond);
    quiesce::api::Response early;
    early.body = R"({"early":true})";
    request.respond(early);
    request.respond(quiesce::api::Response{500, "application/json", "{}"});  // ignored
    gate.wait_for(10s);  // the bookkeeping after the answer
    finished = true;
    return quiesce::api::Response{500, "application/json", R"({"late":true})"};
  };
  const auto config = unix_config(dir);
  RunningServer running(config, fake.handler());
  auto client = RawSocket::unix_socket(config.unix_socket->path);
  client.send(quiesce::test::http_get("/v1/sessions/x/thaw"));
  auto response = client.read_response();
  REQUIRE(response);
  CHECK(response->status == 200);
  CHECK(response->body == R"({"early":true})");
  CHECK_FALSE(finished.load());  // answered while the handler still works
  gate.open();
  REQUIRE(quiesce::test::eventually(2s, [&] { return finished.load(); }));
  // Nothing more arrives on the connection: the return value was dropped.
  client.send(quiesce::test::http_get("/v1/health"));
  auto next = client.read_response();
  REQUIRE(next);
  CHECK(next->body == R"({"early":true})");  // the handler's answer to the second request
}

TEST_CASE("http: a handler that throws gets a 500 JSON error") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  fake.respond = [](const quiesce::api::Request&) -> quiesce::api::Response {
    throw std::runtime_error("boom");
  };
  const auto config = unix_config(dir);
  RunningServer running(config, fake.handler());
  const auto result = unix_client(config).health();
  CHECK(result.status == 500);
  REQUIRE(result.error);
  CHECK(result.error->code == "internal_error");
}

TEST_CASE("http: stop() lets an in-flight request finish, then run() returns") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  Gate gate;
  fake.respond = [&](const quiesce::api::Request&) {
    gate.wait_for(10s);
    quiesce::api::Response response;
    response.body = R"({"done":true})";
    return response;
  };
  const auto config = unix_config(dir);
  RunningServer running(config, fake.handler());

  auto idle = RawSocket::unix_socket(config.unix_socket->path);
  auto in_flight = RawSocket::unix_socket(config.unix_socket->path);
  in_flight.send(quiesce::test::http_get("/v1/sessions/x/freeze"));
  REQUIRE(quiesce::test::eventually(2s, [&] { return fake.count() == 1; }));

  running.server().stop();
  CHECK(idle.closed_by_peer(2s));           // idle connections go at once
  CHECK_FALSE(running.run_returned());      // the in-flight one holds run()
  std::this_thread::sleep_for(100ms);
  gate.open();
  auto response = in_flight.read_response();
  REQUIRE(response);
  CHECK(response->status == 200);
  CHECK(response->body == R"({"done":true})");
  CHECK(response->headers["connection"] == "close");
  CHECK(quiesce::test::eventually(3s, [&] { return running.run_returned(); }));
}

TEST_CASE("http: stop() gives up on a handler after stop_grace") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  Gate gate;
  fake.respond = [&](const quiesce::api::Request&) {
    gate.wait_for(10s);
    return quiesce::api::Response{};
  };
  auto config = unix_config(dir);
  config.limits.stop_grace = 200ms;
  RunningServer running(config, fake.handler());
  auto in_flight = RawSocket::unix_socket(config.unix_socket->path);
  in_flight.send(quiesce::test::http_get("/stuck"));
  REQUIRE(quiesce::test::eventually(2s, [&] { return fake.count() == 1; }));
  running.server().stop();
  CHECK(quiesce::test::eventually(3s, [&] { return running.run_returned(); }));
  gate.open();  // the destructor waits for the handler thread
}

TEST_CASE("http: vsock listener is optional when AF_VSOCK is unusable") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  auto config = unix_config(dir);
  config.vsock = quiesce::api::VsockListener{};
  // A port nobody else on a test machine uses; a clash only turns this into
  // an "in use" failure, which is reported, not skipped.
  config.vsock->port = 0x7fff0000U + static_cast<std::uint32_t>(::getpid() % 0xffff);
  config.vsock->required = false;
  RunningServer running(config, fake.handler());
  // Either way the Unix listener serves.
  CHECK(unix_client(config).health().status == 200);
  MESSAGE("vsock listening: " << running.server().vsock_listening());
}

TEST_CASE("http: Expect: 100-continue is answered before the body is read") {
  quiesce::test::TempDir dir;
  FakeHandler fake;
  const auto config = unix_config(dir);
  RunningServer running(config, fake.handler());
  auto raw = RawSocket::unix_socket(config.unix_socket->path);
  const std::string body = R"({"writers":["a"]})";
  raw.send("POST /v1/sessions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: application/json\r\n"
           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n");
  auto interim = raw.read_response();
  REQUIRE(interim);
  CHECK(interim->status == 100);
  CHECK(fake.count() == 0);
  raw.send(body);
  auto response = raw.read_response();
  REQUIRE(response);
  CHECK(response->status == 200);
  REQUIRE(fake.count() == 1);
  CHECK(fake.requests()[0].body == body);
}

TEST_CASE("http: a Transfer-Encoding other than a lone chunked is refused and the connection closed") {
  // Issue #15 item 3: Beast read such a body as absent, so its bytes were
  // parsed as a second request on the same connection (request smuggling).
  quiesce::test::TempDir dir;
  FakeHandler fake;
  const auto config = unix_config(dir);
  RunningServer running(config, fake.handler());
  const std::string smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
  const auto body_len = std::to_string(smuggled.size());

  struct Case {
    const char* name;
    std::string headers;
    unsigned status;
    const char* code;
  };
  const std::vector<Case> cases{
      {"xchunked", "Transfer-Encoding: xchunked\r\n", 400, "bad_request"},
      {"identity", "Transfer-Encoding: identity\r\n", 400, "bad_request"},
      {"chunked, gzip", "Transfer-Encoding: chunked, gzip\r\n", 400, "bad_request"},
      {"gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n", 501, "unsupported_transfer_encoding"},
      {"two headers", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 501,
       "unsupported_transfer_encoding"},
      {"with Content-Length", "Transfer-Encoding: chunked\r\nContent-Length: " + body_len + "\r\n", 400,
       "bad_request"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto raw = RawSocket::unix_socket(config.unix_socket->path);
    REQUIRE(raw.send("POST /v1/sessions HTTP/1.1\r\nHost: x\r\n" + c.headers + "\r\n" + smuggled));
    auto response = raw.read_response();
    REQUIRE(response);
    CHECK(response->status == c.status);
    CHECK(error_code_of(response->body) == c.code);
    CHECK(response->headers["connection"] == "close");
    // Nothing more: the smuggled request is never answered.
    CHECK(raw.closed_by_peer());
    CHECK_FALSE(raw.read_response(200ms));
  }
  CHECK(fake.count() == 0);

  SUBCASE("a plain chunked body still works") {
    auto raw = RawSocket::unix_socket(config.unix_socket->path);
    REQUIRE(raw.send("POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"));
    auto response = raw.read_response();
    REQUIRE(response);
    CHECK(response->status == 200);
    REQUIRE(fake.count() == 1);
    CHECK(fake.requests()[0].body == "{}");
  }
}

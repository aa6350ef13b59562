// qemu-guest-agent's protocol on the real quiesce-agent binary, over its qga
// Unix socket: the bytes the host end of a virtio-serial channel carries, so
// everything but the port itself (tests/vm) is covered here. Framed as
// libvirt and Proxmox frame it, and through the host client's qga transport,
// which is also run against Debian's real qemu-ga for the fallback.

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>

#include "host-bridge/client/agent_client.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/qga_socket.hpp"
#include "tests/support/running_agent.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
using namespace std::chrono_literals;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using test::QgaSocket;

namespace {

constexpr std::size_t kMaxConnections = 4;

json qga_agent_config(const test::TempDir& dir) {
  auto config = test::agent_config(
      dir, {{{"type", "delay"}, {"name", "app"}, {"options", {{"delays_ms", {{"freeze", 20}}}}}},
            {{"type", "delay"},
             {"name", "db"},
             {"level", "database"},
             {"options", {{"delays_ms", {{"freeze", 10}}}}}}});
  // No virtio-serial port on the test host: only the socket channel.
  config["qga"] = {{"virtio_serial_path", nullptr},
                   {"unix_socket", {{"path", (dir / "qga.sock").string()}}},
                   {"max_connections", kMaxConnections},
                   {"max_object_bytes", 4096}};
  return config;
}

struct QgaAgent {
  explicit QgaAgent(const test::TempDir& dir)
      : agent(dir, qga_agent_config(dir)), socket(dir / "qga.sock"), dir_(dir) {
    REQUIRE_MESSAGE(test::eventually(10s, [&] { return std::filesystem::exists(socket); }),
                    "no qga socket; see " << (dir / "agent.log").string());
  }
  [[nodiscard]] client::AgentClient qga_client() const {
    client::ClientOptions options;
    options.endpoint = client::Endpoint::parse("qga:" + socket.string());
    options.timeout = 30s;
    return client::AgentClient(options);
  }
  [[nodiscard]] std::string log() const { return test::read_text(dir_ / "agent.log"); }

  test::RunningAgent agent;
  std::filesystem::path socket;
  const test::TempDir& dir_;
};

json parse_line(const std::string& line) {
  auto text = line;
  if (!text.empty() && static_cast<unsigned char>(text.front()) == 0xFF) {
    text.erase(0, 1);
  }
  return json::parse(text, nullptr, false);
}

std::int64_t millisecond_id() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Connections the agent still counts, from its log: the qga service logs
// "qga: unix connected" at info when it takes one, and the channel logs
// "qga: unix disconnected" at info when its reader sees the hang-up (both at
// info: the file log is flushed at info, so neither waits in a buffer).
std::size_t qga_connections_open(const QgaAgent& qga) {
  std::istringstream log(qga.log());
  std::size_t opened = 0;
  std::size_t closed = 0;
  for (std::string line; std::getline(log, line);) {
    if (line.find(" info ") != std::string::npos && line.find("qga: unix connected") != std::string::npos) {
      ++opened;
    } else if (line.find(" info ") != std::string::npos && line.find("qga: unix disconnected") != std::string::npos) {
      ++closed;
    }
  }
  return opened > closed ? opened - closed : 0;
}

// guest-sync-delimited + the command in one write, as Proxmox does.
json proxmox_call(QgaSocket& socket, const json& command, std::int64_t id) {
  const json sync = {{"execute", "guest-sync-delimited"}, {"arguments", {{"id", id}}}};
  REQUIRE(socket.send(sync.dump() + "\n" + command.dump() + "\n"));
  const auto lines = socket.lines(2);
  REQUIRE_MESSAGE(lines.size() == 2, "got " << lines.size() << " reply lines");
  REQUIRE(!lines[0].empty());
  CHECK(static_cast<unsigned char>(lines[0].front()) == 0xFF);
  CHECK(parse_line(lines[0]) == json{{"return", id}});
  return parse_line(lines[1]);
}

json api_command(const std::string& method, const std::string& path, json body = nullptr) {
  json arguments = {{"method", method}, {"path", path}};
  if (!body.is_null()) {
    arguments["body"] = std::move(body);
  }
  return {{"execute", "quiesce-api"}, {"arguments", arguments}};
}

}  // namespace

TEST_CASE("qga over the agent's socket, framed as libvirt does: guest-sync with a millisecond id") {
  test::TempDir dir;
  QgaAgent qga(dir);
  QgaSocket socket(qga.socket);
  const auto id = millisecond_id();
  REQUIRE(socket.send(json{{"execute", "guest-sync"}, {"arguments", {{"id", id}}}}.dump()));
  auto lines = socket.lines(1);
  REQUIRE(lines.size() == 1);
  CHECK(parse_line(lines[0]) == json{{"return", id}});

  REQUIRE(socket.send(R"({"execute": "guest-ping"})"));
  lines = socket.lines(1);
  REQUIRE(lines.size() == 1);
  CHECK(parse_line(lines[0]) == json{{"return", json::object()}});

  REQUIRE(socket.send(api_command("GET", "/v1/health").dump()));
  lines = socket.lines(1);
  REQUIRE(lines.size() == 1);
  const auto health = parse_line(lines[0]);
  CHECK(health["return"]["status"] == 200);
  CHECK(health["return"]["body"]["state"] == "idle");
}

TEST_CASE(
    "qga framed as Proxmox does (sync-delimited and the command in one write), reconnecting "
    "for every command") {
  test::TempDir dir;
  QgaAgent qga(dir);
  const auto start = Clock::now();
  constexpr int kRounds = 20;
  for (int round = 0; round < kRounds; ++round) {
    // The agent counts a connection until its reader has seen the hang-up;
    // a client that reconnects within microseconds of closing can find the
    // kMaxConnections slots still taken and be refused (closed at once).
    // Proxmox reconnects per command but not that fast: wait until the
    // previous connections are released, so this case tests the framing.
    REQUIRE_MESSAGE(test::eventually(5s, [&] { return qga_connections_open(qga) < kMaxConnections; }),
                    qga.log());
    QgaSocket socket(qga.socket);
    const auto reply = proxmox_call(socket, {{"execute", "guest-ping"}}, 1000 + round);
    CHECK(reply == json{{"return", json::object()}});
  }
  MESSAGE("connect + sync-delimited + ping: "
          << std::chrono::duration<double, std::milli>(Clock::now() - start).count() / kRounds
          << " ms per round");
}

TEST_CASE("qga: a client that disconnects mid-command leaves the channel and the session usable") {
  test::TempDir dir;
  QgaAgent qga(dir);
  {
    QgaSocket half(qga.socket);
    REQUIRE(half.send(R"({"execute": "guest-pi)"));  // half an object, then gone
  }
  std::string session_id;
  {
    QgaSocket socket(qga.socket);
    const auto created =
        proxmox_call(socket, api_command("POST", "/v1/sessions", json::object()), 7);
    REQUIRE_MESSAGE(created["return"]["status"] == 201, created.dump());
    session_id = created["return"]["body"]["id"].get<std::string>();
    // The freeze is sent; the client leaves without reading the answer.
    REQUIRE(socket.send(api_command("POST", "/v1/sessions/" + session_id + "/freeze").dump()));
  }
  QgaSocket socket(qga.socket);
  std::string state;
  CHECK_MESSAGE(test::eventually(10s,
                                 [&] {
                                   const auto status = proxmox_call(
                                       socket, api_command("GET", "/v1/sessions/" + session_id), 8);
                                   state = status["return"]["body"].value("state", "");
                                   return state == "frozen";
                                 }),
                "state " << state << "; log:\n"
                         << qga.log());
  const auto aborted = proxmox_call(socket, api_command("DELETE", "/v1/sessions/" + session_id), 9);
  CHECK_MESSAGE(aborted["return"]["status"] == 200, aborted.dump());
  const auto health = proxmox_call(socket, api_command("GET", "/v1/health"), 10);
  CHECK(health["return"]["body"]["state"] == "idle");
  CHECK(qga.agent.process->running());
}

TEST_CASE(
    "qga: clients over the connection limit are closed at once, the HTTP API keeps "
    "answering, a freed slot is served") {
  test::TempDir dir;
  QgaAgent qga(dir);
  std::vector<QgaSocket> held;
  for (std::size_t i = 0; i < kMaxConnections; ++i) {
    held.emplace_back(qga.socket);
    CHECK(proxmox_call(held.back(), {{"execute", "guest-ping"}}, static_cast<std::int64_t>(i)) ==
          json{{"return", json::object()}});
  }
  std::vector<QgaSocket> over;
  for (int i = 0; i < 3; ++i) {
    over.emplace_back(qga.socket);
    CHECK(over.back().closed_within(5s));
  }
  auto http = qga.agent.client();
  CHECK(http.health().ok());
  held.front().close();
  CHECK(test::eventually(5s, [&] {
    QgaSocket again(qga.socket);
    const json sync = {{"execute", "guest-sync-delimited"}, {"arguments", {{"id", 99}}}};
    return again.send(sync.dump()) && again.lines(1, 500ms).size() == 1;
  }));
}

TEST_CASE("qga: oversize input closes a socket connection, the next one works") {
  test::TempDir dir;
  QgaAgent qga(dir);
  {
    QgaSocket socket(qga.socket);
    REQUIRE(socket.send("{\"execute\": \"guest-ping\", \"arguments\": {\"pad\": \"" +
                        std::string(64 * 1024, 'x')));
    CHECK(socket.closed_within(5s));
  }
  QgaSocket socket(qga.socket);
  CHECK(proxmox_call(socket, {{"execute", "guest-ping"}}, 3) == json{{"return", json::object()}});
}

TEST_CASE("host client over qga: a full session through quiesce-api, the same answers as HTTP") {
  test::TempDir dir;
  QgaAgent qga(dir);
  {
    // Stale bytes from a client that died mid-object: the resync drops them.
    QgaSocket stale(qga.socket);
    REQUIRE(stale.send(R"({"execute": "quiesce-api", "arguments": {"method": "PO)"));
  }
  auto client = qga.qga_client();
  auto http = qga.agent.client();

  const auto start = Clock::now();
  const auto health = client.health();
  const auto health_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  REQUIRE_MESSAGE(health.ok(), test::describe(health));
  CHECK(health.body["state"] == "idle");
  CHECK(health.body.value("version", "") == http.health().body.value("version", ""));

  const auto writers = client.writers();
  REQUIRE(writers.ok());
  CHECK(writers.body == http.writers().body);

  const auto created = client.create_session({{"checkpoint_id", "cp-qga"}});
  REQUIRE_MESSAGE(created.status == 201, test::describe(created));
  const std::string id = created.body["id"];
  const auto frozen = client.freeze(id);
  REQUIRE_MESSAGE(frozen.ok(), test::describe(frozen));
  CHECK(http.health().body["state"] == "frozen");
  const auto thawed = client.thaw(id);
  REQUIRE_MESSAGE(thawed.ok(), test::describe(thawed));
  CHECK(thawed.body["verdict"]["continuous"] == true);
  const auto completed = client.complete(id, "snap-qga");
  REQUIRE_MESSAGE(completed.ok(), test::describe(completed));
  CHECK(client.session(id).body == http.session(id).body);

  // An API error comes back as the same Result as over HTTP.
  const auto missing = client.session("no-such-session");
  const auto missing_http = http.session("no-such-session");
  REQUIRE(missing.error);
  REQUIRE(missing_http.error);
  CHECK(missing.status == missing_http.status);
  CHECK(missing.error->code == missing_http.error->code);

  const auto metrics = client.metrics();
  CHECK(metrics.status == 200);
  CHECK(metrics.raw_body.find("quiesce_") != std::string::npos);
  MESSAGE("GET /v1/health over qga (connect, sync, quiesce-api): " << health_ms << " ms");

  // quiescectl takes the same endpoint, for a status and a whole session.
  for (const char* command : {"status", "run"}) {
    std::string output;
    const int code = test::run_command({test::built_binary("quiescectl").string(), "--connect",
                                        "qga:" + qga.socket.string(), command},
                                       &output);
    CHECK_MESSAGE(code == 0, command << ": " << output);
  }
}

TEST_CASE("host client over qga against Debian's qemu-guest-agent: falls back and says so") {
  const std::filesystem::path qemu_ga = "/usr/sbin/qemu-ga";
  if (!std::filesystem::exists(qemu_ga)) {
    MESSAGE("skipped: " << qemu_ga.string() << " is not installed (package qemu-guest-agent)");
    return;
  }
  test::TempDir dir;
  std::filesystem::create_directories(dir / "qga-state");
  // No fsfreeze hook (-F is not given) and, below, no freeze at all: a stock
  // qemu-ga freezes every mounted filesystem of this host, "/" included.
  test::ChildProcess stock({qemu_ga.string(), "-m", "unix-listen", "-p",
                            (dir / "stock.sock").string(), "-t", (dir / "qga-state").string(), "-f",
                            (dir / "qemu-ga.pid").string(), "-l", (dir / "qemu-ga.log").string()},
                           dir / "qemu-ga.out");
  REQUIRE_MESSAGE(
      test::eventually(10s, [&] { return std::filesystem::exists(dir / "stock.sock"); }),
      test::read_text(dir / "qemu-ga.out"));

  client::ClientOptions options;
  options.endpoint = client::Endpoint::parse("qga:" + (dir / "stock.sock").string());
  options.timeout = 10s;
  client::AgentClient client(options);

  const auto start = Clock::now();
  const auto health = client.health();
  const auto health_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  REQUIRE_MESSAGE(health.ok(), test::describe(health));
  CHECK(health.body["kind"] == "qemu-guest-agent");
  CHECK(health.body["agent"]["kind"] == "qemu-guest-agent");
  CHECK(health.body["agent"]["version"].get<std::string>().rfind("7.", 0) == 0);
  CHECK(health.body["state"] == "idle");
  CHECK(health.body["quiesced"] == "filesystems");

  const auto writers = client.writers();
  REQUIRE(writers.ok());
  REQUIRE(writers.body["writers"].size() == 1);
  CHECK(writers.body["writers"][0]["level"] == "filesystem");

  // Writers cannot be chosen from a stock qemu-ga: refused, nothing done.
  const auto picky = client.create_session({{"writers", {"postgres"}}});
  REQUIRE(picky.error);
  CHECK(picky.status == 400);

  const auto created = client.create_session();
  REQUIRE_MESSAGE(created.status == 201, test::describe(created));
  const std::string id = created.body["id"];
  const auto status = client.session(id);
  REQUIRE(status.ok());
  CHECK(status.body["state"] == "prepared");  // guest-fsfreeze-status: thawed
  const auto aborted = client.abort(id);
  CHECK_MESSAGE(aborted.ok(), test::describe(aborted));

  const auto metrics = client.metrics();
  REQUIRE(metrics.error);
  CHECK(metrics.error->code == "not_supported");
  MESSAGE("GET /v1/health against qemu-ga 7.2 (quiesce-api refused, guest-info, fsfreeze-status): "
          << health_ms << " ms");
}

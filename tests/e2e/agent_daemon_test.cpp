// The real quiesce-agent binary over its real Unix socket, driven by the
// host client, quiescectl and curl.

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "host-bridge/client/agent_client.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/running_agent.hpp"
#include "tests/unit/http_test_helpers.hpp"

using namespace quiesce;
using namespace std::chrono_literals;
using test::ChildProcess;

using quiesce::test::RunningAgent;
using quiesce::test::agent_config;
using quiesce::test::read_text;

namespace {

nlohmann::json delay_config(const test::TempDir& dir, nlohmann::json session = nlohmann::json::object()) {
  auto config = agent_config(
      dir, {{{"type", "delay"}, {"name", "app"}, {"options", {{"delays_ms", {{"freeze", 20}}}}}},
            {{"type", "delay"},
             {"name", "db"},
             {"level", "database"},
             {"options", {{"delays_ms", {{"prepare", 5}, {"freeze", 10}}}}}}});
  config["session"] = std::move(session);
  return config;
}

}  // namespace

TEST_CASE("agent binary: a whole session through the host client") {
  test::TempDir dir;
  RunningAgent agent(dir, delay_config(dir));
  auto client = agent.client();
  auto health = client.health();
  REQUIRE(health.ok());
  CHECK(health.body["state"] == "idle");
  CHECK(health.body["version"].is_string());
  CHECK(client.writers().body["writers"].size() == 2);

  auto created = client.create_session({{"checkpoint_id", "cp-e2e"}});
  REQUIRE(created.ok());
  CHECK(created.status == 201);
  const std::string id = created.body["id"];
  REQUIRE(client.freeze(id).ok());
  CHECK(client.health().body["state"] == "frozen");
  auto thawed = client.thaw(id);
  REQUIRE(thawed.ok());
  CHECK(thawed.body["verdict"]["continuous"] == true);
  auto done = client.complete(id, "snap-e2e");
  REQUIRE(done.ok());
  CHECK(done.body["artifacts"]["app"]["snapshot_id"] == "snap-e2e");
  auto metrics = client.metrics();
  CHECK(metrics.raw_body.find("quiesce_sessions_total{outcome=\"completed\"} 1") !=
        std::string::npos);
  // The unix socket has the documented mode.
  CHECK((std::filesystem::status(agent.socket).permissions() & std::filesystem::perms::all) ==
        (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
         std::filesystem::perms::group_read | std::filesystem::perms::group_write));
}

TEST_CASE("agent binary: quiescectl run prints the phases in order with per-writer timings") {
  test::TempDir dir;
  RunningAgent agent(dir, delay_config(dir));
  std::string output;
  int code = test::run_command({test::built_binary("quiescectl").string(), "--socket",
                                agent.socket.string(), "run"},
                               &output);
  CAPTURE(output);
  CHECK(code == 0);
  auto prepare = output.find("prepare");
  auto freeze = output.find("freeze");
  auto thaw = output.find("thaw");
  auto complete = output.find("complete");
  CHECK(prepare != std::string::npos);
  CHECK(freeze != std::string::npos);
  CHECK(thaw != std::string::npos);
  CHECK(complete != std::string::npos);
  CHECK(prepare < freeze);
  CHECK(freeze < thaw);
  CHECK(thaw < complete);
  CHECK(output.find("app") != std::string::npos);
  CHECK(output.find("db") != std::string::npos);

  std::string json_output;
  code = test::run_command({test::built_binary("quiescectl").string(), "--socket",
                            agent.socket.string(), "--json", "run"},
                           &json_output);
  CHECK(code == 0);
  // --json prints one JSON object per phase (JSON lines).
  std::vector<std::string> phases;
  std::istringstream lines(json_output);
  for (std::string line; std::getline(lines, line);) {
    auto parsed = nlohmann::json::parse(line, nullptr, false);
    REQUIRE_MESSAGE(!parsed.is_discarded(), line);
    if (parsed.contains("phase")) {
      phases.push_back(parsed["phase"]);
    }
  }
  CHECK(phases == std::vector<std::string>{"create", "freeze", "thaw", "complete"});
}

TEST_CASE("agent binary: curl drives a session over the Unix socket") {
  if (test::run_command({"curl", "--version"}) != 0) {
    MESSAGE("curl is not installed; .ci/run installs it");
    return;
  }
  test::TempDir dir;
  RunningAgent agent(dir, delay_config(dir));
  auto curl = [&](const std::string& method, const std::string& path) {
    std::string out;
    int code = test::run_command({"curl", "-sS", "--unix-socket", agent.socket.string(), "-X",
                                  method, "http://localhost" + path},
                                 &out);
    REQUIRE(code == 0);
    return nlohmann::json::parse(out);
  };
  auto created = curl("POST", "/v1/sessions");
  const std::string id = created["id"];
  CHECK(curl("POST", "/v1/sessions/" + id + "/freeze")["state"] == "frozen");
  CHECK(curl("POST", "/v1/sessions/" + id + "/thaw")["verdict"]["continuous"] == true);
  CHECK(curl("POST", "/v1/sessions/" + id + "/complete")["state"] == "completed");
  CHECK(curl("GET", "/v1/sessions/nope")["error"]["code"] == "unknown_session");
}

TEST_CASE("agent binary: the host never thaws, the agent thaws at the deadline on its own") {
  test::TempDir dir;
  RunningAgent agent(dir, delay_config(dir));
  auto client = agent.client();
  auto created = client.create_session({{"freeze_window_ms", 300}});
  REQUIRE(created.ok());
  const std::string id = created.body["id"];
  REQUIRE(client.freeze(id).ok());
  REQUIRE(test::eventually(5s, [&] { return client.session(id).body["state"] == "thawed"; }));
  auto late = client.thaw(id);
  REQUIRE(late.ok());
  CHECK(late.body["verdict"]["continuous"] == false);
  CHECK(late.body["verdict"]["watchdog_fired"] == true);
  CHECK(client.health().body["state"] == "session_active");  // thawed, awaiting complete
}

TEST_CASE("agent binary: SIGTERM while frozen aborts the session, then exits 0") {
  test::TempDir dir;
  RunningAgent agent(dir, delay_config(dir));
  auto client = agent.client();
  auto created = client.create_session();
  REQUIRE(created.ok());
  REQUIRE(client.freeze(created.body["id"].get<std::string>()).ok());
  agent.process->signal(SIGTERM);
  auto status = agent.process->wait_for(10s);
  REQUIRE(status.has_value());
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
  auto log = read_text(dir / "agent.log");
  CAPTURE(log);
  CHECK(log.find("aborting active session") != std::string::npos);
  CHECK(log.find("aborting") < log.find("stopped"));
}

TEST_CASE("agent binary: command line and config errors, with documented exit codes") {
  test::TempDir dir;
  const auto agent = test::built_binary("quiesce-agent").string();
  std::string out;
  CHECK(test::run_command({agent, "--version"}, &out) == 0);
  CHECK(out.find("quiesce-agent ") == 0);
  CHECK(test::run_command({agent, "--bogus"}) == 2);

  auto config = delay_config(dir);
  config["writers"][1]["options"]["delays_ms"]["freeze"] = "slow";
  std::ofstream(dir / "bad.json") << config.dump();
  out.clear();
  CHECK(test::run_command({agent, "--config", (dir / "bad.json").string()}, &out) == 3);
  CHECK(out.find("writers[1].options.delays_ms.freeze: expected an integer") != std::string::npos);

  std::ofstream(dir / "good.json") << delay_config(dir).dump();
  out.clear();
  CHECK(test::run_command({agent, "--config", (dir / "good.json").string(), "--check-config"},
                          &out) == 0);
  CHECK(out.find("2 writer(s)") != std::string::npos);
}

TEST_CASE("agent binary: --check-config writes nothing, not even the log directory") {
  // Issue #15 item 7: it opened the log, creating its directory and file.
  test::TempDir dir;
  const auto agent = test::built_binary("quiesce-agent").string();
  auto config = delay_config(dir);
  const auto log_dir = dir / "logs" / "quiesce";
  config["log"] = {{"target", "file"}, {"file", (log_dir / "agent.log").string()}};
  config["state_dir"] = (dir / "state").string();
  config["run_dir"] = (dir / "run").string();
  std::ofstream(dir / "check.json") << config.dump();
  std::string out;
  CHECK(test::run_command({agent, "--config", (dir / "check.json").string(), "--check-config"}, &out) == 0);
  CAPTURE(out);
  CHECK(out.find("is valid") != std::string::npos);
  std::vector<std::string> created;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir.path())) {
    created.push_back(entry.path().filename().string());
  }
  CAPTURE(created);
  CHECK(created == std::vector<std::string>{"check.json"});
  // The missing state and run dirs are reported, not created.
  CHECK(out.find("state_dir: '" + (dir / "state").string() + "' does not exist yet") != std::string::npos);
}

TEST_CASE("agent binary: a 70000-deep JSON body with max_body_bytes raised gets 400 and the agent lives") {
  // Issue #15 item 1: with max_body_bytes above ~140 KB such a body crashed
  // the agent (SIGSEGV, stack overflow in the recursive JSON parser).
  test::TempDir dir;
  auto config = delay_config(dir);
  config["limits"] = {{"max_body_bytes", 1 << 20}};
  RunningAgent agent(dir, config);
  const std::string body = "{\"writers\":" + std::string(70'000, '[') + std::string(70'000, ']') + "}";
  auto raw = test::RawSocket::unix_socket(agent.socket.string());
  REQUIRE(raw.send("POST /v1/sessions HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                   "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body));
  auto response = raw.read_response(10s);
  REQUIRE(response);
  CHECK(response->status == 400);
  CHECK(response->body.find("deeper than 64") != std::string::npos);
  // Still alive and idle: nothing was created.
  auto health = agent.client().health();
  REQUIRE(health.ok());
  CHECK(health.body["state"] == "idle");
  CHECK_FALSE(agent.process->wait_for(0ms).has_value());
}

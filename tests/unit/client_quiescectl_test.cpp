// quiescectl against a fake agent: phase order, output, exit codes, and that
// a failed run never leaves the session behind (it is aborted).
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/unit/http_test_helpers.hpp"

using nlohmann::json;

namespace {

// Plays the agent's session routes with canned answers; `fail_at` makes one
// route answer a 500 error.
struct FakeAgent {
  std::string fail_at;
  bool broken_hold = false;

  json session(const std::string& state) const {
    json writer = {{"name", "fs-root"},
                   {"type", "fsfreeze"},
                   {"level", "filesystem"},
                   {"state", state == "failed" ? "failed_at_freeze" : state},
                   {"error", nullptr},
                   {"timings_ms", {{"prepare", 1.5}, {"freeze", 10.25}}},
                   {"identity",
                    {{"components",
                      {{{"kind", "filesystem"},
                        {"path", "/srv/upper"},
                        {"fstype", "ext4"},
                        {"wave", 0},
                        {"wave_reason", "first; on loop1, image /srv/lower/upper.img on /srv/lower"},
                        {"stored_on", {"/srv/lower"}},
                        {"notes", json::array()}},
                       {{"kind", "filesystem"},
                        {"path", "/srv/lower"},
                        {"fstype", "xfs"},
                        {"wave", 1},
                        {"wave_reason", "after /srv/upper (stored on it)"},
                        {"stored_on", json::array()},
                        {"notes", {"swap file /srv/lower/swap is on it"}}}}},
                     {"metadata", json::object()}}}};
    json status = {{"id", "s1"},       {"state", state},        {"checkpoint_id", nullptr},
                   {"freeze_window_ms", 10000}, {"writers", {writer}}, {"timings_ms", {{"prepare", 1.5}}},
                   {"verdict", nullptr}, {"artifacts", json::object()}, {"error", nullptr}};
    if (state == "thawed" || state == "completed") {
      status["verdict"] = {{"continuous", !broken_hold},
                           {"hold_ms", 12.3},
                           {"reasons", broken_hold ? json{"watchdog fired"} : json::array()}};
    }
    return status;
  }

  quiesce::api::Response handle(const quiesce::api::Request& request) const {
    const auto route = request.method + " " + request.target;
    quiesce::api::Response response;
    if (route == "GET /v1/health") {
      response.body = json{{"version", "0.1.0"}, {"state", "idle"}, {"session", nullptr},
                           {"uptime_s", 12.3},   {"last_restore", nullptr}}
                          .dump();
      return response;
    }
    if (route == "GET /v1/writers") {
      response.body = json{{"writers",
                            {{{"name", "fs-root"},
                              {"type", "fsfreeze"},
                              {"level", "filesystem"},
                              {"state", "stable"},
                              {"identity", {{"components", {"/"}}, {"metadata", json::object()}}},
                              {"error", nullptr}}}}}
                          .dump();
      return response;
    }
    const std::map<std::string, std::pair<std::string, unsigned>> routes = {
        {"POST /v1/sessions", {"prepared", 201}},
        {"POST /v1/sessions/s1/freeze", {"frozen", 200}},
        {"POST /v1/sessions/s1/thaw", {"thawed", 200}},
        {"POST /v1/sessions/s1/complete", {"completed", 200}},
        {"DELETE /v1/sessions/s1", {"aborted", 200}},
        {"GET /v1/sessions/s1", {"frozen", 200}},
    };
    const auto it = routes.find(route);
    if (it == routes.end()) {
      response.status = 404;
      response.body = R"({"error":{"code":"not_found","message":"no such route","writer":null,"retryable":false}})";
      return response;
    }
    if (route == fail_at) {
      response.status = 500;
      response.body =
          R"({"error":{"code":"writer_failed","message":"FIFREEZE failed: EBUSY","writer":"fs-root","retryable":true}})";
      return response;
    }
    response.status = it->second.second;
    response.body = session(it->second.first).dump();
    return response;
  }
};

struct CtlFixture {
  quiesce::test::TempDir dir;
  quiesce::test::FakeHandler fake;
  FakeAgent agent;
  std::unique_ptr<quiesce::test::RunningServer> running;
  std::string socket;

  // The agent's behaviour is fixed before the server starts: the handler
  // threads read it, and nothing orders a later write with their reads.
  explicit CtlFixture(FakeAgent behaviour = {}) : agent(std::move(behaviour)) {
    fake.respond = [this](const quiesce::api::Request& request) { return agent.handle(request); };
    quiesce::api::ServerConfig config;
    config.unix_socket = quiesce::api::UnixListener{};
    socket = (dir / "agent.sock").string();
    config.unix_socket->path = socket;
    running = std::make_unique<quiesce::test::RunningServer>(config, fake.handler());
  }

  std::vector<std::string> routes() {
    std::vector<std::string> out;
    for (const auto& request : fake.requests()) {
      out.push_back(request.method + " " + request.target);
    }
    return out;
  }
};

std::optional<std::filesystem::path> quiescectl() {
  auto path = quiesce::test::built_binary("quiescectl");
  if (!std::filesystem::exists(path)) {
    return std::nullopt;
  }
  return path;
}

int ctl(const std::vector<std::string>& args, std::string* output) {
  std::vector<std::string> argv = {quiescectl()->string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return quiesce::test::run_command(argv, output);
}

}  // namespace

TEST_CASE("quiescectl: run walks create, freeze, thaw, complete in order") {
  if (!quiescectl()) {
    MESSAGE("quiescectl not built; skipping");
    return;
  }
  CtlFixture fixture;
  std::string output;
  const int rc = ctl({"--socket", fixture.socket, "run", "--writers", "fs-root", "--freeze-window-ms", "5000",
                      "--snapshot-id", "snap-1"},
                     &output);
  CAPTURE(output);
  CHECK(rc == 0);
  CHECK(fixture.routes() == std::vector<std::string>{"POST /v1/sessions", "POST /v1/sessions/s1/freeze",
                                                     "POST /v1/sessions/s1/thaw", "POST /v1/sessions/s1/complete"});
  const auto requests = fixture.fake.requests();
  CHECK(json::parse(requests[0].body) == json{{"writers", {"fs-root"}}, {"freeze_window_ms", 5000}});
  CHECK(json::parse(requests[3].body) == json{{"snapshot_id", "snap-1"}});
  // Phases in order, writer table, verdict.
  const auto create = output.find("[create] 201");
  const auto freeze = output.find("[freeze] 200");
  const auto thaw = output.find("[thaw] 200");
  const auto complete = output.find("[complete] 200");
  CHECK(create < freeze);
  CHECK(freeze < thaw);
  CHECK(thaw < complete);
  CHECK(complete != std::string::npos);
  CHECK(output.find("fs-root") != std::string::npos);
  CHECK(output.find("hold: continuous, 12.3 ms") != std::string::npos);
}

TEST_CASE("quiescectl: a failed freeze aborts the session and exits 1") {
  if (!quiescectl()) {
    return;
  }
  CtlFixture fixture(FakeAgent{"POST /v1/sessions/s1/freeze", false});
  std::string output;
  const int rc = ctl({"--socket", fixture.socket, "run"}, &output);
  CAPTURE(output);
  CHECK(rc == 1);
  CHECK(fixture.routes() ==
        std::vector<std::string>{"POST /v1/sessions", "POST /v1/sessions/s1/freeze", "DELETE /v1/sessions/s1"});
  CHECK(output.find("writer_failed") != std::string::npos);
  CHECK(output.find("[abort] 200") != std::string::npos);
}

TEST_CASE("quiescectl: a failed thaw aborts too - --json gives one line per phase") {
  if (!quiescectl()) {
    return;
  }
  CtlFixture fixture(FakeAgent{"POST /v1/sessions/s1/thaw", false});
  std::string output;
  const int rc = ctl({"--socket", fixture.socket, "--json", "run"}, &output);
  CAPTURE(output);
  CHECK(rc == 1);
  CHECK(fixture.routes().back() == "DELETE /v1/sessions/s1");
  std::vector<std::string> phases;
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    const auto parsed = json::parse(line, nullptr, false);
    REQUIRE_FALSE(parsed.is_discarded());
    if (parsed.contains("phase")) {
      phases.push_back(parsed["phase"]);
    } else {
      CHECK(parsed["result"] == "failed");
      CHECK(parsed["exit_code"] == 1);
    }
  }
  CHECK(phases == std::vector<std::string>{"create", "freeze", "thaw", "abort"});
}

TEST_CASE("quiescectl: a broken hold completes but exits 1") {
  if (!quiescectl()) {
    return;
  }
  CtlFixture fixture(FakeAgent{"", true});
  std::string output;
  CHECK(ctl({"--socket", fixture.socket, "run"}, &output) == 1);
  CAPTURE(output);
  CHECK(fixture.routes().back() == "POST /v1/sessions/s1/complete");
  CHECK(output.find("crash-consistent") != std::string::npos);
}

TEST_CASE("quiescectl: status, writers, session show, and exit codes") {
  if (!quiescectl()) {
    return;
  }
  CtlFixture fixture;
  std::string output;
  CHECK(ctl({"--socket", fixture.socket, "status"}, &output) == 0);
  CHECK(output.find("idle") != std::string::npos);

  output.clear();
  CHECK(ctl({"--connect", "unix:" + fixture.socket, "writers"}, &output) == 0);
  CHECK(output.find("NAME") != std::string::npos);
  CHECK(output.find("fsfreeze") != std::string::npos);

  output.clear();
  CHECK(ctl({"--socket", fixture.socket, "--json", "session", "show", "s1"}, &output) == 0);
  CHECK(json::parse(output)["state"] == "frozen");

  // The freeze order each filesystem got, and why, from the session's identify.
  output.clear();
  CHECK(ctl({"--socket", fixture.socket, "session", "show", "s1"}, &output) == 0);
  CHECK(output.find("freeze order") != std::string::npos);
  CHECK(output.find("after /srv/upper (stored on it)") != std::string::npos);
  CHECK(output.find("note: /srv/lower: swap file /srv/lower/swap is on it") != std::string::npos);

  output.clear();
  CHECK(ctl({"--socket", fixture.socket, "session", "show", "nope"}, &output) == 1);
  CHECK(output.find("not_found") != std::string::npos);

  CHECK(ctl({"--socket", (fixture.dir / "missing.sock").string(), "status"}, &output) == 3);
  CHECK(ctl({"--socket", fixture.socket, "frobnicate"}, &output) == 2);
  CHECK(ctl({"--socket", fixture.socket, "status", "--writers", "a"}, &output) == 2);
  CHECK(ctl({"--connect", "tcp:nohost", "status"}, &output) == 2);
  CHECK(ctl({"--help"}, &output) == 0);
  CHECK(ctl({}, &output) == 2);
}

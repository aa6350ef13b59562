// qemu-guest-agent commands on a real Coordinator with fake writers: every
// command's reply shape, qemu-ga's dispatch errors, freeze and thaw as full
// writer sessions, the frozen allowlist, the freeze window, quiesce-api.

#include <doctest/doctest.h>

#include <chrono>
#include <thread>

#include "tests/unit/qga_test_rig.hpp"

using namespace quiesce;
using namespace std::chrono_literals;
using test::execute;
using test::QgaRig;

namespace {

void check_error(const nlohmann::json& reply, const std::string& error_class,
                 const std::string& desc) {
  REQUIRE(reply.contains("error"));
  CHECK(reply["error"]["class"] == error_class);
  CHECK(reply["error"]["desc"] == desc);
  CHECK(reply.size() <= 2);  // error, and id when the request had one
}

bool desc_contains(const nlohmann::json& reply, const std::string& text) {
  return reply.contains("error") &&
         reply["error"]["desc"].get<std::string>().find(text) != std::string::npos;
}

std::string metrics(QgaRig& rig) { return rig.coordinator->metrics(); }

}  // namespace

TEST_CASE("qga commands: sync, ping and info answer as qemu-ga does") {
  QgaRig rig;
  auto connection = rig.service->connect("test", true);
  CHECK(execute(*connection, "guest-sync", {{"id", 1733400000123}}) ==
        nlohmann::json{{"return", 1733400000123}});
  CHECK(execute(*connection, "guest-ping") == nlohmann::json{{"return", nlohmann::json::object()}});
  auto with_id = test::call(*connection, {{"execute", "guest-ping"}, {"id", {{"n", 1}}}});
  CHECK(with_id["id"] == nlohmann::json{{"n", 1}});

  auto info = execute(*connection, "guest-info")["return"];
  CHECK(info["version"] == QUIESCE_VERSION);
  std::map<std::string, nlohmann::json> commands;
  for (const auto& command : info["supported_commands"]) {
    REQUIRE(command.size() == 3);
    CHECK(command["enabled"].is_boolean());
    CHECK(command["success-response"].is_boolean());
    commands[command["name"].get<std::string>()] = command;
  }
  for (const char* offered :
       {"guest-sync", "guest-sync-delimited", "guest-ping", "guest-info", "guest-get-time",
        "guest-fsfreeze-status", "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list",
        "guest-fsfreeze-thaw", "guest-get-osinfo", "guest-get-host-name", "guest-get-timezone",
        "guest-get-users", "guest-get-fsinfo", "guest-network-get-interfaces", "quiesce-api"}) {
    CAPTURE(offered);
    REQUIRE(commands.contains(offered));
    CHECK(commands[offered]["enabled"] == true);
    CHECK(commands[offered]["success-response"] == true);
  }
  for (const char* refused : {"guest-exec", "guest-file-open", "guest-set-user-password",
                              "guest-shutdown", "guest-set-time", "guest-suspend-ram",
                              "guest-set-vcpus"}) {
    CAPTURE(refused);
    REQUIRE(commands.contains(refused));
    CHECK(commands[refused]["enabled"] == false);
    check_error(execute(*connection, refused), "CommandNotFound",
                std::string("Command ") + refused +
                    " has been disabled: not offered by the Quiesce agent (docs/qga.md)");
  }
  CHECK(commands["guest-shutdown"]["success-response"] == false);
}

TEST_CASE("qga commands: the read-only guest commands have qemu-ga's reply shapes") {
  QgaRig rig;
  auto connection = rig.service->connect("test", true);

  auto time = execute(*connection, "guest-get-time")["return"];
  REQUIRE(time.is_number_integer());
  const auto now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  CHECK(std::llabs(time.get<std::int64_t>() - now_ns) < 10'000'000'000LL);

  auto os = execute(*connection, "guest-get-osinfo")["return"];
  CHECK(os["kernel-release"].is_string());
  CHECK(os["machine"].is_string());
  CHECK(os["id"].is_string());  // every supported distribution has /etc/os-release

  CHECK(execute(*connection, "guest-get-host-name")["return"]["host-name"].is_string());
  auto zone = execute(*connection, "guest-get-timezone")["return"];
  CHECK(zone["offset"].is_number_integer());

  auto users = execute(*connection, "guest-get-users")["return"];
  REQUIRE(users.is_array());
  for (const auto& user : users) {
    CHECK(user["user"].is_string());
    CHECK(user["login-time"].is_number());
  }

  auto filesystems = execute(*connection, "guest-get-fsinfo")["return"];
  REQUIRE(filesystems.is_array());
  for (const auto& fs : filesystems) {
    CHECK(fs["name"].is_string());
    CHECK(fs["mountpoint"].is_string());
    CHECK(fs["type"].is_string());
    REQUIRE(fs["disk"].is_array());
    for (const auto& disk : fs["disk"]) {
      for (const char* key : {"domain", "bus", "slot", "function"}) {
        CHECK(disk["pci-controller"][key].is_number_integer());
      }
      CHECK(disk["bus-type"].is_string());
      CHECK(disk["bus"].is_number_integer());
      CHECK(disk["target"].is_number_integer());
      CHECK(disk["unit"].is_number_integer());
      CHECK(disk["dev"].get<std::string>().starts_with("/dev/"));
    }
  }

  auto interfaces = execute(*connection, "guest-network-get-interfaces")["return"];
  REQUIRE(interfaces.is_array());
  bool saw_loopback = false;
  for (const auto& interface : interfaces) {
    CHECK(interface["name"].is_string());
    CHECK(interface["ip-addresses"].is_array());
    if (interface["name"] == "lo") {
      saw_loopback = true;
      REQUIRE(interface["ip-addresses"].size() >= 1);
      CHECK(interface["ip-addresses"][0]["ip-address"] == "127.0.0.1");
      CHECK(interface["ip-addresses"][0]["ip-address-type"] == "ipv4");
      CHECK(interface["ip-addresses"][0]["prefix"] == 8);
      CHECK(interface["statistics"]["rx-bytes"].is_number_unsigned());
    }
  }
  CHECK(saw_loopback);
}

TEST_CASE("qga commands: malformed requests get qemu-ga's errors, with the id echoed") {
  QgaRig rig;
  auto connection = rig.service->connect("test", true);
  check_error(execute(*connection, "no-such-command"), "CommandNotFound",
              "The command no-such-command has not been found");
  check_error(test::call(*connection, nlohmann::json::object()), "GenericError",
              "QMP input lacks member 'execute'");
  check_error(test::call(*connection, {{"execute", 5}}), "GenericError",
              "QMP input member 'execute' must be a string");
  check_error(test::call(*connection, {{"execute", "guest-ping"}, {"arguments", {1, 2}}}),
              "GenericError", "QMP input member 'arguments' must be an object");
  check_error(test::call(*connection, {{"execute", "guest-ping"}, {"exec-oob", "x"}}),
              "GenericError", "QMP input member 'exec-oob' is unexpected");
  check_error(execute(*connection, "guest-sync", nlohmann::json::object()), "GenericError",
              "Parameter 'id' is missing");
  check_error(execute(*connection, "guest-sync", {{"id", "12"}}), "GenericError",
              "Invalid parameter type for 'id', expected: integer");
  check_error(execute(*connection, "guest-sync", {{"id", 1.5}}), "GenericError",
              "Invalid parameter type for 'id', expected: integer");
  check_error(execute(*connection, "guest-sync", {{"id", 1}, {"extra", true}}), "GenericError",
              "Parameter 'extra' is unexpected");
  check_error(execute(*connection, "guest-ping", {{"x", 1}}), "GenericError",
              "Parameter 'x' is unexpected");
  check_error(execute(*connection, "guest-fsfreeze-freeze-list", {{"mountpoints", "/"}}),
              "GenericError", "Invalid parameter type for 'mountpoints', expected: array");
  check_error(execute(*connection, "guest-fsfreeze-freeze-list", {{"mountpoints", {"/", 3}}}),
              "GenericError", "Invalid parameter type for 'mountpoints[1]', expected: string");
  auto with_id =
      test::call(*connection, {{"execute", "guest-sync"}, {"arguments", {{"id", "x"}}}, {"id", 77}});
  CHECK(with_id["id"] == 77);
  CHECK(with_id["error"]["class"] == "GenericError");
  // None of it froze or started anything.
  CHECK(rig.journal->entries().empty());
  CHECK(rig.coordinator->list_sessions()["sessions"].empty());
}

TEST_CASE("qga freeze: a full writer session, level by level, counted in filesystems") {
  QgaRig rig;
  auto connection = rig.service->connect("virtio-serial", false);
  CHECK(execute(*connection, "guest-fsfreeze-status")["return"] == "thawed");
  auto frozen = execute(*connection, "guest-fsfreeze-freeze");
  CHECK(frozen == nlohmann::json{{"return", 2}});
  CHECK(execute(*connection, "guest-fsfreeze-status")["return"] == "frozen");
  const auto& journal = *rig.journal;
  CHECK(journal.index_of("app:freeze") < journal.index_of("db:freeze"));
  CHECK(journal.index_of("db:freeze") < journal.index_of("fs:freeze"));

  // The session is visible on the native API with its origin.
  auto sessions = rig.coordinator->list_sessions()["sessions"];
  REQUIRE(sessions.size() == 1);
  CHECK(sessions[0]["origin"] == "qga");
  CHECK(sessions[0]["state"] == "frozen");
  const std::string id = sessions[0]["id"];

  // Any channel sees the agent-wide state, as with qemu-ga.
  auto other = rig.service->connect("unix", true);
  CHECK(execute(*other, "guest-fsfreeze-status")["return"] == "frozen");

  auto thawed = execute(*connection, "guest-fsfreeze-thaw");
  CHECK(thawed == nlohmann::json{{"return", 2}});
  CHECK(journal.index_of("fs:thaw") < journal.index_of("db:thaw"));
  CHECK(journal.index_of("db:thaw") < journal.index_of("app:thaw"));
  CHECK(journal.count("app:post_snapshot") == 1);  // thaw completes the session
  auto status = rig.coordinator->session_status(id).value();
  CHECK(status["state"] == "completed");
  CHECK(status["origin"] == "qga");
  CHECK(status["verdict"]["continuous"] == true);
  CHECK(status["artifacts"]["app"]["snapshot_id"] == "qga-" + id);
  CHECK(metrics(rig).find("quiesce_qga_sessions_total{continuous=\"true\"} 1") !=
        std::string::npos);
  CHECK(execute(*connection, "guest-fsfreeze-status")["return"] == "thawed");
  // Thaw with nothing frozen: 0, as qemu-ga.
  CHECK(execute(*connection, "guest-fsfreeze-thaw") == nlohmann::json{{"return", 0}});
}

TEST_CASE("qga freeze: while frozen only the allowlist runs") {
  QgaRig rig;
  auto connection = rig.service->connect("virtio-serial", false);
  REQUIRE(execute(*connection, "guest-fsfreeze-freeze")["return"] == 2);
  for (const char* refused :
       {"guest-get-osinfo", "guest-get-fsinfo", "guest-get-time", "guest-get-users",
        "guest-get-host-name", "guest-get-timezone", "guest-network-get-interfaces",
        "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list"}) {
    CAPTURE(refused);
    check_error(execute(*connection, refused), "CommandNotFound",
                std::string("Command ") + refused +
                    " has been disabled: the agent is in frozen state");
  }
  CHECK(execute(*connection, "guest-ping").contains("return"));
  CHECK(execute(*connection, "guest-info").contains("return"));
  CHECK(execute(*connection, "guest-sync", {{"id", 3}})["return"] == 3);
  CHECK(connection->feed(R"({"execute":"guest-sync-delimited","arguments":{"id":4}})").bytes ==
        "\xFF{\"return\":4}\n");
  CHECK(execute(*connection, "guest-fsfreeze-status")["return"] == "frozen");
  // quiesce-api stays open: it is how a host thaws over this channel.
  auto health = execute(*connection, "quiesce-api", {{"method", "GET"}, {"path", "/v1/health"}});
  CHECK(health["return"]["body"]["state"] == "frozen");
  CHECK(rig.journal->count("fs:freeze") == 1);  // the refused freeze froze nothing more
  CHECK(execute(*connection, "guest-fsfreeze-thaw")["return"] == 2);
  CHECK(execute(*connection, "guest-get-host-name").contains("return"));
}

TEST_CASE("qga freeze-list: narrows the fsfreeze writer to the mount points given") {
  QgaRig rig;
  auto connection = rig.service->connect("test", true);
  SUBCASE("a mount point it holds") {
    CHECK(execute(*connection, "guest-fsfreeze-freeze-list", {{"mountpoints", {"/srv"}}}) ==
          nlohmann::json{{"return", 1}});
    auto session = rig.coordinator->list_sessions()["sessions"][0];
    auto status = rig.coordinator->session_status(session["id"]).value();
    CHECK(status["mountpoints"] == nlohmann::json{"/srv"});
    CHECK(execute(*connection, "guest-fsfreeze-thaw")["return"] == 1);
  }
  SUBCASE("without the argument: everything") {
    CHECK(execute(*connection, "guest-fsfreeze-freeze-list")["return"] == 2);
    CHECK(execute(*connection, "guest-fsfreeze-thaw")["return"] == 2);
  }
  SUBCASE("a mount point it would not freeze: an error before anything freezes") {
    auto reply = execute(*connection, "guest-fsfreeze-freeze-list",
                         {{"mountpoints", {"/srv", "/not-frozen-here"}}});
    CHECK(reply["error"]["class"] == "GenericError");
    CHECK(desc_contains(reply, "/not-frozen-here"));
    CHECK(desc_contains(reply, "'fs'"));
    CHECK(rig.journal->count("app:freeze") == 0);
    CHECK(rig.journal->count("fs:freeze") == 0);
    CHECK(execute(*connection, "guest-fsfreeze-status")["return"] == "thawed");
  }
  SUBCASE("a relative path") {
    auto reply =
        execute(*connection, "guest-fsfreeze-freeze-list", {{"mountpoints", {"srv"}}});
    CHECK(desc_contains(reply, "not an absolute path"));
    CHECK(rig.journal->entries().empty());
  }
}

TEST_CASE("qga freeze: a failing writer leaves nothing frozen and the error names it") {
  test::FakeScript failing;
  failing.phases[Phase::freeze].fail = ErrorClass::non_retryable;
  QgaRig rig({}, failing);
  auto connection = rig.service->connect("test", true);
  auto reply = execute(*connection, "guest-fsfreeze-freeze");
  CHECK(reply["error"]["class"] == "GenericError");
  CHECK(desc_contains(reply, "writer 'db'"));
  CHECK(desc_contains(reply, "scripted failure in freeze"));
  CHECK(rig.journal->count("app:abort") == 1);  // what froze was undone
  CHECK(rig.journal->count("fs:freeze") == 0);  // the filesystems never froze
  CHECK_FALSE(rig.coordinator->frozen());
  CHECK(execute(*connection, "guest-fsfreeze-status")["return"] == "thawed");
  CHECK(execute(*connection, "guest-fsfreeze-thaw")["return"] == 0);
  CHECK(rig.coordinator->list_sessions()["sessions"][0]["state"] == "failed");
}

TEST_CASE("qga freeze: a lost hold makes thaw answer an error and skips post-snapshot") {
  test::FakeScript losing;
  losing.lose_hold = true;
  QgaRig rig({}, losing);
  auto connection = rig.service->connect("test", true);
  REQUIRE(execute(*connection, "guest-fsfreeze-freeze")["return"] == 2);
  auto reply = execute(*connection, "guest-fsfreeze-thaw");
  CHECK(reply["error"]["class"] == "GenericError");
  CHECK(desc_contains(reply, "not application-consistent"));
  CHECK(desc_contains(reply, "scripted lost hold"));
  CHECK(rig.journal->count("db:post_snapshot") == 0);
  CHECK_FALSE(rig.coordinator->frozen());
  CHECK(metrics(rig).find("quiesce_qga_sessions_total{continuous=\"false\"} 1") !=
        std::string::npos);
  CHECK(execute(*connection, "guest-fsfreeze-thaw")["return"] == 0);
}

TEST_CASE("qga freeze: past the freeze window the agent thaws, and the next thaw says so once") {
  agent::qga::QgaOptions options;
  options.freeze_window = 300ms;
  QgaRig rig(options);
  auto connection = rig.service->connect("test", true);
  REQUIRE(execute(*connection, "guest-fsfreeze-freeze")["return"] == 2);
  bool thawed = false;
  for (int i = 0; i < 100 && !thawed; ++i) {
    std::this_thread::sleep_for(50ms);
    thawed = execute(*connection, "guest-fsfreeze-status")["return"] == "thawed";
  }
  REQUIRE(thawed);
  CHECK(rig.journal->count("fs:thaw") == 1);
  // The window ended the qga session too: a host that never thaws (libvirt
  // after a reconnect) does not keep the native API out.
  bool idle = false;
  for (int i = 0; i < 100 && !idle; ++i) {
    idle = rig.coordinator->health()["state"] == "idle";
    if (!idle) {
      std::this_thread::sleep_for(20ms);
    }
  }
  REQUIRE(idle);
  auto native = rig.coordinator->create_session({});
  REQUIRE(native.ok());
  REQUIRE(rig.coordinator->abort(native.value()["id"].get<std::string>()).ok());
  auto reply = execute(*connection, "guest-fsfreeze-thaw");
  CHECK(reply["error"]["class"] == "GenericError");
  CHECK(desc_contains(reply, "freeze window"));
  CHECK(execute(*connection, "guest-fsfreeze-thaw")["return"] == 0);
  // The next freeze starts afresh.
  REQUIRE(execute(*connection, "guest-fsfreeze-freeze")["return"] == 2);
  CHECK(execute(*connection, "guest-fsfreeze-thaw")["return"] == 2);
}

TEST_CASE("qga freeze: a window that ran out without any thaw does not block the next freeze") {
  agent::qga::QgaOptions options;
  options.freeze_window = 200ms;
  QgaRig rig(options);
  auto connection = rig.service->connect("test", true);
  REQUIRE(execute(*connection, "guest-fsfreeze-freeze")["return"] == 2);
  for (int i = 0; i < 100 && rig.coordinator->frozen(); ++i) {
    std::this_thread::sleep_for(50ms);
  }
  REQUIRE_FALSE(rig.coordinator->frozen());
  CHECK(execute(*connection, "guest-fsfreeze-freeze")["return"] == 2);
  auto sessions = rig.coordinator->list_sessions()["sessions"];
  REQUIRE(sessions.size() == 2);
  CHECK(sessions[0]["state"] == "aborted");
  CHECK(sessions[0]["verdict"]["watchdog_fired"] == true);
  CHECK(execute(*connection, "guest-fsfreeze-thaw")["return"] == 2);
}

TEST_CASE("qga freeze: a native session's freeze is reported, not thawed, by qga") {
  QgaRig rig;
  auto created = rig.coordinator->create_session({});
  REQUIRE(created.ok());
  const std::string id = created.value()["id"];
  REQUIRE(rig.coordinator->freeze(id).ok());
  auto connection = rig.service->connect("test", true);
  CHECK(execute(*connection, "guest-fsfreeze-status")["return"] == "frozen");
  auto reply = execute(*connection, "guest-fsfreeze-thaw");
  CHECK(desc_contains(reply, id));
  CHECK(rig.coordinator->frozen());
  // ...and it is thawed through quiesce-api, on the same channel.
  auto thawed = execute(*connection, "quiesce-api",
                        {{"method", "POST"}, {"path", "/v1/sessions/" + id + "/thaw"}});
  CHECK(thawed["return"]["status"] == 200);
  CHECK(thawed["return"]["body"]["verdict"]["continuous"] == true);
  CHECK_FALSE(rig.coordinator->frozen());
}

TEST_CASE("qga quiesce-api: one v1 request through the same route table as HTTP") {
  QgaRig rig;
  auto connection = rig.service->connect("test", true);
  auto health = execute(*connection, "quiesce-api", {{"method", "GET"}, {"path", "/v1/health"}});
  CHECK(health["return"]["status"] == 200);
  CHECK(health["return"]["body"]["version"] == QUIESCE_VERSION);

  auto created = execute(*connection, "quiesce-api",
                         {{"method", "POST"},
                          {"path", "/v1/sessions"},
                          {"body", {{"writers", {"app"}}, {"checkpoint_id", "cp-qga"}}}});
  CHECK(created["return"]["status"] == 201);
  const std::string id = created["return"]["body"]["id"];
  CHECK(created["return"]["body"]["origin"] == "api");

  auto listed = execute(*connection, "quiesce-api", {{"method", "GET"}, {"path", "/v1/sessions"}});
  CHECK(listed["return"]["body"]["sessions"][0]["id"] == id);

  // A body given as a string is sent as it is; a bad one gets the API's error.
  auto bad = execute(*connection, "quiesce-api",
                     {{"method", "POST"}, {"path", "/v1/sessions"}, {"body", "{not json"}});
  CHECK(bad["return"]["status"] == 400);
  CHECK(bad["return"]["body"]["error"]["code"] == "bad_request");

  auto metrics_reply = execute(*connection, "quiesce-api", {{"method", "GET"}, {"path", "/metrics"}});
  CHECK(metrics_reply["return"]["body"].get<std::string>().find("quiesce_qga_sessions_total") !=
        std::string::npos);

  auto deleted = execute(*connection, "quiesce-api",
                         {{"method", "DELETE"}, {"path", "/v1/sessions/" + id}});
  CHECK(deleted["return"]["body"]["state"] == "aborted");

  CHECK(desc_contains(execute(*connection, "quiesce-api", {{"method", "get"}, {"path", "/v1/health"}}),
                      "'method'"));
  CHECK(desc_contains(execute(*connection, "quiesce-api", {{"method", "GET"}, {"path", "v1"}}),
                      "'path'"));
  CHECK(desc_contains(execute(*connection, "quiesce-api",
                              {{"method", "POST"},
                               {"path", "/v1/sessions"},
                               {"body", std::string(70 * 1024, 'x')}}),
                      "'body'"));
  CHECK(execute(*connection, "quiesce-api", {{"path", "/v1/health"}})["error"]["desc"] ==
        "Parameter 'method' is missing");
}

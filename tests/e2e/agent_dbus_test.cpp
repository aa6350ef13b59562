// The real quiesce-agent binary on a private dbus-daemon: org.quiesce.Agent1's
// properties, methods and signals, driven by an sd-bus client as a local tool
// would, and by gdbus run as `nobody` for the access checks.

#include <doctest/doctest.h>

#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <fstream>
#include <sstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/dbus_bus.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/running_agent.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
using namespace std::chrono_literals;
using test::BusClient;
using test::PrivateBus;
using test::RunningAgent;

namespace {

nlohmann::json dbus_agent_config(const test::TempDir& dir, const PrivateBus& bus) {
  auto config = test::agent_config(
      dir, {{{"type", "delay"}, {"name", "app"}, {"options", {{"delays_ms", {{"freeze", 20}}}}}},
            {{"type", "delay"}, {"name", "db"}, {"level", "database"}}});
  config["dbus"] = {{"enabled", true}, {"bus", "address"}, {"address", bus.address()}};
  return config;
}

// The agent takes its bus name before its socket opens, so it is there once
// RunningAgent returns; the client still waits for it to be safe.
bool agent_on_bus(BusClient& client) {
  return test::eventually(5s, [&] { return client.call("Health").ok; });
}

std::string id_of(const BusClient::Reply& reply) {
  return nlohmann::json::parse(reply.value).value("id", "");
}

// A private bus with the real agent on it and a client that has seen it
// answer. `adjust` changes the agent's config; `policy` is added to the bus's.
struct AgentOnBus {
  explicit AgentOnBus(const std::function<void(nlohmann::json&)>& adjust = {},
                      const std::filesystem::path& policy = {})
      : bus(dir, policy), agent(dir, config_of(dir, bus, adjust)), client(bus.address()) {
    REQUIRE(agent_on_bus(client));
  }
  static nlohmann::json config_of(const test::TempDir& dir, const PrivateBus& bus,
                                  const std::function<void(nlohmann::json&)>& adjust) {
    auto config = dbus_agent_config(dir, bus);
    if (adjust) {
      adjust(config);
    }
    return config;
  }

  test::TempDir dir;
  PrivateBus bus;
  RunningAgent agent;
  BusClient client;
};

// gdbus as `nobody`, no supplementary groups: an unprivileged local user.
int call_as_nobody(const PrivateBus& bus, const std::vector<std::string>& gdbus_arguments,
                   std::string& output) {
  std::vector<std::string> argv{"/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                                "--clear-groups",  "/usr/bin/gdbus",  "call",
                                "--address",       bus.address(),    "--dest",
                                "org.quiesce.Agent1", "--object-path", "/org/quiesce/Agent1",
                                "--method"};
  argv.insert(argv.end(), gdbus_arguments.begin(), gdbus_arguments.end());
  return test::run_command(argv, &output);
}

// Reading is open to all: `nobody` gets the State property.
void check_nobody_reads_state(const PrivateBus& bus, const std::string& expected) {
  std::string output;
  CHECK(call_as_nobody(bus, {"org.freedesktop.DBus.Properties.Get", "org.quiesce.Agent1", "State"},
                       output) == 0);
  CHECK_MESSAGE(output.find(expected) != std::string::npos, output);
}

// Runs the first Python example after `heading` in docs/dbus.md as written,
// on the test's bus instead of the system's, with the system's python3
// (where Debian's python3-dbus and python3-gi live). Output: dir/<tag>.out.
std::unique_ptr<test::ChildProcess> run_docs_python_example(const test::TempDir& dir,
                                                            const PrivateBus& bus,
                                                            const std::string& heading,
                                                            const std::string& tag) {
  auto doc = test::read_text(std::filesystem::path(QUIESCE_SOURCE_DIR) / "docs/dbus.md");
  const auto section = doc.find(heading);
  REQUIRE(section != std::string::npos);
  const auto begin = doc.find("```python\n", section);
  REQUIRE(begin != std::string::npos);
  const auto end = doc.find("```", begin + 10);
  std::string script = doc.substr(begin + 10, end - begin - 10);
  const std::string system_bus = "dbus.SystemBus()";
  const auto at = script.find(system_bus);
  REQUIRE(at != std::string::npos);
  script.replace(at, system_bus.size(), "dbus.bus.BusConnection(\"" + bus.address() + "\")");
  {
    std::ofstream out(dir / (tag + ".py"));
    out << script;
  }
  return std::make_unique<test::ChildProcess>(
      std::vector<std::string>{"/usr/bin/python3", "-u", (dir / (tag + ".py")).string()},
      dir / (tag + ".out"));
}

// Whether a docs example's output (dir/<tag>.out) shows `text` within 10 s.
bool prints(const test::TempDir& dir, const std::string& tag, const std::string& text) {
  return test::eventually(10s, [&] {
    return test::read_text(dir / (tag + ".out")).find(text) != std::string::npos;
  });
}

}  // namespace

TEST_CASE("agent dbus: properties, methods and signals in order across a whole session") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  client.watch_signals();

  CHECK(client.string_property("State") == "idle");
  CHECK(client.string_property("ActiveSession").empty());
  CHECK(client.string_property("LastVerdict").empty());
  auto writers = client.writers_property();
  REQUIRE(writers.size() == 2);
  CHECK(writers[0] == std::vector<std::string>{"app", "application", "stable"});
  CHECK(writers[1][0] == "db");
  CHECK(writers[1][1] == "database");

  auto created = client.call("CreateSession", {R"({"checkpoint_id": "cp-dbus"})"});
  REQUIRE_MESSAGE(created.ok, created.error_name, ": ", created.error_message);
  const auto id = id_of(created);
  REQUIRE(!id.empty());
  CHECK(client.string_property("ActiveSession") == id);
  CHECK(client.string_property("State") == "session_active");

  auto frozen = client.call("Freeze", {id});
  REQUIRE_MESSAGE(frozen.ok, frozen.error_message);
  CHECK(client.string_property("State") == "frozen");
  auto thawed = client.call("Thaw", {id});
  REQUIRE_MESSAGE(thawed.ok, thawed.error_message);
  CHECK(nlohmann::json::parse(thawed.value)["verdict"]["continuous"] == true);
  auto verdict = nlohmann::json::parse(client.string_property("LastVerdict"));
  CHECK(verdict["continuous"] == true);
  auto completed = client.call("Complete", {id, "snap-dbus"});
  REQUIRE_MESSAGE(completed.ok, completed.error_message);
  auto status = client.call("GetSession", {id});
  REQUIRE(status.ok);
  CHECK(nlohmann::json::parse(status.value)["state"] == "completed");

  auto seen = client.signals(4, 10s);
  std::vector<std::string> order;
  for (const auto& signal : seen) {
    CHECK(signal.session == id);
    order.push_back(signal.member);
  }
  CHECK(order == std::vector<std::string>{"SessionCreated", "Frozen", "Thawed", "Completed"});
  REQUIRE(seen.size() >= 3);
  CHECK(nlohmann::json::parse(seen[2].detail)["continuous"] == true);
  // Every property that moved was announced.
  auto changed = client.changed_properties();
  for (const char* name : {"State", "ActiveSession", "LastVerdict", "Writers"}) {
    CHECK_MESSAGE(std::find(changed.begin(), changed.end(), name) != changed.end(), name);
  }
  CHECK(client.string_property("State") == "idle");
  CHECK(client.string_property("ActiveSession").empty());
  // No logind on a private bus: the inhibitor is skipped with a debug line.
  CHECK(test::eventually(5s, [&] {
    return test::read_text(dir / "agent.log").find("no logind inhibitor") != std::string::npos;
  }));
}

TEST_CASE("agent dbus: properties and Health answer while a writer is busy freezing") {
  AgentOnBus on([](nlohmann::json& config) {
    config["writers"] = {
        {{"type", "delay"}, {"name", "slow"}, {"options", {{"delays_ms", {{"freeze", 1500}}}}}}};
  });
  auto& [dir, bus, agent, client] = on;
  auto created = client.call("CreateSession", {"{}"});
  REQUIRE(created.ok);
  const auto id = id_of(created);

  std::atomic<bool> freeze_returned{false};
  BusClient::Reply frozen;
  std::thread freezer([&] {
    BusClient own(bus.address());  // sd-bus connections are one thread's each
    frozen = own.call("Freeze", {id});
    freeze_returned = true;
  });
  // The hold starts before the writer is called: State says frozen while the
  // writer still sleeps in its freeze call.
  CHECK(test::eventually(1000ms, [&] { return client.string_property("State") == "frozen"; }));
  CHECK(client.call("Health").ok);
  CHECK(client.call("GetSession", {id}).ok);
  CHECK_FALSE(freeze_returned.load());
  freezer.join();
  REQUIRE_MESSAGE(frozen.ok, frozen.error_message);
  CHECK(client.call("Thaw", {id}).ok);
}

TEST_CASE("agent dbus: abort signals Aborted, and API errors come back as named D-Bus errors") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  client.watch_signals();

  auto created = client.call("CreateSession", {""});
  REQUIRE(created.ok);
  const auto id = id_of(created);
  // A second session while one is active: the API's conflict, by name.
  auto second = client.call("CreateSession", {"{}"});
  CHECK_FALSE(second.ok);
  CHECK(second.error_name.rfind("org.quiesce.Error.", 0) == 0);
  CHECK(second.error_message.find(id) != std::string::npos);
  // Bad input is refused before anything happens.
  auto bad_body = client.call("CreateSession", {R"({"no_such_field": 1})"});
  CHECK_FALSE(bad_body.ok);
  CHECK(bad_body.error_message.find("no_such_field") != std::string::npos);
  auto bad_id = client.call("Freeze", {"../health"});
  CHECK(bad_id.error_name == "org.freedesktop.DBus.Error.InvalidArgs");
  auto unknown = client.call("Thaw", {"no-such-session"});
  CHECK(unknown.error_name.rfind("org.quiesce.Error.", 0) == 0);
  CHECK(client.string_property("ActiveSession") == id);

  auto aborted = client.call("Abort", {id});
  REQUIRE_MESSAGE(aborted.ok, aborted.error_message);
  auto seen = client.signals(2, 10s);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].member == "SessionCreated");
  CHECK(seen[1].member == "Aborted");
  CHECK(seen[1].session == id);
  CHECK(seen[1].detail == "aborted");
}

TEST_CASE("agent dbus: signals also follow a session driven over HTTP") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  client.watch_signals();
  auto http = agent.client();
  auto created = http.create_session({{"checkpoint_id", "cp-http"}});
  REQUIRE_MESSAGE(created.ok(), test::describe(created));
  const std::string id = created.body["id"];
  REQUIRE(http.freeze(id).ok());
  REQUIRE(http.thaw(id).ok());
  REQUIRE(http.complete(id, "snap").ok());
  std::vector<std::string> order;
  for (const auto& signal : client.signals(4, 10s)) {
    order.push_back(signal.member);
  }
  CHECK(order == std::vector<std::string>{"SessionCreated", "Frozen", "Thawed", "Completed"});
}

TEST_CASE("agent dbus: an unprivileged caller gets AccessDenied from the agent and changes nothing") {
  AgentOnBus on;  // a bus that lets anyone call: the agent must refuse by itself
  auto& [dir, bus, agent, client] = on;

  std::string output;
  int code = call_as_nobody(bus, {"org.quiesce.Agent1.CreateSession", "{}"}, output);
  CHECK(code != 0);
  CHECK_MESSAGE(output.find("org.freedesktop.DBus.Error.AccessDenied") != std::string::npos,
                output);
  CHECK_MESSAGE(output.find("uid 65534") != std::string::npos, output);
  CHECK(client.string_property("State") == "idle");
  CHECK(client.string_property("ActiveSession").empty());
  CHECK(agent.client().health().body["session"].is_null());

  // A session someone else started: nobody cannot freeze or abort it.
  auto created = client.call("CreateSession", {"{}"});
  REQUIRE(created.ok);
  const auto id = id_of(created);
  for (const char* method : {"org.quiesce.Agent1.Freeze", "org.quiesce.Agent1.Abort"}) {
    output.clear();
    CHECK(call_as_nobody(bus, {method, id}, output) != 0);
    CHECK_MESSAGE(output.find("AccessDenied") != std::string::npos, output);
  }
  CHECK(client.string_property("State") == "session_active");

  check_nobody_reads_state(bus, "session_active");
  output.clear();
  CHECK(call_as_nobody(bus, {"org.quiesce.Agent1.GetSession", id}, output) == 0);
  CHECK(client.call("Abort", {id}).ok);
}

TEST_CASE("agent dbus: a member of the configured group may drive a session") {
  // `users` (gid 100) stands for the `quiesce` group a package creates:
  // nobody with it as a supplementary group is a member like any other.
  AgentOnBus on([](nlohmann::json& config) { config["dbus"]["group"] = "users"; });
  auto& [dir, bus, agent, client] = on;

  std::string output;
  int code = test::run_command(
      {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--groups=100", "/usr/bin/gdbus",
       "call", "--address", bus.address(), "--dest", "org.quiesce.Agent1", "--object-path",
       "/org/quiesce/Agent1", "--method", "org.quiesce.Agent1.CreateSession", "{}"},
      &output);
  CHECK_MESSAGE(code == 0, output);
  CHECK(client.string_property("State") == "session_active");
  // Without the group, the same user is refused.
  output.clear();
  CHECK(call_as_nobody(bus, {"org.quiesce.Agent1.Abort", client.string_property("ActiveSession")},
                       output) != 0);
  CHECK_MESSAGE(output.find("AccessDenied") != std::string::npos, output);
}

TEST_CASE("agent dbus: the installed policy file lets anyone read and only root change") {
  AgentOnBus on({}, std::filesystem::path(QUIESCE_SOURCE_DIR) / "agent/dbus/org.quiesce.Agent1.conf");
  auto& [dir, bus, agent, client] = on;

  std::string output;
  CHECK(call_as_nobody(bus, {"org.quiesce.Agent1.CreateSession", "{}"}, output) != 0);
  // Refused by the bus itself: the message never reaches the agent.
  CHECK_MESSAGE(output.find("AccessDenied") != std::string::npos, output);
  CHECK_MESSAGE(output.find("uid 65534") == std::string::npos, output);
  CHECK(client.string_property("State") == "idle");
  check_nobody_reads_state(bus, "idle");
  output.clear();
  CHECK(call_as_nobody(bus, {"org.quiesce.Agent1.Health"}, output) == 0);
  // Root passes the policy.
  auto created = client.call("CreateSession", {"{}"});
  CHECK(created.ok);
}

TEST_CASE("agent dbus: a second agent on the same bus exits with a clear error") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;

  test::TempDir second_dir;
  auto config = dbus_agent_config(second_dir, bus);
  {
    std::ofstream out(second_dir / "agent.json");
    out << config.dump();
  }
  std::string output;
  int code = test::run_command({test::built_binary("quiesce-agent").string(), "--config",
                                (second_dir / "agent.json").string()},
                               &output);
  CHECK(code == 4);
  auto log = test::read_text(second_dir / "agent.log");
  CHECK_MESSAGE(log.find("already owned") != std::string::npos, log);
}

TEST_CASE("agent dbus: the Python example in docs/dbus.md hears the thaw and its verdict") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;

  auto example = run_docs_python_example(dir, bus, "## From Python", "example");
  // It prints the state once its signal receiver is in place.
  REQUIRE_MESSAGE(prints(dir, "example", "agent is idle"), test::read_text(dir / "example.out"));
  auto created = client.call("CreateSession", {"{}"});
  REQUIRE(created.ok);
  const auto id = id_of(created);
  REQUIRE(client.call("Freeze", {id}).ok);
  REQUIRE(client.call("Thaw", {id}).ok);
  auto status = example->wait_for(10s);
  REQUIRE(status.has_value());
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
  auto output = test::read_text(dir / "example.out");
  CHECK_MESSAGE(output.find(id + " thawed: continuous") != std::string::npos, output);
}

// ---------------------------------------------------------------------------
// Writers registered at run time: org.quiesce.Writer1 objects exported by a
// separate process (quiesce-test-dbus-writer, built on the SDK's BusWriter).

namespace {

// One run of the test writer program. Its log has one line per Writer1 call
// ("<path> <Method> <session>") and per registration attempt.
struct TestWriter {
  TestWriter(const test::TempDir& dir, const PrivateBus& bus, const std::string& tag,
             std::vector<std::string> arguments, const std::filesystem::path& shared_log = {})
      : log(shared_log.empty() ? dir / (tag + ".calls") : shared_log),
        process(argv_of(bus, log, std::move(arguments)), dir / (tag + ".out")) {
    REQUIRE_MESSAGE(test::eventually(10s,
                                     [&] {
                                       return test::read_text(log).find("ready") !=
                                              std::string::npos;
                                     }),
                    test::read_text(dir / (tag + ".out")), test::read_text(log));
  }
  static std::vector<std::string> argv_of(const PrivateBus& bus, const std::filesystem::path& log,
                                          std::vector<std::string> arguments) {
    std::vector<std::string> argv{test::built_binary("quiesce-test-dbus-writer").string(),
                                  "--address", bus.address(), "--log", log.string()};
    argv.insert(argv.end(), arguments.begin(), arguments.end());
    return argv;
  }
  // The Writer1 methods called so far, in order, as "<path-suffix> <Method>".
  [[nodiscard]] std::vector<std::string> calls() const { return calls_in(log); }
  static std::vector<std::string> calls_in(const std::filesystem::path& log) {
    std::vector<std::string> out;
    std::istringstream lines(test::read_text(log));
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("register", 0) == 0 || line.rfind("unregister", 0) == 0 ||
          line == "ready") {
        continue;
      }
      auto method_end = line.rfind(' ');
      out.push_back(line.substr(0, method_end));
    }
    return out;
  }
  [[nodiscard]] std::size_t log_count(const std::string& needle) const {
    auto text = test::read_text(log);
    std::size_t count = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
      ++count;
    }
    return count;
  }

  std::filesystem::path log;
  test::ChildProcess process;
};

bool has_writer(BusClient& client, const std::string& name) {
  auto writers = client.writers_property();
  return std::any_of(writers.begin(), writers.end(),
                     [&](const auto& writer) { return writer[0] == name; });
}

nlohmann::json writer_in(const nlohmann::json& status, const std::string& name) {
  for (const auto& writer : status["writers"]) {
    if (writer["name"] == name) {
      return writer;
    }
  }
  return nullptr;
}

}  // namespace

TEST_CASE("agent dbus writers: a registered writer is called through every phase in order") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  TestWriter writer(dir, bus, "probe", {"--path", "/com/example/Probe", "--level", "database",
                                        "--options", R"({"name": "probe"})"});
  CHECK(writer.log_count("register /com/example/Probe ok probe") == 1);
  REQUIRE(has_writer(client, "probe"));
  auto writers = client.writers_property();
  CHECK(writers.back() == std::vector<std::string>{"probe", "database", "stable"});

  auto created = client.call("CreateSession", {"{}"});
  REQUIRE_MESSAGE(created.ok, created.error_message);
  const auto id = id_of(created);
  REQUIRE(client.call("Freeze", {id}).ok);
  auto thawed = client.call("Thaw", {id});
  REQUIRE_MESSAGE(thawed.ok, thawed.error_message);
  REQUIRE(client.call("Complete", {id, "snap-1"}).ok);

  const std::string p = "/com/example/Probe";
  CHECK(writer.calls() == std::vector<std::string>{p + " Identify", p + " Prepare", p + " Freeze",
                                                    p + " Thaw", p + " PostSnapshot"});
  auto status = nlohmann::json::parse(client.call("GetSession", {id}).value);
  auto probe = writer_in(status, "probe");
  REQUIRE(probe.is_object());
  CHECK(probe["type"] == "dbus");
  CHECK(probe["state"] == "completed");
  CHECK(probe["level"] == "database");
  CHECK(probe["hold"]["continuous"] == true);
  CHECK(probe["identity"]["metadata"]["object_path"] == p);
  CHECK(status["artifacts"]["probe"]["snapshot_seen"] == "snap-1");
  CHECK(status["verdict"]["continuous"] == true);
  CHECK(nlohmann::json::parse(thawed.value)["verdict"]["continuous"] == true);
}

TEST_CASE("agent dbus writers: a writer that reports a lost hold makes the verdict not continuous") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  TestWriter writer(dir, bus, "loser", {"--options", R"({"name": "loser"})", "--lose-hold"});
  auto id = id_of(client.call("CreateSession", {"{}"}));
  REQUIRE(client.call("Freeze", {id}).ok);
  auto thawed = nlohmann::json::parse(client.call("Thaw", {id}).value);
  CHECK(thawed["verdict"]["continuous"] == false);
  CHECK_MESSAGE(thawed["verdict"]["reasons"].dump().find("told to lose its hold") !=
                    std::string::npos,
                thawed.dump());
}

TEST_CASE("agent dbus writers: writers at different levels freeze in level order and thaw in reverse") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  const auto shared = dir / "both.calls";
  TestWriter fs(dir, bus, "fs", {"--path", "/w/fs", "--level", "filesystem"}, shared);
  TestWriter app(dir, bus, "app", {"--path", "/w/app", "--level", "application"}, shared);
  // Both log to one file, so the second's "ready" may be the first's: wait
  // for the agent to list both.
  REQUIRE(test::eventually(5s, [&] {
    return has_writer(client, "dbus.w.fs") && has_writer(client, "dbus.w.app");
  }));
  auto id = id_of(client.call("CreateSession", {"{}"}));
  REQUIRE(!id.empty());
  REQUIRE(client.call("Freeze", {id}).ok);
  REQUIRE(client.call("Thaw", {id}).ok);
  std::vector<std::string> holds;
  for (const auto& call : TestWriter::calls_in(shared)) {
    if (call.find("Freeze") != std::string::npos || call.find("Thaw") != std::string::npos) {
      holds.push_back(call);
    }
  }
  CHECK(holds == std::vector<std::string>{"/w/app Freeze", "/w/fs Freeze", "/w/fs Thaw",
                                          "/w/app Thaw"});
}

TEST_CASE("agent dbus writers: a writer that hangs past its deadline is timed out and aborted") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  TestWriter writer(dir, bus, "hang",
                    {"--options",
                     R"({"name": "sleepy", "timeouts_ms": {"freeze": 300, "abort": 300}})",
                     "--hang", "Freeze"});
  auto id = id_of(client.call("CreateSession", {"{}"}));
  REQUIRE(!id.empty());
  const auto began = std::chrono::steady_clock::now();
  auto frozen = client.call("Freeze", {id});
  CHECK_FALSE(frozen.ok);
  CHECK(std::chrono::steady_clock::now() - began < 5s);
  auto status = nlohmann::json::parse(client.call("GetSession", {id}).value);
  auto sleepy = writer_in(status, "sleepy");
  CHECK(sleepy["state"] == "failed_at_freeze");
  CHECK(sleepy["error"]["class"] == "timeout");
  CHECK(status["state"] == "failed");
  CHECK(client.string_property("State") == "idle");
}

TEST_CASE("agent dbus writers: a reply of the wrong type fails the writer with a clear error") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  TestWriter writer(dir, bus, "garbage",
                    {"--path", "/w/garbage", "--options", R"({"name": "garbage"})", "--garbage"});
  REQUIRE(has_writer(client, "garbage"));
  auto created = client.call("CreateSession", {"{}"});
  REQUIRE_FALSE(created.ok);
  CHECK_MESSAGE(created.error_message.find("wrong type") != std::string::npos,
                created.error_name, ": ", created.error_message);
  auto sessions = nlohmann::json::parse(client.call("Health").value);
  CHECK(sessions["session"].is_null());
}

TEST_CASE("agent dbus writers: a writer that disconnects while frozen is dropped and the hold marked broken") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  client.watch_signals();
  auto writer = std::make_unique<TestWriter>(
      dir, bus, "quitter", std::vector<std::string>{"--options", R"({"name": "quitter"})"});
  auto id = id_of(client.call("CreateSession", {"{}"}));
  REQUIRE(client.call("Freeze", {id}).ok);
  writer->process.signal(SIGKILL);
  REQUIRE(writer->process.wait_for(5s).has_value());
  // Dropped from the agent's writers as soon as the bus says its name left.
  CHECK(test::eventually(5s, [&] { return !has_writer(client, "quitter"); }));
  auto thawed = client.call("Thaw", {id});
  REQUIRE_MESSAGE(thawed.ok, thawed.error_message);
  auto verdict = nlohmann::json::parse(thawed.value)["verdict"];
  CHECK(verdict["continuous"] == false);
  CHECK_MESSAGE(verdict["reasons"].dump().find("vanished while it held a freeze") !=
                    std::string::npos,
                verdict.dump());
  auto signals = client.signals(3, 5s);
  REQUIRE(signals.size() >= 3);
  CHECK(signals[2].member == "Thawed");
  CHECK(nlohmann::json::parse(signals[2].detail)["continuous"] == false);
  // The next session no longer has it.
  // Its post-snapshot cannot run (the process is gone), so Complete fails
  // saying why; the host drops the snapshot taken over the broken hold.
  auto completed = client.call("Complete", {id, "snap-over-broken-hold"});
  CHECK_FALSE(completed.ok);
  CHECK_MESSAGE(completed.error_message.find("vanished") != std::string::npos,
                completed.error_name, ": ", completed.error_message);
  CHECK(nlohmann::json::parse(client.call("GetSession", {id}).value)["state"] == "failed");
  auto next = client.call("CreateSession", {"{}"});
  REQUIRE_MESSAGE(next.ok, next.error_name, ": ", next.error_message);
  CHECK(writer_in(nlohmann::json::parse(next.value), "quitter").is_null());
  REQUIRE(client.call("Abort", {id_of(next)}).ok);
}

TEST_CASE("agent dbus writers: the same path twice and more than the limits are refused") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  TestWriter first(dir, bus, "many", {"--path", "/m", "--objects", "17", "--twice"});
  CHECK(first.log_count(" ok dbus.m.w") == 16);
  CHECK(first.log_count("register /m/w16 refused RegisterWriter failed: "
                        "org.freedesktop.DBus.Error.LimitsExceeded") == 1);
  CHECK(first.log_count("register /m/w0 refused RegisterWriter failed: "
                        "org.quiesce.Error.writer_exists") == 1);
  // A name already taken by a configured writer is refused too.
  TestWriter clash(dir, bus, "clash", {"--path", "/clash", "--options", R"({"name": "app"})"});
  CHECK(clash.log_count("refused RegisterWriter failed: org.quiesce.Error.writer_exists") == 1);
  // Bad input is refused with InvalidArgs and changes nothing.
  TestWriter bad(dir, bus, "bad", {"--path", "/bad", "--level", "kernel"});
  CHECK(bad.log_count("org.freedesktop.DBus.Error.InvalidArgs") == 1);
  CHECK(client.writers_property().size() == 2 + 16);
  // 16 per connection, 64 in all.
  std::vector<std::unique_ptr<TestWriter>> more;
  for (const char* tag : {"a", "b", "c"}) {
    more.push_back(std::make_unique<TestWriter>(
        dir, bus, tag,
        std::vector<std::string>{"--path", std::string("/") + tag, "--objects", "16"}));
    CHECK(more.back()->log_count(" ok dbus.") == 16);
  }
  TestWriter over(dir, bus, "over", {"--path", "/over"});
  CHECK(over.log_count(
            "refused RegisterWriter failed: org.freedesktop.DBus.Error.LimitsExceeded") == 1);
  CHECK(client.writers_property().size() == 2 + 64);
  CHECK(client.writers_property().size() == 2 + 64);
}

TEST_CASE("agent dbus writers: an unregistered writer is no longer called") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  TestWriter writer(dir, bus, "gone", {"--path", "/w/gone", "--then-unregister"});
  CHECK(writer.log_count("unregister /w/gone ok") == 1);
  CHECK(writer.log_count("unregister /w/gone refused UnregisterWriter failed: "
                         "org.quiesce.Error.unknown_writer") == 1);
  CHECK_FALSE(has_writer(client, "dbus.w.gone"));
  auto id = id_of(client.call("CreateSession", {"{}"}));
  REQUIRE(client.call("Abort", {id}).ok);
  CHECK(writer.calls().empty());
}

TEST_CASE("agent dbus writers: an unprivileged caller may not register a writer") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  std::string output;
  CHECK(call_as_nobody(bus, {"org.quiesce.Agent1.RegisterWriter", "/w/nobody", "application", "{}"},
                       output) != 0);
  CHECK_MESSAGE(output.find("AccessDenied") != std::string::npos, output);
  CHECK(client.writers_property().size() == 2);
  CHECK(call_as_nobody(bus, {"org.quiesce.Agent1.UnregisterWriter", "/w/nobody"}, output) != 0);
  CHECK_MESSAGE(output.find("AccessDenied") != std::string::npos, output);
}

TEST_CASE("agent dbus writers: the Python writer in docs/dbus.md registers and is called") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  auto example = run_docs_python_example(dir, bus, "### In Python", "writer");
  REQUIRE_MESSAGE(prints(dir, "writer", "registered as example"),
                  test::read_text(dir / "writer.out"));
  REQUIRE(has_writer(client, "example"));
  auto id = id_of(client.call("CreateSession", {"{}"}));
  REQUIRE(client.call("Freeze", {id}).ok);
  auto thawed = client.call("Thaw", {id});
  REQUIRE_MESSAGE(thawed.ok, thawed.error_message);
  REQUIRE(client.call("Complete", {id, "snap-py"}).ok);
  auto output = test::read_text(dir / "writer.out");
  CHECK_MESSAGE(output.find("prepare " + id + "\nfreeze " + id + "\nthaw " + id) !=
                    std::string::npos,
                output);
  auto status = nlohmann::json::parse(client.call("GetSession", {id}).value);
  CHECK(status["artifacts"]["example"]["snapshot"] == "snap-py");
  CHECK(writer_in(status, "example")["identity"]["components"][0]["name"] == "example");
  // The process exits: the agent drops its writer.
  example->signal(SIGTERM);
  CHECK(test::eventually(5s, [&] { return !has_writer(client, "example"); }));
}

TEST_CASE("agent dbus writers: a writer registered during a session takes part from the next one") {
  AgentOnBus on;
  auto& [dir, bus, agent, client] = on;
  auto id = id_of(client.call("CreateSession", {"{}"}));
  REQUIRE(!id.empty());
  TestWriter late(dir, bus, "late", {"--path", "/w/late"});
  REQUIRE(has_writer(client, "dbus.w.late"));
  REQUIRE(client.call("Freeze", {id}).ok);
  REQUIRE(client.call("Thaw", {id}).ok);
  REQUIRE(client.call("Complete", {id, "snap-before"}).ok);
  CHECK(late.calls().empty());
  CHECK(writer_in(nlohmann::json::parse(client.call("GetSession", {id}).value), "dbus.w.late")
            .is_null());

  auto next = id_of(client.call("CreateSession", {"{}"}));
  REQUIRE(!next.empty());
  REQUIRE(client.call("Abort", {next}).ok);
  CHECK(late.calls() ==
        std::vector<std::string>{"/w/late Identify", "/w/late Prepare", "/w/late Abort"});
}

// The real quiesce-agent with the fsfreeze writer on loop mounts: frozen-safe
// operation (its log and state on a mount it freezes) and what happens when
// the agent is killed or the host never thaws.

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>

#include <fstream>

#include "host-bridge/client/agent_client.hpp"
#include "tests/root/loop_fs.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/running_agent.hpp"

using namespace quiesce;
using namespace std::chrono_literals;
using test::LoopFs;
using test::writable_within;
using test::WriteProbe;

using quiesce::test::read_text;

namespace {

struct AgentOnLoopMounts {
  test::TempDir dir{"agent-frozen"};
  LoopFs data{dir.path(), "data", "ext4"};
  LoopFs logs{dir.path(), "logs", "xfs"};
  std::filesystem::path socket = dir / "agent.sock";
  std::filesystem::path log_file = std::filesystem::path(logs.mount_point()) / "agent.log";
  std::unique_ptr<test::ChildProcess> process;

  AgentOnLoopMounts() {
    auto config = test::agent_config(
        dir, {{{"type", "delay"}, {"name", "app"}},
              {{"type", "fsfreeze"},
               {"name", "fs"},
               {"options", {{"mounts", {data.mount_point(), logs.mount_point()}}}}}});
    // The log file and the state dir live on filesystems the agent freezes.
    config["state_dir"] = logs.mount_point() + "/state";
    config["log"]["file"] = log_file.string();
    std::ofstream(dir / "agent.json") << config.dump(2);
    process = std::make_unique<test::ChildProcess>(
        std::vector<std::string>{test::built_binary("quiesce-agent").string(), "--config",
                                 (dir / "agent.json").string()},
        dir / "agent.stderr");
    REQUIRE_MESSAGE(test::eventually(10s, [&] { return std::filesystem::exists(socket); }),
                    "the agent did not open its socket");
  }

  [[nodiscard]] client::AgentClient client() const {
    client::ClientOptions options;
    options.endpoint = client::Endpoint::parse("unix:" + socket.string());
    options.timeout = 10s;
    return client::AgentClient(options);
  }
};

}  // namespace

TEST_CASE("agent: with its log and state on a frozen mount, status and thaw still answer") {
  AgentOnLoopMounts rig;
  auto client = rig.client();
  auto created = client.create_session({{"checkpoint_id", "cp-frozen-log"}});
  REQUIRE(created.ok());
  const std::string id = created.body["id"];
  REQUIRE(client.freeze(id).ok());
  // Both filesystems are really frozen.
  WriteProbe probe(rig.data.mount_point());
  CHECK_FALSE(probe.finished_within(200ms));
  // While frozen, every read-only route answers at once.
  for (int i = 0; i < 5; ++i) {
    CHECK(client.health().body["state"] == "frozen");
    CHECK(client.session(id).body["state"] == "frozen");
    CHECK(client.writers().ok());
    CHECK(client.metrics().raw_body.find("quiesce_frozen 1") != std::string::npos);
  }
  const auto before_thaw = read_text(rig.log_file);
  auto thawed = client.thaw(id);
  REQUIRE(thawed.ok());
  CHECK(thawed.body["verdict"]["continuous"] == true);
  CHECK(probe.finished_within(2s));
  REQUIRE(client.complete(id, "snap").ok());
  // What was logged during the hold reached the file only after the thaw.
  CHECK(before_thaw.find("thawed, hold") == std::string::npos);
  CHECK(test::eventually(2s, [&] {
    return read_text(rig.log_file).find("thawed, hold") != std::string::npos;
  }));
}

TEST_CASE("agent: SIGKILL while frozen leaves every filesystem writable within a second") {
  AgentOnLoopMounts rig;
  auto client = rig.client();
  auto created = client.create_session();
  REQUIRE(created.ok());
  REQUIRE(client.freeze(created.body["id"].get<std::string>()).ok());
  WriteProbe data_probe(rig.data.mount_point());
  WriteProbe logs_probe(rig.logs.mount_point());
  CHECK_FALSE(data_probe.finished_within(200ms));
  const auto killed = std::chrono::steady_clock::now();
  rig.process->signal(SIGKILL);
  CHECK(data_probe.finished_within(1s));
  CHECK(logs_probe.finished_within(1s));
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - killed)
                        .count();
  MESSAGE("writable again " << took << " ms after SIGKILL of quiesce-agent");
}

TEST_CASE("agent: the host never thaws - writable again at the deadline, the verdict says broken") {
  AgentOnLoopMounts rig;
  auto client = rig.client();
  auto created = client.create_session({{"freeze_window_ms", 500}});
  REQUIRE(created.ok());
  const std::string id = created.body["id"];
  REQUIRE(client.freeze(id).ok());
  CHECK_FALSE(writable_within(rig.data.mount_point(), 100ms));
  CHECK(writable_within(rig.data.mount_point(), 3s));
  CHECK(writable_within(rig.logs.mount_point(), 1s));
  auto late = client.thaw(id);
  REQUIRE(late.ok());
  CHECK(late.body["verdict"]["continuous"] == false);
}

// Issue #15 item 11: the holder dying on its own (OOM killer, kill -9) while
// the agent lives: the agent thaws from its record at once, long before the
// freeze window ends, and the thaw's verdict says the hold broke.
TEST_CASE("agent: kill -9 of the freeze holder while frozen - writable at once, not at the window") {
  AgentOnLoopMounts rig;
  auto client = rig.client();
  auto created = client.create_session({{"freeze_window_ms", 30000}});
  REQUIRE(created.ok());
  const std::string id = created.body["id"];
  REQUIRE(client.freeze(id).ok());
  WriteProbe probe(rig.data.mount_point());
  CHECK_FALSE(probe.finished_within(200ms));
  const auto holder = test::child_named(rig.process->pid(), "quiesce-freeze");
  REQUIRE(holder);
  const auto killed = std::chrono::steady_clock::now();
  REQUIRE(::kill(*holder, SIGKILL) == 0);
  // A window of 30 s: anything near a second means the agent noticed the exit.
  CHECK(probe.finished_within(2s));
  CHECK(writable_within(rig.logs.mount_point(), 1s));
  MESSAGE("writable again "
          << std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - killed)
                 .count()
          << " ms after kill -9 of the freeze holder (freeze window 30 s)");
  auto thawed = client.thaw(id);
  REQUIRE_MESSAGE(thawed.ok(), test::describe(thawed));
  CHECK(thawed.body["verdict"]["continuous"] == false);
  CHECK_MESSAGE(thawed.body.dump().find("holder") != std::string::npos, thawed.body.dump());
}

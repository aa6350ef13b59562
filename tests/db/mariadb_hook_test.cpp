// A hook with the structure of qemu's mysql-flush.sh (issue #15 items 8 and
// 9), against a real MariaDB and the real agent: the freeze hook leaves a
// background subshell that holds FLUSH TABLES WITH READ LOCK in a client fed
// through a pipe, waits on a FIFO, and on thaw unlocks, removes the FIFO and
// writes to the stderr it inherited, after the hook itself has long exited.
// The script is our own (written here); qemu's sample itself is run by hand,
// see docs/writers/hooks.md ("qemu's mysql-flush.sh").
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <filesystem>
#include <fstream>
#include <thread>
#include <string>
#include <vector>

#include "tests/db/mariadb_server.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/running_agent.hpp"
#include "tests/support/temp_dir.hpp"

using namespace std::chrono_literals;
using quiesce::test::mariadb::MariadbServer;
using quiesce::test::mariadb::MariadbSession;
namespace fs = std::filesystem;
namespace mdbtest = quiesce::test::mariadb;

namespace {

struct FifoLockRig {
  quiesce::test::TempDir dir{"mdb-hook"};
  MariadbServer server{dir / "work", dir / "data"};
  fs::path hooks = dir / "hooks.d";
  fs::path fifo = dir / "flush.fifo";
  fs::path client_out = dir / "client.out";

  FifoLockRig() {
    mdbtest::open_for_traversal(dir.path());
    server.init();
    server.start();
    MariadbSession admin(server);
    REQUIRE_MESSAGE(admin.ok(), admin.error());
    admin.exec("CREATE DATABASE qt");
    admin.exec("CREATE TABLE qt.t(id bigint AUTO_INCREMENT PRIMARY KEY, v int) ENGINE=InnoDB");
    const auto client_cnf = dir / "client.cnf";
    std::ofstream(client_cnf) << "[client]\nuser=root\npassword=" << mdbtest::superuser_password
                              << "\nsocket=" << server.socket() << "\n";
    fs::permissions(client_cnf, fs::perms(0600));
    fs::create_directory(hooks);
    fs::permissions(hooks, fs::perms(0755));
    const auto mysql = "/usr/bin/mariadb --defaults-file=" + client_cnf.string();
    const auto hook = hooks / "50-flush";
    // The shape of mysql-flush.sh: mkfifo (fails if a dead run left it),
    // a backgrounded subshell piping SQL into one client session, a wait
    // until the lock is really held, and a thaw that only writes the FIFO.
    std::ofstream(hook)
        << "#!/bin/sh\n"
        << "FIFO='" << fifo.string() << "'\n"
        << "OUT='" << client_out.string() << "'\n"
        << "flush_and_wait() {\n"
        << "  printf 'FLUSH TABLES WITH READ LOCK;\\nSELECT \"held\";\\n'\n"
        << "  read x < \"$FIFO\"\n"
        << "  printf 'UNLOCK TABLES;\\n'\n"
        << "  rm -f \"$FIFO\"\n"
        << "  echo \"flush helper: lock released at $(date +%s)\" >&2\n"
        << "}\n"
        << "case \"$1\" in\n"
        << "  freeze)\n"
        << "    mkfifo \"$FIFO\" || exit 1\n"
        << "    rm -f \"$OUT\"\n"
        << "    flush_and_wait | " << mysql << " -N --unbuffered > \"$OUT\" &\n"
        << "    i=0\n"
        << "    until grep -q held \"$OUT\" 2>/dev/null; do\n"
        << "      i=$((i+1)); [ $i -gt 200 ] && { echo 'lock not taken' >&2; exit 2; }\n"
        << "      sleep 0.05\n"
        << "    done ;;\n"
        << "  thaw) [ -p \"$FIFO\" ] || exit 1; echo > \"$FIFO\" ;;\n"
        << "  *) exit 1 ;;\n"
        << "esac\n";
    fs::permissions(hook, fs::perms(0755));
  }

  [[nodiscard]] nlohmann::json config() const {
    return quiesce::test::agent_config(
        dir, {{{"type", "hooks"},
               {"name", "mysql-hooks"},
               {"options", {{"directory", hooks.string()}, {"style", "qemu"}}}}});
  }

  // True when an insert goes through within a second; false while a global
  // read lock holds it back.
  [[nodiscard]] bool insert_goes_through() const {
    MariadbSession writer(server, "root", mdbtest::superuser_password, 5s);
    REQUIRE_MESSAGE(writer.ok(), writer.error());
    writer.exec("SET SESSION lock_wait_timeout = 1");
    return writer.try_exec("INSERT INTO qt.t(v) VALUES (7)").empty();
  }
};

bool skip_unless_root() {
  if (::geteuid() != 0) {
    MESSAGE("skipped: MariaDB fixtures need root (mariadbd --user=mysql, chown)");
    return true;
  }
  return false;
}

}  // namespace

TEST_CASE("mariadb hook: a mysql-flush style FIFO lock holds and releases, round after round") {
  if (skip_unless_root()) {
    return;
  }
  FifoLockRig rig;
  quiesce::test::RunningAgent agent(rig.dir, rig.config());
  auto client = agent.client();
  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    auto created = client.create_session();
    REQUIRE_MESSAGE(created.ok(), quiesce::test::describe(created));
    const std::string id = created.body["id"];
    auto frozen = client.freeze(id);
    REQUIRE_MESSAGE(frozen.ok(), quiesce::test::describe(frozen)
                                     << quiesce::test::read_text(rig.dir / "agent.log"));
    // Past the agent's drain of the hook's own output.
    std::this_thread::sleep_for(300ms);
    CHECK_FALSE(rig.insert_goes_through());
    REQUIRE(client.thaw(id).ok());
    CHECK(quiesce::test::eventually(5s, [&] { return !fs::exists(rig.fifo); }));
    CHECK(rig.insert_goes_through());
    REQUIRE(client.complete(id, "snap").ok());
  }
  // The helper's stderr, written after its hook exited, is in the agent's log.
  CHECK(quiesce::test::eventually(5s, [&] {
    return quiesce::test::read_text(rig.dir / "agent.log").find("flush helper: lock released") !=
           std::string::npos;
  }));
}

TEST_CASE("mariadb hook: SIGKILL of the agent while the hook holds the lock - the restart releases it") {
  if (skip_unless_root()) {
    return;
  }
  FifoLockRig rig;
  {
    quiesce::test::RunningAgent agent(rig.dir, rig.config());
    auto client = agent.client();
    auto created = client.create_session();
    REQUIRE(created.ok());
    REQUIRE(client.freeze(created.body["id"].get<std::string>()).ok());
    agent.process->signal(SIGKILL);
    REQUIRE(agent.process->wait_for(5s));
  }
  // The helper outlives the agent (its own process group) and still holds.
  CHECK_FALSE(rig.insert_goes_through());
  CHECK(fs::exists(rig.dir / "run" / "hooks-frozen-mysql-hooks.json"));
  fs::remove(rig.dir / "agent.sock");
  const auto restarted = std::chrono::steady_clock::now();
  quiesce::test::RunningAgent agent(rig.dir, rig.config());
  CHECK(quiesce::test::eventually(10s, [&] { return rig.insert_goes_through(); }));
  MESSAGE("insert through "
          << std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - restarted)
                 .count()
          << " ms after the agent's restart began");
  CHECK(quiesce::test::eventually(5s, [&] { return !fs::exists(rig.fifo); }));
  CHECK_FALSE(fs::exists(rig.dir / "run" / "hooks-frozen-mysql-hooks.json"));
  // And the next session freezes and thaws as usual (no FIFO left behind).
  auto client = agent.client();
  auto created = client.create_session();
  REQUIRE(created.ok());
  const std::string id = created.body["id"];
  auto frozen = client.freeze(id);
  REQUIRE_MESSAGE(frozen.ok(), quiesce::test::describe(frozen));
  REQUIRE(client.thaw(id).ok());
  CHECK(quiesce::test::eventually(5s, [&] { return rig.insert_goes_through(); }));
}

namespace {

// qemu's sample, unmodified, needs `mysql -uroot` to reach the test's server
// through the client's default config, and /var/run to hold its FIFO: the
// agent runs in a private mount namespace where /etc/mysql/my.cnf is the
// test's client config and /run is a directory of the test.
struct SampleAgent {
  std::unique_ptr<quiesce::test::ChildProcess> process;
  fs::path socket;

  SampleAgent(const quiesce::test::TempDir& dir, const nlohmann::json& config,
              const fs::path& client_cnf, const fs::path& run_over) {
    socket = dir / "agent.sock";
    fs::remove(socket);
    std::ofstream(dir / "agent.json") << config.dump(2);
    process = std::make_unique<quiesce::test::ChildProcess>(
        std::vector<std::string>{
            "/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
            "mount --bind \"$1\" /etc/mysql/my.cnf && mount --bind \"$2\" /run && "
            "exec \"$3\" --config \"$4\"",
            "sh", client_cnf.string(), run_over.string(),
            quiesce::test::built_binary("quiesce-agent").string(), (dir / "agent.json").string()},
        dir / "agent.out");
    REQUIRE_MESSAGE(quiesce::test::eventually(15s, [&] { return fs::exists(socket); }),
                    quiesce::test::read_text(dir / "agent.out"));
  }

  [[nodiscard]] quiesce::client::AgentClient client() const {
    quiesce::client::ClientOptions options;
    options.endpoint = quiesce::client::Endpoint::parse("unix:" + socket.string());
    options.timeout = 60s;
    return quiesce::client::AgentClient(options);
  }
};

}  // namespace

TEST_CASE("mariadb hook: qemu's mysql-flush.sh.sample unmodified, 20 rounds and a SIGKILL") {
  const char* sample = std::getenv("QUIESCE_QEMU_MYSQL_SAMPLE");
  if (sample == nullptr || !fs::exists(sample)) {
    MESSAGE("skipped: set QUIESCE_QEMU_MYSQL_SAMPLE to a copy of qemu's "
            "scripts/qemu-guest-agent/fsfreeze-hook.d/mysql-flush.sh.sample "
            "(not shipped by Debian; see docs/writers/hooks.md)");
    return;
  }
  if (skip_unless_root()) {
    return;
  }
  FifoLockRig rig;
  fs::remove(rig.hooks / "50-flush");
  fs::copy_file(sample, rig.hooks / "mysql-flush.sh");
  fs::permissions(rig.hooks / "mysql-flush.sh", fs::perms(0755));
  const auto run_over = rig.dir / "private-run";
  fs::create_directory(run_over);
  const auto client_cnf = rig.dir / "client.cnf";
  const int rounds = std::getenv("QUIESCE_SAMPLE_ROUNDS") != nullptr
                         ? std::atoi(std::getenv("QUIESCE_SAMPLE_ROUNDS"))
                         : 20;
  {
    SampleAgent agent(rig.dir, rig.config(), client_cnf, run_over);
    auto client = agent.client();
    for (int round = 0; round < rounds; ++round) {
      CAPTURE(round);
      auto created = client.create_session();
      REQUIRE(created.ok());
      const std::string id = created.body["id"];
      auto frozen = client.freeze(id);
      REQUIRE_MESSAGE(frozen.ok(), quiesce::test::describe(frozen)
                                       << quiesce::test::read_text(rig.dir / "agent.log"));
      std::this_thread::sleep_for(300ms);
      CHECK_FALSE(rig.insert_goes_through());  // the sample really holds the lock
      auto thawed = client.thaw(id);
      REQUIRE_MESSAGE(thawed.ok(), quiesce::test::describe(thawed));
      CHECK(quiesce::test::eventually(5s, [&] { return rig.insert_goes_through(); }));
      CHECK(quiesce::test::eventually(5s,
                                      [&] { return !fs::exists(run_over / "mysql-flush.fifo"); }));
      REQUIRE(client.complete(id, "snap").ok());
    }
    MESSAGE(rounds << " freeze/thaw rounds of the unmodified sample passed");
    auto created = client.create_session();
    REQUIRE(created.ok());
    REQUIRE(client.freeze(created.body["id"].get<std::string>()).ok());
    std::this_thread::sleep_for(300ms);
    CHECK_FALSE(rig.insert_goes_through());
    agent.process->signal(SIGKILL);
    REQUIRE(agent.process->wait_for(5s));
  }
  CHECK_FALSE(rig.insert_goes_through());  // the sample's helper still holds
  const auto restarted = std::chrono::steady_clock::now();
  SampleAgent agent(rig.dir, rig.config(), client_cnf, run_over);
  CHECK(quiesce::test::eventually(10s, [&] { return rig.insert_goes_through(); }));
  MESSAGE("after SIGKILL of the agent: insert through "
          << std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - restarted)
                 .count()
          << " ms after the restart began");
  CHECK(quiesce::test::eventually(5s, [&] { return !fs::exists(run_over / "mysql-flush.fifo"); }));
  auto client = agent.client();
  auto created = client.create_session();
  REQUIRE(created.ok());
  const std::string id = created.body["id"];
  REQUIRE(client.freeze(id).ok());
  REQUIRE(client.thaw(id).ok());
  CHECK(quiesce::test::eventually(5s, [&] { return rig.insert_goes_through(); }));
}

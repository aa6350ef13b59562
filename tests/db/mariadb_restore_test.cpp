// Restore-verified consistency for the mariadb writer: a server on a
// loop-mounted ext4, workloads recording every acknowledged insert (InnoDB,
// one row per autocommit transaction; MyISAM and Aria, which have no redo log
// of their own to fall back on), a checkpoint through the real agent (mariadb
// + fsfreeze writers) with the image copied while frozen, and the copy
// started as a new server: it starts, every id acknowledged before the
// freeze is there, CHECK TABLE ... EXTENDED finds nothing, and the binary log
// in the copy ends exactly at the position and GTID the artifact reports.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "host-bridge/client/agent_client.hpp"
#include "tests/db/mariadb_server.hpp"
#include "tests/support/loop_image.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/running_agent.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/writer_harness.hpp"

using namespace std::chrono_literals;
using quiesce::test::LoopImage;
using quiesce::test::RunningAgent;
using quiesce::test::agent_config;
using quiesce::test::describe;
using quiesce::test::read_text;
using quiesce::test::mariadb::MariadbOptions;
using quiesce::test::mariadb::MariadbServer;
using quiesce::test::mariadb::MariadbSession;
namespace mdbtest = quiesce::test::mariadb;

namespace {

// Inserts one row per statement (autocommit), as an application would, and
// records each id once the server acknowledged it.
class Workload {
 public:
  Workload(const MariadbServer& server, std::string table)
      : socket_(server.socket()), table_(std::move(table)) {
    thread_ = std::jthread([this](std::stop_token stop) { run(stop); });
  }
  ~Workload() { stop(); }
  Workload(const Workload&) = delete;
  Workload& operator=(const Workload&) = delete;

  void stop() {
    if (thread_.joinable()) {
      thread_.request_stop();
      thread_.join();
    }
  }
  [[nodiscard]] const std::string& table() const { return table_; }
  [[nodiscard]] std::vector<long> acknowledged() const {
    std::lock_guard lock(mutex_);
    return acked_;
  }
  [[nodiscard]] std::size_t count() const {
    std::lock_guard lock(mutex_);
    return acked_.size();
  }
  [[nodiscard]] std::string error() const {
    std::lock_guard lock(mutex_);
    return error_;
  }

 private:
  void run(const std::stop_token& stop) {
    MariadbSession session(socket_, "root", mdbtest::superuser_password);
    if (!session.ok()) {
      set_error("connect: " + session.error());
      return;
    }
    for (long id = 1; !stop.stop_requested(); ++id) {
      const auto error = session.try_exec("INSERT INTO qt." + table_ + "(id, payload) VALUES (" +
                                          std::to_string(id) + ", REPEAT('x', 200))");
      if (!error.empty()) {
        set_error("insert " + std::to_string(id) + " into " + table_ + ": " + error);
        return;
      }
      {
        std::lock_guard lock(mutex_);
        acked_.push_back(id);
      }
      std::this_thread::sleep_for(1ms);
    }
  }
  void set_error(std::string text) {
    std::lock_guard lock(mutex_);
    error_ = std::move(text);
  }

  std::string socket_;
  std::string table_;
  mutable std::mutex mutex_;
  std::vector<long> acked_;
  std::string error_;
  std::jthread thread_;
};

double ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

std::string text_of(const nlohmann::json& value) {
  return value.is_string() ? value.get<std::string>() : value.dump();
}

// When a test fails during the hold: thaws the mount the test created (a
// no-op when it is not frozen).
struct ThawOnExit {
  std::string mount;
  ~ThawOnExit() {
    std::string ignored;
    (void)quiesce::test::run_command({"fsfreeze", "-u", mount}, &ignored);
  }
};

// The whole round trip; `settings` are extra options for the original server.
void checkpoint_and_restore(const std::vector<std::string>& settings) {
  quiesce::test::TempDir dir("mdb-restore");
  mdbtest::open_for_traversal(dir.path());
  LoopImage data;
  data.create((dir / "data.img").string(), (dir / "data").string(), 256);
  // Everything of the server's is on the snapshotted disk (data, InnoDB redo
  // and undo, binary log); socket, pid file, error log and tmpdir are not.
  const auto datadir = std::filesystem::path(data.mount_point()) / "mysql";
  MariadbServer server(dir / "work", datadir);
  server.init();
  server.start(MariadbOptions{.settings = settings});
  {
    MariadbSession admin(server);
    REQUIRE_MESSAGE(admin.ok(), admin.error());
    admin.exec("CREATE DATABASE qt");
    for (const auto* engine : {"InnoDB", "MyISAM", "Aria"}) {
      admin.exec(std::string("CREATE TABLE qt.acked_") + engine +
                 "(id bigint PRIMARY KEY, payload varchar(255)) ENGINE=" + engine);
    }
  }
  const auto config = agent_config(
      dir, {{{"type", "mariadb"},
             {"name", "mdb"},
             {"options",
              {{"socket", server.socket()},
               {"user", "root"},
               {"password_file", quiesce::test::password_file(dir, mdbtest::superuser_password)}}}},
            {{"type", "fsfreeze"}, {"name", "fs"}, {"options", {{"mounts", {data.mount_point()}}}}}});
  // Declared before the agent so that, when a test fails during the hold,
  // the agent goes first (its lock and the freeze go with it) and the
  // workloads' blocked inserts can finish.
  std::vector<std::unique_ptr<Workload>> workloads;
  RunningAgent agent(dir, config);
  // Destroyed first: the test's own mount is thawed before the agent is
  // killed, so nothing below waits on a frozen filesystem.
  const ThawOnExit thaw_on_exit{data.mount_point()};
  auto client = agent.client();

  for (const auto* table : {"acked_InnoDB", "acked_MyISAM", "acked_Aria"}) {
    workloads.push_back(std::make_unique<Workload>(server, table));
  }
  REQUIRE(quiesce::test::eventually(30s, [&] {
    for (const auto& workload : workloads) {
      if (workload->count() < 200 || !workload->error().empty()) {
        return false;
      }
    }
    return true;
  }));

  auto started = std::chrono::steady_clock::now();
  auto created = client.create_session({{"checkpoint_id", "cp-mariadb"}});
  const auto create_took = std::chrono::steady_clock::now() - started;
  REQUIRE_MESSAGE(created.ok(), describe(created) << "\n" << read_text(dir / "agent.log"));
  const std::string id = created.body["id"];

  std::map<std::string, std::vector<long>> before_freeze;
  for (const auto& workload : workloads) {
    before_freeze[workload->table()] = workload->acknowledged();
  }
  started = std::chrono::steady_clock::now();
  auto frozen = client.freeze(id);
  const auto freeze_took = std::chrono::steady_clock::now() - started;
  REQUIRE_MESSAGE(frozen.ok(), describe(frozen) << "\n" << read_text(dir / "agent.log"));

  std::map<std::string, std::vector<long>> at_copy;
  for (const auto& workload : workloads) {
    at_copy[workload->table()] = workload->acknowledged();
  }
  started = std::chrono::steady_clock::now();
  quiesce::test::ChildProcess copy({"/bin/cp", "--sparse=always", (dir / "data.img").string(),
                                    (dir / "copy.img").string()});
  const auto copied = copy.wait_for(60s);
  const auto copy_took = std::chrono::steady_clock::now() - started;
  REQUIRE(copied.has_value());
  REQUIRE(*copied == 0);
  // Commits are blocked during the hold: at most one that was already past
  // the lock when the freeze answered is acknowledged since.
  for (const auto& workload : workloads) {
    CHECK_MESSAGE(workload->count() <= at_copy[workload->table()].size() + 1, workload->table());
  }

  started = std::chrono::steady_clock::now();
  auto thawed = client.thaw(id);
  const auto thaw_took = std::chrono::steady_clock::now() - started;
  REQUIRE_MESSAGE(thawed.ok(), describe(thawed));
  CHECK(thawed.body["verdict"]["continuous"] == true);
  started = std::chrono::steady_clock::now();
  auto completed = client.complete(id, "snap-mariadb");
  const auto complete_took = std::chrono::steady_clock::now() - started;
  REQUIRE_MESSAGE(completed.ok(), describe(completed));
  const auto artifacts = completed.body["artifacts"]["mdb"];
  CAPTURE(artifacts.dump());
  REQUIRE(artifacts["binlog"].is_object());
  const std::string binlog_file = artifacts["binlog"].value("file", "");
  const std::string binlog_position = text_of(artifacts["binlog"]["position"]);
  const std::string gtid = artifacts.value("gtid_binlog_pos", "");
  REQUIRE(!binlog_file.empty());

  // Writes carry on after thaw.
  CHECK(quiesce::test::eventually(10s, [&] {
    return workloads[0]->count() > at_copy[workloads[0]->table()].size() + 20;
  }));
  for (auto& workload : workloads) {
    workload->stop();
    CHECK_MESSAGE(workload->error().empty(), workload->error());
  }

  MESSAGE("mariadb restore: acknowledged before freeze / when frozen: InnoDB "
          << before_freeze["acked_InnoDB"].size() << "/" << at_copy["acked_InnoDB"].size()
          << ", MyISAM " << before_freeze["acked_MyISAM"].size() << "/"
          << at_copy["acked_MyISAM"].size() << ", Aria " << before_freeze["acked_Aria"].size()
          << "/" << at_copy["acked_Aria"].size() << "; create (identify+prepare) "
          << ms(create_took) << " ms, freeze " << ms(freeze_took) << " ms, copy "
          << ms(copy_took) << " ms, thaw " << ms(thaw_took) << " ms, complete "
          << ms(complete_took) << " ms; server options " << nlohmann::json(settings).dump()
          << "; writer timings "
          << artifacts.value("timings_ms", nlohmann::json()).dump());

  // Restore: the copy on a new mount, started as it is (InnoDB and Aria run
  // their crash recovery; MyISAM must have been flushed and closed by the
  // hold). Automatic repair of MyISAM/Aria tables is off, so CHECK TABLE sees
  // the tables exactly as the snapshot has them.
  LoopImage restored;
  restored.attach((dir / "copy.img").string(), (dir / "restored").string());
  MariadbServer restored_server(dir / "work-restored",
                                std::filesystem::path(restored.mount_point()) / "mysql");
  std::string start_log;
  const bool started_ok = restored_server.try_start(
      MariadbOptions{.settings = {"--myisam-recover-options=OFF", "--aria-recover-options=OFF"}},
      start_log);
  REQUIRE_MESSAGE(started_ok, start_log);
  MariadbSession check(restored_server);
  REQUIRE_MESSAGE(check.ok(), check.error());

  for (const auto& [table, acked] : at_copy) {
    std::set<long> present;
    for (const auto& value : check.column("SELECT id FROM qt." + table)) {
      present.insert(std::stol(value));
    }
    std::size_t missing = 0;
    for (auto acked_id : acked) {
      if (!present.contains(acked_id)) {
        ++missing;
      }
    }
    CHECK_MESSAGE(missing == 0, table << ": " << missing << " of " << acked.size()
                                      << " rows acknowledged before the snapshot are missing");
    for (auto acked_id : before_freeze[table]) {
      REQUIRE_MESSAGE(present.contains(acked_id), table << " lost id " << acked_id);
    }
  }

  // Every table of the test database and of the system schema.
  const auto tables = check.column(
      "SELECT CONCAT(table_schema, '.', table_name) FROM information_schema.tables "
      "WHERE table_schema IN ('qt', 'mysql') AND table_type = 'BASE TABLE'");
  REQUIRE(tables.size() > 3);
  std::size_t checked = 0;
  std::string warnings;
  for (const auto& table : tables) {
    const auto result = check.rows("CHECK TABLE " + table + " EXTENDED");
    std::string report;
    bool status_ok = false;
    bool error = false;
    for (const auto& row : result) {
      REQUIRE(row.size() == 4);  // Table, Op, Msg_type, Msg_text
      report += row[2] + ": " + row[3] + "; ";
      status_ok = status_ok || (row[2] == "status" && row[3] == "OK");
      error = error || row[2] == "error";
      if (row[2] == "warning") {
        warnings += table + ": " + row[3] + "\n";
      }
    }
    CHECK_MESSAGE((status_ok && !error), "CHECK TABLE " << table << " EXTENDED: " << report);
    ++checked;
  }
  // A MyISAM table not closed at the snapshot comes back with "not closed
  // properly": the hold must have flushed and closed it.
  CHECK_MESSAGE(warnings.empty(), warnings);
  MESSAGE("CHECK TABLE ... EXTENDED on " << checked << " tables");

  // The binary log in the copy ends where the artifact says: the position
  // is an event boundary, nothing was committed after it, and the restored
  // server's GTID state is the one reported.
  std::string file_size;
  for (const auto& row : check.rows("SHOW BINARY LOGS")) {
    if (row[0] == binlog_file) {
      file_size = row[1];
    }
  }
  REQUIRE_MESSAGE(!file_size.empty(), binlog_file << " is not in the restored binary log");
  CHECK_MESSAGE(file_size == binlog_position,
                binlog_file << " is " << file_size << " bytes in the copy, the artifact says "
                            << binlog_position);
  bool boundary = false;
  for (const auto& row : check.rows("SHOW BINLOG EVENTS IN '" + binlog_file + "'")) {
    if (row[4] == binlog_position) {  // End_log_pos
      boundary = true;
    }
  }
  CHECK_MESSAGE(boundary, "no event of " << binlog_file << " ends at " << binlog_position);
  CHECK(check.value("SELECT @@gtid_binlog_pos") == gtid);
}

}  // namespace

TEST_CASE("mariadb restore: a checkpoint through the agent keeps every acknowledged row") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root (loop devices, fsfreeze, mariadbd --user=mysql)");
    return;
  }
  checkpoint_and_restore({});
}

// With innodb_flush_log_at_trx_commit = 0 a commit is acknowledged while its
// redo record is still in InnoDB's log buffer, which fsfreeze cannot see: only
// the writer's log flush under the lock puts it in the snapshot (and keeps
// the binary log, which does reach the page cache, from running ahead).
TEST_CASE("mariadb restore: innodb_flush_log_at_trx_commit 0, the writer flushes InnoDB's log") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root (loop devices, fsfreeze, mariadbd --user=mysql)");
    return;
  }
  checkpoint_and_restore({"--innodb-flush-log-at-trx-commit=0"});
}

// Restore-verified consistency for the postgres writer: a cluster on a
// loop-mounted ext4, a workload recording every committed id, a checkpoint
// through the real agent (postgres + fsfreeze writers) with the image copied
// while frozen, and the copy restored the documented way (backup_label from
// the artifact, WAL from the archive): the server starts, every id
// acknowledged before the freeze is there, and pg_amcheck finds nothing.
#include <doctest/doctest.h>

#include <libpq-fe.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "host-bridge/client/agent_client.hpp"
#include "tests/db/postgres_server.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/loop_image.hpp"
#include "tests/support/running_agent.hpp"
#include "tests/support/writer_harness.hpp"

using namespace std::chrono_literals;
using quiesce::test::LoopImage;
using quiesce::test::postgres::PgSession;
using quiesce::test::postgres::PostgresServer;
namespace pgtest = quiesce::test::postgres;

using quiesce::test::RunningAgent;
using quiesce::test::agent_config;
using quiesce::test::read_text;
using quiesce::test::describe;

namespace {

// Inserts one row per transaction, as an application would, and records
// each id once its COMMIT was acknowledged (synchronous_commit = on).
class Workload {
 public:
  explicit Workload(const PostgresServer& server) {
    host_ = server.socket_dir().string();
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
  [[nodiscard]] std::vector<long> acknowledged() const {
    std::lock_guard lock(mutex_);
    return acked_;
  }
  [[nodiscard]] std::string error() const {
    std::lock_guard lock(mutex_);
    return error_;
  }

 private:
  void run(const std::stop_token& stop) {
    const char* keys[] = {"host", "user", "password", "dbname", nullptr};
    const char* values[] = {host_.c_str(), "postgres", pgtest::superuser_password, "postgres",
                            nullptr};
    PGconn* conn = PQconnectdbParams(keys, values, 0);
    if (PQstatus(conn) != CONNECTION_OK) {
      set_error(std::string("connect: ") + PQerrorMessage(conn));
      PQfinish(conn);
      return;
    }
    for (long id = 1; !stop.stop_requested(); ++id) {
      const std::string text = std::to_string(id);
      const char* params[] = {text.c_str()};
      PGresult* result = PQexecParams(
          conn, "INSERT INTO acked(id, payload) VALUES ($1::bigint, repeat('x', 200))", 1, nullptr,
          params, nullptr, nullptr, 0);
      const bool ok = PQresultStatus(result) == PGRES_COMMAND_OK;
      if (!ok) {
        set_error("insert " + text + ": " + PQresultErrorMessage(result));
      }
      PQclear(result);
      if (!ok) {
        break;
      }
      {
        std::lock_guard lock(mutex_);
        acked_.push_back(id);
      }
      std::this_thread::sleep_for(1ms);
    }
    PQfinish(conn);
  }
  void set_error(std::string text) {
    std::lock_guard lock(mutex_);
    error_ = std::move(text);
  }

  std::string host_;
  mutable std::mutex mutex_;
  std::vector<long> acked_;
  std::string error_;
  std::jthread thread_;
};

double ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

}  // namespace

TEST_CASE("postgres restore: a checkpoint through the agent keeps every acknowledged row") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root (loop devices, fsfreeze, runuser to postgres)");
    return;
  }
  quiesce::test::TempDir dir("pg-restore");
  pgtest::open_for_traversal(dir.path());
  LoopImage data;
  data.create((dir / "data.img").string(), (dir / "data").string(), 160);
  // The WAL archive lives off the snapshotted disk, as it would off the VM.
  const auto archive = dir / "archive";
  std::filesystem::create_directories(archive);
  pgtest::give_to_postgres(archive);
  const auto pgdata = std::filesystem::path(data.mount_point()) / "pgdata";
  PostgresServer server(pgdata, dir / "sock", dir / "server.log");
  server.init();
  server.start({"archive_mode=on", "archive_command=cp %p " + archive.string() + "/%f"});
  {
    PgSession admin(server);
    REQUIRE_MESSAGE(admin.ok(), admin.error());
    admin.exec("CREATE TABLE acked(id bigint PRIMARY KEY, payload text)");
    admin.exec("CREATE EXTENSION amcheck");
  }
  const auto config = agent_config(
      dir, {{{"type", "postgres"},
             {"name", "pg"},
             {"options",
              {{"host", server.socket_dir().string()},
               {"user", "postgres"},
               {"password_file", quiesce::test::password_file(dir, pgtest::superuser_password)}}}},
            {{"type", "fsfreeze"}, {"name", "fs"}, {"options", {{"mounts", {data.mount_point()}}}}}});
  RunningAgent agent(dir, config);
  auto client = agent.client();

  Workload workload(server);
  REQUIRE(quiesce::test::eventually(15s, [&] { return workload.acknowledged().size() >= 300; }));

  auto started = std::chrono::steady_clock::now();
  auto created = client.create_session({{"checkpoint_id", "cp-postgres"}});
  const auto create_took = std::chrono::steady_clock::now() - started;
  REQUIRE_MESSAGE(created.ok(), describe(created) << "\n" << read_text(dir / "agent.log"));
  const std::string id = created.body["id"];

  const auto before_freeze = workload.acknowledged();
  started = std::chrono::steady_clock::now();
  auto frozen = client.freeze(id);
  const auto freeze_took = std::chrono::steady_clock::now() - started;
  REQUIRE_MESSAGE(frozen.ok(), describe(frozen) << "\n" << read_text(dir / "agent.log"));

  const auto at_copy = workload.acknowledged();
  started = std::chrono::steady_clock::now();
  quiesce::test::ChildProcess copy({"/bin/cp", "--sparse=always", (dir / "data.img").string(),
                                    (dir / "copy.img").string()});
  const auto copied = copy.wait_for(60s);
  const auto copy_took = std::chrono::steady_clock::now() - started;
  REQUIRE(copied.has_value());
  REQUIRE(*copied == 0);
  // Commits wait for their WAL flush, which the frozen filesystem holds.
  CHECK(workload.acknowledged().size() == at_copy.size());

  started = std::chrono::steady_clock::now();
  auto thawed = client.thaw(id);
  const auto thaw_took = std::chrono::steady_clock::now() - started;
  REQUIRE_MESSAGE(thawed.ok(), describe(thawed));
  CHECK(thawed.body["verdict"]["continuous"] == true);
  started = std::chrono::steady_clock::now();
  auto completed = client.complete(id, "snap-postgres");
  const auto complete_took = std::chrono::steady_clock::now() - started;
  REQUIRE_MESSAGE(completed.ok(), describe(completed));
  const auto artifacts = completed.body["artifacts"]["pg"];
  CAPTURE(artifacts.dump());
  const std::string backup_label = artifacts.value("backup_label", "");
  REQUIRE(backup_label.find("LABEL: quiesce-") != std::string::npos);
  const std::string stop_lsn = artifacts.value("stop_lsn", "");

  CHECK(quiesce::test::eventually(
      10s, [&] { return workload.acknowledged().size() > at_copy.size() + 20; }));
  workload.stop();
  CHECK(workload.error().empty());

  // Restoring from backup_label needs the WAL up to the backup's end, which
  // pg_backup_stop wrote after the snapshot: wait until it is archived.
  std::string stop_segment;
  {
    PgSession admin(server);
    stop_segment = admin.value("SELECT pg_walfile_name('" + stop_lsn + "')");
  }
  REQUIRE_MESSAGE(quiesce::test::eventually(
                      20s, [&] { return std::filesystem::exists(archive / stop_segment); }),
                  "WAL segment " << stop_segment << " was not archived\n" << server.log_text());

  MESSAGE("postgres restore: " << before_freeze.size() << " rows acknowledged before freeze, "
          << at_copy.size() << " when frozen; create (identify+prepare) " << ms(create_took)
          << " ms, freeze " << ms(freeze_took) << " ms, copy " << ms(copy_took) << " ms, thaw "
          << ms(thaw_took) << " ms, complete (pg_backup_stop) " << ms(complete_took)
          << " ms; writer timings " << artifacts.value("timings_ms", nlohmann::json()).dump());

  // Restore: the copy on a new mount, with backup_label written into the
  // data directory (tablespace_map too when there is one), recovery from
  // the archive up to the end of the backup.
  LoopImage restored;
  restored.attach((dir / "copy.img").string(), (dir / "restored").string());
  const auto restored_data = std::filesystem::path(restored.mount_point()) / "pgdata";
  std::filesystem::remove(restored_data / "postmaster.pid");
  std::ofstream(restored_data / "backup_label") << backup_label;
  if (const std::string map = artifacts.value("tablespace_map", ""); !map.empty()) {
    std::ofstream(restored_data / "tablespace_map") << map;
  }
  std::ofstream(restored_data / "recovery.signal").flush();
  pgtest::give_to_postgres(restored_data);
  PostgresServer restored_server(restored_data, dir / "sock-restored", dir / "restored.log");
  std::string start_log;
  const bool started_ok = restored_server.try_start(
      {"archive_mode=off", "restore_command=cp " + archive.string() + "/%f %p",
       "recovery_target=immediate", "recovery_target_action=promote"},
      start_log);
  REQUIRE_MESSAGE(started_ok, start_log);

  std::set<long> present;
  {
    PgSession check(restored_server);
    REQUIRE_MESSAGE(check.ok(), check.error());
    REQUIRE(quiesce::test::eventually(
        20s, [&] { return check.value("SELECT pg_is_in_recovery()::text") == "false"; }));
    for (const auto& value : check.column("SELECT id FROM acked")) {
      present.insert(std::stol(value));
    }
  }
  std::size_t missing = 0;
  for (auto acked : at_copy) {
    if (!present.contains(acked)) {
      ++missing;
    }
  }
  CHECK_MESSAGE(missing == 0, missing << " of " << at_copy.size()
                                      << " rows acknowledged before the snapshot are missing");
  for (auto acked : before_freeze) {
    REQUIRE(present.contains(acked));
  }

  const auto passfile = dir / "amcheck.pgpass";
  std::ofstream(passfile) << "*:*:*:postgres:" << pgtest::superuser_password << "\n";
  pgtest::give_to_postgres(passfile);
  ::chmod(passfile.c_str(), 0600);
  std::string amcheck_output;
  const int amcheck = pgtest::run_as_postgres(
      {"env", "PGPASSFILE=" + passfile.string(), "/usr/lib/postgresql/15/bin/pg_amcheck", "-h",
       restored_server.socket_dir().string(), "-U", "postgres", "-d", "postgres",
       "--heapallindexed"},
      &amcheck_output);
  CHECK_MESSAGE(amcheck == 0, "pg_amcheck: " << amcheck_output);
}

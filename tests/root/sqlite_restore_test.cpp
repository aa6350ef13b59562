// Restore-verified consistency for the sqlite writer: a WAL database on a
// loop-mounted ext4, a workload recording every committed id, a checkpoint
// through the real agent (sqlite + fsfreeze writers) with the image copied
// while frozen, and the copy mounted and checked: integrity_check is ok and
// nothing acknowledged before the freeze is missing.
#include <doctest/doctest.h>

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "host-bridge/client/agent_client.hpp"
#include "tests/root/loop_fs.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/loop_image.hpp"
#include "tests/support/running_agent.hpp"

using namespace std::chrono_literals;
using quiesce::test::LoopFs;
using quiesce::test::must_run;

using quiesce::test::RunningAgent;
using quiesce::test::agent_config;
using quiesce::test::read_text;
using quiesce::test::describe;

namespace {

sqlite3* open_db(const std::string& path, int flags) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, flags, nullptr) == SQLITE_OK);
  return db;
}

void must_exec(sqlite3* db, const std::string& sql) {
  INFO(sql << ": " << sqlite3_errmsg(db));
  REQUIRE(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
}

// Inserts one row at a time in its own connection, as an application
// would, and records each id once its COMMIT returned.
class Workload {
 public:
  explicit Workload(std::string path) : path_(std::move(path)) {
    thread_ = std::jthread([this](std::stop_token stop) { run(stop); });
  }
  ~Workload() {
    thread_.request_stop();
    thread_.join();
  }
  Workload(const Workload&) = delete;
  Workload& operator=(const Workload&) = delete;

  [[nodiscard]] std::vector<std::int64_t> acknowledged() const {
    std::lock_guard lock(mutex_);
    return acked_;
  }
  [[nodiscard]] std::string error() const {
    std::lock_guard lock(mutex_);
    return error_;
  }

 private:
  void run(const std::stop_token& stop) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
      set_error("open failed");
      sqlite3_close_v2(db);
      return;
    }
    // NORMAL: commits are not fsynced, so the page cache holds them; only a
    // sync before the snapshot (fsfreeze's) gets them into the image.
    sqlite3_exec(db, "PRAGMA synchronous=NORMAL", nullptr, nullptr, nullptr);
    sqlite3_busy_timeout(db, 30000);
    sqlite3_stmt* insert = nullptr;
    sqlite3_prepare_v2(db, "INSERT INTO acked(id, payload) VALUES (?, randomblob(200))", -1,
                       &insert, nullptr);
    for (std::int64_t id = 1; !stop.stop_requested(); ++id) {
      sqlite3_bind_int64(insert, 1, id);
      const int rc = sqlite3_step(insert);
      sqlite3_reset(insert);
      if (rc != SQLITE_DONE) {
        set_error(std::string("insert ") + std::to_string(id) + ": " + sqlite3_errstr(rc));
        break;
      }
      {
        std::lock_guard lock(mutex_);
        acked_.push_back(id);
      }
      // An application that pauses between transactions; SQLite's locks
      // are not fair, so a writer that never lets go would starve anyone.
      std::this_thread::sleep_for(1ms);
    }
    sqlite3_finalize(insert);
    sqlite3_close_v2(db);
  }
  void set_error(std::string text) {
    std::lock_guard lock(mutex_);
    error_ = std::move(text);
  }

  std::string path_;
  mutable std::mutex mutex_;
  std::vector<std::int64_t> acked_;
  std::string error_;
  std::jthread thread_;
};

}  // namespace

TEST_CASE("sqlite restore: a checkpoint through the agent keeps every acknowledged row") {
  quiesce::test::TempDir dir("sqlite-restore");
  LoopFs data(dir.path(), "data", "ext4", 64);
  const std::string image = (dir / "data.img").string();
  const std::string db_path = data.mount_point() + "/app.db";
  {
    sqlite3* db = open_db(db_path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    must_exec(db, "PRAGMA journal_mode=WAL");
    must_exec(db, "CREATE TABLE acked(id INTEGER PRIMARY KEY, payload BLOB)");
    sqlite3_close_v2(db);
  }

  const auto config = agent_config(
      dir, {{{"type", "sqlite"}, {"name", "app-db"}, {"options", {{"databases", {db_path}}}}},
            {{"type", "fsfreeze"}, {"name", "fs"}, {"options", {{"mounts", {data.mount_point()}}}}}});
  RunningAgent agent(dir, config);
  auto client = agent.client();

  // Declared after the mount and the agent: stopped first on the way out.
  Workload workload(db_path);
  REQUIRE(quiesce::test::eventually(10s, [&] { return workload.acknowledged().size() >= 300; }));

  auto created = client.create_session({{"checkpoint_id", "cp-sqlite"}});
  REQUIRE_MESSAGE(created.ok(), describe(created));
  const std::string id = created.body["id"];

  const auto before_freeze = workload.acknowledged();
  const auto freeze_sent = std::chrono::steady_clock::now();
  auto frozen = client.freeze(id);
  const auto freeze_took = std::chrono::steady_clock::now() - freeze_sent;
  const std::string frozen_text = describe(frozen) + "\n" + read_text(dir / "agent.log");
  REQUIRE_MESSAGE(frozen.ok(), frozen_text);

  const auto at_copy = workload.acknowledged();
  const auto copy_started = std::chrono::steady_clock::now();
  must_run({"cp", "--sparse=always", image, (dir / "copy.img").string()});
  const auto copy_took = std::chrono::steady_clock::now() - copy_started;
  const auto after_copy = workload.acknowledged();
  // Nothing commits while the database writer holds its lock.
  CHECK(after_copy.size() == at_copy.size());

  auto thawed = client.thaw(id);
  REQUIRE_MESSAGE(thawed.ok(), describe(thawed));
  CHECK(thawed.body["verdict"]["continuous"] == true);
  auto completed = client.complete(id, "snap-sqlite");
  REQUIRE_MESSAGE(completed.ok(), describe(completed));
  CAPTURE(completed.body.dump());
  CHECK(completed.body["artifacts"]["app-db"]["databases"][0]["path"] == db_path);
  CHECK(completed.body["artifacts"]["app-db"]["databases"][0]["journal_mode"] == "wal");

  // The workload carries on after the thaw.
  CHECK(quiesce::test::eventually(
      10s, [&] { return workload.acknowledged().size() > after_copy.size() + 50; }));
  CHECK(workload.error().empty());

  MESSAGE("sqlite restore: " << before_freeze.size() << " rows acknowledged before freeze, "
          << at_copy.size() << " when frozen; freeze answered in "
          << std::chrono::duration<double, std::milli>(freeze_took).count() << " ms, copy took "
          << std::chrono::duration<double, std::milli>(copy_took).count() << " ms");

  // Restore: the copy mounted read-write somewhere new, opened as an
  // application would (which replays whatever WAL it holds).
  quiesce::test::LoopImage restored;
  restored.attach((dir / "copy.img").string(), (dir / "restored").string());
  const std::string restored_db = (dir / "restored" / "app.db").string();
  sqlite3* db = open_db(restored_db, SQLITE_OPEN_READWRITE);
  std::string integrity;
  std::set<std::int64_t> present;
  {
    sqlite3_stmt* stmt = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &stmt, nullptr) == SQLITE_OK);
    while (sqlite3_step(stmt) == SQLITE_ROW) {
      integrity += reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
    REQUIRE(sqlite3_prepare_v2(db, "SELECT id FROM acked", -1, &stmt, nullptr) == SQLITE_OK);
    while (sqlite3_step(stmt) == SQLITE_ROW) {
      present.insert(sqlite3_column_int64(stmt, 0));
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close_v2(db);
  CHECK(integrity == "ok");

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
  // Rows committed after the thaw are not in the snapshot: it really is a
  // point-in-time copy.
  CHECK(present.size() <= at_copy.size() + 1);  // + one committed but not yet recorded
}

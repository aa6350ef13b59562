// writers/sqlite against real database files in a temp dir: the write lock
// blocks other connections and processes, prepare truncates the WAL, busy
// databases fail retryable and all-or-nothing, thaw/abort are idempotent,
// and bad options are refused naming the field.
#include <doctest/doctest.h>

#include <sqlite3.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <stop_token>
#include <thread>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "quiesce/json_fields.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/writer_harness.hpp"
#include "writers/sqlite/sqlite_writer.hpp"

using namespace std::chrono_literals;
using quiesce::Clock;
using quiesce::ErrorClass;
using quiesce::FieldError;
using quiesce::test::message_of;

namespace {

// A test's own connection to a database: the "other process" the writer
// must keep out (SQLite applies its locks between connections of one
// process exactly as between processes).
class Db {
 public:
  explicit Db(const std::filesystem::path& path, bool create = false) {
    const int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
    REQUIRE(sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) == SQLITE_OK);
  }
  ~Db() { sqlite3_close_v2(db_); }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  // The result code of running `sql`, waiting at most `busy` for locks.
  int run(const std::string& sql, std::chrono::milliseconds busy = 0ms) {
    sqlite3_busy_timeout(db_, static_cast<int>(busy.count()));
    return sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr) & 0xff;
  }
  void must(const std::string& sql) {
    INFO(sql << ": " << sqlite3_errmsg(db_));
    REQUIRE(run(sql, 1000ms) == SQLITE_OK);
  }
  std::int64_t count(const std::string& table = "t") {
    sqlite3_stmt* stmt = nullptr;
    REQUIRE(sqlite3_prepare_v2(db_, ("SELECT count(*) FROM " + table).c_str(), -1, &stmt,
                               nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(stmt) == SQLITE_ROW);
    auto n = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return n;
  }

 private:
  sqlite3* db_ = nullptr;
};

std::filesystem::path make_db(const std::filesystem::path& path, const std::string& journal_mode,
                              int rows = 10) {
  Db db(path, true);
  db.must("PRAGMA journal_mode=" + journal_mode);
  db.must("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
  db.must("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<" +
          std::to_string(rows) + ") INSERT INTO t(v) SELECT hex(randomblob(32)) FROM n");
  return path;
}

std::shared_ptr<spdlog::logger> null_logger() {
  return std::make_shared<spdlog::logger>("sqlite-test",
                                          std::make_shared<spdlog::sinks::null_sink_mt>());
}

// The run and state dirs do not exist: the sqlite writer keeps nothing there.
const quiesce::test::WriterMaker make_writer{
    .register_type = quiesce::writers::register_sqlite_writer,
    .type = "sqlite",
    .name = "db",
    .environment = {null_logger(), "/nonexistent-run", "/nonexistent-state"}};

// Takes the stop token first: the one test that stops a call passes only that.
quiesce::PhaseContext context(std::stop_token stop = {}) {
  return quiesce::test::context("test-session", 20s, 30s, std::move(stop));
}

std::string field_error(const nlohmann::json& options) {
  try {
    (void)make_writer(options);
  } catch (const FieldError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("sqlite: freeze blocks writers in other connections and processes and thaw lets them in") {
  for (const std::string mode : {"wal", "delete"}) {
    CAPTURE(mode);
    quiesce::test::TempDir dir("sqlite-unit");
    const auto path = make_db(dir / "app.db", mode);
    auto writer = make_writer({{"databases", {path.string()}}, {"busy_timeout_ms", 500}});
    REQUIRE(writer->prepare(context()).is_ok());
    auto frozen = writer->freeze(context());
    REQUIRE_MESSAGE(frozen.is_ok(), message_of(frozen));

    Db other(path);
    CHECK(other.run("INSERT INTO t(v) VALUES ('during')", 50ms) == SQLITE_BUSY);
    // Readers are not blocked, and see the rows committed before the freeze.
    CHECK(other.count() == 10);

    // A real other process: the sqlite3 shell, with a short busy timeout.
    if (quiesce::test::run_command({"sqlite3", "-version"}) == 0) {
      std::string output;
      const int code = quiesce::test::run_command(
          {"sqlite3", "-cmd", ".timeout 100", path.string(), "INSERT INTO t(v) VALUES ('cli')"},
          &output);
      CAPTURE(output);
      CHECK(code != 0);
      CHECK(output.find("locked") != std::string::npos);
    }

    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(context(), hold).is_ok());
    CHECK(hold.continuous);
    CHECK(other.run("INSERT INTO t(v) VALUES ('after')", 50ms) == SQLITE_OK);
    CHECK(other.count() == 11);

    nlohmann::json artifacts;
    REQUIRE(writer->post_snapshot(context(), {"snap-1"}, artifacts).is_ok());
    REQUIRE(artifacts["databases"].size() == 1);
    CHECK(artifacts["databases"][0]["path"] == std::filesystem::canonical(path).string());
    CHECK(artifacts["databases"][0]["journal_mode"] == mode);
  }
}

TEST_CASE("sqlite: freeze waits for a transaction in flight then holds") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto path = make_db(dir / "app.db", "wal");
  auto writer = make_writer({{"databases", {path.string()}}, {"busy_timeout_ms", 5000}});
  Db other(path);
  other.must("BEGIN IMMEDIATE");
  other.must("INSERT INTO t(v) VALUES ('in flight')");
  // The other transaction commits 200 ms into the freeze; the freeze must
  // wait for it rather than fail or cut it in half.
  std::jthread committer([&] {
    std::this_thread::sleep_for(200ms);
    other.must("COMMIT");
  });
  const auto started = Clock::now();
  auto frozen = writer->freeze(context());
  const auto took = Clock::now() - started;
  committer.join();
  REQUIRE_MESSAGE(frozen.is_ok(), message_of(frozen));
  CHECK(took >= 150ms);
  CHECK(other.count() == 11);
  CHECK(other.run("INSERT INTO t(v) VALUES ('blocked')", 20ms) == SQLITE_BUSY);
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(context(), hold).is_ok());
}

TEST_CASE("sqlite: prepare truncates the WAL and identify describes each database") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto path = make_db(dir / "app.db", "wal");
  const auto wal = std::filesystem::path(path.string() + "-wal");
  Db other(path);
  other.must("PRAGMA wal_autocheckpoint=0");
  other.must("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<2000) "
             "INSERT INTO t(v) SELECT hex(randomblob(100)) FROM n");
  REQUIRE(std::filesystem::file_size(wal) > 100000);

  auto writer = make_writer({{"databases", {path.string()}}});
  quiesce::Identity identity;
  REQUIRE(writer->identify(context(), identity).is_ok());
  REQUIRE(identity.components.size() == 1);
  const auto& component = identity.components[0];
  CHECK(component["kind"] == "database");
  CHECK(component["path"] == std::filesystem::canonical(path).string());
  CHECK(component["journal_mode"] == "wal");
  CHECK(component["page_size"].get<int>() > 0);
  CHECK(component["page_count"].get<int>() > 1);
  CHECK(component["wal_file"]["exists"] == true);
  CHECK(component["wal_file"]["bytes"].get<std::uint64_t>() > 100000);
  CHECK(component["mount"].is_string());
  CHECK(identity.metadata["sqlite_version"].is_string());

  auto prepared = writer->prepare(context());
  REQUIRE_MESSAGE(prepared.is_ok(), message_of(prepared));
  CHECK(std::filesystem::file_size(wal) == 0);
  CHECK(other.count() == 2010);
  REQUIRE(writer->abort(context()).is_ok());
}

TEST_CASE("sqlite: prepare reports a checkpoint blocked by a reader as retryable") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto path = make_db(dir / "app.db", "wal");
  Db writer_db(path);
  writer_db.must("PRAGMA wal_autocheckpoint=0");
  Db reader(path);
  // A read transaction pinned on an old snapshot keeps TRUNCATE from
  // finishing: it must wait for the reader, then give up.
  reader.must("BEGIN");
  CHECK(reader.count() == 10);
  writer_db.must("INSERT INTO t(v) VALUES ('x')");
  auto writer = make_writer({{"databases", {path.string()}}, {"busy_timeout_ms", 100}});
  auto prepared = writer->prepare(context());
  REQUIRE_FALSE(prepared.is_ok());
  CHECK(prepared.error().error_class == ErrorClass::retryable);
  CHECK(prepared.error().message.find(std::filesystem::canonical(path).string()) !=
        std::string::npos);
  reader.must("COMMIT");
  CHECK(writer->prepare(context()).is_ok());
  REQUIRE(writer->abort(context()).is_ok());
}

TEST_CASE("sqlite: a lock held elsewhere fails the freeze retryable naming the database "
          "and releases the others") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto first = make_db(dir / "first.db", "wal");
  const auto second = make_db(dir / "second.db", "delete");
  Db holder(second);
  holder.must("BEGIN IMMEDIATE");
  auto writer = make_writer(
      {{"databases", {first.string(), second.string()}}, {"busy_timeout_ms", 150}});
  const auto started = Clock::now();
  auto frozen = writer->freeze(context());
  const auto took = Clock::now() - started;
  REQUIRE_FALSE(frozen.is_ok());
  CHECK(frozen.error().error_class == ErrorClass::retryable);
  const auto& message = frozen.error().message;
  CAPTURE(message);
  CHECK(message.find(std::filesystem::canonical(second).string()) != std::string::npos);
  CHECK(message.find("another process holds a lock") != std::string::npos);
  CHECK(message.find("SQLITE_BUSY") != std::string::npos);
  CHECK(took >= 140ms);
  CHECK(took < 5s);
  // All or nothing: the first database is not left locked.
  Db first_db(first);
  CHECK(first_db.run("INSERT INTO t(v) VALUES ('free')") == SQLITE_OK);
  holder.must("ROLLBACK");
  // And a retry once the lock is gone succeeds.
  REQUIRE(writer->freeze(context()).is_ok());
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(context(), hold).is_ok());
  CHECK(hold.continuous);
}

TEST_CASE("sqlite: the stop token and the deadline cut a lock wait short") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto path = make_db(dir / "app.db", "wal");
  Db holder(path);
  holder.must("BEGIN IMMEDIATE");
  auto writer = make_writer({{"databases", {path.string()}}, {"busy_timeout_ms", 60000}});

  SUBCASE("stop") {
    std::stop_source stop;
    std::jthread stopper([&] {
      std::this_thread::sleep_for(100ms);
      stop.request_stop();
    });
    const auto started = Clock::now();
    auto frozen = writer->freeze(context(stop.get_token()));
    CHECK(Clock::now() - started < 2s);
    REQUIRE_FALSE(frozen.is_ok());
    CHECK(frozen.error().error_class == ErrorClass::timeout);
  }
  SUBCASE("deadline") {
    auto ctx = context();
    ctx.deadline = Clock::now() + 100ms;
    const auto started = Clock::now();
    auto frozen = writer->freeze(ctx);
    CHECK(Clock::now() - started < 2s);
    REQUIRE_FALSE(frozen.is_ok());
    CHECK(frozen.error().error_class == ErrorClass::timeout);
    CHECK(frozen.error().message.find("deadline") != std::string::npos);
  }
  REQUIRE(writer->abort(context()).is_ok());
}

TEST_CASE("sqlite: thaw and abort are idempotent and valid in any state") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto path = make_db(dir / "app.db", "delete");
  auto writer = make_writer({{"databases", {path.string()}}});
  Db other(path);
  quiesce::HoldReport hold;
  CHECK(writer->thaw(context(), hold).is_ok());  // before anything
  CHECK(writer->abort(context()).is_ok());
  REQUIRE(writer->prepare(context()).is_ok());
  CHECK(writer->abort(context()).is_ok());  // after prepare only
  REQUIRE(writer->freeze(context()).is_ok());
  REQUIRE(writer->freeze(context()).is_ok());  // a repeated freeze changes nothing
  CHECK(other.run("INSERT INTO t(v) VALUES ('x')", 20ms) == SQLITE_BUSY);
  CHECK(writer->thaw(context(), hold).is_ok());
  CHECK(writer->thaw(context(), hold).is_ok());
  CHECK(writer->abort(context()).is_ok());
  CHECK(hold.continuous);
  CHECK(other.run("INSERT INTO t(v) VALUES ('x')", 20ms) == SQLITE_OK);
  REQUIRE(writer->freeze(context()).is_ok());
  CHECK(writer->abort(context()).is_ok());  // abort releases a hold
  CHECK(writer->abort(context()).is_ok());
  CHECK(other.run("INSERT INTO t(v) VALUES ('y')", 20ms) == SQLITE_OK);
  // Destroying a frozen writer releases its locks too.
  REQUIRE(writer->freeze(context()).is_ok());
  writer.reset();
  CHECK(other.run("INSERT INTO t(v) VALUES ('z')", 20ms) == SQLITE_OK);
}

TEST_CASE("sqlite: identify while frozen leaves the held locks in place") {
  // POSIX locks belong to the process and closing any descriptor of the file
  // drops them all; SQLite defers such closes while a lock is held, and this
  // proves identify's own short-lived connection does not break the hold.
  for (const std::string mode : {"wal", "delete"}) {
    CAPTURE(mode);
    quiesce::test::TempDir dir("sqlite-unit");
    const auto path = make_db(dir / "app.db", mode);
    auto writer = make_writer({{"databases", {path.string()}}});
    REQUIRE(writer->freeze(context()).is_ok());
    quiesce::Identity identity;
    REQUIRE(writer->identify(context(), identity).is_ok());
    CHECK(identity.components[0]["journal_mode"] == mode);
    Db other(path);
    CHECK(other.run("INSERT INTO t(v) VALUES ('x')", 20ms) == SQLITE_BUSY);
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(context(), hold).is_ok());
    CHECK(hold.continuous);
  }
}

TEST_CASE("sqlite: a database file replaced between prepare and freeze is locked anew") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto path = make_db(dir / "app.db", "delete");
  auto writer = make_writer({{"databases", {path.string()}}});
  REQUIRE(writer->prepare(context()).is_ok());
  std::filesystem::rename(make_db(dir / "new.db", "delete", 3), path);
  REQUIRE(writer->freeze(context()).is_ok());
  Db other(path);
  CHECK(other.count() == 3);
  CHECK(other.run("INSERT INTO t(v) VALUES ('x')", 20ms) == SQLITE_BUSY);
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(context(), hold).is_ok());
  CHECK(hold.continuous);
}

TEST_CASE("sqlite: a database file replaced during the hold breaks continuity") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto path = make_db(dir / "app.db", "delete");
  const auto replacement = make_db(dir / "new.db", "delete");
  auto writer = make_writer({{"databases", {path.string()}}});
  REQUIRE(writer->freeze(context()).is_ok());
  std::filesystem::rename(replacement, path);
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(context(), hold).is_ok());
  CHECK_FALSE(hold.continuous);
  CHECK(hold.detail.find("replaced") != std::string::npos);
}

TEST_CASE("sqlite: errors an admin must fix are non_retryable and say what to fix") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto garbage = dir / "garbage.db";
  std::ofstream(garbage) << std::string(4096, 'x');
  auto writer = make_writer({{"databases", {garbage.string()}}});
  quiesce::Identity identity;
  auto identified = writer->identify(context(), identity);
  REQUIRE_FALSE(identified.is_ok());
  CHECK(identified.error().error_class == ErrorClass::non_retryable);
  CHECK(identified.error().message.find("not an SQLite 3 database") != std::string::npos);
  CHECK(identified.error().message.find("SQLITE_NOTADB") != std::string::npos);
  auto frozen = writer->freeze(context());
  REQUIRE_FALSE(frozen.is_ok());
  CHECK(frozen.error().error_class == ErrorClass::non_retryable);

  // Deleted after the agent started: cannot open.
  const auto gone = make_db(dir / "gone.db", "delete");
  auto writer2 = make_writer({{"databases", {gone.string()}}});
  std::filesystem::remove(gone);
  auto prepared = writer2->prepare(context());
  REQUIRE_FALSE(prepared.is_ok());
  CHECK(prepared.error().error_class == ErrorClass::non_retryable);
  CHECK(prepared.error().message.find("SQLITE_CANTOPEN") != std::string::npos);
  CHECK(prepared.error().message.find("exists") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(gone));  // never created by the writer

  if (::geteuid() != 0) {
    const auto readonly = make_db(dir / "readonly.db", "delete");
    std::filesystem::permissions(readonly, std::filesystem::perms::owner_read);
    CHECK(field_error({{"databases", {readonly.string()}}}).find("options.databases[0]") !=
          std::string::npos);
    // Made read-only after the agent started: refused at open, not silently
    // opened read-only.
    const auto later = make_db(dir / "later.db", "delete");
    auto writer3 = make_writer({{"databases", {later.string()}}});
    std::filesystem::permissions(later, std::filesystem::perms::owner_read);
    auto refused = writer3->freeze(context());
    REQUIRE_FALSE(refused.is_ok());
    CHECK(refused.error().error_class == ErrorClass::non_retryable);
    CHECK(refused.error().message.find("read-only") != std::string::npos);
  }
}

TEST_CASE("sqlite: options are validated and errors name the field") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto path = make_db(dir / "app.db", "wal");
  CHECK(field_error({{"databases", {path.string(), (dir / "missing.db").string()}}})
            .find("options.databases[1]: '" + (dir / "missing.db").string() +
                  "' does not exist") != std::string::npos);
  CHECK(field_error({{"databases", {"relative.db"}}}).find("options.databases[0]") !=
        std::string::npos);
  CHECK(field_error({{"databases", {path.string(), path.string()}}})
            .find("options.databases[1]: ") != std::string::npos);
  CHECK(field_error({{"databases", {dir.path().string()}}}).find("not a regular file") !=
        std::string::npos);
  CHECK(field_error(nlohmann::json::object()).find("options.databases") != std::string::npos);
  CHECK(field_error({{"databases", nlohmann::json::array()}}).find("options.databases") !=
        std::string::npos);
  CHECK(field_error({{"databases", {path.string()}}, {"busy_timeout_ms", "slow"}})
            .find("options.busy_timeout_ms") != std::string::npos);
  CHECK(field_error({{"databases", {path.string()}}, {"bogus", 1}}).find("options.bogus") !=
        std::string::npos);
  CHECK(field_error({{"databases", {path.string()}}, {"busy_timeout_ms", 10}}) == "no error");
}

TEST_CASE("sqlite: figures for prepare and freeze and thaw on a database with some data") {
  quiesce::test::TempDir dir("sqlite-unit");
  const auto path = make_db(dir / "app.db", "wal", 100000);
  Db other(path);
  other.must("PRAGMA wal_autocheckpoint=0");
  other.must("UPDATE t SET v = hex(randomblob(40)) WHERE id % 3 = 0");
  const auto wal_bytes = std::filesystem::file_size(path.string() + "-wal");
  auto writer = make_writer({{"databases", {path.string()}}});
  auto ms = [](Clock::duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
  };
  auto t0 = Clock::now();
  REQUIRE(writer->prepare(context()).is_ok());
  auto t1 = Clock::now();
  REQUIRE(writer->freeze(context()).is_ok());
  auto t2 = Clock::now();
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(context(), hold).is_ok());
  auto t3 = Clock::now();
  MESSAGE("sqlite writer, 100k rows (" << std::filesystem::file_size(path) / 1024
          << " KiB db), WAL " << wal_bytes / 1024 << " KiB: prepare " << ms(t1 - t0)
          << " ms, freeze " << ms(t2 - t1) << " ms, thaw " << ms(t3 - t2) << " ms");
}

// The mariadb writer against a real MariaDB 10.11 started by the test on a
// private socket: every phase with both methods (BACKUP STAGE and FLUSH
// TABLES WITH READ LOCK), what the hold blocks and what it lets through, and
// the failures an admin meets (wrong password, missing privileges, server
// down, the held connection killed or the server dying during the hold),
// each a clear error with nothing left locked.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "quiesce/json_fields.hpp"
#include "tests/db/mariadb_server.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/writer_harness.hpp"
#include "writers/mariadb/mariadb_writer.hpp"

using namespace std::chrono_literals;
using quiesce::Clock;
using quiesce::ErrorClass;
using quiesce::test::context;
using quiesce::test::message_of;
using quiesce::test::mariadb::MariadbOptions;
using quiesce::test::mariadb::MariadbServer;
using quiesce::test::mariadb::MariadbSession;
namespace mdbtest = quiesce::test::mariadb;

namespace {

bool skip_unless_root() {
  if (::geteuid() != 0) {
    MESSAGE("skipped: MariaDB fixtures need root (mariadbd --user=mysql, chown)");
    return true;
  }
  return false;
}

// A running server in its own temp dir, with a table to write to and a
// dedicated account for the writer.
struct Server {
  quiesce::test::TempDir dir{"mdb-writer"};
  MariadbServer server{dir / "work", dir / "data"};

  explicit Server(const MariadbOptions& options = {}) {
    mdbtest::open_for_traversal(dir.path());
    server.init();
    server.start(options);
    MariadbSession admin(server);
    REQUIRE_MESSAGE(admin.ok(), admin.error());
    admin.exec("CREATE DATABASE qt");
    admin.exec("CREATE TABLE qt.t(id bigint AUTO_INCREMENT PRIMARY KEY, v int) ENGINE=InnoDB");
    admin.exec("INSERT INTO qt.t(v) VALUES (1), (2), (3)");
  }

  [[nodiscard]] nlohmann::json options(const std::string& user, const std::string& password,
                                       const std::string& method = "auto") const {
    return {{"socket", server.socket()},
            {"user", user},
            {"password_file", quiesce::test::password_file(dir, password)},
            {"connect_timeout_ms", 3000},
            {"method", method}};
  }
  [[nodiscard]] nlohmann::json root_options(const std::string& method = "auto") const {
    return options("root", mdbtest::superuser_password, method);
  }
};

const quiesce::test::WriterMaker make_writer{
    .register_type = quiesce::writers::register_mariadb_writer, .type = "mariadb", .name = "mdb"};

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// A JSON scalar as the server would print it.
std::string text_of(const nlohmann::json& value) {
  return value.is_string() ? value.get<std::string>() : value.dump();
}

std::string without_trailing_slash(std::string path) {
  while (path.size() > 1 && path.back() == '/') {
    path.pop_back();
  }
  return path;
}

// One statement on a connection of its own, in a thread: for writes that the
// hold should block. The session waits for locks at most 20 s, so a hold that
// is never released fails the test instead of hanging it.
class Background {
 public:
  // `setup` runs first, on the same connection, in the calling thread.
  Background(const MariadbServer& server, std::string sql,
             const std::vector<std::string>& setup = {})
      : socket_(server.socket()), session_(server), sql_(std::move(sql)) {
    REQUIRE_MESSAGE(session_.ok(), session_.error());
    session_.exec("SET SESSION lock_wait_timeout = 20");
    for (const auto& statement : setup) {
      session_.exec(statement);
    }
    thread_ = std::jthread([this] {
      auto error = session_.try_exec(sql_);
      std::lock_guard lock(mutex_);
      error_ = std::move(error);
      done_ = true;
    });
  }
  // A test that failed during the hold must not wait for the statement:
  // it is killed on the server from a second connection.
  ~Background() {
    if (!done_) {
      MariadbSession killer(socket_, "root", mdbtest::superuser_password);
      (void)killer.try_exec("KILL QUERY " + std::to_string(session_.connection_id()));
    }
    if (thread_.joinable()) {
      thread_.join();
    }
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  [[nodiscard]] bool done() const { return done_; }
  [[nodiscard]] std::string error() const {
    std::lock_guard lock(mutex_);
    return error_;
  }

 private:
  std::string socket_;
  MariadbSession session_;
  std::string sql_;
  std::atomic<bool> done_{false};
  mutable std::mutex mutex_;
  std::string error_;
  std::jthread thread_;
};

// Nothing left locked: a write from another connection goes through at once
// (it would wait for a backup lock or the global read lock, up to
// `wait_s` seconds, then fail).
std::string write_now(const MariadbServer& server, int wait_s = 3) {
  MariadbSession session(server);
  if (!session.ok()) {
    return session.error();
  }
  session.exec("SET SESSION lock_wait_timeout = " + std::to_string(wait_s));
  return session.try_exec("INSERT INTO qt.t(v) VALUES (100)");
}

// Starts a statement and checks that the hold blocks it: still waiting after
// 300 ms (the caller releases the hold and then checks it went through).
std::unique_ptr<Background> blocked(const MariadbServer& server, const std::string& sql,
                                    const std::vector<std::string>& setup = {}) {
  auto statement = std::make_unique<Background>(server, sql, setup);
  std::this_thread::sleep_for(300ms);
  CHECK_MESSAGE(!statement->done(), sql << " went through during the hold: " << statement->error());
  return statement;
}

std::unique_ptr<Background> blocked_write(const MariadbServer& server) {
  return blocked(server, "INSERT INTO qt.t(v) VALUES (42)");
}

void check_released(Background& statement) {
  CHECK_MESSAGE(quiesce::test::eventually(5s, [&] { return statement.done(); }),
                "a statement blocked by the hold did not proceed after thaw");
  CHECK_MESSAGE(statement.error().empty(), statement.error());
}

std::string notes_text(const quiesce::Identity& identity) {
  return identity.metadata.contains("notes") ? identity.metadata["notes"].dump() : "";
}

}  // namespace

TEST_CASE("mariadb writer: options are checked, unknown ones refused, errors name the field") {
  auto fails_with = [](const nlohmann::json& options, const std::string& text) {
    try {
      (void)make_writer(options);
      FAIL("accepted " << options.dump());
    } catch (const quiesce::FieldError& error) {
      CHECK_MESSAGE(contains(error.what(), text), error.what());
    }
  };
  fails_with({{"hostname", "localhost"}}, "options.hostname");
  fails_with({{"method", "snapshot"}}, "options.method");
  fails_with({{"method", 1}}, "options.method");
  fails_with({{"port", 0}}, "options.port");
  fails_with({{"host", "127.0.0.1"}, {"port", 70000}}, "options.port");
  fails_with({{"password_file", "/nonexistent/pw"}}, "options.password_file");
  fails_with({{"password_file", "relative"}}, "options.password_file");
  fails_with({{"connect_timeout_ms", 0}}, "options.connect_timeout_ms");
  fails_with({{"connect_timeout_ms", "soon"}}, "options.connect_timeout_ms");
  fails_with({{"user", 7}}, "options.user");
  fails_with({{"socket", 7}}, "options.socket");
  // Socket and TCP at once: which one was meant is anybody's guess.
  try {
    (void)make_writer({{"socket", "/run/mysqld/mysqld.sock"}, {"host", "127.0.0.1"}});
    FAIL("accepted both socket and host");
  } catch (const quiesce::FieldError& error) {
    CHECK_MESSAGE((contains(error.what(), "options.socket") || contains(error.what(), "options.host")),
                  error.what());
  }
  CHECK(make_writer(nlohmann::json::object()) != nullptr);
  CHECK(make_writer({{"host", "127.0.0.1"}, {"port", 3306}}) != nullptr);
  for (const auto* method : {"auto", "backup_stage", "flush_tables"}) {
    CHECK(make_writer({{"method", method}}) != nullptr);
  }
}

TEST_CASE("mariadb writer: every phase with BACKUP STAGE, binlog position and GTID as artifacts") {
  if (skip_unless_root()) {
    return;
  }
  Server db;
  MariadbSession admin(db.server);
  REQUIRE_MESSAGE(admin.ok(), admin.error());
  auto writer = make_writer(db.root_options());

  quiesce::Identity identity;
  REQUIRE_MESSAGE(writer->identify(context(), identity).is_ok(), "identify");
  CAPTURE(identity.components.dump());
  CAPTURE(identity.metadata.dump());
  CHECK(contains(identity.metadata.value("server_version", ""), "MariaDB"));
  CHECK(identity.metadata["flavor"] == "mariadb");
  CHECK(identity.metadata["method"] == "backup_stage");
  CHECK(identity.metadata["log_bin"] == true);
  // innodb_flush_log_at_trx_commit is 1: nothing to warn about.
  CHECK(!contains(notes_text(identity), "innodb_flush_log_at_trx_commit"));
  bool saw_data_dir = false;
  for (const auto& component : identity.components) {
    if (component.value("kind", "") == "data_directory") {
      saw_data_dir = true;
      CHECK(without_trailing_slash(component.value("path", "")) == db.server.data_dir().string());
      CHECK(!component["mount"].is_null());
    }
  }
  CHECK(saw_data_dir);

  auto started = Clock::now();
  auto status = writer->prepare(context());
  const auto prepare_took = Clock::now() - started;
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  started = Clock::now();
  status = writer->freeze(context());
  const auto freeze_took = Clock::now() - started;
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));

  // While held: reads work, a commit from another connection waits.
  CHECK(admin.value("SELECT count(*) FROM qt.t") == "3");
  const auto held_at = admin.rows("SHOW MASTER STATUS");
  REQUIRE(held_at.size() == 1);
  const auto held_gtid = admin.value("SELECT @@gtid_binlog_pos");
  auto write = blocked_write(db.server);
  // Under BLOCK_COMMIT a transaction's DML on InnoDB goes on; its COMMIT
  // waits, and so does DDL (BLOCK_DDL).
  auto commit = blocked(db.server, "COMMIT", {"BEGIN", "INSERT INTO qt.t(v) VALUES (43)"});
  auto ddl = blocked(db.server, "CREATE TABLE qt.during_hold(i int) ENGINE=InnoDB");

  quiesce::HoldReport hold;
  started = Clock::now();
  status = writer->thaw(context(), hold);
  const auto thaw_took = Clock::now() - started;
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  CHECK(hold.continuous);
  check_released(*write);
  check_released(*commit);
  check_released(*ddl);

  nlohmann::json artifacts;
  started = Clock::now();
  status = writer->post_snapshot(context(), {.snapshot_id = "snap-1"}, artifacts);
  const auto post_took = Clock::now() - started;
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  CAPTURE(artifacts.dump());
  CHECK(artifacts["method"] == "backup_stage");
  REQUIRE(artifacts["binlog"].is_object());
  // The position read under the hold is the one anybody saw during the hold.
  CHECK(artifacts["binlog"]["file"] == held_at[0][0]);
  CHECK(artifacts["binlog"]["position"].is_number_integer());
  CHECK(text_of(artifacts["binlog"]["position"]) == held_at[0][1]);
  CHECK(artifacts["gtid_binlog_pos"] == held_gtid);
  CHECK(!held_gtid.empty());
  CHECK(contains(artifacts.value("server_version", ""), "MariaDB"));
  CHECK(artifacts["timings_ms"].is_object());

  // A second thaw and an abort after completion change nothing.
  quiesce::HoldReport again;
  CHECK(writer->thaw(context(), again).is_ok());
  CHECK(again.continuous);
  CHECK(writer->abort(context()).is_ok());
  CHECK(write_now(db.server).empty());
  MESSAGE("mariadb writer phases (backup_stage): prepare " << ms(prepare_took) << " ms, freeze "
          << ms(freeze_took) << " ms, thaw " << ms(thaw_took) << " ms, post-snapshot "
          << ms(post_took) << " ms; writer timings " << artifacts["timings_ms"].dump());

  // Abort after prepare (BACKUP STAGE START + FLUSH taken), and during a hold:
  // both release everything, twice over.
  REQUIRE(writer->prepare(context("s2")).is_ok());
  CHECK(writer->abort(context("s2")).is_ok());
  CHECK(write_now(db.server).empty());
  REQUIRE(writer->prepare(context("s3")).is_ok());
  REQUIRE(writer->freeze(context("s3")).is_ok());
  CHECK(!write_now(db.server, 1).empty());
  CHECK(writer->abort(context("s3")).is_ok());
  CHECK(writer->abort(context("s3")).is_ok());
  CHECK(write_now(db.server).empty());
  // And the next session works from the start.
  REQUIRE(writer->prepare(context("s4")).is_ok());
  REQUIRE(writer->freeze(context("s4")).is_ok());
  quiesce::HoldReport fourth;
  REQUIRE(writer->thaw(context("s4"), fourth).is_ok());
  CHECK(fourth.continuous);
  REQUIRE(writer->post_snapshot(context("s4"), {.snapshot_id = "snap-4"}, artifacts).is_ok());
  CHECK(write_now(db.server).empty());
}

TEST_CASE("mariadb writer: FLUSH TABLES WITH READ LOCK, binary log off") {
  if (skip_unless_root()) {
    return;
  }
  Server db(MariadbOptions{.log_bin = false, .settings = {"--innodb-flush-log-at-trx-commit=2"}});
  MariadbSession admin(db.server);
  REQUIRE_MESSAGE(admin.ok(), admin.error());
  auto writer = make_writer(db.root_options("flush_tables"));

  quiesce::Identity identity;
  REQUIRE(writer->identify(context(), identity).is_ok());
  CAPTURE(identity.metadata.dump());
  CHECK(identity.metadata["method"] == "flush_tables");
  CHECK(identity.metadata["log_bin"] == false);
  // Commits acknowledged but not yet on disk: the admin is told.
  CHECK(contains(notes_text(identity), "innodb_flush_log_at_trx_commit"));

  auto started = Clock::now();
  REQUIRE(writer->prepare(context()).is_ok());
  const auto prepare_took = Clock::now() - started;
  started = Clock::now();
  auto status = writer->freeze(context());
  const auto freeze_took = Clock::now() - started;
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  CHECK(admin.value("SELECT count(*) FROM qt.t") == "3");
  auto write = blocked_write(db.server);
  quiesce::HoldReport hold;
  started = Clock::now();
  REQUIRE(writer->thaw(context(), hold).is_ok());
  const auto thaw_took = Clock::now() - started;
  CHECK(hold.continuous);
  check_released(*write);

  nlohmann::json artifacts;
  status = writer->post_snapshot(context(), {.snapshot_id = "snap-1"}, artifacts);
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  CAPTURE(artifacts.dump());
  CHECK(artifacts["method"] == "flush_tables");
  CHECK(artifacts.contains("binlog"));
  CHECK(artifacts["binlog"].is_null());
  CHECK(contains(artifacts.value("server_version", ""), "MariaDB"));
  MESSAGE("mariadb writer phases (flush_tables): prepare " << ms(prepare_took) << " ms, freeze "
          << ms(freeze_took) << " ms, thaw " << ms(thaw_took) << " ms; writer timings "
          << artifacts["timings_ms"].dump());

  // Abort during the hold releases the global read lock.
  REQUIRE(writer->prepare(context("s2")).is_ok());
  REQUIRE(writer->freeze(context("s2")).is_ok());
  CHECK(!write_now(db.server, 1).empty());
  CHECK(writer->abort(context("s2")).is_ok());
  CHECK(writer->abort(context("s2")).is_ok());
  CHECK(write_now(db.server).empty());
}

TEST_CASE("mariadb writer: failures are classified and tell the admin what to fix") {
  if (skip_unless_root()) {
    return;
  }
  Server db;
  MariadbSession admin(db.server);
  REQUIRE_MESSAGE(admin.ok(), admin.error());

  SUBCASE("wrong password: non_retryable, says authentication and password_file") {
    auto writer = make_writer(db.options("root", "not-the-password"));
    auto status = writer->prepare(context());
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::non_retryable);
    const auto& message = status.error().message;
    CHECK_MESSAGE((contains(message, "authentication") || contains(message, "password_file")),
                  message);
    CHECK_MESSAGE(contains(message, "password_file"), message);
    // The password never shows up in a message.
    CHECK(!contains(message, "not-the-password"));
    CHECK(writer->abort(context()).is_ok());
    CHECK(write_now(db.server).empty());
  }

  SUBCASE("missing RELOAD or BINLOG MONITOR: non_retryable, naming the GRANT") {
    // No privileges at all: RELOAD is what every method needs.
    mdbtest::create_user(admin, "weak", "weak-pw");
    auto writer = make_writer(db.options("weak", "weak-pw"));
    quiesce::Identity identity;
    CHECK_MESSAGE(writer->identify(context(), identity).is_ok(), "identify without privileges");
    auto status = writer->prepare(context());
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::non_retryable);
    CHECK_MESSAGE(contains(status.error().message, "GRANT RELOAD ON *.*"), status.error().message);
    CHECK(writer->abort(context()).is_ok());
    CHECK(write_now(db.server).empty());

    // BINLOG MONITOR alone: RELOAD is still missing.
    admin.exec("GRANT BINLOG MONITOR ON *.* TO 'weak'@'localhost'");
    status = writer->prepare(context("s2"));
    if (status.is_ok()) {
      status = writer->freeze(context("s2"));
    }
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::non_retryable);
    CHECK_MESSAGE(contains(status.error().message, "GRANT RELOAD ON *.*"), status.error().message);
    CHECK(writer->abort(context("s2")).is_ok());
    CHECK(write_now(db.server).empty());

    // RELOAD alone: the binary log position needs BINLOG MONITOR, in
    // prepare or at the latest in freeze (and then nothing stays held).
    admin.exec("REVOKE BINLOG MONITOR ON *.* FROM 'weak'@'localhost'");
    admin.exec("GRANT RELOAD ON *.* TO 'weak'@'localhost'");
    status = writer->prepare(context("s3"));
    if (status.is_ok()) {
      status = writer->freeze(context("s3"));
    }
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::non_retryable);
    CHECK_MESSAGE(contains(status.error().message, "GRANT BINLOG MONITOR ON *.*"),
                  status.error().message);
    CHECK(writer->abort(context("s3")).is_ok());
    CHECK(write_now(db.server).empty());

    // With the documented grants it works.
    admin.exec("GRANT BINLOG MONITOR ON *.* TO 'weak'@'localhost'");
    REQUIRE_MESSAGE(writer->prepare(context("s4")).is_ok(), "prepare with the grants");
    auto frozen = writer->freeze(context("s4"));
    REQUIRE_MESSAGE(frozen.is_ok(), message_of(frozen));
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(context("s4"), hold).is_ok());
    CHECK(hold.continuous);
    nlohmann::json artifacts;
    CHECK(writer->post_snapshot(context("s4"), {.snapshot_id = "x"}, artifacts).is_ok());
    CHECK(artifacts["binlog"].is_object());
  }

  SUBCASE("server down: retryable") {
    auto writer = make_writer(db.root_options());
    db.server.stop();
    auto status = writer->prepare(context());
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::retryable);
    CHECK(writer->abort(context()).is_ok());
    // No socket file at all: also retryable.
    auto nowhere = make_writer({{"socket", (db.dir / "no-such.sock").string()},
                                {"connect_timeout_ms", 2000}});
    status = nowhere->prepare(context());
    REQUIRE(!status.is_ok());
    CHECK_MESSAGE(status.error().error_class == ErrorClass::retryable, status.error().message);
    // TCP with nothing listening: connection refused, also retryable.
    auto tcp = make_writer({{"host", "127.0.0.1"}, {"port", 1}, {"connect_timeout_ms", 2000}});
    status = tcp->prepare(context());
    REQUIRE(!status.is_ok());
    CHECK_MESSAGE(status.error().error_class == ErrorClass::retryable, status.error().message);
  }

  SUBCASE("a stopped call returns at once as a timeout") {
    auto writer = make_writer(db.root_options());
    std::stop_source stop;
    stop.request_stop();
    auto ctx = context();
    ctx.stop = stop.get_token();
    const auto started = Clock::now();
    auto status = writer->prepare(ctx);
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::timeout);
    CHECK(Clock::now() - started < 2s);
    CHECK(writer->abort(context()).is_ok());
    CHECK(write_now(db.server).empty());
  }
}

TEST_CASE("mariadb writer: the held connection lost during the hold breaks continuity") {
  if (skip_unless_root()) {
    return;
  }
  Server db;
  {
    MariadbSession admin(db.server);
    REQUIRE_MESSAGE(admin.ok(), admin.error());
    // A dedicated account, so the writer's connection is easy to find.
    mdbtest::create_user(admin, "quiesce", "quiesce-pw", "RELOAD, BINLOG MONITOR");
  }
  const auto options = db.options("quiesce", "quiesce-pw");

  SUBCASE("held connection killed with KILL") {
    auto writer = make_writer(options);
    REQUIRE(writer->prepare(context()).is_ok());
    REQUIRE(writer->freeze(context()).is_ok());
    MariadbSession admin(db.server);
    const auto ids =
        admin.column("SELECT id FROM information_schema.processlist WHERE user = 'quiesce'");
    CHECK(ids.size() == 1);
    for (const auto& id : ids) {
      admin.exec("KILL CONNECTION " + id);
    }
    // The lock went with the connection.
    CHECK(write_now(db.server).empty());
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(context(), hold).is_ok());
    CHECK(!hold.continuous);
    CHECK_MESSAGE(contains(hold.detail, "lost"), hold.detail);
    CHECK_MESSAGE(contains(hold.detail, "connection"), hold.detail);
    quiesce::HoldReport again;
    CHECK(writer->thaw(context(), again).is_ok());
    nlohmann::json artifacts;
    auto status = writer->post_snapshot(context(), {.snapshot_id = "x"}, artifacts);
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::inconsistent);
    CHECK(writer->abort(context()).is_ok());
    CHECK(writer->abort(context()).is_ok());
    CHECK(write_now(db.server).empty());
    // The next session starts clean.
    REQUIRE(writer->prepare(context("again")).is_ok());
    REQUIRE(writer->freeze(context("again")).is_ok());
    quiesce::HoldReport second;
    REQUIRE(writer->thaw(context("again"), second).is_ok());
    CHECK(second.continuous);
    CHECK(writer->post_snapshot(context("again"), {.snapshot_id = "y"}, artifacts).is_ok());
  }

  SUBCASE("server killed during the hold") {
    auto writer = make_writer(options);
    REQUIRE(writer->prepare(context()).is_ok());
    REQUIRE(writer->freeze(context()).is_ok());
    db.server.kill_now();
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(context(), hold).is_ok());
    CHECK(!hold.continuous);
    CHECK_MESSAGE(contains(hold.detail, "lost"), hold.detail);
    nlohmann::json artifacts;
    auto status = writer->post_snapshot(context(), {.snapshot_id = "x"}, artifacts);
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::inconsistent);
    CHECK(writer->abort(context()).is_ok());
    db.server.start();
    CHECK(write_now(db.server).empty());
    REQUIRE(writer->prepare(context("after")).is_ok());
    REQUIRE(writer->freeze(context("after")).is_ok());
    quiesce::HoldReport second;
    REQUIRE(writer->thaw(context("after"), second).is_ok());
    CHECK(second.continuous);
    CHECK(writer->post_snapshot(context("after"), {.snapshot_id = "z"}, artifacts).is_ok());
  }
}

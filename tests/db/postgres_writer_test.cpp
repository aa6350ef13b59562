// The postgres writer against a real PostgreSQL 15 started by the test on a
// private socket: every phase, and the failures an admin meets (wrong
// password, missing privileges, server down, the held session killed during
// the hold), each a clear error with nothing left behind.
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <thread>

#include "quiesce/json_fields.hpp"
#include "tests/db/postgres_server.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/writer_harness.hpp"
#include "writers/postgres/postgres_writer.hpp"

using namespace std::chrono_literals;
using quiesce::Clock;
using quiesce::ErrorClass;
using quiesce::test::context;
using quiesce::test::message_of;
using quiesce::test::postgres::PgSession;
using quiesce::test::postgres::PostgresServer;

namespace {

bool skip_unless_root() {
  if (::geteuid() != 0) {
    MESSAGE("skipped: PostgreSQL fixtures need root (runuser to the postgres user)");
    return true;
  }
  return false;
}

// A running cluster in its own temp dir.
struct Cluster {
  quiesce::test::TempDir dir{"pg-writer"};
  PostgresServer server{dir / "data", dir / "sock", dir / "server.log"};

  Cluster() {
    quiesce::test::postgres::open_for_traversal(dir.path());
    server.init();
    server.start();
  }

  [[nodiscard]] nlohmann::json options(const std::string& user, const std::string& password) const {
    return {{"host", server.socket_dir().string()},
            {"port", server.port()},
            {"user", user},
            {"dbname", "postgres"},
            {"password_file", quiesce::test::password_file(dir, password)},
            {"connect_timeout_ms", 3000}};
  }
};

const quiesce::test::WriterMaker make_writer{
    .register_type = quiesce::writers::register_postgres_writer, .type = "postgres", .name = "pg"};

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

TEST_CASE("postgres writer: options are checked, unknown ones refused, errors name the field") {
  auto fails_with = [](const nlohmann::json& options, const std::string& text) {
    try {
      (void)make_writer(options);
      FAIL("accepted " << options.dump());
    } catch (const quiesce::FieldError& error) {
      CHECK_MESSAGE(std::string(error.what()).find(text) != std::string::npos, error.what());
    }
  };
  fails_with({{"hostname", "/tmp"}}, "options.hostname");
  fails_with({{"port", 0}}, "options.port");
  fails_with({{"password_file", "/nonexistent/pw"}}, "options.password_file");
  fails_with({{"password_file", "relative"}}, "options.password_file");
  fails_with({{"label_prefix", "two\nlines"}}, "options.label_prefix");
  fails_with({{"connect_timeout_ms", "soon"}}, "options.connect_timeout_ms");
  CHECK(make_writer(nlohmann::json::object()) != nullptr);
}

TEST_CASE("postgres writer: every phase against a real server, backup_label as the artifact") {
  if (skip_unless_root()) {
    return;
  }
  Cluster cluster;
  PgSession admin(cluster.server);
  REQUIRE_MESSAGE(admin.ok(), admin.error());
  admin.exec("CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 10000)");
  auto writer = make_writer(cluster.options("postgres", quiesce::test::postgres::superuser_password));

  quiesce::Identity identity;
  REQUIRE_MESSAGE(writer->identify(context(), identity).is_ok(), "identify");
  CAPTURE(identity.components.dump());
  CAPTURE(identity.metadata.dump());
  CHECK(identity.metadata["server_version_num"].get<int>() >= 150000);
  CHECK(!identity.metadata["wal_lsn"].get<std::string>().empty());
  bool saw_data_dir = false;
  bool saw_default_tablespace = false;
  for (const auto& component : identity.components) {
    if (component["kind"] == "data_directory") {
      saw_data_dir = true;
      CHECK(component["path"] == cluster.server.data_dir().string());
      CHECK(!component["mount"].is_null());
    }
    if (component["kind"] == "tablespace" && component["name"] == "pg_default") {
      saw_default_tablespace = true;
    }
  }
  CHECK(saw_data_dir);
  CHECK(saw_default_tablespace);

  // What the agent's backend ran last: the backup starts in prepare (its
  // checkpoint is the slow part), and freeze sends the server nothing.
  const auto last_statement = [&] {
    return admin.value("SELECT query FROM pg_stat_activity WHERE application_name = "
                       "'quiesce-agent' AND pid <> pg_backend_pid()");
  };
  auto started = Clock::now();
  auto status = writer->prepare(context("s1"));
  const auto prepare_took = Clock::now() - started;
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  CHECK_MESSAGE(last_statement().find("pg_backup_start") != std::string::npos, last_statement());
  admin.exec("INSERT INTO t VALUES (-2)");  // writes carry on between prepare and freeze too
  started = Clock::now();
  status = writer->freeze(context("s1"));
  const auto freeze_took = Clock::now() - started;
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  CHECK_MESSAGE(last_statement().find("pg_backup_start") != std::string::npos, last_statement());
  // Writes carry on during a non-exclusive backup.
  admin.exec("INSERT INTO t VALUES (-1)");
  quiesce::HoldReport hold;
  started = Clock::now();
  status = writer->thaw(context(), hold);
  const auto thaw_took = Clock::now() - started;
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  CHECK(hold.continuous);
  nlohmann::json artifacts;
  started = Clock::now();
  status = writer->post_snapshot(context(), {.snapshot_id = "snap-1"}, artifacts);
  const auto stop_took = Clock::now() - started;
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  CAPTURE(artifacts.dump());
  const std::string label = artifacts["backup_label"];
  CHECK(label.find("LABEL: quiesce-s1") != std::string::npos);
  CHECK(label.find("START WAL LOCATION:") != std::string::npos);
  CHECK(!artifacts["stop_lsn"].get<std::string>().empty());
  CHECK(artifacts["snapshot_id"] == "snap-1");
  CHECK(artifacts.contains("tablespace_map"));
  CHECK(artifacts["timings_ms"].contains("prepare_ms"));
  CHECK(!artifacts["timings_ms"].contains("start_in_freeze_ms"));
  // Abort after completion and a second thaw change nothing.
  CHECK(writer->abort(context()).is_ok());
  quiesce::HoldReport again;
  CHECK(writer->thaw(context(), again).is_ok());
  CHECK(again.continuous);
  MESSAGE("postgres writer phases: prepare " << ms(prepare_took) << " ms, freeze "
          << ms(freeze_took) << " ms, thaw " << ms(thaw_took) << " ms, post-snapshot "
          << ms(stop_took) << " ms");

  // Abort during a hold closes the session; a new backup can start at once.
  REQUIRE(writer->prepare(context("s2")).is_ok());
  REQUIRE(writer->freeze(context("s2")).is_ok());
  CHECK(writer->abort(context("s2")).is_ok());
  CHECK(writer->abort(context("s2")).is_ok());
  REQUIRE(writer->freeze(context("s3")).is_ok());
  quiesce::HoldReport third;
  REQUIRE(writer->thaw(context("s3"), third).is_ok());
  CHECK(third.continuous);
  REQUIRE(writer->post_snapshot(context("s3"), {.snapshot_id = "snap-3"}, artifacts).is_ok());
}

TEST_CASE("postgres writer: failures are classified and tell the admin what to fix") {
  if (skip_unless_root()) {
    return;
  }
  Cluster cluster;
  PgSession admin(cluster.server);
  REQUIRE_MESSAGE(admin.ok(), admin.error());

  SUBCASE("wrong password: non_retryable, says authentication") {
    auto writer = make_writer(cluster.options("postgres", "not-the-password"));
    auto status = writer->prepare(context());
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::non_retryable);
    CHECK_MESSAGE(status.error().message.find("authentication") != std::string::npos,
                  status.error().message);
    // The password never shows up in a message.
    CHECK(status.error().message.find("not-the-password") == std::string::npos);
  }

  SUBCASE("a role without privileges: non_retryable, naming the GRANT") {
    admin.exec("CREATE ROLE weak LOGIN PASSWORD 'weak-pw'");
    auto writer = make_writer(cluster.options("weak", "weak-pw"));
    quiesce::Identity identity;
    REQUIRE(writer->identify(context(), identity).is_ok());
    CHECK_MESSAGE(identity.metadata["data_directory_error"].get<std::string>().find(
                      "GRANT pg_read_all_settings TO \"weak\"") != std::string::npos,
                  identity.metadata.dump());
    // prepare starts the backup, so a missing grant shows there, before
    // anything is frozen.
    auto status = writer->prepare(context());
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::non_retryable);
    CHECK_MESSAGE(status.error().message.find(
                      "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO \"weak\"") !=
                      std::string::npos,
                  status.error().message);
    status = writer->freeze(context());
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::non_retryable);
    // With the documented grants (and no pg_checkpoint) it works.
    admin.exec("GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO weak; "
               "GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO weak");
    REQUIRE_MESSAGE(writer->prepare(context()).is_ok(), "prepare with the grants");
    REQUIRE_MESSAGE(writer->freeze(context()).is_ok(), "freeze with the grants");
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(context(), hold).is_ok());
    nlohmann::json artifacts;
    CHECK(writer->post_snapshot(context(), {.snapshot_id = "x"}, artifacts).is_ok());
  }

  SUBCASE("server down: retryable") {
    auto writer = make_writer(cluster.options("postgres", quiesce::test::postgres::superuser_password));
    cluster.server.stop_immediate();
    auto status = writer->prepare(context());
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::retryable);
    CHECK_MESSAGE(status.error().message.find("could not connect") != std::string::npos,
                  status.error().message);
    // TCP with nothing listening: connection refused, also retryable.
    auto tcp = make_writer({{"host", "127.0.0.1"}, {"port", 1}, {"connect_timeout_ms", 2000}});
    status = tcp->prepare(context());
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::retryable);
    CHECK_MESSAGE(status.error().message.find("refused") != std::string::npos, status.error().message);
  }

  SUBCASE("a stopped call returns at once as a timeout") {
    auto writer = make_writer(cluster.options("postgres", quiesce::test::postgres::superuser_password));
    std::stop_source stop;
    stop.request_stop();
    auto ctx = context();
    ctx.stop = stop.get_token();
    const auto started = Clock::now();
    auto status = writer->prepare(ctx);
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::timeout);
    CHECK(Clock::now() - started < 2s);
  }
}

TEST_CASE("postgres writer: the held session dying during the hold breaks continuity") {
  if (skip_unless_root()) {
    return;
  }
  Cluster cluster;
  const auto options = cluster.options("postgres", quiesce::test::postgres::superuser_password);

  SUBCASE("backend terminated with pg_terminate_backend") {
    auto writer = make_writer(options);
    REQUIRE(writer->prepare(context()).is_ok());
    REQUIRE(writer->freeze(context()).is_ok());
    PgSession admin(cluster.server);
    const auto killed = admin.value(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'quiesce-agent' AND pid <> pg_backend_pid()");
    CHECK(killed == "1");
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(context(), hold).is_ok());
    CHECK(!hold.continuous);
    CHECK_MESSAGE(hold.detail.find("lost during the hold") != std::string::npos, hold.detail);
    nlohmann::json artifacts;
    auto status = writer->post_snapshot(context(), {.snapshot_id = "x"}, artifacts);
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::inconsistent);
    CHECK(writer->abort(context()).is_ok());
    // Nothing left behind: a new backup starts, from the writer and by hand.
    REQUIRE(writer->freeze(context("again")).is_ok());
    admin.exec("SELECT pg_backup_start('by-hand', fast => true)");
    admin.exec("SELECT pg_backup_stop(false)");
    quiesce::HoldReport second;
    REQUIRE(writer->thaw(context("again"), second).is_ok());
    CHECK(second.continuous);
    CHECK(writer->post_snapshot(context("again"), {.snapshot_id = "y"}, artifacts).is_ok());
  }

  SUBCASE("backend terminated between prepare and freeze: freeze starts the backup again") {
    auto writer = make_writer(options);
    REQUIRE(writer->prepare(context("s")).is_ok());
    PgSession admin(cluster.server);
    CHECK(admin.value("SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                      "WHERE application_name = 'quiesce-agent' AND pid <> pg_backend_pid()") ==
          "1");
    // freeze finds the session gone (without a round trip) and starts a new
    // backup itself rather than report a hold with no backup open.
    REQUIRE(writer->freeze(context("s")).is_ok());
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(context("s"), hold).is_ok());
    CHECK_MESSAGE(hold.continuous, hold.detail);
    nlohmann::json artifacts;
    REQUIRE(writer->post_snapshot(context("s"), {.snapshot_id = "x"}, artifacts).is_ok());
    CHECK(artifacts["backup_label"].get<std::string>().find("LABEL: quiesce-s") !=
          std::string::npos);
    CHECK(artifacts["timings_ms"].contains("start_in_freeze_ms"));
  }

  SUBCASE("prepared but never frozen: thaw and post-snapshot leave nothing open") {
    auto writer = make_writer(options);
    REQUIRE(writer->prepare(context("p")).is_ok());
    nlohmann::json artifacts;
    auto status = writer->post_snapshot(context("p"), {.snapshot_id = "x"}, artifacts);
    REQUIRE(!status.is_ok());
    CHECK(status.error().error_class == ErrorClass::non_retryable);
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(context("p"), hold).is_ok());
    // The backend exits shortly after its session closes.
    PgSession admin(cluster.server);
    std::string sessions;
    for (const auto until = Clock::now() + 10s; Clock::now() < until; std::this_thread::sleep_for(20ms)) {
      sessions = admin.value("SELECT count(*) FROM pg_stat_activity "
                             "WHERE application_name = 'quiesce-agent'");
      if (sessions == "0") {
        break;
      }
    }
    CHECK(sessions == "0");
  }

  SUBCASE("server killed (immediate shutdown) during the hold") {
    auto writer = make_writer(options);
    REQUIRE(writer->prepare(context()).is_ok());
    REQUIRE(writer->freeze(context()).is_ok());
    cluster.server.stop_immediate();
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(context(), hold).is_ok());
    CHECK(!hold.continuous);
    CHECK_MESSAGE(hold.detail.find("crash-consistent") != std::string::npos, hold.detail);
    CHECK(writer->abort(context()).is_ok());
    cluster.server.start();
    REQUIRE(writer->prepare(context("after")).is_ok());
    REQUIRE(writer->freeze(context("after")).is_ok());
    quiesce::HoldReport second;
    REQUIRE(writer->thaw(context("after"), second).is_ok());
    CHECK(second.continuous);
    nlohmann::json artifacts;
    CHECK(writer->post_snapshot(context("after"), {.snapshot_id = "z"}, artifacts).is_ok());
  }
}

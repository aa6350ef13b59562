#include "tests/bench/database_load.hpp"

#include <sqlite3.h>
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <thread>

// The db tests' fixtures REQUIRE; here a failed REQUIRE becomes an exception
// (route_fixture_failures_to_exceptions), so doctest is compiled in once.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "tests/bench/bench_support.hpp"
#include "tests/db/mariadb_server.hpp"
#include "tests/db/postgres_server.hpp"
#include "tests/db/redis_server.hpp"

namespace quiesce::bench {

namespace fs = std::filesystem;
namespace pgtest = quiesce::test::postgres;
namespace mdbtest = quiesce::test::mariadb;
using namespace std::chrono_literals;

namespace {

void throw_fixture_failure(const doctest::AssertData& data) {
  throw std::runtime_error(std::string("database fixture failed at ") + data.m_file + ":" +
                           std::to_string(data.m_line) + ": " + data.m_expr + " (" +
                           data.m_decomp.c_str() + ")");
}

// The password files the agent's writers read (0600, like an admin's).
std::string write_secret(const fs::path& path, const std::string& secret) {
  std::ofstream(path) << secret << "\n";
  ::chmod(path.c_str(), 0600);
  return path.string();
}

}  // namespace

void route_fixture_failures_to_exceptions() {
  static doctest::Context context;
  context.setAsDefaultForAssertsOutOfTestCases();
  context.setAssertHandler(throw_fixture_failure);
}

struct DatabaseLoad::Impl {
  fs::path work;
  fs::path data;
  DatabaseLoadOptions options;
  std::unique_ptr<pgtest::PostgresServer> pg;
  std::unique_ptr<mdbtest::MariadbServer> mariadb;
  std::unique_ptr<quiesce::test::RedisServer> redis;
  fs::path sqlite_path;
  std::string pg_password_file;
  std::string mariadb_password_file;

  std::unique_ptr<Child> pgbench;
  std::vector<std::jthread> loops;
  std::atomic<long> mariadb_acked{0};
  std::atomic<long> redis_acked{0};
  std::atomic<long> sqlite_acked{0};
  mutable std::mutex error_mutex;
  std::string error;

  void fail(const std::string& what) {
    std::lock_guard lock(error_mutex);
    if (error.empty()) {
      error = what;
    }
  }

  // One INSERT per transaction, autocommit: each acknowledged only once
  // InnoDB's log is flushed (innodb_flush_log_at_trx_commit = 1).
  void mariadb_loop(const std::stop_token& stop) {
    mdbtest::MariadbSession session(*mariadb);
    if (!session.ok()) {
      fail("mariadb load: " + session.error());
      return;
    }
    while (!stop.stop_requested()) {
      if (auto message = session.try_exec("INSERT INTO bench.t(payload) VALUES (REPEAT('x', 200))");
          !message.empty()) {
        fail("mariadb load: " + message);
        return;
      }
      ++mariadb_acked;
    }
  }

  // SETs in pipelined batches of 20 (AOF, appendfsync everysec): Redis is
  // CPU-bound, so a pause between batches keeps it from taking a core.
  void redis_loop(const std::stop_token& stop) {
    quiesce::test::RedisClient client(redis->socket(), 10s);
    if (!client.connected()) {
      fail("redis load: cannot connect");
      return;
    }
    for (long key = 0; !stop.stop_requested();) {
      std::vector<std::vector<std::string>> batch;
      for (int i = 0; i < 20; ++i, ++key) {
        batch.push_back({"SET", "key:" + std::to_string(key % 100000), std::string(200, 'x')});
      }
      for (const auto& reply : client.pipeline(batch)) {
        if (reply != "OK") {
          fail("redis load: " + reply);
          return;
        }
      }
      redis_acked += 20;
      std::this_thread::sleep_for(1ms);
    }
  }

  // WAL mode with synchronous = FULL: every commit fsyncs the WAL. A pause
  // between transactions, as an application has: SQLite's busy handler
  // polls, and a writer that takes the lock again the instant it let go
  // would starve any other (the agent's BEGIN IMMEDIATE included).
  static constexpr auto kSqlitePause = 5ms;
  void sqlite_loop(const std::stop_token& stop) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(sqlite_path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
      fail("sqlite load: " + std::string(db != nullptr ? sqlite3_errmsg(db) : "cannot open"));
      sqlite3_close(db);
      return;
    }
    sqlite3_busy_timeout(db, 60000);
    sqlite3_exec(db, "PRAGMA synchronous = FULL", nullptr, nullptr, nullptr);
    while (!stop.stop_requested()) {
      char* message = nullptr;
      if (sqlite3_exec(db, "INSERT INTO t(payload) VALUES (randomblob(200))", nullptr, nullptr,
                       &message) != SQLITE_OK) {
        fail("sqlite load: " + std::string(message != nullptr ? message : "insert failed"));
        sqlite3_free(message);
        break;
      }
      ++sqlite_acked;
      std::this_thread::sleep_for(kSqlitePause);
    }
    sqlite3_close(db);
  }
};

DatabaseLoad::DatabaseLoad(const fs::path& work_dir, const fs::path& data_root,
                           DatabaseLoadOptions options)
    : impl_(std::make_unique<Impl>()) {
  auto& s = *impl_;
  s.work = work_dir;
  s.data = data_root;
  s.options = options;
  fs::create_directories(work_dir);
  // mkdtemp made the bench's dirs 0700: the postgres and mysql users must
  // get through to their sockets and data.
  for (auto path = work_dir; !path.empty() && path != path.root_path(); path = path.parent_path()) {
    if (path.string().starts_with("/tmp/")) {
      pgtest::open_for_traversal(path);
    }
  }
  for (auto path = data_root; !path.empty() && path != path.root_path(); path = path.parent_path()) {
    if (path.string().starts_with("/tmp/")) {
      pgtest::open_for_traversal(path);
    }
  }

  // PostgreSQL: shared_buffers larger than the fixture's 16 MB, so that a
  // checkpoint under pgbench has the work it has on a real server.
  s.pg = std::make_unique<pgtest::PostgresServer>(data_root / "pg", work_dir / "pg-sock",
                                                  work_dir / "pg.log");
  s.pg->init();
  s.pg->start({"shared_buffers=128MB", "max_wal_size=1GB"});
  s.pg_password_file = write_secret(work_dir / "pg.pass", pgtest::superuser_password);
  std::string output;
  if (run({"env", std::string("PGPASSWORD=") + pgtest::superuser_password, "pgbench", "-i", "-q",
           "-s", "4", "-h", s.pg->socket_dir().string(), "-U", "postgres", "postgres"},
          &output) != 0) {
    throw std::runtime_error("pgbench -i failed: " + output);
  }

  // MariaDB with its binary log (the writer reads the position under the lock).
  s.mariadb = std::make_unique<mdbtest::MariadbServer>(work_dir / "mariadb", data_root / "mariadb");
  s.mariadb->init();
  s.mariadb->start();
  {
    mdbtest::MariadbSession admin(*s.mariadb);
    admin.exec("CREATE DATABASE bench");
    admin.exec("CREATE TABLE bench.t(id bigint AUTO_INCREMENT PRIMARY KEY, payload text) "
               "ENGINE=InnoDB");
  }
  s.mariadb_password_file = write_secret(work_dir / "mariadb.pass", mdbtest::superuser_password);

  // Redis with the AOF (every write acknowledged is in it; everysec fsync).
  quiesce::test::RedisServerOptions redis_options;
  redis_options.aof = true;
  redis_options.appendfsync = "everysec";
  s.redis = std::make_unique<quiesce::test::RedisServer>(work_dir / "redis", data_root / "redis",
                                                         redis_options);

  // SQLite in WAL mode.
  fs::create_directories(data_root / "sqlite");
  s.sqlite_path = data_root / "sqlite" / "app.db";
  sqlite3* db = nullptr;
  const bool made =
      sqlite3_open(s.sqlite_path.c_str(), &db) == SQLITE_OK &&
      sqlite3_exec(db,
                   "PRAGMA journal_mode = WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB)",
                   nullptr, nullptr, nullptr) == SQLITE_OK;
  const std::string message = db != nullptr ? sqlite3_errmsg(db) : "cannot open";
  sqlite3_close(db);
  if (!made) {
    throw std::runtime_error("cannot create " + s.sqlite_path.string() + ": " + message);
  }
}

DatabaseLoad::~DatabaseLoad() {
  stop_load();
  // The servers stop in their fixtures' destructors (reverse order).
}

nlohmann::json DatabaseLoad::writers() const {
  const auto& s = *impl_;
  return nlohmann::json::array(
      {{{"type", "postgres"},
        {"name", "pg"},
        {"options",
         {{"host", s.pg->socket_dir().string()},
          {"port", s.pg->port()},
          {"user", "postgres"},
          {"password_file", s.pg_password_file}}}},
       {{"type", "mariadb"},
        {"name", "mariadb"},
        {"options",
         {{"socket", s.mariadb->socket()}, {"user", "root"}, {"password_file", s.mariadb_password_file}}}},
       {{"type", "redis"}, {"name", "redis"}, {"options", {{"socket", s.redis->socket()}}}},
       {{"type", "sqlite"}, {"name", "sqlite"}, {"options", {{"databases", {s.sqlite_path.string()}}}}}});
}

void DatabaseLoad::start_load() {
  auto& s = *impl_;
  if (!s.loops.empty()) {
    return;
  }
  // TPC-B-like transactions from N clients, unthrottled, for as long as
  // the bench runs (it is stopped with SIGTERM).
  s.pgbench = std::make_unique<Child>(
      std::vector<std::string>{"env", std::string("PGPASSWORD=") + pgtest::superuser_password,
                               "pgbench", "-n", "-c", std::to_string(s.options.pgbench_clients),
                               "-j", "2", "-T", "86400", "-h", s.pg->socket_dir().string(), "-U",
                               "postgres", "postgres"},
      s.work / "pgbench.log");
  s.loops.emplace_back([&s](std::stop_token stop) { s.mariadb_loop(stop); });
  s.loops.emplace_back([&s](std::stop_token stop) { s.redis_loop(stop); });
  s.loops.emplace_back([&s](std::stop_token stop) { s.sqlite_loop(stop); });
}

void DatabaseLoad::stop_load() {
  auto& s = *impl_;
  for (auto& loop : s.loops) {
    loop.request_stop();
  }
  s.loops.clear();  // joins
  s.pgbench.reset();
}

nlohmann::json DatabaseLoad::acknowledged() const {
  const auto& s = *impl_;
  return {{"mariadb", s.mariadb_acked.load()},
          {"redis", s.redis_acked.load()},
          {"sqlite", s.sqlite_acked.load()}};
}

std::string DatabaseLoad::load_error() const {
  auto& s = *impl_;
  {
    std::lock_guard lock(s.error_mutex);
    if (!s.error.empty()) {
      return s.error;
    }
  }
  if (s.pgbench && !s.pgbench->running()) {
    return "pgbench exited; see " + (s.work / "pgbench.log").string();
  }
  return "";
}

}  // namespace quiesce::bench

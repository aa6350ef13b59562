// quiesce-writer-check, the real binary, against the real database writers
// and real servers started here on private sockets (issue #5: every database
// writer passes the conformance kit). Each case runs the checker on every
// configuration that changes what the writer does at freeze, and prints how
// long each check took. One more case goes where the kit cannot see: what a
// redis freeze cut short by its deadline leaves in the server.
#include <doctest/doctest.h>

#include <poll.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "quiesce/writer_registry.hpp"
#include "tests/db/mariadb_server.hpp"
#include "tests/db/postgres_server.hpp"
#include "tests/db/redis_server.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "writers/redis/redis_writer.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t check_count = 13;

// The checker's JSON report; stderr (writer log lines) is mixed into the
// captured output, and the report is the last thing printed, from a line
// that is only "{".
nlohmann::json report_of(const std::string& output) {
  std::size_t start = output.rfind("\n{\n");
  start = start == std::string::npos ? (output.rfind("{\n", 0) == 0 ? 0 : std::string::npos)
                                     : start + 1;
  if (start == std::string::npos) {
    return nlohmann::json();
  }
  auto report = nlohmann::json::parse(output.substr(start), nullptr, false);
  return report.is_discarded() ? nlohmann::json() : report;
}

// Runs `quiesce-writer-check --type TYPE --options OPTIONS --json [EXTRA...]`
// and requires every check to pass; the whole output is shown when one does
// not. Prints how long each check took.
void expect_all_checks_pass(const std::string& type, const nlohmann::json& options,
                            const std::string& what, const std::vector<std::string>& extra = {}) {
  const auto binary = quiesce::test::built_binary("quiesce-writer-check");
  REQUIRE_MESSAGE(fs::exists(binary),
                  "build the quiesce-writer-check target first (" << binary.string() << ")");
  std::vector<std::string> argv{binary.string(), "--type",  type,
                                "--options",     options.dump(), "--json"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  std::string output;
  const int code = quiesce::test::run_command(argv, &output);
  std::string summary;
  {
    INFO(type << " (" << what << ") options " << options.dump());
    INFO("quiesce-writer-check output:\n" << output);
    CHECK(code == 0);
    const auto report = report_of(output);
    REQUIRE_MESSAGE(report.is_object(), "no JSON report in the output");
    CHECK(report["type"] == type);
    CHECK(report["level"] == "database");
    CHECK(report["hung"] == false);
    CHECK(report["failed"] == 0);
    CHECK(report["passed"] == true);
    REQUIRE(report["checks"].size() == check_count);
    std::size_t passed = 0;
    for (const auto& check : report["checks"]) {
      const std::string name = check["name"];
      const std::string detail = check["detail"];
      CHECK_MESSAGE(check["passed"] == true, name << ": " << detail);
      passed += check["passed"] == true ? 1 : 0;
      summary += "\n  " + name + " " + std::to_string(check["elapsed_ms"].get<long long>()) +
                 " ms" + (detail.empty() ? "" : " (" + detail + ")");
    }
    summary = type + " (" + what + "): " + std::to_string(passed) + "/" +
              std::to_string(check_count) + " checks passed" + summary;
  }
  MESSAGE(summary);
}

// Both passes every configuration gets: the default limits, and a 1 ms
// freeze deadline. On an idle server these writers freeze well within the
// default 250 ms, so without the second pass freeze_deadline would never see
// a stop token fire in the middle of a database writer's freeze.
void expect_conformance(const std::string& type, const nlohmann::json& options,
                        const std::string& what) {
  expect_all_checks_pass(type, options, what);
  expect_all_checks_pass(type, options, what + ", freeze cut short after 1 ms",
                         {"--short-deadline-ms", "1"});
}

// A database file with a table and some rows, in `journal_mode`.
fs::path make_sqlite_db(const fs::path& path, const std::string& journal_mode) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                          nullptr) == SQLITE_OK);
  const std::string sql = "PRAGMA journal_mode=" + journal_mode +
                          "; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"
                          " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n"
                          " WHERE i<100) INSERT INTO t(v) SELECT hex(randomblob(32)) FROM n;";
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  const std::string message = error != nullptr ? error : "";
  sqlite3_free(error);
  sqlite3_close_v2(db);
  REQUIRE_MESSAGE(rc == SQLITE_OK, path.string() << ": " << message);
  return path;
}

// The PostgreSQL and MariaDB fixtures run their servers as another OS user.
bool skip_unless_root(const char* why) {
  if (::geteuid() != 0) {
    MESSAGE("skipped: " << why);
    return true;
  }
  return false;
}

// A Unix-socket proxy in front of a server that holds back, for `delay`,
// the server's answer to the first request containing `marker`: the server
// has carried the command out, but the client's deadline passes before it
// hears so. One thread per connection; stopped and joined on destruction.
class AnswerDelayingProxy {
 public:
  AnswerDelayingProxy(const std::string& upstream, const fs::path& path, std::string marker,
                      std::chrono::milliseconds delay)
      : upstream_(address_of(upstream)), path_(path.string()), marker_(std::move(marker)),
        delay_(delay) {
    listener_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(listener_ >= 0);
    const auto address = address_of(path_);
    REQUIRE(::bind(listener_, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
    REQUIRE(::listen(listener_, 16) == 0);
    threads_.emplace_back([this] { accept_loop(); });
  }
  ~AnswerDelayingProxy() {
    stop_ = true;
    for (auto& thread : threads_) {
      thread.join();
    }
    ::close(listener_);
  }
  AnswerDelayingProxy(const AnswerDelayingProxy&) = delete;
  AnswerDelayingProxy& operator=(const AnswerDelayingProxy&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] bool delayed() const { return delayed_; }

 private:
  static sockaddr_un address_of(const std::string& path) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    REQUIRE(path.size() < sizeof address.sun_path);
    std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
    return address;
  }

  void accept_loop() {
    std::vector<std::thread> connections;
    while (!stop_) {
      pollfd pfd{listener_, POLLIN, 0};
      if (::poll(&pfd, 1, 20) <= 0) {
        continue;
      }
      const int client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) {
        continue;
      }
      const int server = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (server < 0 ||
          ::connect(server, reinterpret_cast<const sockaddr*>(&upstream_), sizeof upstream_) != 0) {
        ::close(client);
        if (server >= 0) {
          ::close(server);
        }
        continue;
      }
      connections.emplace_back([this, client, server] { relay(client, server); });
    }
    for (auto& connection : connections) {
      connection.join();
    }
  }

  void relay(int client, int server) {
    bool hold_next_answer = false;
    char buffer[65536];
    while (!stop_) {
      pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      if (::poll(fds, 2, 20) <= 0) {
        continue;
      }
      if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const auto n = ::read(client, buffer, sizeof buffer);
        if (n <= 0 || ::write(server, buffer, static_cast<std::size_t>(n)) != n) {
          break;
        }
        if (!delayed_ && std::string_view(buffer, static_cast<std::size_t>(n)).find(marker_) !=
                             std::string_view::npos) {
          hold_next_answer = true;
          delayed_ = true;
        }
      }
      if ((fds[1].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const auto n = ::read(server, buffer, sizeof buffer);
        if (hold_next_answer) {
          std::this_thread::sleep_for(delay_);
          hold_next_answer = false;
        }
        if (n <= 0 || ::write(client, buffer, static_cast<std::size_t>(n)) != n) {
          break;
        }
      }
    }
    ::close(client);
    ::close(server);
  }

  sockaddr_un upstream_;
  std::string path_;
  std::string marker_;
  std::chrono::milliseconds delay_;
  int listener_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<bool> delayed_{false};
  std::vector<std::thread> threads_;
};

std::unique_ptr<quiesce::Writer> make_redis_writer(const nlohmann::json& options) {
  quiesce::WriterRegistry registry;
  quiesce::writers::register_redis_writer(registry);
  const auto* type = registry.find("redis");
  REQUIRE(type != nullptr);
  quiesce::WriterSpec spec{.type = "redis", .name = "cache", .level = type->default_level,
                           .options = options};
  return type->create(spec, quiesce::WriterEnvironment{});
}

quiesce::PhaseContext redis_context(std::chrono::milliseconds timeout) {
  quiesce::PhaseContext ctx;
  ctx.session_id = "cut-short";
  ctx.deadline = quiesce::Clock::now() + timeout;
  ctx.hold_deadline = quiesce::Clock::now() + 20s;
  return ctx;
}

}  // namespace

TEST_CASE("conformance: the sqlite writer passes quiesce-writer-check (WAL and rollback journal)") {
  quiesce::test::TempDir dir("conformance-sqlite");
  const auto wal = make_sqlite_db(dir / "wal.db", "wal");
  const auto rollback = make_sqlite_db(dir / "rollback.db", "delete");
  expect_conformance("sqlite", {{"databases", {wal.string(), rollback.string()}}},
                     "a WAL and a rollback-journal database");
}

TEST_CASE("conformance: the postgres writer passes quiesce-writer-check (superuser and least-privilege role)") {
  if (skip_unless_root("PostgreSQL fixtures need root (runuser to the postgres user)")) {
    return;
  }
  namespace pg = quiesce::test::postgres;
  quiesce::test::TempDir dir("conformance-pg");
  pg::open_for_traversal(dir.path());
  pg::PostgresServer server(dir / "data", dir / "sock", dir / "server.log");
  server.init();
  server.start();
  {
    pg::PgSession admin(server);
    REQUIRE_MESSAGE(admin.ok(), admin.error());
    admin.exec("CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 10000)");
    // The dedicated role docs/writers/postgres.md recommends (no
    // pg_checkpoint: pg_backup_start does the checkpoint).
    admin.exec("CREATE ROLE quiesce LOGIN PASSWORD 'quiesce-pw'; "
               "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO quiesce; "
               "GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO quiesce; "
               "GRANT pg_read_all_settings TO quiesce");
  }
  auto options = [&](const std::string& user, const std::string& password) {
    const auto file = dir / ("pw-" + user);
    std::ofstream(file) << password << "\n";
    return nlohmann::json{{"host", server.socket_dir().string()},
                          {"port", server.port()},
                          {"user", user},
                          {"dbname", "postgres"},
                          {"password_file", file.string()},
                          {"connect_timeout_ms", 3000}};
  };
  expect_conformance("postgres", options("postgres", pg::superuser_password), "superuser");
  expect_conformance("postgres", options("quiesce", "quiesce-pw"), "least-privilege role");
}

TEST_CASE("conformance: the mariadb writer passes quiesce-writer-check (BACKUP STAGE as root - FLUSH TABLES WITH READ LOCK as a least-privilege user)") {
  if (skip_unless_root("MariaDB fixtures need root (mariadbd --user=mysql, chown)")) {
    return;
  }
  namespace mdb = quiesce::test::mariadb;
  quiesce::test::TempDir dir("conformance-mariadb");
  mdb::open_for_traversal(dir.path());
  mdb::MariadbServer server(dir / "work", dir / "data");
  server.init();
  server.start();  // with the binary log, so freeze reads a binlog position too
  {
    mdb::MariadbSession admin(server);
    REQUIRE_MESSAGE(admin.ok(), admin.error());
    admin.exec("CREATE DATABASE qt");
    admin.exec("CREATE TABLE qt.t(id bigint AUTO_INCREMENT PRIMARY KEY, v int) ENGINE=InnoDB");
    admin.exec("INSERT INTO qt.t(v) VALUES (1), (2), (3)");
    // The dedicated account docs/writers/mariadb.md recommends.
    mdb::create_user(admin, "quiesce", "quiesce-pw", "RELOAD, BINLOG MONITOR");
  }
  auto options = [&](const std::string& user, const std::string& password,
                     const std::string& method) {
    const auto file = dir / ("pw-" + user);
    std::ofstream(file) << password << "\n";
    return nlohmann::json{{"socket", server.socket()},
                          {"user", user},
                          {"password_file", file.string()},
                          {"connect_timeout_ms", 3000},
                          {"method", method}};
  };
  expect_conformance("mariadb", options("root", mdb::superuser_password, "backup_stage"),
                     "BACKUP STAGE, root");
  expect_conformance("mariadb", options("quiesce", "quiesce-pw", "flush_tables"),
                     "FLUSH TABLES WITH READ LOCK, RELOAD and BINLOG MONITOR only");
  // Every check let go of its lock: a commit goes through at once.
  mdb::MariadbSession admin(server, "root", mdb::superuser_password, std::chrono::seconds(5));
  REQUIRE_MESSAGE(admin.ok(), admin.error());
  CHECK(admin.try_exec("INSERT INTO qt.t(v) VALUES (4)").empty());
}

TEST_CASE("conformance: the redis writer passes quiesce-writer-check (RDB - and AOF holding writes)") {
  if (!quiesce::test::redis_server_available()) {
    MESSAGE("redis-server is not installed; skipping");
    return;
  }
  {
    quiesce::test::TempDir dir("conformance-redis-rdb");
    quiesce::test::RedisServer server(dir.path(), dir / "data");
    {
      quiesce::test::RedisClient client(server.socket());
      REQUIRE(client.command({"SET", "k", "v"}) == "OK");
    }
    expect_conformance("redis", {{"socket", server.socket()}}, "RDB, BGSAVE at freeze");
    CHECK(server.running());
  }
  {
    quiesce::test::TempDir dir("conformance-redis-aof");
    quiesce::test::RedisServerOptions aof;
    aof.aof = true;
    aof.appendfsync = "everysec";
    quiesce::test::RedisServer server(dir.path(), dir / "data", aof);
    expect_conformance("redis", {{"socket", server.socket()}, {"hold_writes", true}},
                       "AOF, appendfsync always and CLIENT PAUSE WRITE for the hold");
    // Every check released what it held: writes go through, appendfsync is back.
    quiesce::test::RedisClient client(server.socket(), std::chrono::seconds(2));
    CHECK(client.command({"SET", "after", "1"}) == "OK");
    CHECK(client.command({"CONFIG", "GET", "appendfsync"}) == "appendfsync\neverysec");
  }
}

// What freeze_deadline cannot see from outside: a freeze whose deadline
// passes after the server carried out its CLIENT PAUSE or CONFIG SET, but
// before the answer came back, must still leave nothing behind once the
// freeze has failed and abort has run.
TEST_CASE("conformance: a redis freeze cut short with its CLIENT PAUSE or CONFIG SET unanswered leaves nothing behind") {
  if (!quiesce::test::redis_server_available()) {
    MESSAGE("redis-server is not installed; skipping");
    return;
  }
  quiesce::test::TempDir dir("conformance-redis-cut");
  quiesce::test::RedisServerOptions aof;
  aof.aof = true;
  aof.appendfsync = "everysec";
  quiesce::test::RedisServer server(dir.path(), dir / "data", aof);
  quiesce::test::RedisClient client(server.socket(), 2s);

  SUBCASE("CLIENT PAUSE WRITE answered after the deadline") {
    AnswerDelayingProxy proxy(server.socket(), dir / "proxy.sock", "\r\nPAUSE\r\n", 600ms);
    auto writer = make_redis_writer({{"socket", proxy.path()}, {"hold_writes", true}});
    REQUIRE(writer->prepare(redis_context(5s)).is_ok());
    auto status = writer->freeze(redis_context(200ms));
    REQUIRE(proxy.delayed());
    CHECK(!status.is_ok());
    CHECK(writer->abort(redis_context(5s)).is_ok());
    // The server is not left refusing writes until the pause lapses.
    CHECK(client.command({"SET", "after-abort", "1"}) == "OK");
  }
  SUBCASE("CONFIG SET appendfsync always answered after the deadline") {
    AnswerDelayingProxy proxy(server.socket(), dir / "proxy.sock", "\r\nalways\r\n", 600ms);
    auto writer = make_redis_writer({{"socket", proxy.path()}});
    REQUIRE(writer->prepare(redis_context(5s)).is_ok());
    auto status = writer->freeze(redis_context(200ms));
    REQUIRE(proxy.delayed());
    CHECK(!status.is_ok());
    CHECK(writer->abort(redis_context(5s)).is_ok());
    // The setting freeze changed is back, not left at always for good.
    CHECK(client.command({"CONFIG", "GET", "appendfsync"}) == "appendfsync\neverysec");
  }
}

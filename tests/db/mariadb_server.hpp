#pragma once
// MariaDB fixtures for the db tests: a server made with mariadb-install-db in
// a temp dir and run in the foreground as a child of the test (mariadbd
// --no-defaults, so no /etc/mysql file leaks in), listening only on a private
// Unix socket (--skip-networking), with its own pid file, error log and
// tmpdir; and a small blocking libmariadb session for the test's own SQL.
//
// The server runs as the `mysql` OS user, as packaged servers do: the test
// (root) starts mariadbd with --user=mysql and mariadbd drops to it before
// touching any file, so ownership and permissions on the data directory are
// those of a real installation (a restored copy must be given back to mysql,
// as an admin would have to). --user=root would have needed no chown but
// would test a setup nobody should run.
//
// root@localhost gets superuser_password (and no unix_socket auth), so a
// wrong password is really refused even though the test process is OS root.
//
// Everything is stopped or killed in the destructors, even when a test fails
// half-way. Everything here needs root: tests check geteuid() and skip.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/processes.hpp"

struct st_mysql;

namespace quiesce::test::mariadb {

inline constexpr const char* superuser_password = "quiesce-test-secret";

// Gives a path to the mysql OS user (chown -R).
void give_to_mysql(const std::filesystem::path& path);
// Lets the mysql user through a root-owned temp dir (mkdtemp makes 0700).
void open_for_traversal(const std::filesystem::path& path);

struct MariadbOptions {
  // --log-bin=mariadb-bin (in the data directory) and --server-id=1.
  bool log_bin = true;
  // More server options, as on mariadbd's command line ("--sync-binlog=1").
  std::vector<std::string> settings;
};

class MariadbServer {
 public:
  // The data directory is `data_dir` (created, or reused for a restored
  // copy); the socket, pid file, error log and tmpdir live in `work_dir`.
  MariadbServer(std::filesystem::path work_dir, std::filesystem::path data_dir);
  // Stops the server cleanly (bounded), then kills whatever is left.
  ~MariadbServer();
  MariadbServer(const MariadbServer&) = delete;
  MariadbServer& operator=(const MariadbServer&) = delete;

  // mariadb-install-db --no-defaults into data_dir; root@localhost gets
  // superuser_password on the next start.
  void init();
  // Starts mariadbd and waits (bounded) until it accepts connections.
  // REQUIREs that it came up, with the error log in the message.
  void start(const MariadbOptions& options = {});
  // Starts, returning false (and the error log) instead of failing the test.
  [[nodiscard]] bool try_start(const MariadbOptions& options, std::string& log_tail);
  // SIGTERM: a clean shutdown; REQUIREs that it ends within a minute.
  void stop();
  // SIGKILL, as if the server crashed.
  void kill_now();
  [[nodiscard]] bool running() const;

  [[nodiscard]] const std::filesystem::path& data_dir() const { return data_dir_; }
  [[nodiscard]] const std::filesystem::path& work_dir() const { return work_dir_; }
  [[nodiscard]] std::string socket() const { return (work_dir_ / "mysqld.sock").string(); }
  [[nodiscard]] std::filesystem::path error_log() const { return work_dir_ / "error.log"; }
  // The error log's last 4000 characters (plus the server's stdout/stderr).
  [[nodiscard]] std::string log_text() const;

 private:
  [[nodiscard]] bool accepts_connections() const;

  std::filesystem::path work_dir_;
  std::filesystem::path data_dir_;
  std::unique_ptr<ChildProcess> process_;
  bool needs_root_password_ = false;
};

// A blocking libmariadb session (mysql_real_connect on the server's socket)
// for test setup and checks. Multi-statement SQL is allowed in exec/try_exec.
class MariadbSession {
 public:
  MariadbSession(const MariadbServer& server, const std::string& user = "root",
                 const std::string& password = superuser_password,
                 std::chrono::seconds read_timeout = std::chrono::seconds(60));
  MariadbSession(const std::string& socket, const std::string& user, const std::string& password,
                 std::chrono::seconds read_timeout = std::chrono::seconds(60));
  ~MariadbSession();
  MariadbSession(const MariadbSession&) = delete;
  MariadbSession& operator=(const MariadbSession&) = delete;

  [[nodiscard]] bool ok() const;
  // The connect error, or the last statement's.
  [[nodiscard]] std::string error() const;
  [[nodiscard]] unsigned error_code() const;
  // The server's id for this connection (for KILL).
  [[nodiscard]] unsigned long connection_id() const;

  // Runs SQL; REQUIREs success.
  void exec(const std::string& sql);
  // Runs SQL; returns "" on success, the error message otherwise.
  [[nodiscard]] std::string try_exec(const std::string& sql);
  // Every row of the (first) result; NULL comes back as "NULL". REQUIREs success.
  [[nodiscard]] std::vector<std::vector<std::string>> rows(const std::string& sql);
  // The first column of every row.
  [[nodiscard]] std::vector<std::string> column(const std::string& sql);
  // The first column of the first row.
  [[nodiscard]] std::string value(const std::string& sql);

 private:
  // Runs SQL and collects the first result's rows; "" or the error.
  std::string run(const std::string& sql, std::vector<std::vector<std::string>>* out);

  st_mysql* mysql_ = nullptr;
  bool connected_ = false;
  std::string connect_error_;
};

// CREATE USER '<user>'@'localhost' IDENTIFIED BY '<password>' and, unless
// `grants` is empty, GRANT <grants> ON *.* TO it ("RELOAD, BINLOG MONITOR").
void create_user(MariadbSession& admin, const std::string& user, const std::string& password,
                 const std::string& grants = "");

}  // namespace quiesce::test::mariadb

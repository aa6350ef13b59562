#pragma once
// PostgreSQL fixtures for the db tests: a cluster made with initdb in a temp
// dir, listening only on a private Unix socket directory, run as the
// `postgres` OS user (the server refuses to run as root); a small blocking
// libpq session for the test's own SQL; and loop-mounted ext4 images for the
// restore test. Everything is stopped, killed, unmounted and detached in the
// destructors, even when a test fails half-way.
//
// Everything here needs root (runuser, losetup, mount): tests check geteuid()
// themselves and skip with a message.

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

struct pg_conn;

namespace quiesce::test::postgres {

inline constexpr const char* superuser_password = "quiesce-test-secret";

// Runs a command as the postgres OS user; returns the exit code.
int run_as_postgres(const std::vector<std::string>& argv, std::string* output = nullptr);
// Gives a path to the postgres user (chown -R).
void give_to_postgres(const std::filesystem::path& path);
// Lets the postgres user through a root-owned temp dir (mkdtemp makes 0700).
void open_for_traversal(const std::filesystem::path& path);

class PostgresServer {
 public:
  // `data_dir` is created (or reused, for a restored copy); the socket lives in
  // `socket_dir`; the server log goes to `log_file`.
  PostgresServer(std::filesystem::path data_dir, std::filesystem::path socket_dir,
                 std::filesystem::path log_file);
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // initdb with scram-sha-256 for every connection and the superuser
  // `postgres` with superuser_password.
  void init();
  // pg_ctl -w start with listen_addresses='' and the private socket; `settings`
  // are extra "name=value" server settings. REQUIREs that it came up.
  void start(const std::vector<std::string>& settings = {});
  // Starts, returning false (and the log) instead of failing the test.
  [[nodiscard]] bool try_start(const std::vector<std::string>& settings, std::string& log_tail);
  // pg_ctl stop -m immediate: every backend dies at once, as in a crash.
  void stop_immediate();
  // SIGKILL to the postmaster and whatever is left of its process group.
  void kill_now();

  [[nodiscard]] const std::filesystem::path& data_dir() const { return data_dir_; }
  [[nodiscard]] const std::filesystem::path& socket_dir() const { return socket_dir_; }
  [[nodiscard]] int port() const { return 5432; }
  [[nodiscard]] std::string log_text() const;

 private:
  [[nodiscard]] std::optional<pid_t> postmaster_pid() const;

  std::filesystem::path data_dir_;
  std::filesystem::path socket_dir_;
  std::filesystem::path log_file_;
  bool started_ = false;
};

// A blocking libpq session for test setup and checks.
class PgSession {
 public:
  PgSession(const PostgresServer& server, const std::string& user = "postgres",
            const std::string& password = superuser_password, const std::string& dbname = "postgres");
  ~PgSession();
  PgSession(const PgSession&) = delete;
  PgSession& operator=(const PgSession&) = delete;

  [[nodiscard]] bool ok() const;
  [[nodiscard]] std::string error() const;
  // Runs SQL; REQUIREs success.
  void exec(const std::string& sql);
  // Runs SQL; returns "" on success, the error message otherwise.
  [[nodiscard]] std::string try_exec(const std::string& sql);
  // The first column of every row (REQUIREs success).
  [[nodiscard]] std::vector<std::string> column(const std::string& sql);
  [[nodiscard]] std::string value(const std::string& sql);

 private:
  pg_conn* conn_ = nullptr;
};

}  // namespace quiesce::test::postgres

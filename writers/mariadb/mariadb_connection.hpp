#pragma once
// One libmariadb (Connector/C) connection as the mariadb writer uses it:
// connected and queried with the non-blocking API (mysql_*_start/_cont,
// waiting in poll() on the connection's socket), so that a writer call's
// deadline and stop token cut any wait short. A wait cut short kills the
// statement's connection on the server from a second connection: a lock
// request left waiting server-side (FLUSH TABLES WITH READ LOCK behind a
// long query) would otherwise keep blocking every writer of the database.
// Failures become Status values whose class and message tell an admin what
// to do.

#include <chrono>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "quiesce/status.hpp"
#include "quiesce/text_rows.hpp"
#include "quiesce/writer.hpp"

struct st_mysql;

namespace quiesce::writers::mariadb {

// Where and as whom to connect. The password is read from a file when the
// writer is created and only ever handed to libmariadb.
struct ConnectParams {
  std::string socket = "/run/mysqld/mysqld.sock";  // used when host is empty
  std::string host;                                // TCP
  int port = 3306;
  std::string user = "root";
  std::optional<std::string> password;
  std::chrono::milliseconds connect_timeout{5000};

  // "socket /run/mysqld/mysqld.sock" or "host db.local port 3306", for messages.
  [[nodiscard]] std::string describe() const;
};

// How long one call may wait: the writer call's deadline and stop token.
using Budget = CallBudget;
using Row = TextRow;

// What a failed statement said, for the caller to classify further.
struct ServerError {
  unsigned int code = 0;  // ER_* or CR_* number; 0 when not the server's answer
  std::string sqlstate;
  std::string message;
};

// Classifies an error by its number. `grant_hint` is appended to a
// missing-privilege message (ER_SPECIFIC_ACCESS_DENIED_ERROR and friends).
[[nodiscard]] Status classify_error(const std::string& where, std::string_view action,
                                    const ServerError& error, std::string_view grant_hint = {});

class Connection {
 public:
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Connects, waiting at most connect_timeout and the budget.
  [[nodiscard]] static Status open(const ConnectParams& params, const std::string& where,
                                   const Budget& budget, std::unique_ptr<Connection>& out);

  // Runs one statement and collects its rows (if it returns any). A server
  // error fills `error` (when given) and is classified with `grant_hint`.
  // A statement interrupted by the budget kills this connection on the
  // server and closes it.
  [[nodiscard]] Status query(std::string_view action, const std::string& sql,
                             const Budget& budget, std::vector<Row>& rows,
                             std::string_view grant_hint = {}, ServerError* error = nullptr);

  // True until the connection was closed or found lost (no round trip).
  [[nodiscard]] bool ok() const { return mysql_ != nullptr && !lost_; }
  // The server's id for this connection (CONNECTION_ID()).
  [[nodiscard]] unsigned long thread_id() const { return thread_id_; }
  // 100411 for 10.4.11; 80036 for MySQL 8.0.36.
  [[nodiscard]] unsigned long server_version() const { return server_version_; }
  // "10.11.6-MariaDB-0+deb12u1"
  [[nodiscard]] const std::string& server_info() const { return server_info_; }
  [[nodiscard]] bool is_mariadb() const;
  // Why the connection was lost, when it was.
  [[nodiscard]] const std::string& lost_reason() const { return lost_reason_; }

 private:
  Connection(st_mysql* mysql, ConnectParams params, std::string where);
  // Drives one non-blocking call: `status` is what _start returned; `step`
  // calls the matching _cont. Returns "" when the call completed.
  template <typename Step>
  std::string drive(int status, const Budget& budget, Step&& step);
  // Kills this connection on the server from a second connection, then
  // closes it here; used when a statement must not be left running.
  void kill_and_close();
  void close();

  st_mysql* mysql_;
  ConnectParams params_;
  std::string where_;  // "mariadb writer 'db'" for messages
  unsigned long thread_id_ = 0;
  unsigned long server_version_ = 0;
  std::string server_info_;
  bool lost_ = false;
  std::string lost_reason_;
};

}  // namespace quiesce::writers::mariadb

#pragma once
// One libpq connection as the postgres writer uses it: connected and queried
// without blocking (PQconnectStartParams / PQsendQueryParams, waiting in
// poll() on the connection's socket), so that a writer call's deadline and
// stop token cut any wait short; a wait cut short cancels the statement on
// the server (PQcancel) and drops the connection. Failures become Status
// values whose class and message tell an admin what to do.

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "quiesce/status.hpp"
#include "quiesce/text_rows.hpp"
#include "quiesce/writer.hpp"

struct pg_conn;

namespace quiesce::writers::postgres {

// Where and as whom to connect. The password is read from a file when the
// writer is created and only ever handed to libpq.
struct ConnectParams {
  std::string host = "/var/run/postgresql";  // socket directory or host name
  int port = 5432;
  std::string user = "postgres";
  std::string dbname = "postgres";
  std::optional<std::string> password;
  std::chrono::milliseconds connect_timeout{5000};
};

// How long one call may wait: the writer call's deadline and stop token.
using Budget = CallBudget;
using Row = TextRow;

// What a failed statement said, for the caller to classify further
// (a missing privilege needs a GRANT that depends on the statement).
struct ServerError {
  std::string sqlstate;  // "42501"; empty when the failure was not the server's answer
  std::string message;
};

// Classifies a connection failure message from libpq.
[[nodiscard]] Status classify_connect_error(const std::string& where, std::string_view message);
// Classifies a failed statement by its SQLSTATE. `grant_hint` is appended
// to a missing-privilege (42501) message.
[[nodiscard]] Status classify_statement_error(const std::string& where, std::string_view action,
                                              const ServerError& error,
                                              std::string_view grant_hint);

class Connection {
 public:
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Connects, waiting at most connect_timeout and the budget.
  [[nodiscard]] static Status open(const ConnectParams& params, const std::string& where,
                                   const Budget& budget, std::unique_ptr<Connection>& out);

  // Runs one statement with text parameters and collects its rows. On a
  // server error `error` (when given) receives the SQLSTATE and message and
  // the Status is classified with `grant_hint`.
  [[nodiscard]] Status query(std::string_view action, const std::string& sql,
                             const std::vector<std::string>& params, const Budget& budget,
                             std::vector<Row>& rows, std::string_view grant_hint = {},
                             ServerError* error = nullptr);

  // True while libpq thinks the connection is up (no round trip).
  [[nodiscard]] bool ok() const;
  // Like ok(), but first reads whatever the server sent while the session
  // was idle, without waiting: a backend that was terminated or a server
  // that went down has sent its FATAL and closed the socket, and that shows
  // here. No round trip, so it costs microseconds (used inside the hold).
  [[nodiscard]] bool still_open();
  // The backend's process id (pg_backend_pid()), 0 when unknown.
  [[nodiscard]] int backend_pid() const;
  [[nodiscard]] int server_version() const;
  // Why the connection was lost, when it was.
  [[nodiscard]] std::string error_message() const;

 private:
  Connection(pg_conn* conn, std::string where);
  // Waits until the socket is readable (and/or writable), the budget runs
  // out, or the stop token fires. Returns "" when ready, otherwise why not.
  [[nodiscard]] std::string wait_socket(bool read, bool write, const Budget& budget,
                                        Clock::time_point deadline) const;
  void cancel_and_drop();

  pg_conn* conn_;
  std::string where_;  // "postgres writer 'db'" for messages
};

}  // namespace quiesce::writers::postgres

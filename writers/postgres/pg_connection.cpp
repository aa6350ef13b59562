#include "writers/postgres/pg_connection.hpp"

#include <algorithm>

#include <poll.h>

#include "platform/linux/socket_wait.hpp"
#include "writers/postgres/libpq_api.hpp"

namespace quiesce::writers::postgres {

namespace {

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

// libpq messages end with a newline (and sometimes carry a second line).
std::string tidy(std::string_view message) {
  std::string out(message);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) {
    out.pop_back();
  }
  std::replace(out.begin(), out.end(), '\n', ' ');
  return out;
}

}  // namespace

Status classify_connect_error(const std::string& where, std::string_view raw) {
  const std::string message = tidy(raw);
  const std::string prefix = where + ": could not connect: " + message;
  if (contains(message, "password authentication failed") ||
      contains(message, "authentication failed") || contains(message, "no password supplied") ||
      contains(message, "pg_hba.conf")) {
    return Status::non_retryable(prefix +
                                 " -- authentication failed: check options.user, the password "
                                 "in options.password_file and the server's pg_hba.conf");
  }
  if (contains(message, "does not exist")) {
    return Status::non_retryable(prefix + " -- fix options.user / options.dbname");
  }
  if (contains(message, "Permission denied")) {
    return Status::non_retryable(prefix +
                                 " -- the agent may not use the server's socket directory");
  }
  // Refused, no socket yet, starting up or shutting down, too many clients,
  // network trouble: a later attempt may well succeed.
  return Status::retryable(prefix + " -- is the server running? retry once it accepts connections");
}

Status classify_statement_error(const std::string& where, std::string_view action,
                                const ServerError& error, std::string_view grant_hint) {
  std::string message = where + ": could not " + std::string(action) + ": " + error.message;
  if (!error.sqlstate.empty()) {
    message += " (SQLSTATE " + error.sqlstate + ")";
  }
  const std::string& state = error.sqlstate;
  if (state == "42501") {
    if (!grant_hint.empty()) {
      message += "; missing privilege, as a superuser run: " + std::string(grant_hint);
    }
    return Status::non_retryable(message);
  }
  if (state == "57014") {
    return Status::timeout(message);
  }
  const std::string_view class_code = std::string_view(state).substr(0, std::min<std::size_t>(2, state.size()));
  if (state.empty() || class_code == "08" || class_code == "53" || class_code == "40" ||
      state == "57P01" || state == "57P02" || state == "57P03" || state == "55P03" ||
      state == "55006") {
    return Status::retryable(message);
  }
  return Status::non_retryable(message);
}

Connection::Connection(pg_conn* conn, std::string where) : conn_(conn), where_(std::move(where)) {}

Connection::~Connection() {
  if (conn_ != nullptr) {
    libpq().PQfinish(conn_);
  }
}

Status Connection::open(const ConnectParams& params, const std::string& where,
                        const Budget& budget, std::unique_ptr<Connection>& out) {
  const LibpqApi& pq = libpq();
  const std::string port = std::to_string(params.port);
  if (auto why = budget.spent(); !why.empty()) {
    return Status::timeout(where + ": could not connect to " + params.host + " port " + port +
                           ": " + why);
  }
  std::vector<const char*> keys{"host", "port", "user", "dbname", "application_name"};
  std::vector<const char*> values{params.host.c_str(), port.c_str(), params.user.c_str(),
                                  params.dbname.c_str(), "quiesce-agent"};
  if (params.password) {
    keys.push_back("password");
    values.push_back(params.password->c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  pg_conn* raw = pq.PQconnectStartParams(keys.data(), values.data(), 0);
  if (raw == nullptr) {
    return Status::retryable(where + ": could not connect: libpq is out of memory");
  }
  std::unique_ptr<Connection> connection(new Connection(raw, where));
  // libpq prints server notices (a dying backend's "aborting backup")
  // to stderr by default; the agent must not write anywhere uncontrolled
  // while frozen, and the writer reports what those notices say itself.
  pq.PQsetNoticeProcessor(raw, [](void*, const char*) {}, nullptr);
  if (pq.PQstatus(raw) == CONNECTION_BAD) {
    return classify_connect_error(where, pq.PQerrorMessage(raw));
  }
  const auto started = Clock::now();
  const auto connect_deadline = started + params.connect_timeout;
  const auto deadline = std::min(budget.deadline, connect_deadline);
  PostgresPollingStatusType state = PGRES_POLLING_WRITING;
  while (state != PGRES_POLLING_OK) {
    if (state == PGRES_POLLING_FAILED) {
      return classify_connect_error(where, pq.PQerrorMessage(raw));
    }
    auto why = connection->wait_socket(state == PGRES_POLLING_READING,
                                       state == PGRES_POLLING_WRITING, budget, deadline);
    if (!why.empty()) {
      const std::string text = where + ": could not connect to " + params.host + " port " + port +
                               ": " + why;
      if (budget.stop.stop_requested() || Clock::now() >= budget.deadline) {
        return Status::timeout(text);
      }
      return Status::retryable(text + " (options.connect_timeout_ms = " +
                               std::to_string(params.connect_timeout.count()) + ")");
    }
    state = pq.PQconnectPoll(raw);
  }
  if (pq.PQsetnonblocking(raw, 1) != 0) {
    return Status::retryable(where + ": could not switch the connection to non-blocking mode: " +
                             tidy(pq.PQerrorMessage(raw)));
  }
  out = std::move(connection);
  return Status::ok();
}

std::string Connection::wait_socket(bool read, bool write, const Budget& budget,
                                    Clock::time_point deadline) const {
  return platform::wait_socket(libpq().PQsocket(conn_), {.read = read, .write = write},
                               deadline, budget.stop);
}

void Connection::cancel_and_drop() {
  const LibpqApi& pq = libpq();
  if (conn_ == nullptr) {
    return;
  }
  // Ask the server to stop the statement, then drop the session: whatever
  // the statement had started (a backup) ends with it.
  if (PGcancel* cancel = pq.PQgetCancel(conn_)) {
    char ignored[256];
    (void)pq.PQcancel(cancel, ignored, sizeof ignored);
    pq.PQfreeCancel(cancel);
  }
  pq.PQfinish(conn_);
  conn_ = nullptr;
}

Status Connection::query(std::string_view action, const std::string& sql,
                         const std::vector<std::string>& params, const Budget& budget,
                         std::vector<Row>& rows, std::string_view grant_hint,
                         ServerError* error) {
  const LibpqApi& pq = libpq();
  rows.clear();
  const std::string prefix = where_ + ": could not " + std::string(action) + ": ";
  if (auto why = budget.spent(); !why.empty()) {
    return Status::timeout(prefix + why);
  }
  if (!ok()) {
    return Status::retryable(prefix + "the connection is closed" +
                             (conn_ != nullptr ? " (" + tidy(pq.PQerrorMessage(conn_)) + ")" : ""));
  }
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& param : params) {
    values.push_back(param.c_str());
  }
  if (pq.PQsendQueryParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr,
                        values.data(), nullptr, nullptr, 0) == 0) {
    return Status::retryable(prefix + "the connection was lost: " + tidy(pq.PQerrorMessage(conn_)));
  }
  auto interrupted = [&](const std::string& why) {
    cancel_and_drop();
    return Status::timeout(prefix + why + "; the statement was cancelled and the session closed");
  };
  // In non-blocking mode a statement may not fit the socket buffer at once.
  for (;;) {
    const int flushed = pq.PQflush(conn_);
    if (flushed == 0) {
      break;
    }
    if (flushed < 0) {
      return Status::retryable(prefix + "the connection was lost: " +
                               tidy(pq.PQerrorMessage(conn_)));
    }
    if (auto why = wait_socket(true, true, budget, budget.deadline); !why.empty()) {
      return interrupted(why);
    }
    if (pq.PQconsumeInput(conn_) == 0) {
      return Status::retryable(prefix + "the connection was lost: " +
                               tidy(pq.PQerrorMessage(conn_)));
    }
  }
  ServerError first;
  bool failed = false;
  for (;;) {
    while (pq.PQisBusy(conn_) != 0) {
      if (auto why = wait_socket(true, false, budget, budget.deadline); !why.empty()) {
        return interrupted(why);
      }
      if (pq.PQconsumeInput(conn_) == 0) {
        failed = true;
        first = {"", "the connection was lost: " + tidy(pq.PQerrorMessage(conn_))};
        break;
      }
    }
    if (failed && first.sqlstate.empty() && pq.PQstatus(conn_) == CONNECTION_BAD) {
      break;
    }
    PGresult* result = pq.PQgetResult(conn_);
    if (result == nullptr) {
      break;
    }
    const auto status = pq.PQresultStatus(result);
    if (status == PGRES_TUPLES_OK) {
      const int columns = pq.PQnfields(result);
      for (int r = 0; r < pq.PQntuples(result); ++r) {
        Row row;
        for (int c = 0; c < columns; ++c) {
          if (pq.PQgetisnull(result, r, c) != 0) {
            row.emplace_back(std::nullopt);
          } else {
            row.emplace_back(std::string(pq.PQgetvalue(result, r, c),
                                         static_cast<std::size_t>(pq.PQgetlength(result, r, c))));
          }
        }
        rows.push_back(std::move(row));
      }
    } else if (status != PGRES_COMMAND_OK && !failed) {
      failed = true;
      const char* state = pq.PQresultErrorField(result, PG_DIAG_SQLSTATE);
      const char* primary = pq.PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
      const char* hint = pq.PQresultErrorField(result, PG_DIAG_MESSAGE_HINT);
      first.sqlstate = state != nullptr ? state : "";
      first.message = primary != nullptr ? primary : tidy(pq.PQresultErrorMessage(result));
      if (hint != nullptr) {
        first.message += std::string(" (hint: ") + hint + ")";
      }
    }
    pq.PQclear(result);
    if (pq.PQstatus(conn_) == CONNECTION_BAD) {
      break;
    }
  }
  if (!failed) {
    return Status::ok();
  }
  if (error != nullptr) {
    *error = first;
  }
  return classify_statement_error(where_, action, first, grant_hint);
}

bool Connection::ok() const { return conn_ != nullptr && libpq().PQstatus(conn_) == CONNECTION_OK; }

bool Connection::still_open() {
  if (!ok()) {
    return false;
  }
  const auto& pq = libpq();
  pollfd pfd{.fd = pq.PQsocket(conn_), .events = POLLIN, .revents = 0};
  if (pfd.fd < 0) {
    return false;
  }
  // A terminated backend sends its FATAL and then closes: the first read
  // may return only the message, the next one the end of file. An idle
  // session otherwise gets nothing, so a few reads always suffice.
  for (int reads = 0; reads < 8 && ::poll(&pfd, 1, 0) > 0; ++reads) {
    if (pq.PQconsumeInput(conn_) == 0) {
      return false;  // end of file or a read error: the session is gone
    }
  }
  return pq.PQstatus(conn_) == CONNECTION_OK;
}

int Connection::backend_pid() const { return conn_ != nullptr ? libpq().PQbackendPID(conn_) : 0; }

int Connection::server_version() const {
  return conn_ != nullptr ? libpq().PQserverVersion(conn_) : 0;
}

std::string Connection::error_message() const {
  return conn_ != nullptr ? tidy(libpq().PQerrorMessage(conn_)) : "the connection was closed";
}

}  // namespace quiesce::writers::postgres

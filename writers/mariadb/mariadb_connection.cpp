#include "writers/mariadb/mariadb_connection.hpp"

#include <sys/socket.h>

#include <algorithm>

#include "platform/linux/socket_wait.hpp"
#include "writers/mariadb/libmariadb_api.hpp"

namespace quiesce::writers::mariadb {

namespace {

// Error numbers (mysqld_error.h / errmsg.h), named here so the
// classification below reads as a table.
enum : unsigned int {
  kDbAccessDenied = 1044,
  kAccessDenied = 1045,
  kUnknownDatabase = 1049,
  kServerShutdown = 1053,
  kConCount = 1040,
  kParseError = 1064,
  kHostBlocked = 1129,
  kHostNotAllowed = 1130,
  kTableAccessDenied = 1142,
  kColumnAccessDenied = 1143,
  kUnknownSystemVariable = 1193,
  kTooManyUserConnections = 1203,
  kLockWaitTimeout = 1205,
  kLockDeadlock = 1213,
  kSpecificAccessDenied = 1227,
  kNotSupportedAuthMode = 1251,
  kQueryInterrupted = 1317,
  kMustChangePassword = 1820,
  kAccountHasBeenLocked = 3118,
  kConnectionKilled = 1927,
  kStatementTimeout = 1969,
  kMysqlStatementTimeout = 3024,
  kAccessDeniedNoPassword = 1698,
  kClientErrorFirst = 2000,
  kSocketConnectFailed = 2002,
  kServerGone = 2006,
  kSslConnectionError = 2026,
  kServerLost = 2013,
  kAuthPluginCannotLoad = 2059,
  kServerLostExtended = 2055,
};

bool connection_lost(unsigned int code) {
  return code == kServerGone || code == kServerLost || code == kServerLostExtended ||
         code == kConnectionKilled || code == kServerShutdown;
}

// The wait bits a _start/_cont call asked for, handed back as "ready":
// libmariadb retries the I/O itself and suspends again if it was not.
constexpr int kIoBits = MYSQL_WAIT_READ | MYSQL_WAIT_WRITE | MYSQL_WAIT_EXCEPT;

}  // namespace

std::string ConnectParams::describe() const {
  return host.empty() ? "socket " + socket : "host " + host + " port " + std::to_string(port);
}

Status classify_error(const std::string& where, std::string_view action, const ServerError& error,
                      std::string_view grant_hint) {
  std::string message = where + ": could not " + std::string(action) + ": " + error.message;
  if (error.code != 0) {
    message += " (error " + std::to_string(error.code) +
               (error.sqlstate.empty() || error.sqlstate == "HY000" ? "" : ", SQLSTATE " + error.sqlstate) +
               ")";
  }
  switch (error.code) {
    case kAccessDenied:
    case kAccessDeniedNoPassword:
    case kNotSupportedAuthMode:
    case kAuthPluginCannotLoad:
    case kMustChangePassword:
    case kAccountHasBeenLocked:
      return Status::non_retryable(
          message + " -- authentication failed: check options.user and the password in "
                    "options.password_file (without a password file, the account must allow "
                    "unix_socket authentication as the agent's OS user, as Debian's root@localhost does)");
    case kHostNotAllowed:
      return Status::non_retryable(message + " -- the account may not connect from this host: "
                                             "create it for the host the agent connects from");
    case kHostBlocked:
      return Status::non_retryable(message + " -- run 'mariadb-admin flush-hosts' on the server");
    case kDbAccessDenied:
    case kUnknownDatabase:
      return Status::non_retryable(message);
    case kSpecificAccessDenied:
    case kTableAccessDenied:
    case kColumnAccessDenied:
      if (!grant_hint.empty()) {
        message += " -- missing privilege, as an administrator run: " + std::string(grant_hint);
      }
      return Status::non_retryable(message);
    case kParseError:
    case kUnknownSystemVariable:
      return Status::non_retryable(
          message + " -- the server does not support this statement: set options.method to one "
                    "it supports (see docs/writers/mariadb.md)");
    case kStatementTimeout:
    case kMysqlStatementTimeout:
      return Status::timeout(message);
    case kLockWaitTimeout:
      return Status::retryable(message + " -- a long-running statement, transaction or DDL holds "
                                         "the locks the backup needs; retry when it has finished");
    case kLockDeadlock:
    case kConCount:
    case kTooManyUserConnections:
    case kQueryInterrupted:
    case kConnectionKilled:
    case kServerShutdown:
      return Status::retryable(message);
    case kSocketConnectFailed:
      // "(13)" is errno EACCES: the socket exists but the agent may not use it.
      if (error.message.find("(13)") != std::string::npos) {
        return Status::non_retryable(message + " -- the agent may not open the server's socket");
      }
      return Status::retryable(message + " -- is the server running? retry once it accepts "
                                         "connections");
    case kSslConnectionError:
      return Status::non_retryable(message + " -- check the server's TLS setup");
    default:
      break;
  }
  if (error.code == 0 || error.code >= kClientErrorFirst) {
    return Status::retryable(message);  // network trouble, server gone: may pass
  }
  return Status::non_retryable(message);
}

Connection::Connection(st_mysql* mysql, ConnectParams params, std::string where)
    : mysql_(mysql), params_(std::move(params)), where_(std::move(where)) {}

Connection::~Connection() { close(); }

void Connection::close() {
  if (mysql_ != nullptr) {
    libmariadb().mysql_close(mysql_);
    mysql_ = nullptr;
  }
}

bool Connection::is_mariadb() const {
  return server_info_.find("MariaDB") != std::string::npos;
}

template <typename Step>
std::string Connection::drive(int status, const Budget& budget, Step&& step) {
  while (status != 0) {
    const auto now = Clock::now();
    auto deadline = budget.deadline;
    const bool library_timeout = (status & MYSQL_WAIT_TIMEOUT) != 0;
    if (library_timeout) {
      deadline = std::min(deadline, now + std::chrono::milliseconds(
                                              libmariadb().mysql_get_timeout_value_ms(mysql_)));
    }
    auto why = platform::wait_socket(static_cast<int>(libmariadb().mysql_get_socket(mysql_)),
                                     {.read = (status & MYSQL_WAIT_READ) != 0,
                                      .write = (status & MYSQL_WAIT_WRITE) != 0,
                                      .except = (status & MYSQL_WAIT_EXCEPT) != 0},
                                     deadline, budget.stop);
    if (why.empty()) {
      status = step(status & kIoBits);
      continue;
    }
    if (library_timeout && !budget.stop.stop_requested() && Clock::now() < budget.deadline) {
      status = step(MYSQL_WAIT_TIMEOUT);  // the library's own timeout: it reports it
      continue;
    }
    // Cut short. The call is still suspended inside libmariadb: shut the
    // socket so that finishing it fails at once, then let it finish, so the
    // connection is closed with no operation in flight.
    const int fd = static_cast<int>(libmariadb().mysql_get_socket(mysql_));
    if (fd >= 0) {
      ::shutdown(fd, SHUT_RDWR);
    }
    for (int rounds = 0; status != 0 && rounds < 100; ++rounds) {
      status = step(status & kIoBits);
    }
    return why;
  }
  return "";
}

Status Connection::open(const ConnectParams& params, const std::string& where,
                        const Budget& budget, std::unique_ptr<Connection>& out) {
  const LibmariadbApi& api = libmariadb();
  const std::string action = "connect to " + params.describe();
  if (auto why = budget.spent(); !why.empty()) {
    return Status::timeout(where + ": could not " + action + ": " + why);
  }
  MYSQL* mysql = api.mysql_init(nullptr);
  if (mysql == nullptr) {
    return Status::retryable(where + ": could not " + action + ": out of memory");
  }
  std::unique_ptr<Connection> connection(new Connection(mysql, params, where));
  // No option files: credentials come from the writer's config only.
  api.mysql_options(mysql, MYSQL_OPT_NONBLOCK, nullptr);
  const my_bool no_reconnect = 0;  // a reconnect would hide a lost hold
  api.mysql_options(mysql, MYSQL_OPT_RECONNECT, &no_reconnect);
  const unsigned int no_local_infile = 0;
  api.mysql_options(mysql, MYSQL_OPT_LOCAL_INFILE, &no_local_infile);
  api.mysql_options(mysql, MYSQL_SET_CHARSET_NAME, "utf8mb4");
  api.mysql_optionsv(mysql, MYSQL_OPT_CONNECT_ATTR_ADD, "program_name", "quiesce-agent");
  const unsigned int protocol = params.host.empty() ? MYSQL_PROTOCOL_SOCKET : MYSQL_PROTOCOL_TCP;
  api.mysql_options(mysql, MYSQL_OPT_PROTOCOL, &protocol);

  Budget connect_budget = budget;
  connect_budget.deadline = std::min(budget.deadline, Clock::now() + params.connect_timeout);
  MYSQL* connected = nullptr;
  const int status = api.mysql_real_connect_start(
      &connected, mysql, params.host.empty() ? "localhost" : params.host.c_str(),
      params.user.c_str(), params.password ? params.password->c_str() : nullptr, nullptr,
      static_cast<unsigned int>(params.port), params.host.empty() ? params.socket.c_str() : nullptr,
      0);
  auto why = connection->drive(status, connect_budget, [&](int ready) {
    return api.mysql_real_connect_cont(&connected, mysql, ready);
  });
  if (!why.empty()) {
    const std::string text = where + ": could not " + action + ": " + why;
    if (budget.stop.stop_requested() || Clock::now() >= budget.deadline) {
      return Status::timeout(text);
    }
    return Status::retryable(text + " (options.connect_timeout_ms = " +
                             std::to_string(params.connect_timeout.count()) + ")");
  }
  if (connected == nullptr) {
    return classify_error(where, action,
                          {api.mysql_errno(mysql), api.mysql_sqlstate(mysql),
                           api.mysql_error(mysql)});
  }
  connection->thread_id_ = api.mysql_thread_id(mysql);
  connection->server_version_ = api.mysql_get_server_version(mysql);
  connection->server_info_ = api.mysql_get_server_info(mysql);
  out = std::move(connection);
  return Status::ok();
}

Status Connection::query(std::string_view action, const std::string& sql, const Budget& budget,
                         std::vector<Row>& rows, std::string_view grant_hint,
                         ServerError* error) {
  const LibmariadbApi& api = libmariadb();
  rows.clear();
  const std::string prefix = where_ + ": could not " + std::string(action) + ": ";
  if (auto why = budget.spent(); !why.empty()) {
    return Status::timeout(prefix + why);
  }
  if (!ok()) {
    return Status::retryable(prefix + "the connection is closed" +
                             (lost_reason_.empty() ? "" : " (" + lost_reason_ + ")"));
  }
  auto interrupted = [&](const std::string& why) {
    kill_and_close();
    lost_reason_ = "the statement was interrupted: " + why;
    return Status::timeout(prefix + why + "; its connection was killed on the server and closed");
  };
  auto failed = [&] {
    ServerError server_error{api.mysql_errno(mysql_), api.mysql_sqlstate(mysql_),
                             api.mysql_error(mysql_)};
    if (connection_lost(server_error.code)) {
      lost_ = true;
      lost_reason_ = server_error.message;
      close();
    }
    if (error != nullptr) {
      *error = server_error;
    }
    return classify_error(where_, action, server_error, grant_hint);
  };

  int result = 0;
  int status = api.mysql_real_query_start(&result, mysql_, sql.data(), sql.size());
  if (auto why = drive(status, budget,
                       [&](int ready) {
                         return api.mysql_real_query_cont(&result, mysql_, ready);
                       });
      !why.empty()) {
    return interrupted(why);
  }
  if (result != 0) {
    return failed();
  }
  if (api.mysql_field_count(mysql_) == 0) {
    return Status::ok();  // a statement without a result set
  }
  MYSQL_RES* stored = nullptr;
  status = api.mysql_store_result_start(&stored, mysql_);
  if (auto why = drive(status, budget,
                       [&](int ready) {
                         return api.mysql_store_result_cont(&stored, mysql_, ready);
                       });
      !why.empty()) {
    return interrupted(why);
  }
  if (stored == nullptr) {
    return failed();
  }
  // A stored result is in memory: fetching and freeing do no I/O.
  const unsigned int columns = api.mysql_num_fields(stored);
  while (MYSQL_ROW row = api.mysql_fetch_row(stored)) {
    const unsigned long* lengths = api.mysql_fetch_lengths(stored);
    Row values;
    values.reserve(columns);
    for (unsigned int c = 0; c < columns; ++c) {
      if (row[c] == nullptr) {
        values.emplace_back(std::nullopt);
      } else {
        values.emplace_back(std::string(row[c], lengths[c]));
      }
    }
    rows.push_back(std::move(values));
  }
  api.mysql_free_result(stored);
  return Status::ok();
}

void Connection::kill_and_close() {
  if (mysql_ == nullptr) {
    return;
  }
  lost_ = true;
  // The statement may be waiting for a lock on the server, where it goes on
  // waiting (and blocking others) after the client is gone. KILL from a
  // second connection ends it and releases whatever the session held.
  // Bounded and not stoppable: the stop has already fired.
  Budget kill_budget;
  kill_budget.deadline = Clock::now() + std::min<std::chrono::milliseconds>(
                                            params_.connect_timeout, std::chrono::seconds(2));
  std::unique_ptr<Connection> killer;
  if (Connection::open(params_, where_, kill_budget, killer).is_ok()) {
    std::vector<Row> ignored;
    (void)killer->query("kill the interrupted connection",
                        "KILL CONNECTION " + std::to_string(thread_id_), kill_budget, ignored);
  }
  close();
}

}  // namespace quiesce::writers::mariadb

#include "writers/sqlite/sqlite_connection.hpp"

#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <thread>

#include "writers/sqlite/sqlite_api.hpp"

namespace quiesce::writers::sqlite {

namespace {

using std::chrono::milliseconds;

std::string code_name(int rc) {
  // sqlite3_errstr gives prose ("database is locked"); admins search for the
  // code name, so give both.
  switch (rc & 0xff) {
    case SQLITE_BUSY: return "SQLITE_BUSY";
    case SQLITE_LOCKED: return "SQLITE_LOCKED";
    case SQLITE_CANTOPEN: return "SQLITE_CANTOPEN";
    case SQLITE_PERM: return "SQLITE_PERM";
    case SQLITE_READONLY: return "SQLITE_READONLY";
    case SQLITE_NOTADB: return "SQLITE_NOTADB";
    case SQLITE_CORRUPT: return "SQLITE_CORRUPT";
    case SQLITE_IOERR: return "SQLITE_IOERR";
    case SQLITE_FULL: return "SQLITE_FULL";
    case SQLITE_AUTH: return "SQLITE_AUTH";
    default: return "SQLite error " + std::to_string(rc);
  }
}

std::string describe(int rc, std::string_view detail) {
  std::string text = code_name(rc);
  if (!detail.empty()) {
    text += ": ";
    text += detail;
  }
  return text;
}

}  // namespace

std::optional<FileIdentity> file_identity(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return std::nullopt;
  }
  return FileIdentity{st.st_dev, st.st_ino};
}

Status classify_sqlite_error(int rc, const std::string& path, std::string_view action,
                             std::string_view detail, WaitEnd wait_end, milliseconds waited) {
  const std::string what = "sqlite database " + path + ": could not " + std::string(action);
  const std::string why = " (" + describe(rc, detail) + ")";
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      if (wait_end == WaitEnd::stopped) {
        return Status::timeout(what + ": gave up waiting for another process's lock after " +
                               std::to_string(waited.count()) + " ms because the call was stopped" +
                               why);
      }
      if (wait_end == WaitEnd::deadline) {
        return Status::timeout(what + ": another process held a lock on it until the phase "
                               "deadline (waited " + std::to_string(waited.count()) + " ms)" + why);
      }
      return Status::retryable(what + ": another process holds a lock on it (waited " +
                               std::to_string(waited.count()) +
                               " ms, options.busy_timeout_ms); retry when its transaction ends, "
                               "or raise busy_timeout_ms" + why);
    case SQLITE_CANTOPEN:
      return Status::non_retryable(
          what + ": cannot open the file; check that it exists and that the agent's user may "
                 "read and write it and create files in its directory (-journal, -wal, -shm)" +
          why);
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return Status::non_retryable(what + ": access denied; give the agent's user read and "
                                          "write permission on the file and its directory" + why);
    case SQLITE_READONLY:
      return Status::non_retryable(
          what + ": the database is read-only to the agent; it needs write permission on the "
                 "file, its -wal/-shm files and its directory, on a read-write mount, to hold "
                 "a write lock" + why);
    case SQLITE_NOTADB:
      return Status::non_retryable(what + ": the file is not an SQLite 3 database (or is "
                                          "encrypted); fix options.databases" + why);
    case SQLITE_CORRUPT:
      return Status::non_retryable(what + ": the database is corrupt; check it with "
                                          "PRAGMA integrity_check and restore it" + why);
    default:
      return Status::non_retryable(what + why);
  }
}

Connection::Connection(std::string path, sqlite3* db)
    : path_(std::move(path)), db_(db), identity_(file_identity(path_)) {
  // Result codes as precise as SQLite can make them (SQLITE_BUSY_RECOVERY...).
  sqlite_api().sqlite3_extended_result_codes(db_, 1);
  sqlite_api().sqlite3_busy_handler(db_, &Connection::on_busy, this);
}

Connection::~Connection() {
  // close_v2 never fails: with statements still open it defers the close.
  // Closing also ends any open transaction, releasing its locks.
  sqlite_api().sqlite3_close_v2(db_);
}

Status Connection::open(const std::string& path, std::unique_ptr<Connection>& out) {
  sqlite3* db = nullptr;
  // Never SQLITE_OPEN_CREATE: a typo in the config must not make an empty
  // database that the writer then "protects".
  const int rc = sqlite_api().sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_EXRESCODE,
                                 nullptr);
  if (rc != SQLITE_OK) {
    std::string detail = db != nullptr ? sqlite_api().sqlite3_errmsg(db) : "";
    sqlite_api().sqlite3_close_v2(db);
    return classify_sqlite_error(rc, path, "open it", detail, WaitEnd::none, milliseconds(0));
  }
  // SQLite quietly falls back to read-only when the OS refuses write access;
  // a read-only connection cannot take the write lock, so say so now.
  if (sqlite_api().sqlite3_db_readonly(db, "main") == 1) {
    sqlite_api().sqlite3_close_v2(db);
    return classify_sqlite_error(SQLITE_READONLY, path, "open it read-write",
                                 "opened read-only", WaitEnd::none, milliseconds(0));
  }
  out.reset(new Connection(path, db));
  return Status::ok();
}

int Connection::on_busy(void* self, int count) {
  auto& connection = *static_cast<Connection*>(self);
  const auto now = Clock::now();
  if (count == 0) {
    connection.wait_started_ = now;
    connection.waited_ = true;
  }
  if (connection.budget_.stop.stop_requested()) {
    connection.wait_end_ = WaitEnd::stopped;
    return 0;
  }
  if (now >= connection.budget_.deadline) {
    connection.wait_end_ = WaitEnd::deadline;
    return 0;
  }
  if (now >= connection.give_up_) {
    connection.wait_end_ = WaitEnd::busy_timeout;
    return 0;
  }
  // Short sleeps first (most locks are held for microseconds), then 20 ms
  // steps so a stop request is noticed quickly.
  constexpr std::array<int, 6> steps_ms{1, 2, 5, 10, 15, 20};
  const auto step = milliseconds(steps_ms[std::min<std::size_t>(count, steps_ms.size() - 1)]);
  const auto until = std::min({now + step, connection.budget_.deadline, connection.give_up_});
  std::this_thread::sleep_until(until);
  return 1;
}

void Connection::start_wait(const WaitBudget& budget) {
  budget_ = budget;
  wait_end_ = WaitEnd::none;
  waited_ = false;
  const auto now = Clock::now();
  wait_started_ = now;
  give_up_ = budget.busy_timeout >= milliseconds(0) ? now + budget.busy_timeout : now;
}

Status Connection::failure(int rc, std::string_view action) const {
  const auto waited = waited_ ? std::chrono::duration_cast<milliseconds>(Clock::now() -
                                                                         wait_started_)
                              : milliseconds(0);
  return classify_sqlite_error(rc, path_, action, sqlite_api().sqlite3_errmsg(db_), wait_end_, waited);
}

Status Connection::exec(std::string_view action, const char* sql, const WaitBudget& budget) {
  start_wait(budget);
  const int rc = sqlite_api().sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    return failure(rc, action);
  }
  return Status::ok();
}

namespace {

// A prepared statement that is always finalized.
class Statement {
 public:
  Statement() = default;
  ~Statement() { sqlite_api().sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  sqlite3_stmt** out() { return &stmt_; }
  [[nodiscard]] sqlite3_stmt* get() const { return stmt_; }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

}  // namespace

Status Connection::query_text(std::string_view action, const char* sql, const WaitBudget& budget,
                              std::string& out) {
  start_wait(budget);
  Statement statement;
  int rc = sqlite_api().sqlite3_prepare_v2(db_, sql, -1, statement.out(), nullptr);
  if (rc != SQLITE_OK) {
    return failure(rc, action);
  }
  rc = sqlite_api().sqlite3_step(statement.get());
  if (rc == SQLITE_ROW) {
    const unsigned char* text = sqlite_api().sqlite3_column_text(statement.get(), 0);
    out = text != nullptr ? reinterpret_cast<const char*>(text) : "";
    return Status::ok();
  }
  if (rc == SQLITE_DONE) {
    out.clear();
    return Status::ok();
  }
  return failure(rc, action);
}

Status Connection::query_int(std::string_view action, const char* sql, const WaitBudget& budget,
                             std::int64_t& out) {
  std::string text;
  if (auto status = query_text(action, sql, budget, text); !status.is_ok()) {
    return status;
  }
  try {
    out = text.empty() ? 0 : std::stoll(text);
  } catch (const std::exception&) {
    return Status::non_retryable("sqlite database " + path_ + ": " + std::string(action) +
                                 ": unexpected answer '" + text + "'");
  }
  return Status::ok();
}

Status Connection::checkpoint_truncate(const WaitBudget& budget, int& wal_frames,
                                       int& checkpointed_frames) {
  start_wait(budget);
  wal_frames = -1;
  checkpointed_frames = -1;
  const int rc = sqlite_api().sqlite3_wal_checkpoint_v2(db_, "main", SQLITE_CHECKPOINT_TRUNCATE, &wal_frames,
                                           &checkpointed_frames);
  if (rc != SQLITE_OK) {
    return failure(rc, "checkpoint its WAL (wal_checkpoint(TRUNCATE))");
  }
  return Status::ok();
}

bool Connection::in_transaction() const { return sqlite_api().sqlite3_get_autocommit(db_) == 0; }

}  // namespace quiesce::writers::sqlite

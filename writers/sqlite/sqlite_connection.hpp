#pragma once
// One SQLite connection as the sqlite writer uses it: opened read-write and
// never creating a file, waiting for other processes' locks through a busy
// handler that honours the writer call's deadline and stop token, and
// turning SQLite result codes into Status values with a message that says
// which database and what an admin should do about it.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>

#include "quiesce/status.hpp"
#include "quiesce/writer.hpp"

struct sqlite3;

namespace quiesce::writers::sqlite {

// How long one statement may wait for a lock another process holds: the
// writer call's deadline and stop token, and options.busy_timeout_ms.
struct WaitBudget : CallBudget {
  std::chrono::milliseconds busy_timeout{5000};
};

// Why the last wait for a lock ended without the lock.
enum class WaitEnd { none, busy_timeout, deadline, stopped };

// The inode a path named when it was opened: a database file replaced under
// a held connection (rename over it) leaves the lock on a file nobody uses.
struct FileIdentity {
  dev_t device = 0;
  ino_t inode = 0;
  bool operator==(const FileIdentity&) const = default;
};
[[nodiscard]] std::optional<FileIdentity> file_identity(const std::string& path);

// Classifies an SQLite result code (extended codes accepted) for `path`.
// `action` says what was being done ("take the write lock"); `detail` is
// sqlite3_errmsg; `wait_end` and `waited` explain a BUSY.
[[nodiscard]] Status classify_sqlite_error(int rc, const std::string& path, std::string_view action,
                                           std::string_view detail, WaitEnd wait_end,
                                           std::chrono::milliseconds waited);

class Connection {
 public:
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Opens `path` read-write (never creates it). Fails non_retryable when the
  // file cannot be opened or only read-only.
  [[nodiscard]] static Status open(const std::string& path, std::unique_ptr<Connection>& out);

  // Runs statements that return no rows of interest.
  [[nodiscard]] Status exec(std::string_view action, const char* sql, const WaitBudget& budget);
  // The first column of the first row, as text / as an integer.
  [[nodiscard]] Status query_text(std::string_view action, const char* sql,
                                  const WaitBudget& budget, std::string& out);
  [[nodiscard]] Status query_int(std::string_view action, const char* sql,
                                 const WaitBudget& budget, std::int64_t& out);
  // PRAGMA wal_checkpoint(TRUNCATE) through the C API, which reports busy
  // as SQLITE_BUSY rather than as a column. Frames are -1 for a database not
  // in WAL mode.
  [[nodiscard]] Status checkpoint_truncate(const WaitBudget& budget, int& wal_frames,
                                           int& checkpointed_frames);

  // True while a transaction is open (BEGIN IMMEDIATE not yet ended). False
  // after SQLite rolled a transaction back on its own (I/O error, ...).
  [[nodiscard]] bool in_transaction() const;
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] const std::optional<FileIdentity>& identity() const { return identity_; }

 private:
  Connection(std::string path, sqlite3* db);
  static int on_busy(void* self, int count);
  void start_wait(const WaitBudget& budget);
  [[nodiscard]] Status failure(int rc, std::string_view action) const;

  std::string path_;
  sqlite3* db_;
  std::optional<FileIdentity> identity_;

  // The current statement's wait, read by the busy handler.
  WaitBudget budget_;
  Clock::time_point wait_started_{};
  Clock::time_point give_up_{};
  WaitEnd wait_end_ = WaitEnd::none;
  bool waited_ = false;
};

}  // namespace quiesce::writers::sqlite

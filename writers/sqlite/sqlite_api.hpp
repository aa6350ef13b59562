#pragma once
// The libsqlite3 functions the sqlite writer calls, loaded with dlopen the
// first time a sqlite writer is created (not linked: an agent without one
// never maps libsqlite3, 0.25 MiB of its idle RSS when it was linked).
// Types come from sqlite3.h, so a signature that differs from the header
// the writer was built against fails to compile rather than to run.

#include <sqlite3.h>

// Exactly the functions the writer uses; add one here before calling it.
#define QUIESCE_SQLITE_FUNCTIONS(X) \
  X(sqlite3_busy_handler)           \
  X(sqlite3_close_v2)               \
  X(sqlite3_column_text)            \
  X(sqlite3_db_readonly)            \
  X(sqlite3_errmsg)                 \
  X(sqlite3_exec)                   \
  X(sqlite3_extended_result_codes)  \
  X(sqlite3_finalize)               \
  X(sqlite3_get_autocommit)         \
  X(sqlite3_libversion)             \
  X(sqlite3_open_v2)                \
  X(sqlite3_prepare_v2)             \
  X(sqlite3_step)                   \
  X(sqlite3_wal_checkpoint_v2)

namespace quiesce::writers::sqlite {

// libsqlite3's soname and the Debian package that provides it.
inline constexpr const char* kSqliteSoname = "libsqlite3.so.0";
inline constexpr const char* kSqlitePackage = "libsqlite3-0";

struct SqliteApi {
#define QUIESCE_SQLITE_SLOT(name) decltype(&::name) name = nullptr;
  QUIESCE_SQLITE_FUNCTIONS(QUIESCE_SQLITE_SLOT)
#undef QUIESCE_SQLITE_SLOT
};

// The table, loaded once (thread-safe); every call after the first is a
// check of a static. Throws std::runtime_error ("sqlite writer: cannot load
// libsqlite3.so.0 (...): install the libsqlite3-0 package") while the
// library cannot be loaded; the sqlite writer's factory calls it so that a
// missing library fails config loading (and --check-config), not a freeze.
[[nodiscard]] const SqliteApi& sqlite_api();

}  // namespace quiesce::writers::sqlite

#pragma once
// The libmariadb (Connector/C) functions the mariadb writer calls, loaded
// with dlopen the first time a mariadb writer is created (not linked: an
// agent without one never maps libmariadb, nor the TLS libraries behind
// it). Types come from mysql.h, so a signature that differs from the header
// the writer was built against fails to compile rather than to run.

#include <mysql.h>

// Exactly the functions the writer uses; add one here before calling it.
#define QUIESCE_LIBMARIADB_FUNCTIONS(X) \
  X(mysql_close)                        \
  X(mysql_errno)                        \
  X(mysql_error)                        \
  X(mysql_fetch_lengths)                \
  X(mysql_fetch_row)                    \
  X(mysql_field_count)                  \
  X(mysql_free_result)                  \
  X(mysql_get_server_info)              \
  X(mysql_get_server_version)           \
  X(mysql_get_socket)                   \
  X(mysql_get_timeout_value_ms)         \
  X(mysql_init)                         \
  X(mysql_num_fields)                   \
  X(mysql_options)                      \
  X(mysql_optionsv)                     \
  X(mysql_real_connect_cont)            \
  X(mysql_real_connect_start)           \
  X(mysql_real_query_cont)              \
  X(mysql_real_query_start)             \
  X(mysql_sqlstate)                     \
  X(mysql_store_result_cont)            \
  X(mysql_store_result_start)           \
  X(mysql_thread_id)

namespace quiesce::writers::mariadb {

// libmariadb's soname and the Debian package that provides it.
inline constexpr const char* kLibmariadbSoname = "libmariadb.so.3";
inline constexpr const char* kLibmariadbPackage = "libmariadb3";

struct LibmariadbApi {
#define QUIESCE_LIBMARIADB_SLOT(name) decltype(&::name) name = nullptr;
  QUIESCE_LIBMARIADB_FUNCTIONS(QUIESCE_LIBMARIADB_SLOT)
#undef QUIESCE_LIBMARIADB_SLOT
};

// The table, loaded once (thread-safe). Throws std::runtime_error ("mariadb
// writer: cannot load libmariadb.so.3 (...): install the libmariadb3
// package") while libmariadb cannot be loaded; the mariadb writer's factory
// calls it so that a missing library fails config loading (and
// --check-config).
[[nodiscard]] const LibmariadbApi& libmariadb();

}  // namespace quiesce::writers::mariadb

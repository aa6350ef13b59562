#pragma once
// The libpq functions the postgres writer calls, loaded with dlopen the
// first time a postgres writer is created (not linked: an agent without one
// never maps libpq, nor the TLS, Kerberos and LDAP libraries behind it).
// Types come from libpq-fe.h, so a signature that differs from the header
// the writer was built against fails to compile rather than to run.

#include <libpq-fe.h>

// Exactly the functions the writer uses; add one here before calling it.
#define QUIESCE_LIBPQ_FUNCTIONS(X) \
  X(PQbackendPID)                  \
  X(PQcancel)                      \
  X(PQclear)                       \
  X(PQconnectPoll)                 \
  X(PQconnectStartParams)          \
  X(PQconsumeInput)                \
  X(PQerrorMessage)                \
  X(PQfinish)                      \
  X(PQflush)                       \
  X(PQfreeCancel)                  \
  X(PQgetCancel)                   \
  X(PQgetResult)                   \
  X(PQgetisnull)                   \
  X(PQgetlength)                   \
  X(PQgetvalue)                    \
  X(PQisBusy)                      \
  X(PQnfields)                     \
  X(PQntuples)                     \
  X(PQresultErrorField)            \
  X(PQresultErrorMessage)          \
  X(PQresultStatus)                \
  X(PQsendQueryParams)             \
  X(PQserverVersion)               \
  X(PQsetNoticeProcessor)          \
  X(PQsetnonblocking)              \
  X(PQsocket)                      \
  X(PQstatus)

namespace quiesce::writers::postgres {

// libpq's soname and the Debian package that provides it.
inline constexpr const char* kLibpqSoname = "libpq.so.5";
inline constexpr const char* kLibpqPackage = "libpq5";

struct LibpqApi {
#define QUIESCE_LIBPQ_SLOT(name) decltype(&::name) name = nullptr;
  QUIESCE_LIBPQ_FUNCTIONS(QUIESCE_LIBPQ_SLOT)
#undef QUIESCE_LIBPQ_SLOT
};

// The table, loaded once (thread-safe); every call after the first is a
// check of a static. Throws std::runtime_error ("postgres writer: cannot
// load libpq.so.5 (...): install the libpq5 package") while libpq cannot
// be loaded; the postgres writer's factory calls it so that a missing
// library fails config loading (and --check-config), not a freeze.
[[nodiscard]] const LibpqApi& libpq();

}  // namespace quiesce::writers::postgres

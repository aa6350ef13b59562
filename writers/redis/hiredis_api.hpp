#pragma once
// The hiredis functions the redis writer calls, loaded with dlopen the first
// time a redis writer is created (not linked: an agent without one never
// maps hiredis). Types come from hiredis.h, so a signature that differs from
// the header the writer was built against fails to compile rather than to
// run.

#include <hiredis/hiredis.h>

// Exactly the functions the writer uses; add one here before calling it.
#define QUIESCE_HIREDIS_FUNCTIONS(X) \
  X(freeReplyObject)                 \
  X(redisAppendCommandArgv)          \
  X(redisConnectUnixWithTimeout)     \
  X(redisConnectWithTimeout)         \
  X(redisFree)                       \
  X(redisGetReply)                   \
  X(redisSetTimeout)

namespace quiesce::writers::redis {

// hiredis's soname and the Debian package that provides it: the soname
// carries the minor version because hiredis broke its ABI between minors.
inline constexpr const char* kHiredisSoname = "libhiredis.so.0.14";
inline constexpr const char* kHiredisPackage = "libhiredis0.14";

struct HiredisApi {
#define QUIESCE_HIREDIS_SLOT(name) decltype(&::name) name = nullptr;
  QUIESCE_HIREDIS_FUNCTIONS(QUIESCE_HIREDIS_SLOT)
#undef QUIESCE_HIREDIS_SLOT
};

// The table, loaded once (thread-safe). Throws std::runtime_error ("redis
// writer: cannot load libhiredis.so.0.14 (...): install the libhiredis0.14
// package") while hiredis cannot be loaded; the redis writer's factory calls
// it so that a missing library fails config loading (and --check-config).
[[nodiscard]] const HiredisApi& hiredis();

}  // namespace quiesce::writers::redis

#pragma once
// The `redis` writer: makes sure the snapshot holds every write Redis
// acknowledged before the freeze (docs/writers/redis.md). With AOF on,
// freeze switches appendfsync to `always` for the hold window (so nothing
// acknowledged waits in Redis' own buffer) and fsyncs the AOF files; without
// AOF it runs BGSAVE and waits until the RDB file is written. Optionally it
// holds writes (CLIENT PAUSE WRITE) until thaw.
//
// options:
//   "socket": "/run/redis/redis-server.sock"   or "host" + "port"
//   "user": "quiesce", "password_file": "/etc/quiesce/redis.pass"
//   "connect_timeout_ms": 2000
//   "hold_writes": false
//   "bgsave_timeout_ms": 60000

#include "quiesce/writer_registry.hpp"

namespace quiesce::writers {

void register_redis_writer(WriterRegistry& registry);

}  // namespace quiesce::writers

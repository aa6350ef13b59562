// The writers compiled into the agent. Each built-in writer lives in its own
// folder under writers/ and exposes one register_*_writer() function.

#include "quiesce/writer_registry.hpp"
#include "writers/delay/delay_writer.hpp"
#include "writers/exec/exec_writer.hpp"
#include "writers/fsfreeze/fsfreeze_writer.hpp"
#include "writers/mariadb/mariadb_writer.hpp"
#include "writers/postgres/postgres_writer.hpp"
#include "writers/sqlite/sqlite_writer.hpp"
#include "writers/hooks/hooks_writer.hpp"
#include "writers/plugin/plugin_writer.hpp"
#include "writers/redis/redis_writer.hpp"

namespace quiesce {

void register_builtin_writers(WriterRegistry& registry) {
  writers::register_delay_writer(registry);
  writers::register_fsfreeze_writer(registry);
  writers::register_sqlite_writer(registry);
  writers::register_postgres_writer(registry);
  writers::register_mariadb_writer(registry);
  writers::register_hooks_writer(registry);
  writers::register_plugin_writer(registry);
  writers::register_redis_writer(registry);
  writers::register_exec_writer(registry);
}

}  // namespace quiesce

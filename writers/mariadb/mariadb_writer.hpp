#pragma once
// The `mariadb` writer: makes a MariaDB (or MySQL) server restorable from a
// storage snapshot (docs/writers/mariadb.md). The server's own recipe for
// storage snapshots is followed: MariaDB >= 10.4 holds BACKUP STAGE
// BLOCK_COMMIT, older MariaDB and MySQL hold FLUSH TABLES WITH READ LOCK, on
// one connection kept open from freeze until thaw. The binary log position
// and GTID read while commits are blocked are returned as artifacts.
//
// options:
//   "socket":             "/run/mysqld/mysqld.sock"  Unix socket (the default transport)
//   "host", "port":       TCP instead of the socket (not both)
//   "user":               "root"                     Debian's root@localhost uses unix_socket auth
//   "password_file":      "/etc/quiesce/mariadb.pass" read once, at creation
//   "connect_timeout_ms": 5000
//   "method":             "auto" | "backup_stage" | "flush_tables"

#include "quiesce/writer_registry.hpp"

namespace quiesce::writers {

void register_mariadb_writer(WriterRegistry& registry);

}  // namespace quiesce::writers

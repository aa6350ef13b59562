#pragma once
// The `postgres` writer: makes a PostgreSQL (15+) cluster restorable from a
// storage snapshot (docs/writers/postgres.md). prepare runs CHECKPOINT so
// the backup's own checkpoint inside the hold window is short; freeze starts
// a non-exclusive backup (pg_backup_start) on a session held open until the
// snapshot is done; post_snapshot ends it (pg_backup_stop) and returns
// backup_label and tablespace_map as artifacts for the checkpoint manifest.
//
// options:
//   "host":               "/var/run/postgresql"  socket directory or host name
//   "port":               5432
//   "user":               "postgres"
//   "dbname":             "postgres"
//   "password_file":      "/etc/quiesce/pg.pass"  read once, at creation
//   "connect_timeout_ms": 5000
//   "label_prefix":       "quiesce"              backup label: <prefix>-<session id>

#include "quiesce/writer_registry.hpp"

namespace quiesce::writers {

void register_postgres_writer(WriterRegistry& registry);

}  // namespace quiesce::writers

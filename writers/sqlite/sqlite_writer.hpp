#pragma once
// The `sqlite` writer: keeps SQLite database files transaction-consistent for
// the hold window (docs/writers/sqlite.md). prepare checkpoints WAL
// databases so a restored snapshot has little WAL to replay; freeze takes a
// write lock (BEGIN IMMEDIATE) on every database, each on its own connection
// held open until thaw, so no other process can commit while the host
// snapshots the disk.
//
// options:
//   "databases":       ["/srv/app/app.db"]   database files (must exist)
//   "busy_timeout_ms": 5000                  how long to wait for another
//                                            process's lock before reporting busy

#include "quiesce/writer_registry.hpp"

namespace quiesce::writers {

void register_sqlite_writer(WriterRegistry& registry);

}  // namespace quiesce::writers

#pragma once
// The database scenario of quiesce_bench (`quiesce_bench databases`): the
// four real servers the db tests run (PostgreSQL, MariaDB, Redis with AOF,
// a SQLite file in WAL mode), their data on one filesystem the bench
// freezes, each under a write load of its own: pgbench (TPC-B, -c N), a
// MariaDB insert loop, a Redis SET loop and a SQLite insert loop, every
// commit acknowledged only once durable. The servers are the db tests'
// fixtures (tests/db/*_server.*); this knows nothing of agents.

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace quiesce::bench {

struct DatabaseLoadOptions {
  int pgbench_clients = 4;
};

class DatabaseLoad {
 public:
  // Starts the servers: work files (sockets, logs, configs) in `work_dir`,
  // data under `data_root` (a mount point the bench freezes). Throws with
  // the server's log when one does not come up.
  DatabaseLoad(const std::filesystem::path& work_dir, const std::filesystem::path& data_root,
               DatabaseLoadOptions options);
  // Stops the load, then every server.
  ~DatabaseLoad();
  DatabaseLoad(const DatabaseLoad&) = delete;
  DatabaseLoad& operator=(const DatabaseLoad&) = delete;

  // The agent's writers for the four servers (level database), named pg,
  // mariadb, redis and sqlite; the fsfreeze writer is the caller's.
  [[nodiscard]] nlohmann::json writers() const;

  void start_load();
  void stop_load();
  // Acknowledged writes per workload since start_load ({"pg": ...}); pg's
  // from pgbench's own log is not read: its process is only checked alive.
  [[nodiscard]] nlohmann::json acknowledged() const;
  // "" while every workload runs, otherwise what failed.
  [[nodiscard]] std::string load_error() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Installs a doctest assert handler that throws std::runtime_error, so the
// db tests' fixtures (which REQUIRE) can run outside a test case.
void route_fixture_failures_to_exceptions();

}  // namespace quiesce::bench

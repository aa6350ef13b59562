#include "writers/sqlite/sqlite_writer.hpp"

#include <sqlite3.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <vector>

#include <spdlog/spdlog.h>

#include "platform/linux/mountinfo.hpp"
#include "quiesce/json_fields.hpp"
#include "writers/sqlite/sqlite_api.hpp"
#include "writers/sqlite/sqlite_connection.hpp"

namespace quiesce::writers {

namespace {

namespace fs = std::filesystem;
using sqlite::Connection;
using sqlite::WaitBudget;
using std::chrono::milliseconds;

struct SqliteOptions {
  std::vector<std::string> databases;  // canonical paths, config order
  milliseconds busy_timeout{5000};
};

SqliteOptions parse_options(const nlohmann::json& json) {
  SqliteOptions options;
  JsonFields fields(json, "options");
  auto databases = fields.strings("databases");
  if (databases.empty()) {
    throw FieldError(fields.path_of("databases"), "list at least one database file");
  }
  std::set<std::string> seen;
  for (std::size_t i = 0; i < databases.size(); ++i) {
    const auto item_path = fields.path_of("databases") + "[" + std::to_string(i) + "]";
    const auto& database = databases[i];
    if (database.empty() || database.front() != '/') {
      throw FieldError(item_path, "'" + database + "' is not an absolute path");
    }
    // Only stat and access here, never open(): closing any descriptor of a
    // database file drops every POSIX lock this process holds on it, and
    // another writer instance in this process may be holding one.
    std::error_code ec;
    auto canonical = fs::canonical(database, ec);
    if (ec) {
      throw FieldError(item_path, "'" + database + "' does not exist (" + ec.message() + ")");
    }
    if (!fs::is_regular_file(canonical, ec)) {
      throw FieldError(item_path, "'" + database + "' is not a regular file");
    }
    if (::access(canonical.c_str(), R_OK | W_OK) != 0) {
      throw FieldError(item_path, "'" + database + "' is not readable and writable by the agent (" +
                                      std::strerror(errno) + "); it needs both to hold a write lock");
    }
    // Two connections of ours on one file would lock each other out.
    if (!seen.insert(canonical.string()).second) {
      throw FieldError(item_path, "'" + database + "' is listed twice (same file as an earlier entry)");
    }
    options.databases.push_back(canonical.string());
  }
  options.busy_timeout = fields.millis("busy_timeout_ms", milliseconds(5000), std::chrono::minutes(10));
  fields.reject_unknown();
  return options;
}

// What freeze took, per database, for post_snapshot's artifacts.
struct HeldInfo {
  std::string path;
  std::string journal_mode;
};

class SqliteWriter final : public Writer {
 public:
  SqliteWriter(WriterSpec spec, SqliteOptions options, WriterEnvironment env)
      : spec_(std::move(spec)), options_(std::move(options)), env_(std::move(env)) {}

  ~SqliteWriter() override {
    if (holding_) {
      log().warn("sqlite writer '{}': releasing write locks at shutdown", spec_.name);
    }
    // Closing the connections ends their transactions and releases the locks.
  }
  SqliteWriter(const SqliteWriter&) = delete;
  SqliteWriter& operator=(const SqliteWriter&) = delete;

  Status identify(const PhaseContext& ctx, Identity& out) override {
    auto table = platform::read_mountinfo();
    for (const auto& path : options_.databases) {
      // A connection of its own: identify may come while frozen, and the held
      // connections stay untouched.
      std::unique_ptr<Connection> connection;
      if (auto status = Connection::open(path, connection); !status.is_ok()) {
        return status;
      }
      const auto budget = budget_for(ctx);
      std::string journal_mode;
      std::int64_t page_size = 0;
      std::int64_t page_count = 0;
      if (auto status = connection->query_text("read its journal mode", "PRAGMA journal_mode",
                                               budget, journal_mode);
          !status.is_ok()) {
        return status;
      }
      if (auto status = connection->query_int("read its page size", "PRAGMA page_size", budget,
                                              page_size);
          !status.is_ok()) {
        return status;
      }
      if (auto status = connection->query_int("read its page count", "PRAGMA page_count", budget,
                                              page_count);
          !status.is_ok()) {
        return status;
      }
      nlohmann::json component = {{"kind", "database"},
                                   {"name", path},
                                   {"path", path},
                                   {"journal_mode", journal_mode},
                                   {"page_size", page_size},
                                   {"page_count", page_count},
                                   {"size_bytes", page_size * page_count},
                                   {"wal_file", side_file(path + "-wal")},
                                   {"shm_file", side_file(path + "-shm")},
                                   {"journal_file", side_file(path + "-journal")}};
      component["mount"] = nullptr;
      if (table.table) {
        if (const auto* mount = table.table->mount_containing(path)) {
          component["mount"] = mount->mount_point;
          component["fstype"] = mount->fstype;
          component["device"] = mount->device.to_string();
        }
      }
      out.components.push_back(std::move(component));
    }
    out.metadata["sqlite_version"] = sqlite::sqlite_api().sqlite3_libversion();
    out.metadata["busy_timeout_ms"] = options_.busy_timeout.count();
    if (!table.table) {
      out.metadata["mountinfo_error"] = table.error;
    }
    return Status::ok();
  }

  Status prepare(const PhaseContext& ctx) override {
    if (holding_) {
      return Status::ok();  // already frozen: nothing to prepare
    }
    if (auto status = open_all(); !status.is_ok()) {
      close_all();
      return status;
    }
    const auto budget = budget_for(ctx);
    for (auto& connection : connections_) {
      std::string journal_mode;
      if (auto status = connection->query_text("read its journal mode", "PRAGMA journal_mode",
                                               budget, journal_mode);
          !status.is_ok()) {
        close_all();
        return status;
      }
      if (journal_mode != "wal") {
        continue;  // a rollback-journal database has no WAL to fold back
      }
      // TRUNCATE so the snapshot holds a small database file and an empty
      // WAL: a restore then has nothing to replay.
      const auto started = Clock::now();
      int wal_frames = 0;
      int checkpointed = 0;
      if (auto status = connection->checkpoint_truncate(budget, wal_frames, checkpointed);
          !status.is_ok()) {
        close_all();
        return status;
      }
      log().info("sqlite writer '{}': checkpointed {} of {} WAL frames of {} in {} ms",
                 spec_.name, checkpointed, wal_frames, connection->path(),
                 std::chrono::duration_cast<milliseconds>(Clock::now() - started).count());
    }
    return Status::ok();
  }

  Status freeze(const PhaseContext& ctx) override {
    if (holding_) {
      return Status::ok();  // already holding; a repeated freeze changes nothing
    }
    held_.clear();
    if (auto status = open_all(); !status.is_ok()) {
      close_all();
      return status;
    }
    const auto budget = budget_for(ctx);
    std::vector<HeldInfo> held;
    for (auto& connection : connections_) {
      std::string journal_mode;
      // In rollback-journal mode BEGIN IMMEDIATE holds the RESERVED lock: no
      // other connection can start writing, and one that was writing must
      // commit first (we wait for it). In WAL mode it holds the WAL write
      // lock. Either way no transaction is half-written while we hold it.
      auto status = connection->exec("take the write lock (BEGIN IMMEDIATE)", "BEGIN IMMEDIATE",
                                     budget);
      if (status.is_ok()) {
        status = connection->query_text("read its journal mode", "PRAGMA journal_mode", budget,
                                         journal_mode);
      }
      if (!status.is_ok()) {
        // All or nothing: release what was taken before reporting.
        close_all();
        return status;
      }
      held.push_back({connection->path(), journal_mode});
    }
    held_ = std::move(held);
    holding_ = true;
    return Status::ok();
  }

  Status thaw(const PhaseContext&, HoldReport& hold) override {
    if (!holding_) {
      close_all();  // a thaw after a failed freeze or a second thaw: nothing held
      return Status::ok();
    }
    std::string broken;
    for (auto& connection : connections_) {
      if (auto reason = hold_broken(*connection); !reason.empty()) {
        broken += (broken.empty() ? "" : "; ") + reason;
      }
      if (connection->in_transaction()) {
        // No changes were made in the transaction: ROLLBACK only drops the
        // lock. If it fails, closing the connection below drops it anyway.
        WaitBudget budget;
        budget.busy_timeout = milliseconds(0);
        if (auto status = connection->exec("release the write lock (ROLLBACK)", "ROLLBACK", budget);
            !status.is_ok()) {
          log().warn("sqlite writer '{}': {}; closing the connection instead", spec_.name,
                     status.error().message);
        }
      }
    }
    close_all();
    holding_ = false;
    if (!broken.empty()) {
      hold.continuous = false;
      hold.detail = "sqlite writer '" + spec_.name + "': " + broken;
      log().warn("{}", hold.detail);
    }
    return Status::ok();
  }

  Status post_snapshot(const PhaseContext&, const SnapshotInfo& snapshot,
                       nlohmann::json& artifacts) override {
    nlohmann::json databases = nlohmann::json::array();
    for (const auto& info : held_) {
      databases.push_back({{"path", info.path}, {"journal_mode", info.journal_mode}});
    }
    artifacts["databases"] = std::move(databases);
    artifacts["snapshot_id"] = snapshot.snapshot_id;
    return Status::ok();
  }

  Status abort(const PhaseContext&) override {
    if (holding_) {
      log().info("sqlite writer '{}': abort releases the write locks", spec_.name);
    }
    close_all();
    holding_ = false;
    return Status::ok();
  }

  Status post_restore(const PhaseContext&, const RestoreInfo&) override {
    // SQLite replays a WAL or rolls back a hot journal by itself on first
    // open; there is nothing to do that the next application open won't.
    return Status::ok();
  }

 private:
  spdlog::logger& log() {
    return env_.logger ? *env_.logger : *spdlog::default_logger();
  }

  [[nodiscard]] WaitBudget budget_for(const PhaseContext& ctx) const {
    return WaitBudget{CallBudget::of(ctx), options_.busy_timeout};
  }

  // Opens a connection per database unless they are open already (prepare
  // opens them so freeze, inside the hold window, does not have to).
  Status open_all() {
    // Reuse prepare's connections unless a file was replaced since (an
    // application that renames a new database into place): a lock on the
    // old inode would protect nothing.
    bool reusable = connections_.size() == options_.databases.size();
    for (const auto& connection : connections_) {
      reusable = reusable && connection->identity() &&
                 sqlite::file_identity(connection->path()) == connection->identity();
    }
    if (reusable) {
      return Status::ok();
    }
    close_all();
    for (const auto& path : options_.databases) {
      std::unique_ptr<Connection> connection;
      if (auto status = Connection::open(path, connection); !status.is_ok()) {
        return status;
      }
      connections_.push_back(std::move(connection));
    }
    return Status::ok();
  }

  void close_all() { connections_.clear(); }

  // Why the hold on this connection cannot be vouched for, or "".
  static std::string hold_broken(const Connection& connection) {
    if (!connection.in_transaction()) {
      // SQLite ends a transaction by itself after some errors (I/O, full disk).
      return connection.path() + ": the write transaction ended during the hold";
    }
    auto now = sqlite::file_identity(connection.path());
    if (!now) {
      return connection.path() + ": the database file was removed during the hold";
    }
    if (connection.identity() && *now != *connection.identity()) {
      return connection.path() + ": the database file was replaced during the hold; the lock "
                                 "was on the old file";
    }
    return "";
  }

  static nlohmann::json side_file(const std::string& path) {
    std::error_code ec;
    auto size = fs::file_size(path, ec);
    if (ec) {
      return {{"exists", false}};
    }
    return {{"exists", true}, {"path", path}, {"bytes", size}};
  }

  WriterSpec spec_;
  SqliteOptions options_;
  WriterEnvironment env_;
  std::vector<std::unique_ptr<Connection>> connections_;
  std::vector<HeldInfo> held_;
  bool holding_ = false;
};

}  // namespace

void register_sqlite_writer(WriterRegistry& registry) {
  registry.add(WriterType{
      .type = "sqlite",
      .default_level = Level::database,
      .description = "holds a write lock on SQLite databases; checkpoints their WAL first",
      .create = [](const WriterSpec& spec, const WriterEnvironment& env) -> std::unique_ptr<Writer> {
        auto options = parse_options(spec.options);
        // libsqlite3 is loaded here, when the config names a sqlite writer,
        // so that a missing library fails config loading and --check-config.
        (void)sqlite::sqlite_api();
        return std::make_unique<SqliteWriter>(spec, std::move(options), env);
      },
  });
}

}  // namespace quiesce::writers

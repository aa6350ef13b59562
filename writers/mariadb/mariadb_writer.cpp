#include "writers/mariadb/mariadb_writer.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "platform/linux/mountinfo.hpp"
#include "quiesce/json_fields.hpp"
#include "writers/mariadb/libmariadb_api.hpp"
#include "writers/mariadb/mariadb_connection.hpp"

namespace quiesce::writers {

namespace {

namespace fs = std::filesystem;
using mariadb::Budget;
using mariadb::ConnectParams;
using mariadb::Connection;
using mariadb::Row;
using std::chrono::milliseconds;

// How the server is held still. MariaDB documents BACKUP STAGE START +
// BLOCK_COMMIT for storage snapshots (10.4+): DML on transactional tables
// goes on until BLOCK_COMMIT, and only commits wait during the hold. FLUSH
// TABLES WITH READ LOCK is the older recipe (and MySQL's): every write waits.
enum class Method { auto_select, backup_stage, flush_tables };

const char* to_string(Method method) {
  switch (method) {
    case Method::backup_stage: return "backup_stage";
    case Method::flush_tables: return "flush_tables";
    case Method::auto_select: break;
  }
  return "auto";
}

// BACKUP STAGE appeared in MariaDB 10.4.1.
constexpr unsigned long kFirstBackupStageVersion = 100401;
// BINLOG MONITOR replaced REPLICATION CLIENT for SHOW MASTER STATUS in 10.5.2.
constexpr unsigned long kFirstBinlogMonitorVersion = 100502;
// MySQL 8.2 renamed SHOW MASTER STATUS to SHOW BINARY LOG STATUS (8.4 dropped the old name).
constexpr unsigned long kFirstBinaryLogStatusVersion = 80200;
// ER_SPECIFIC_ACCESS_DENIED_ERROR: "you need (at least one of) the RELOAD privilege(s)".
constexpr unsigned int kMissingPrivilege = 1227;
// How often freeze looks whether InnoDB's background flush has run.
constexpr auto kLogFlushPoll = std::chrono::milliseconds(10);
// Every non-system schema, for the engine summary in identify.
constexpr const char* kSystemSchemas =
    "('mysql','information_schema','performance_schema','sys')";

struct MariadbOptions {
  ConnectParams connect;
  Method method = Method::auto_select;
};

MariadbOptions parse_options(const nlohmann::json& json) {
  MariadbOptions options;
  JsonFields fields(json, "options");
  const bool has_socket = fields.has("socket");
  options.connect.socket = fields.string("socket", std::string("/run/mysqld/mysqld.sock"));
  if (options.connect.socket.empty() || options.connect.socket.front() != '/') {
    throw FieldError(fields.path_of("socket"), "must be an absolute path to the server's socket");
  }
  if (auto host = fields.optional_string("host")) {
    if (has_socket) {
      throw FieldError(fields.path_of("host"),
                       "give options.socket or options.host (TCP), not both");
    }
    if (host->empty()) {
      throw FieldError(fields.path_of("host"), "must not be empty");
    }
    options.connect.host = *host;
    options.connect.socket.clear();
  }
  if (fields.has("port") && options.connect.host.empty()) {
    throw FieldError(fields.path_of("port"), "is for TCP: give options.host too");
  }
  options.connect.port = static_cast<int>(fields.integer("port", 3306, 1, 65535));
  options.connect.user = fields.string("user", std::string("root"));
  if (options.connect.user.empty()) {
    throw FieldError(fields.path_of("user"), "must not be empty");
  }
  options.connect.password = fields.secret_file("password_file");
  options.connect.connect_timeout =
      fields.millis("connect_timeout_ms", milliseconds(5000), std::chrono::minutes(10));
  if (options.connect.connect_timeout.count() == 0) {
    throw FieldError(fields.path_of("connect_timeout_ms"), "must be more than 0");
  }
  const auto method = fields.string("method", std::string("auto"));
  if (method == "auto") {
    options.method = Method::auto_select;
  } else if (method == "backup_stage") {
    options.method = Method::backup_stage;
  } else if (method == "flush_tables") {
    options.method = Method::flush_tables;
  } else {
    throw FieldError(fields.path_of("method"), "'" + method +
                                                   "' is not a method: use auto, backup_stage "
                                                   "or flush_tables");
  }
  fields.reject_unknown();
  return options;
}

// 'user'@'host' as GRANT wants it.
std::string quote_account(const std::string& current_user) {
  auto quote = [](const std::string& text) {
    std::string out = "'";
    for (char c : text) {
      out += c;
      if (c == '\'') {
        out += '\'';
      }
    }
    return out + "'";
  };
  const auto at = current_user.rfind('@');
  if (at == std::string::npos) {
    return quote(current_user);
  }
  return quote(current_user.substr(0, at)) + "@" + quote(current_user.substr(at + 1));
}

class MariadbWriter final : public Writer {
 public:
  MariadbWriter(WriterSpec spec, MariadbOptions options, WriterEnvironment env)
      : spec_(std::move(spec)),
        options_(std::move(options)),
        env_(std::move(env)),
        where_("mariadb writer '" + spec_.name + "'") {}

  ~MariadbWriter() override {
    if (stage_ != Stage::none && held_ && held_->ok()) {
      log().warn("{}: closing the held connection at shutdown; the server releases its lock",
                 where_);
    }
  }
  MariadbWriter(const MariadbWriter&) = delete;
  MariadbWriter& operator=(const MariadbWriter&) = delete;

  Status identify(const PhaseContext& ctx, Identity& out) override {
    // A connection of its own: identify may come while frozen, and the held
    // connection runs nothing but the hold.
    std::unique_ptr<Connection> connection;
    const auto budget = CallBudget::of(ctx);
    if (auto status = Connection::open(options_.connect, where_, budget, connection);
        !status.is_ok()) {
      return status;
    }
    const bool mariadb = connection->is_mariadb();
    std::vector<Row> rows;
    if (auto status = connection->query(
            "read the server's settings",
            "SELECT @@version, @@version_comment, @@datadir, @@log_bin, @@log_bin_basename, "
            "@@innodb_flush_log_at_trx_commit, @@sync_binlog, @@innodb_log_group_home_dir, "
            "@@innodb_data_home_dir, @@innodb_undo_directory",
            budget, rows);
        !status.is_ok()) {
      return status;
    }
    const std::string data_directory = first_text(rows, 2);
    const bool log_bin = first_text(rows, 3) == "1";
    const Method method = resolve_method(*connection);
    out.metadata["server_version"] = first_text(rows, 0);
    out.metadata["version_comment"] = first_text(rows, 1);
    out.metadata["flavor"] = mariadb ? "mariadb" : "mysql";
    out.metadata["method"] = to_string(method);
    out.metadata["log_bin"] = log_bin;
    out.metadata["innodb_flush_log_at_trx_commit"] = first_text(rows, 5);
    out.metadata["sync_binlog"] = first_text(rows, 6);
    out.metadata["connection"] = {{"via", options_.connect.describe()},
                                  {"user", options_.connect.user}};

    nlohmann::json notes = nlohmann::json::array();
    if (method == Method::backup_stage && !supports_backup_stage(*connection)) {
      notes.push_back("options.method is backup_stage but this server has no BACKUP STAGE "
                      "(MariaDB 10.4 or later): freeze will fail");
    }
    if (first_text(rows, 5) != "1") {
      notes.push_back(
          "innodb_flush_log_at_trx_commit = " + first_text(rows, 5) +
          ": commits are acknowledged before InnoDB's log is on disk, so freeze flushes it "
          "under the lock" +
          (first_text(rows, 5) == "0"
               ? std::string(" by waiting for InnoDB's background flush (up to "
                             "innodb_flush_log_at_timeout seconds of hold)")
               : std::string(" (FLUSH ENGINE LOGS)")));
    }
    if (log_bin && first_text(rows, 6) == "0") {
      notes.push_back("sync_binlog = 0: the binary log is not synced at commit; the snapshot's "
                      "fsfreeze flushes it, but a replica restored from it relies on that");
    }

    auto table = platform::read_mountinfo();
    std::set<std::string> mounts;
    auto add_component = [&](const std::string& kind, const std::string& name, std::string path) {
      if (path.empty()) {
        return;
      }
      if (path.front() != '/') {
        path = (fs::path(data_directory) / path).lexically_normal().string();
      }
      while (path.size() > 1 && path.back() == '/') {
        path.pop_back();
      }
      nlohmann::json component = {{"kind", kind}, {"name", name}, {"path", path}, {"mount", nullptr}};
      if (table.table) {
        if (const auto* mount = table.table->mount_containing(path)) {
          component["mount"] = mount->mount_point;
          component["fstype"] = mount->fstype;
          component["device"] = mount->device.to_string();
          mounts.insert(mount->mount_point);
        }
      }
      out.components.push_back(std::move(component));
    };
    add_component("data_directory", "datadir", data_directory);
    add_component("redo_log", "innodb_log_group_home_dir", first_text(rows, 7).empty() ? data_directory : first_text(rows, 7));
    add_component("system_tablespace", "innodb_data_home_dir",
                  first_text(rows, 8).empty() ? data_directory : first_text(rows, 8));
    add_component("undo", "innodb_undo_directory",
                  first_text(rows, 9).empty() ? data_directory : first_text(rows, 9));
    if (log_bin) {
      const auto basename = first_text(rows, 4);
      add_component("binlog", "log_bin_basename",
                    basename.empty() ? data_directory : fs::path(basename).parent_path().string());
    }
    if (mariadb) {
      if (connection->query("read aria_log_dir_path", "SELECT @@aria_log_dir_path", budget, rows)
              .is_ok()) {
        add_component("aria_log", "aria_log_dir_path",
                      first_text(rows, 0).empty() ? data_directory : first_text(rows, 0));
      }
    }

    if (auto status = connection->query(
            "list the storage engines in use",
            std::string("SELECT ENGINE, COUNT(*) FROM information_schema.TABLES WHERE "
                        "TABLE_SCHEMA NOT IN ") +
                kSystemSchemas + " AND ENGINE IS NOT NULL GROUP BY ENGINE ORDER BY ENGINE",
            budget, rows);
        !status.is_ok()) {
      return status;
    }
    nlohmann::json engines = nlohmann::json::object();
    for (const auto& row : rows) {
      if (row.size() == 2 && row[0] && row[1]) {
        engines[*row[0]] = std::stoll(*row[1]);
      }
    }
    out.metadata["tables_by_engine"] = std::move(engines);
    out.metadata["mounts"] = mounts;
    if (!table.table) {
      out.metadata["mountinfo_error"] = table.error;
    }
    if (mounts.size() > 1) {
      notes.push_back("the server's files span several mounts: snapshot (and fsfreeze) all of them");
    }
    out.metadata["notes"] = std::move(notes);
    return Status::ok();
  }

  Status prepare(const PhaseContext& ctx) override {
    if (stage_ != Stage::none) {
      return Status::ok();  // prepared or holding already
    }
    return begin(CallBudget::of(ctx));
  }

  Status freeze(const PhaseContext& ctx) override {
    if (stage_ == Stage::holding) {
      return Status::ok();
    }
    const auto budget = CallBudget::of(ctx);
    hold_lost_.clear();
    result_ = nlohmann::json();
    // Without a prepare (or after the prepared connection died) the
    // preliminaries run here, inside the hold window.
    if (stage_ != Stage::prepared || !held_ || !held_->ok()) {
      drop_held();
      if (auto status = begin(budget); !status.is_ok()) {
        return status;
      }
    }
    const auto started = Clock::now();
    if (auto status = set_lock_wait_timeout(budget); !status.is_ok()) {
      drop_held();
      return status;
    }
    std::vector<Row> rows;
    // BLOCK_COMMIT passes through FLUSH and BLOCK_DDL: DDL and commits wait from here
    // on, non-transactional tables are flushed and closed, and the binary
    // log is flushed. FLUSH TABLES WITH READ LOCK blocks every write.
    const bool backup_stage = method_ == Method::backup_stage;
    if (auto status = held_->query(backup_stage ? "block commits (BACKUP STAGE BLOCK_COMMIT)"
                                                : "lock the server (FLUSH TABLES WITH READ LOCK)",
                                   backup_stage ? "BACKUP STAGE BLOCK_COMMIT"
                                                : "FLUSH TABLES WITH READ LOCK",
                                   budget, rows, grant_reload());
        !status.is_ok()) {
      drop_held();
      return status;
    }
    stage_ = Stage::holding;
    held_thread_id_ = held_->thread_id();
    timings_["lock_ms"] = elapsed_ms(started);
    // With innodb_flush_log_at_trx_commit 0 or 2 an acknowledged commit may
    // still sit in InnoDB's log buffer (0) or only in the page cache (2);
    // with commits blocked, every one of them must reach the log file.
    if (flush_log_at_trx_commit_ != "1") {
      if (auto status = flush_innodb_log(budget); !status.is_ok()) {
        drop_held();
        return status;
      }
    }
    // Commits are blocked: the position now is exactly what the snapshot holds.
    if (auto status = read_position(budget); !status.is_ok()) {
      drop_held();
      return status;
    }
    timings_["freeze_ms"] = elapsed_ms(started);
    log().info("{}: {} held on connection {} in {:.1f} ms{}", where_,
               backup_stage ? "BACKUP STAGE BLOCK_COMMIT" : "FLUSH TABLES WITH READ LOCK",
               held_thread_id_, elapsed_ms(started),
               position_["binlog"].is_null()
                   ? std::string()
                   : ", binlog " + position_["binlog"]["file"].get<std::string>() + ":" +
                         std::to_string(position_["binlog"]["position"].get<long long>()));
    return Status::ok();
  }

  Status thaw(const PhaseContext& ctx, HoldReport& hold) override {
    if (stage_ != Stage::holding) {
      if (!hold_lost_.empty()) {
        hold.continuous = false;
        hold.detail = where_ + ": " + hold_lost_;
      }
      drop_held();  // only prepared (thaw without freeze): let go of the backup stage
      return Status::ok();
    }
    const auto started = Clock::now();
    // There is no reconnect: if this statement succeeds on the connection
    // that took the lock, the lock was held all along.
    std::vector<Row> rows;
    auto status = held_->query("release the lock", release_sql(), CallBudget::of(ctx), rows);
    timings_["thaw_ms"] = elapsed_ms(started);
    stage_ = Stage::none;
    if (!status.is_ok()) {
      hold_lost_ = "the connection holding the lock (id " + std::to_string(held_thread_id_) +
                   ") was lost during the hold (" +
                   (held_->lost_reason().empty() ? status.error().message : held_->lost_reason()) +
                   "); the server released the lock then, so the snapshot is only "
                   "crash-consistent";
      hold.continuous = false;
      hold.detail = where_ + ": " + hold_lost_;
      log().warn("{}", hold.detail);
    } else {
      log().info("{}: lock released after the hold ({:.1f} ms)", where_, elapsed_ms(started));
    }
    drop_held();
    return Status::ok();
  }

  Status post_snapshot(const PhaseContext&, const SnapshotInfo& snapshot,
                       nlohmann::json& artifacts) override {
    if (!result_.is_null()) {
      artifacts = result_;  // a repeated call: same answer
      return Status::ok();
    }
    if (!hold_lost_.empty()) {
      return Status::inconsistent(where_ + ": " + hold_lost_);
    }
    if (position_.is_null()) {
      return Status::non_retryable(where_ + ": nothing was held (freeze did not run)");
    }
    nlohmann::json result = position_;
    result["method"] = to_string(method_);
    result["held_connection_id"] = held_thread_id_;
    result["snapshot_id"] = snapshot.snapshot_id;
    result["timings_ms"] = timings_;
    result["restore"] =
        "start the server on the restored files: InnoDB crash recovery brings it to the held "
        "state; to seed a replica, use the binlog/GTID position here (docs/writers/mariadb.md)";
    result_ = result;
    artifacts = std::move(result);
    return Status::ok();
  }

  Status abort(const PhaseContext&) override {
    if (stage_ != Stage::none && held_ && held_->ok()) {
      log().info("{}: abort releases the lock held on connection {}", where_, held_->thread_id());
      // Releasing explicitly (rather than just closing) means the lock is
      // gone when abort returns, not when the server gets round to the
      // closed connection. Bounded: closing releases it anyway.
      Budget quick;
      quick.deadline = Clock::now() + std::chrono::seconds(2);
      std::vector<Row> rows;
      (void)held_->query("release the lock", release_sql(), quick, rows);
    }
    drop_held();
    position_ = nlohmann::json();
    return Status::ok();
  }

  Status post_restore(const PhaseContext&, const RestoreInfo& restore) override {
    log().info("{}: restored from checkpoint '{}' (session {}); the server recovers by itself "
               "on start (InnoDB crash recovery from the held state)",
               where_, restore.checkpoint_id, restore.session_id);
    return Status::ok();
  }

 private:
  enum class Stage { none, prepared, holding };

  spdlog::logger& log() { return env_.logger ? *env_.logger : *spdlog::default_logger(); }

  [[nodiscard]] static bool supports_backup_stage(const Connection& connection) {
    return connection.is_mariadb() && connection.server_version() >= kFirstBackupStageVersion;
  }

  [[nodiscard]] Method resolve_method(const Connection& connection) const {
    if (options_.method != Method::auto_select) {
      return options_.method;
    }
    return supports_backup_stage(connection) ? Method::backup_stage : Method::flush_tables;
  }

  [[nodiscard]] const char* release_sql() const {
    return method_ == Method::backup_stage ? "BACKUP STAGE END" : "UNLOCK TABLES";
  }

  void drop_held() {
    held_.reset();  // the server releases whatever the connection held
    stage_ = Stage::none;
  }

  // Everything before the hold: connect (and authenticate), check the
  // privileges the hold needs, and do the slow flushing that does not block
  // the application, so freeze itself is short.
  Status begin(const Budget& budget) {
    if (auto status = Connection::open(options_.connect, where_, budget, held_);
        !status.is_ok()) {
      return status;
    }
    method_ = resolve_method(*held_);
    if (method_ == Method::backup_stage && !supports_backup_stage(*held_)) {
      const auto version = held_->server_info();
      drop_held();
      return Status::non_retryable(where_ + ": BACKUP STAGE needs MariaDB 10.4 or later and the "
                                            "server is " + version +
                                   "; set options.method to flush_tables (or auto)");
    }
    const auto started = Clock::now();
    std::vector<Row> rows;
    if (auto status = held_->query("read the account and settings",
                                   "SELECT CURRENT_USER(), @@log_bin, @@innodb_flush_log_at_trx_commit",
                                   budget, rows);
        !status.is_ok()) {
      drop_held();
      return status;
    }
    account_ = quote_account(first_text(rows, 0));
    log_bin_ = first_text(rows, 1) == "1";
    flush_log_at_trx_commit_ = first_text(rows, 2);
    if (auto status = set_lock_wait_timeout(budget); !status.is_ok()) {
      drop_held();
      return status;
    }
    // Both privileges the hold needs are tried now, before anything is
    // blocked, and every one missing is named at once: an admin should not
    // have to fix them one failed checkpoint at a time.
    std::vector<std::string> denied;
    auto attempt = [&](std::string_view action, const std::string& sql,
                       const std::string& grant) -> Status {
      mariadb::ServerError error;
      auto status = held_->query(action, sql, budget, rows, grant, &error);
      if (!status.is_ok() && error.code == kMissingPrivilege) {
        denied.push_back(status.error().message.substr(where_.size() + 2));
        return Status::ok();  // collected; reported together below
      }
      return status;
    };
    // The binlog position is read under the lock.
    if (log_bin_) {
      if (auto status = attempt("read the binary log position", binlog_status_sql(), grant_binlog());
          !status.is_ok()) {
        drop_held();
        return status;
      }
    }
    // BACKUP STAGE START blocks nothing the application does. FLUSH (and
    // BLOCK_DDL) are left to BLOCK_COMMIT in freeze: FLUSH already makes
    // writes to non-transactional tables (MyISAM) wait, and prepare may come
    // long before the hold. For FLUSH TABLES WITH READ LOCK, flushing the
    // tables first makes the lock quick (the usual practice of backup
    // tools); it locks nothing afterwards.
    const bool backup_stage = method_ == Method::backup_stage;
    if (auto status = attempt(backup_stage ? "run BACKUP STAGE START" : "flush the tables (FLUSH TABLES)",
                              backup_stage ? "BACKUP STAGE START" : "FLUSH NO_WRITE_TO_BINLOG TABLES",
                              grant_reload());
        !status.is_ok()) {
      drop_held();
      return status;
    }
    if (!denied.empty()) {
      drop_held();
      std::string message = where_ + ": the account " + account_ + " lacks privileges: ";
      for (std::size_t i = 0; i < denied.size(); ++i) {
        message += (i == 0 ? "" : "; ") + denied[i];
      }
      return Status::non_retryable(message);
    }
    stage_ = Stage::prepared;
    timings_ = nlohmann::json::object();
    timings_["prepare_ms"] = elapsed_ms(started);
    log().info("{}: prepared ({}) on connection {} in {:.1f} ms", where_, to_string(method_),
               held_->thread_id(), elapsed_ms(started));
    return Status::ok();
  }

  // The server gives up waiting for a lock after lock_wait_timeout seconds;
  // matching it to the call's deadline makes a lock the server cannot get
  // in time an error the server reports (and cleans up) itself.
  Status set_lock_wait_timeout(const Budget& budget) {
    if (budget.deadline == Clock::time_point::max()) {
      return Status::ok();
    }
    const double left =
        std::chrono::duration<double>(budget.deadline - Clock::now()).count();
    const auto seconds = static_cast<long long>(std::clamp(std::ceil(left), 1.0, 31536000.0));
    std::vector<Row> rows;
    return held_->query("set lock_wait_timeout",
                        "SET SESSION lock_wait_timeout = " + std::to_string(seconds), budget, rows);
  }

  Status read_position(const Budget& budget) {
    position_ = nlohmann::json::object();
    position_["server_version"] = held_->server_info();
    position_["binlog"] = nullptr;
    std::vector<Row> rows;
    if (log_bin_) {
      if (auto status = held_->query("read the binary log position", binlog_status_sql(), budget,
                                     rows, grant_binlog());
          !status.is_ok()) {
        return status;
      }
      if (!rows.empty()) {
        const auto position = first_text(rows, 1);
        position_["binlog"] = {{"file", first_text(rows, 0)},
                               {"position", position.empty() ? 0LL : std::stoll(position)}};
      }
    }
    const bool mariadb = held_->is_mariadb();
    const std::string gtid_key = mariadb ? "gtid_binlog_pos" : "gtid_executed";
    if (auto status = held_->query("read the GTID position",
                                   mariadb ? "SELECT @@global.gtid_binlog_pos"
                                           : "SELECT @@global.gtid_executed",
                                   budget, rows);
        !status.is_ok()) {
      return status;
    }
    position_[gtid_key] = first_text(rows, 0);
    return Status::ok();
  }

  // FLUSH ENGINE LOGS writes InnoDB's log buffer to the log file when
  // innodb_flush_log_at_trx_commit is 2 (fsfreeze then syncs it), but does
  // nothing when it is 0: then only InnoDB's background flush, once every
  // innodb_flush_log_at_timeout seconds, writes it. So with 0 freeze waits
  // (within its deadline) until the log is flushed up to the LSN it had
  // when commits were blocked: up to a second of hold for no lost commit.
  Status flush_innodb_log(const Budget& budget) {
    const auto started = Clock::now();
    std::vector<Row> rows;
    if (auto status = held_->query("flush InnoDB's log (FLUSH ENGINE LOGS)",
                                   "FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS", budget, rows,
                                   grant_reload());
        !status.is_ok()) {
      return status;
    }
    if (flush_log_at_trx_commit_ == "0") {
      auto lsn = [&](const char* name, unsigned long long& out) -> Status {
        if (auto status = held_->query("read InnoDB's log position",
                                       std::string("SHOW GLOBAL STATUS LIKE '") + name + "'",
                                       budget, rows);
            !status.is_ok()) {
          return status;
        }
        out = first_text(rows, 1).empty() ? 0 : std::stoull(first_text(rows, 1));
        return Status::ok();
      };
      unsigned long long target = 0;
      unsigned long long flushed = 0;
      if (auto status = lsn("Innodb_lsn_current", target); !status.is_ok()) {
        return status;
      }
      if (target == 0) {
        log().warn("{}: innodb_flush_log_at_trx_commit = 0 and the server has no Innodb_lsn_* "
                   "status (MySQL): commits from the last second may be missing from the "
                   "snapshot", where_);
        return Status::ok();
      }
      for (;;) {
        if (auto status = lsn("Innodb_lsn_flushed", flushed); !status.is_ok()) {
          return status;
        }
        if (flushed >= target) {
          break;
        }
        if (budget.stop.stop_requested() || Clock::now() + kLogFlushPoll >= budget.deadline) {
          return Status::timeout(where_ + ": InnoDB's log was not flushed up to LSN " +
                                 std::to_string(target) + " (flushed: " + std::to_string(flushed) +
                                 ") before the deadline; with innodb_flush_log_at_trx_commit = 0 "
                                 "freeze needs up to innodb_flush_log_at_timeout seconds");
        }
        std::this_thread::sleep_for(kLogFlushPoll);
      }
    }
    timings_["log_flush_ms"] = elapsed_ms(started);
    return Status::ok();
  }

  [[nodiscard]] const char* binlog_status_sql() const {
    return !held_->is_mariadb() && held_->server_version() >= kFirstBinaryLogStatusVersion
               ? "SHOW BINARY LOG STATUS"
               : "SHOW MASTER STATUS";
  }

  [[nodiscard]] std::string grant_reload() const {
    return "GRANT RELOAD ON *.* TO " + account_ + ";";
  }

  [[nodiscard]] std::string grant_binlog() const {
    const bool binlog_monitor =
        held_ && held_->is_mariadb() && held_->server_version() >= kFirstBinlogMonitorVersion;
    return std::string("GRANT ") + (binlog_monitor ? "BINLOG MONITOR" : "REPLICATION CLIENT") +
           " ON *.* TO " + account_ + ";";
  }

  WriterSpec spec_;
  MariadbOptions options_;
  WriterEnvironment env_;
  std::string where_;
  std::unique_ptr<Connection> held_;  // the connection that holds the lock
  Stage stage_ = Stage::none;
  Method method_ = Method::backup_stage;  // resolved against the server in begin()
  std::string account_ = "CURRENT_USER";  // 'user'@'host', for GRANT hints
  bool log_bin_ = false;
  std::string flush_log_at_trx_commit_ = "1";  // innodb_flush_log_at_trx_commit
  unsigned long held_thread_id_ = 0;
  std::string hold_lost_;        // why the hold broke, until the next freeze
  nlohmann::json position_;      // binlog/GTID read under the lock
  nlohmann::json result_;        // post_snapshot's artifacts, for a repeated call
  nlohmann::json timings_ = nlohmann::json::object();
};

}  // namespace

void register_mariadb_writer(WriterRegistry& registry) {
  registry.add(WriterType{
      .type = "mariadb",
      .default_level = Level::database,
      .description = "MariaDB / MySQL: BACKUP STAGE BLOCK_COMMIT (or FLUSH TABLES WITH READ "
                     "LOCK) held on one connection across the snapshot; binlog/GTID position "
                     "as an artifact",
      .create = [](const WriterSpec& spec, const WriterEnvironment& env) -> std::unique_ptr<Writer> {
        auto options = parse_options(spec.options);
        // libmariadb is loaded here, when the config names a mariadb writer,
        // so that a missing libmariadb fails config loading and --check-config.
        (void)mariadb::libmariadb();
        return std::make_unique<MariadbWriter>(spec, std::move(options), env);
      },
  });
}

}  // namespace quiesce::writers

#include "writers/postgres/postgres_writer.hpp"

#include <filesystem>
#include <memory>
#include <set>

#include <spdlog/spdlog.h>

#include "platform/linux/mountinfo.hpp"
#include "quiesce/json_fields.hpp"
#include "writers/postgres/libpq_api.hpp"
#include "writers/postgres/pg_connection.hpp"

namespace quiesce::writers {

namespace {

namespace fs = std::filesystem;
using postgres::Budget;
using postgres::ConnectParams;
using postgres::Connection;
using postgres::Row;
using std::chrono::milliseconds;

struct PostgresOptions {
  ConnectParams connect;
  std::string label_prefix = "quiesce";
};

PostgresOptions parse_options(const nlohmann::json& json) {
  PostgresOptions options;
  JsonFields fields(json, "options");
  options.connect.host = fields.string("host", std::string("/var/run/postgresql"));
  if (options.connect.host.empty()) {
    throw FieldError(fields.path_of("host"), "name a socket directory or a host");
  }
  options.connect.port = static_cast<int>(fields.integer("port", 5432, 1, 65535));
  options.connect.user = fields.string("user", std::string("postgres"));
  options.connect.dbname = fields.string("dbname", std::string("postgres"));
  if (options.connect.user.empty()) {
    throw FieldError(fields.path_of("user"), "must not be empty");
  }
  if (options.connect.dbname.empty()) {
    throw FieldError(fields.path_of("dbname"), "must not be empty");
  }
  options.connect.password = fields.secret_file("password_file");
  options.connect.connect_timeout =
      fields.millis("connect_timeout_ms", milliseconds(5000), std::chrono::minutes(10));
  if (options.connect.connect_timeout.count() == 0) {
    throw FieldError(fields.path_of("connect_timeout_ms"), "must be more than 0");
  }
  options.label_prefix = fields.string("label_prefix", std::string("quiesce"));
  // The label is written into backup_label, one line per field.
  if (options.label_prefix.empty() || options.label_prefix.size() > 200 ||
      options.label_prefix.find_first_of("\r\n") != std::string::npos) {
    throw FieldError(fields.path_of("label_prefix"),
                     "must be 1 to 200 characters on one line");
  }
  fields.reject_unknown();
  return options;
}

class PostgresWriter final : public Writer {
 public:
  PostgresWriter(WriterSpec spec, PostgresOptions options, WriterEnvironment env)
      : spec_(std::move(spec)),
        options_(std::move(options)),
        env_(std::move(env)),
        where_("postgres writer '" + spec_.name + "'") {}

  ~PostgresWriter() override {
    if (stage_ != Stage::none) {
      log().warn("{}: closing the backup session at shutdown; the backup is abandoned", where_);
    }
  }
  PostgresWriter(const PostgresWriter&) = delete;
  PostgresWriter& operator=(const PostgresWriter&) = delete;

  Status identify(const PhaseContext& ctx, Identity& out) override {
    // A connection of its own: identify may come while frozen, and the held
    // session must not be used for anything but the backup.
    std::unique_ptr<Connection> connection;
    const auto budget = CallBudget::of(ctx);
    if (auto status = Connection::open(options_.connect, where_, budget, connection);
        !status.is_ok()) {
      return status;
    }
    std::vector<Row> rows;
    if (auto status = connection->query(
            "read the server's settings",
            "SELECT current_setting('server_version'), current_setting('server_version_num'), "
            "pg_is_in_recovery()::text, current_setting('wal_level'), "
            "current_setting('archive_mode'), "
            "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text "
            "ELSE pg_current_wal_lsn()::text END",
            {}, budget, rows);
        !status.is_ok()) {
      return status;
    }
    const auto version_num = std::stoi(first_text(rows, 1).empty() ? "0" : first_text(rows, 1));
    out.metadata["server_version"] = first_text(rows, 0);
    out.metadata["server_version_num"] = version_num;
    out.metadata["in_recovery"] = first_text(rows, 2) == "true";
    out.metadata["wal_level"] = first_text(rows, 3);
    out.metadata["archive_mode"] = first_text(rows, 4);
    out.metadata["wal_lsn"] = first_text(rows, 5);
    out.metadata["connection"] = {{"host", options_.connect.host},
                                  {"port", options_.connect.port},
                                  {"user", options_.connect.user},
                                  {"dbname", options_.connect.dbname}};
    out.metadata["label_prefix"] = options_.label_prefix;
    nlohmann::json notes = nlohmann::json::array();
    if (version_num < 150000) {
      notes.push_back("PostgreSQL 15 or later is needed (pg_backup_start); freeze will fail");
    }
    if (first_text(rows, 3) == "minimal") {
      notes.push_back("wal_level is minimal: pg_backup_start needs replica or logical");
    }

    auto table = platform::read_mountinfo();
    std::set<std::string> mounts;
    auto locate = [&](nlohmann::json& component, const std::string& path) {
      component["mount"] = nullptr;
      if (table.table && !path.empty() && path.front() == '/') {
        if (const auto* mount = table.table->mount_containing(path)) {
          component["mount"] = mount->mount_point;
          component["fstype"] = mount->fstype;
          component["device"] = mount->device.to_string();
          mounts.insert(mount->mount_point);
        }
      }
    };

    // SHOW data_directory needs superuser or pg_read_all_settings; without
    // it identify still answers, and says what is missing.
    postgres::ServerError denied;
    std::string data_directory;
    auto shown = connection->query("read data_directory", "SHOW data_directory", {}, budget, rows,
                                   grant_read_settings(), &denied);
    if (shown.is_ok()) {
      data_directory = first_text(rows, 0);
      nlohmann::json component = {{"kind", "data_directory"}, {"name", "data_directory"},
                                  {"path", data_directory}};
      locate(component, data_directory);
      out.components.push_back(std::move(component));
      // pg_wal may be a symlink to another disk, which must be snapshotted too.
      std::string wal_path = data_directory + "/pg_wal";
      std::error_code ec;
      if (auto resolved = fs::canonical(wal_path, ec); !ec) {
        wal_path = resolved.string();
      }
      nlohmann::json wal = {{"kind", "wal"}, {"name", "pg_wal"}, {"path", wal_path},
                            {"lsn", out.metadata["wal_lsn"]}};
      locate(wal, wal_path);
      out.components.push_back(std::move(wal));
    } else if (denied.sqlstate == "42501") {
      out.metadata["data_directory_error"] = shown.error().message;
      notes.push_back("data directory unknown: " + grant_read_settings());
    } else {
      return shown;
    }

    if (auto status = connection->query(
            "list the tablespaces",
            "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace ORDER BY spcname", {},
            budget, rows);
        !status.is_ok()) {
      return status;
    }
    for (const auto& row : rows) {
      const std::string name = row.size() > 0 && row[0] ? *row[0] : "";
      std::string location = row.size() > 1 && row[1] ? *row[1] : "";
      nlohmann::json component = {{"kind", "tablespace"}, {"name", name}};
      if (location.empty()) {
        // pg_default and pg_global live in the data directory.
        component["in_data_directory"] = true;
        component["path"] = data_directory.empty()
                                ? nlohmann::json(nullptr)
                                : nlohmann::json(data_directory +
                                                 (name == "pg_global" ? "/global" : "/base"));
        if (!data_directory.empty()) {
          locate(component, data_directory);
        }
      } else {
        component["in_data_directory"] = false;
        component["path"] = location;
        locate(component, location);
      }
      out.components.push_back(std::move(component));
    }
    out.metadata["mounts"] = mounts;
    if (!table.table) {
      out.metadata["mountinfo_error"] = table.error;
    }
    if (mounts.size() > 1) {
      notes.push_back("the cluster spans several mounts: snapshot (and fsfreeze) all of them");
    }
    out.metadata["notes"] = std::move(notes);
    return Status::ok();
  }

  // pg_backup_start is the slow part (it waits for a checkpoint, hundreds of
  // ms under write load), and nothing requires it inside the hold: the copy
  // of a low-level backup may be taken at any time between pg_backup_start
  // and pg_backup_stop, and recovery from the backup_label starts at the
  // backup's checkpoint whatever happened between it and the snapshot. So
  // prepare starts the backup, and freeze only checks that it is still open.
  Status prepare(const PhaseContext& ctx) override {
    if (stage_ == Stage::frozen || stage_ == Stage::thawed) {
      return Status::ok();  // already frozen: nothing to prepare
    }
    if (stage_ == Stage::started) {
      if (label_ == label_for(ctx) && held_ && held_->still_open()) {
        return Status::ok();  // a repeated prepare of this session
      }
      close_backup();  // another session's backup, or its session died: start afresh
    }
    return start_backup(ctx, "prepare_ms");
  }

  Status freeze(const PhaseContext& ctx) override {
    if (stage_ == Stage::frozen) {
      return Status::ok();  // already holding a backup open
    }
    hold_lost_.clear();
    const auto started = Clock::now();
    // No round trip when prepare started the backup: still_open() only reads
    // what the server may have sent (a FATAL before it closed the session).
    if (stage_ != Stage::started || label_ != label_for(ctx) || !held_ || !held_->still_open()) {
      // Without a prepare, or after the session died since (which ended
      // its backup), the backup starts here, inside the hold window.
      close_backup();
      if (auto status = start_backup(ctx, "start_in_freeze_ms"); !status.is_ok()) {
        return status;
      }
    }
    stage_ = Stage::frozen;
    last_timings_["freeze_ms"] = elapsed_ms(started);
    return Status::ok();
  }

  Status thaw(const PhaseContext& ctx, HoldReport& hold) override {
    if (stage_ == Stage::started) {
      close_backup();  // prepared but never frozen: nothing will snapshot it
      return Status::ok();
    }
    if (stage_ != Stage::frozen) {
      if (!hold_lost_.empty()) {
        hold.continuous = false;
        hold.detail = where_ + ": " + hold_lost_;
      }
      return Status::ok();  // nothing held, or a second thaw
    }
    // The database itself has nothing to release: the backup stays open
    // until post_snapshot. What matters is whether it stayed open all along:
    // a session that died ended the backup with it.
    const auto started = Clock::now();
    std::string lost;
    if (!held_ || !held_->ok()) {
      lost = "the backup session (backend pid " + std::to_string(backend_pid_) +
             ") was lost during the hold: " + (held_ ? held_->error_message() : "closed");
    } else {
      std::vector<Row> rows;
      if (auto status = held_->query("check the backup session", "SELECT 1", {}, CallBudget::of(ctx),
                                     rows);
          !status.is_ok()) {
        lost = "the backup session (backend pid " + std::to_string(backend_pid_) +
               ") was lost during the hold: " + status.error().message;
      }
    }
    last_timings_["thaw_ms"] = elapsed_ms(started);
    stage_ = Stage::thawed;
    if (!lost.empty()) {
      close_backup();
      hold_lost_ = lost + "; the backup was aborted, the snapshot is only crash-consistent";
      hold.continuous = false;
      hold.detail = where_ + ": " + hold_lost_;
      log().warn("{}", hold.detail);
    }
    return Status::ok();
  }

  Status post_snapshot(const PhaseContext& ctx, const SnapshotInfo& snapshot,
                       nlohmann::json& artifacts) override {
    if (stage_ == Stage::started) {
      return Status::non_retryable(where_ + ": the backup was started but freeze did not run");
    }
    if (stage_ == Stage::none) {
      if (!stop_result_.is_null()) {
        artifacts = stop_result_;  // a repeated call: same answer
        return Status::ok();
      }
      if (!hold_lost_.empty()) {
        return Status::inconsistent(where_ + ": no backup_label: " + hold_lost_);
      }
      return Status::non_retryable(where_ + ": no backup in progress (freeze did not run)");
    }
    const auto started = Clock::now();
    std::vector<Row> rows;
    // wait_for_archive => false: the host's snapshot is the copy; waiting
    // for WAL archiving would tie the checkpoint to archive_command's pace.
    auto status = held_->query(
        "stop the backup (pg_backup_stop)",
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => false)",
        {}, CallBudget::of(ctx), rows, grant_backup());
    close_backup();
    if (!status.is_ok()) {
      hold_lost_ = status.error().message;
      return Status::inconsistent(where_ + ": no backup_label: " + status.error().message);
    }
    last_timings_["post_snapshot_ms"] = elapsed_ms(started);
    nlohmann::json result = {
        {"label", label_},
        {"start_lsn", start_lsn_},
        {"stop_lsn", first_text(rows, 0)},
        {"backup_label", first_text(rows, 1)},
        {"tablespace_map", first_text(rows, 2)},
        {"snapshot_id", snapshot.snapshot_id},
        {"timings_ms", last_timings_},
        {"restore",
         "write backup_label (and tablespace_map when not empty) into the restored data "
         "directory and provide the WAL archive up to stop_lsn (restore_command); see "
         "docs/writers/postgres.md"}};
    stop_result_ = result;
    artifacts = std::move(result);
    log().info("{}: backup '{}' stopped at {} in {:.1f} ms", where_, label_, first_text(rows, 0),
               elapsed_ms(started));
    return Status::ok();
  }

  Status abort(const PhaseContext&) override {
    if (stage_ != Stage::none) {
      log().info("{}: abort closes the backup session, which aborts backup '{}'", where_, label_);
    }
    // Closing the session is enough: PostgreSQL aborts a non-exclusive
    // backup when its session ends, and it writes no WAL doing so, so this
    // is safe even while a filesystem is still frozen.
    close_backup();
    return Status::ok();
  }

  Status post_restore(const PhaseContext&, const RestoreInfo& restore) override {
    log().info("{}: restored from checkpoint '{}' (session {}); PostgreSQL recovers by itself "
               "on start (with backup_label: from the backup's checkpoint)",
               where_, restore.checkpoint_id, restore.session_id);
    return Status::ok();
  }

 private:
  // none: no backup; started: prepare started it; frozen: freeze confirmed
  // it (the hold); thawed: after the hold, until post_snapshot stops it.
  enum class Stage { none, started, frozen, thawed };

  [[nodiscard]] std::string label_for(const PhaseContext& ctx) const {
    return options_.label_prefix + "-" + (ctx.session_id.empty() ? "session" : ctx.session_id);
  }

  // Opens the session if needed and runs pg_backup_start on it: an
  // immediate checkpoint (fast => true), so it needs no CHECKPOINT before.
  Status start_backup(const PhaseContext& ctx, const char* timing) {
    const auto budget = CallBudget::of(ctx);
    stop_result_ = nlohmann::json();
    last_timings_ = nlohmann::json::object();
    const auto started = Clock::now();
    if (auto status = ensure_session(budget); !status.is_ok()) {
      return status;
    }
    label_ = label_for(ctx);
    std::vector<Row> rows;
    // Non-exclusive: the backup belongs to this session and ends with it,
    // so an agent that dies leaves nothing behind in the server.
    if (auto status = held_->query("start the backup (pg_backup_start)",
                                   "SELECT pg_backup_start($1, fast => true)::text", {label_},
                                   budget, rows, grant_backup());
        !status.is_ok()) {
      close_backup();
      return status;
    }
    start_lsn_ = first_text(rows, 0);
    backend_pid_ = held_->backend_pid();
    stage_ = Stage::started;
    last_timings_[timing] = elapsed_ms(started);
    log().info("{}: backup '{}' started at {} in {:.1f} ms (backend pid {})", where_, label_,
               start_lsn_, elapsed_ms(started), backend_pid_);
    return Status::ok();
  }

  // Closing the session ends a backup still open in it, without writing WAL.
  void close_backup() {
    held_.reset();
    stage_ = Stage::none;
  }

  spdlog::logger& log() { return env_.logger ? *env_.logger : *spdlog::default_logger(); }

  Status ensure_session(const Budget& budget) {
    if (held_ && held_->ok()) {
      return Status::ok();
    }
    held_.reset();
    return Connection::open(options_.connect, where_, budget, held_);
  }

  [[nodiscard]] std::string quoted_user() const {
    std::string quoted = "\"";
    for (char c : options_.connect.user) {
      quoted += c;
      if (c == '"') {
        quoted += '"';
      }
    }
    return quoted + "\"";
  }

  [[nodiscard]] std::string grant_backup() const {
    return "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO " + quoted_user() +
           "; GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO " + quoted_user() + ";";
  }

  [[nodiscard]] std::string grant_read_settings() const {
    return "GRANT pg_read_all_settings TO " + quoted_user() + ";";
  }

  WriterSpec spec_;
  PostgresOptions options_;
  WriterEnvironment env_;
  std::string where_;
  std::unique_ptr<Connection> held_;  // the session that holds the backup
  Stage stage_ = Stage::none;
  std::string hold_lost_;  // why the hold broke, until the next freeze
  std::string label_;
  std::string start_lsn_;
  int backend_pid_ = 0;
  nlohmann::json stop_result_;
  nlohmann::json last_timings_ = nlohmann::json::object();
};

}  // namespace

void register_postgres_writer(WriterRegistry& registry) {
  registry.add(WriterType{
      .type = "postgres",
      .default_level = Level::database,
      .description = "PostgreSQL 15+: a non-exclusive backup started in prepare and held "
                     "across the snapshot; backup_label as an artifact",
      .create = [](const WriterSpec& spec, const WriterEnvironment& env) -> std::unique_ptr<Writer> {
        auto options = parse_options(spec.options);
        // libpq is loaded here, when the config names a postgres writer, so
        // that a missing libpq fails config loading and --check-config.
        (void)postgres::libpq();
        return std::make_unique<PostgresWriter>(spec, std::move(options), env);
      },
  });
}

}  // namespace quiesce::writers

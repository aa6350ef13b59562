#include "writers/redis/redis_writer.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "platform/linux/mountinfo.hpp"
#include "quiesce/json_fields.hpp"
#include "writers/redis/hiredis_api.hpp"
#include "writers/redis/redis_connection.hpp"

namespace quiesce::writers {

namespace {

namespace fs = std::filesystem;
using redis::Connection;
using redis::InfoFields;
using redis::Reply;
using std::chrono::milliseconds;

struct RedisOptions {
  redis::Target target;
  bool hold_writes = false;
  milliseconds bgsave_timeout{60000};
};

RedisOptions parse_options(const nlohmann::json& json) {
  RedisOptions options;
  JsonFields fields(json, "options");
  auto socket = fields.optional_string("socket");
  auto host = fields.optional_string("host");
  if (socket && host) {
    throw FieldError(fields.path_of("host"), "set either socket or host (and port), not both");
  }
  if (!socket && !host) {
    throw FieldError(fields.path_of("socket"),
                     "set socket (the server's Unix socket) or host and port");
  }
  if (socket) {
    if (socket->empty() || socket->front() != '/') {
      throw FieldError(fields.path_of("socket"), "'" + *socket + "' is not an absolute path");
    }
    if (fields.has("port")) {
      throw FieldError(fields.path_of("port"), "port goes with host, not with socket");
    }
    options.target.socket = *socket;
  } else {
    if (host->empty()) {
      throw FieldError(fields.path_of("host"), "must not be empty");
    }
    options.target.host = *host;
    options.target.port = static_cast<int>(fields.integer("port", 6379, 1, 65535));
  }
  options.target.user = fields.optional_string("user").value_or("");
  options.target.password_file = fields.optional_string("password_file").value_or("");
  if (!options.target.user.empty() && options.target.password_file.empty()) {
    throw FieldError(fields.path_of("user"),
                     "an ACL user needs options.password_file (credentials are never inline)");
  }
  if (!options.target.password_file.empty()) {
    const auto& file = options.target.password_file;
    if (file.front() != '/') {
      throw FieldError(fields.path_of("password_file"), "'" + file + "' is not an absolute path");
    }
    if (::access(file.c_str(), R_OK) != 0) {
      throw FieldError(fields.path_of("password_file"),
                       "'" + file + "' is not readable by the agent (" + std::strerror(errno) + ")");
    }
  }
  options.target.connect_timeout =
      fields.millis("connect_timeout_ms", milliseconds(2000), std::chrono::minutes(1));
  if (options.target.connect_timeout.count() == 0) {
    throw FieldError(fields.path_of("connect_timeout_ms"), "must be at least 1");
  }
  options.hold_writes = fields.boolean("hold_writes", false);
  options.bgsave_timeout = fields.millis("bgsave_timeout_ms", milliseconds(60000), std::chrono::hours(1));
  fields.reject_unknown();
  return options;
}

// Where the server keeps its data and how it persists it.
struct Persistence {
  std::string version;
  std::string run_id;
  std::string dir;
  std::string dbfilename;
  bool aof = false;
  std::string appendfilename;
  std::optional<std::string> appenddirname;  // Redis 7: multi-part AOF directory
  std::string appendfsync;
  std::string save;

  [[nodiscard]] std::string rdb_path() const { return dir + "/" + dbfilename; }
  [[nodiscard]] std::string aof_path() const {
    return dir + "/" + (appenddirname ? *appenddirname : appendfilename);
  }
  [[nodiscard]] std::string mode() const { return aof ? "aof" : "rdb"; }
};

// INFO server and every CONFIG GET in one pipelined round trip: freeze
// reads them again inside the hold window, where each round trip counts.
Status read_persistence(Connection& connection, Clock::time_point deadline, Persistence& out) {
  static constexpr std::array<std::string_view, 7> kParameters{
      "dir", "dbfilename", "appendonly", "appendfilename", "appendfsync", "save", "appenddirname"};
  std::vector<std::vector<std::string>> commands{{"INFO", "server"}};
  for (auto name : kParameters) {
    commands.push_back({"CONFIG", "GET", std::string(name)});
  }
  std::vector<Reply> replies;
  constexpr std::string_view action = "read its configuration (INFO server, CONFIG GET)";
  if (auto status = connection.pipeline(action, commands, deadline, replies); !status.is_ok()) {
    return status;
  }
  for (const auto& reply : replies) {
    if (reply.kind == Reply::Kind::error) {
      return redis::classify_error_reply(connection.target(), action, reply.text);
    }
  }
  auto server = redis::parse_info(replies[0].text);
  out.version = server["redis_version"];
  out.run_id = server["run_id"];
  // CONFIG GET answers a flat [name, value] array; empty for a parameter
  // this version lacks (appenddirname before Redis 7).
  auto value = [&](std::size_t index) -> std::optional<std::string> {
    const auto& reply = replies[index + 1];
    if (reply.kind == Reply::Kind::array && reply.elements.size() >= 2) {
      return reply.elements[1].text;
    }
    return std::nullopt;
  };
  out.dir = value(0).value_or("");
  out.dbfilename = value(1).value_or("");
  out.aof = value(2).value_or("") == "yes";
  out.appendfilename = value(3).value_or("");
  out.appendfsync = value(4).value_or("");
  out.save = value(5).value_or("");
  out.appenddirname = value(6);
  return Status::ok();
}

// fsyncs a file, or every regular file in a directory and the directory
// itself; "" when done, else why not. Redis fsyncs what it writes in
// `always` mode and its RDB file, but not what it wrote under `everysec`
// before the switch, nor the directory after renaming a new RDB into place.
std::string sync_path(const std::string& path) {
  std::error_code ec;
  const bool is_dir = fs::is_directory(path, ec);
  if (ec) {
    return "'" + path + "' is not visible to the agent (" + ec.message() + ")";
  }
  auto sync_one = [](const std::string& one, int flags) -> std::string {
    const int fd = ::open(one.c_str(), flags | O_CLOEXEC);
    if (fd < 0) {
      return "open '" + one + "': " + std::strerror(errno);
    }
    std::string error;
    if (::fsync(fd) != 0) {
      error = "fsync '" + one + "': " + std::strerror(errno);
    }
    ::close(fd);
    return error;
  };
  if (!is_dir) {
    auto error = sync_one(path, O_RDONLY);
    if (error.empty()) {
      error = sync_one(fs::path(path).parent_path().string(), O_RDONLY | O_DIRECTORY);
    }
    return error;
  }
  for (const auto& entry : fs::directory_iterator(path, ec)) {
    if (entry.is_regular_file(ec)) {
      if (auto error = sync_one(entry.path().string(), O_RDONLY); !error.empty()) {
        return error;
      }
    }
  }
  if (ec) {
    return "list '" + path + "': " + ec.message();
  }
  if (auto error = sync_one(path, O_RDONLY | O_DIRECTORY); !error.empty()) {
    return error;
  }
  return sync_one(fs::path(path).parent_path().string(), O_RDONLY | O_DIRECTORY);
}

long long to_number(const InfoFields& fields, std::string_view key, long long fallback) {
  auto it = fields.find(key);
  if (it == fields.end()) {
    return fallback;
  }
  try {
    return std::stoll(it->second);
  } catch (const std::exception&) {
    return fallback;
  }
}

class RedisWriter final : public Writer {
 public:
  RedisWriter(WriterSpec spec, RedisOptions options, WriterEnvironment env)
      : spec_(std::move(spec)), options_(std::move(options)), env_(std::move(env)) {}

  ~RedisWriter() override {
    if (holding_) {
      log().warn("redis writer '{}': releasing the hold at shutdown", spec_.name);
      std::string ignored;
      (void)release(Clock::now() + options_.target.connect_timeout + milliseconds(1000), ignored);
    }
  }
  RedisWriter(const RedisWriter&) = delete;
  RedisWriter& operator=(const RedisWriter&) = delete;

  Status identify(const PhaseContext& ctx, Identity& out) override {
    const auto deadline = deadline_of(ctx);
    // A connection of its own: identify may come while frozen, and the held
    // connection must not see anything but the hold.
    std::unique_ptr<Connection> connection;
    if (auto status = Connection::open(options_.target, deadline, connection); !status.is_ok()) {
      return status;
    }
    Persistence persistence;
    if (auto status = read_persistence(*connection, deadline, persistence); !status.is_ok()) {
      return status;
    }
    auto table = platform::read_mountinfo();
    auto component = [&](std::string kind, const std::string& path, bool active) {
      nlohmann::json item = {{"kind", std::move(kind)},
                             {"name", path},
                             {"path", path},
                             {"active", active},
                             {"mount", nullptr}};
      if (table.table) {
        if (const auto* mount = table.table->mount_containing(path)) {
          item["mount"] = mount->mount_point;
          item["fstype"] = mount->fstype;
          item["device"] = mount->device.to_string();
        }
      }
      return item;
    };
    // Without AOF the RDB file is what a restarted server loads; with AOF
    // the AOF wins and the RDB is only a leftover.
    out.components.push_back(component("rdb", persistence.rdb_path(), !persistence.aof));
    out.components.push_back(component("aof", persistence.aof_path(), persistence.aof));
    out.metadata["redis_version"] = persistence.version;
    out.metadata["run_id"] = persistence.run_id;
    out.metadata["endpoint"] = options_.target.endpoint();
    out.metadata["persistence"] = persistence.mode();
    out.metadata["dir"] = persistence.dir;
    out.metadata["appendfsync"] = persistence.appendfsync;
    out.metadata["save"] = persistence.save;
    out.metadata["hold_writes"] = options_.hold_writes;
    if (!table.table) {
      out.metadata["mountinfo_error"] = table.error;
    }
    return Status::ok();
  }

  Status prepare(const PhaseContext& ctx) override {
    if (holding_) {
      return Status::ok();
    }
    // Connect and authenticate now, outside the hold window, and find out
    // early if the server is unreachable or the credentials are wrong.
    const auto deadline = deadline_of(ctx);
    if (auto status = ensure_connection(deadline); !status.is_ok()) {
      return status;
    }
    return read_persistence(*connection_, deadline, persistence_);
  }

  Status freeze(const PhaseContext& ctx) override {
    if (holding_) {
      return Status::ok();  // already holding; a repeated freeze changes nothing
    }
    const auto deadline = deadline_of(ctx);
    // On prepare's connection, reading the settings again (one round trip)
    // is what proves it works: no PING first. Only a connection found dead
    // is opened again here, inside the hold window.
    Status read = Status::ok();
    if (connection_ && connection_->usable()) {
      read = read_persistence(*connection_, deadline, persistence_);
    }
    if (!connection_ || !connection_->usable()) {
      connection_.reset();
      if (auto status = Connection::open(options_.target, deadline, connection_); !status.is_ok()) {
        return status;
      }
      read = read_persistence(*connection_, deadline, persistence_);
    }
    if (!read.is_ok()) {
      return read;
    }
    files_synced_ = nlohmann::json();
    bgsave_ms_.reset();
    last_save_time_.reset();
    auto status = hold(ctx, deadline);
    if (!status.is_ok()) {
      // All or nothing: undo the pause / the appendfsync switch before reporting.
      std::string ignored;
      auto undo = release(Clock::now() + options_.target.connect_timeout + milliseconds(1000), ignored);
      if (!undo.is_ok()) {
        log().warn("redis writer '{}': undoing a failed freeze: {}", spec_.name, undo.error().message);
      }
      return status;
    }
    holding_ = true;
    return Status::ok();
  }

  Status thaw(const PhaseContext& ctx, HoldReport& hold) override {
    if (!holding_ && !paused_ && !restore_appendfsync_) {
      return Status::ok();  // nothing held: a thaw after a failed freeze, or a second thaw
    }
    std::string broken;
    auto status = release(deadline_of(ctx), broken);
    holding_ = false;
    if (!broken.empty()) {
      hold.continuous = false;
      hold.detail = "redis writer '" + spec_.name + "': " + broken;
      log().warn("{}", hold.detail);
    }
    return status;
  }

  Status post_snapshot(const PhaseContext&, const SnapshotInfo& snapshot,
                       nlohmann::json& artifacts) override {
    // From what freeze saw: the server need not be reachable now.
    artifacts["persistence"] = persistence_.mode();
    artifacts["redis_version"] = persistence_.version;
    artifacts["run_id"] = persistence_.run_id;
    artifacts["rdb_path"] = persistence_.rdb_path();
    artifacts["aof_path"] = persistence_.aof_path();
    artifacts["appendfsync"] = persistence_.appendfsync;
    artifacts["hold_writes"] = options_.hold_writes;
    artifacts["last_save_time"] = last_save_time_ ? nlohmann::json(*last_save_time_) : nlohmann::json();
    artifacts["bgsave_ms"] = bgsave_ms_ ? nlohmann::json(*bgsave_ms_) : nlohmann::json();
    artifacts["files_synced"] = files_synced_;
    artifacts["snapshot_id"] = snapshot.snapshot_id;
    return Status::ok();
  }

  Status abort(const PhaseContext& ctx) override {
    if (!holding_ && !paused_ && !restore_appendfsync_) {
      connection_.reset();
      return Status::ok();
    }
    log().info("redis writer '{}': abort releases the hold", spec_.name);
    std::string ignored;
    auto status = release(deadline_of(ctx), ignored);
    holding_ = false;
    connection_.reset();
    return status;
  }

  Status post_restore(const PhaseContext&, const RestoreInfo&) override {
    // Redis loads its AOF or RDB by itself when it starts.
    return Status::ok();
  }

 private:
  spdlog::logger& log() { return env_.logger ? *env_.logger : *spdlog::default_logger(); }

  [[nodiscard]] static Clock::time_point deadline_of(const PhaseContext& ctx) {
    // Tests and tools may call without a deadline; never block forever.
    return ctx.deadline == Clock::time_point{} ? Clock::now() + std::chrono::seconds(30) : ctx.deadline;
  }

  // Reuses the held connection when it still answers, else opens a new one.
  Status ensure_connection(Clock::time_point deadline) {
    if (connection_ && connection_->usable()) {
      Reply reply;
      if (connection_->run("check the connection (PING)", {"PING"}, deadline, reply).is_ok()) {
        return Status::ok();
      }
    }
    connection_.reset();
    return Connection::open(options_.target, deadline, connection_);
  }

  // The freeze proper, on a connection that works.
  Status hold(const PhaseContext& ctx, Clock::time_point deadline) {
    Reply reply;
    if (options_.hold_writes) {
      // First, so that the state made durable below is the state the
      // snapshot holds: no write is acknowledged after it until thaw. The
      // pause lapses by itself shortly after the freeze window, so an agent
      // that dies cannot leave Redis refusing writes for long.
      const auto now = Clock::now();
      auto length = ctx.hold_deadline == Clock::time_point{}
                        ? milliseconds(60000)
                        : std::chrono::duration_cast<milliseconds>(ctx.hold_deadline - now) +
                              milliseconds(5000);
      length = std::max(length, milliseconds(1000));
      // Counted as paused before the answer: when the deadline cuts the
      // wait for it short, the server may have paused all the same, and
      // freeze's undo (or abort) must end that pause rather than leave the
      // application's writes refused until it lapses.
      paused_ = true;
      pause_until_ = now + length;
      if (auto status = connection_->run("hold writes (CLIENT PAUSE WRITE)",
                                         {"CLIENT", "PAUSE", std::to_string(length.count()), "WRITE"},
                                         deadline, reply);
          !status.is_ok()) {
        // An answer (an error reply) or a command never sent means nothing changed.
        paused_ = !connection_->usable();
        return status;
      }
    }
    return persistence_.aof ? sync_aof(deadline) : save_rdb(ctx, deadline);
  }

  // AOF: Redis writes the AOF before it answers a client, but under
  // `everysec` it may postpone that write while a background fsync is slow,
  // and it fsyncs only once a second. Switching to `always` makes Redis
  // flush its AOF buffer (write + fsync) before it sends the reply to this
  // very CONFIG SET, and fsync every later write before acknowledging it;
  // what was written but not yet fsynced before the switch the agent fsyncs
  // itself. Restored at thaw.
  Status sync_aof(Clock::time_point deadline) {
    Reply reply;
    if (persistence_.appendfsync != "always") {
      // Recorded before the answer, for the same reason as the pause: a
      // switch the server made after our deadline passed would otherwise
      // stay at `always` for good (and the next freeze would take it for
      // the admin's setting).
      restore_appendfsync_ = persistence_.appendfsync;
      if (auto status = connection_->run("make the AOF durable (CONFIG SET appendfsync always)",
                                         {"CONFIG", "SET", "appendfsync", "always"}, deadline, reply);
          !status.is_ok()) {
        if (connection_->usable()) {
          restore_appendfsync_.reset();  // refused, or never sent: nothing changed
        }
        return status;
      }
    }
    InfoFields fields;
    if (auto status = connection_->info("persistence", deadline, fields); !status.is_ok()) {
      return status;
    }
    if (fields["aof_last_write_status"] != "ok") {
      return Status::retryable("redis " + options_.target.endpoint() +
                               ": could not make the AOF durable: the server's last AOF write failed "
                               "(aof_last_write_status:" + fields["aof_last_write_status"] +
                               "); check its log and its disk");
    }
    last_save_time_ = to_number(fields, "rdb_last_save_time", 0);
    note_sync(persistence_.aof_path());
    return Status::ok();
  }

  // No AOF: a BGSAVE that starts after the freeze began holds every write
  // acknowledged before it. Wait until it is written.
  Status save_rdb(const PhaseContext& ctx, Clock::time_point deadline) {
    const auto started = Clock::now();
    const auto bgsave_deadline = std::min(deadline, started + options_.bgsave_timeout);
    const auto endpoint = options_.target.endpoint();
    auto waited_too_long = [&]() -> std::optional<Status> {
      if (ctx.stop.stop_requested()) {
        return Status::timeout("redis " + endpoint + ": the background save was cut short (abort or deadline)");
      }
      if (Clock::now() >= bgsave_deadline) {
        return Status::timeout("redis " + endpoint + ": the background save did not finish within " +
                               std::to_string(std::chrono::duration_cast<milliseconds>(
                                                  bgsave_deadline - started).count()) +
                               " ms (bgsave_timeout_ms or the phase deadline); raise them or make the "
                               "dataset smaller");
      }
      return std::nullopt;
    };
    for (;;) {
      // Through pipeline() so that an error reply comes back as a reply.
      std::vector<Reply> replies;
      if (auto status = connection_->pipeline("start a background save (BGSAVE)", {{"BGSAVE"}},
                                              bgsave_deadline, replies);
          !status.is_ok()) {
        return status;
      }
      const auto& bgsave = replies[0];
      if (bgsave.kind == Reply::Kind::error &&
          bgsave.text.find("already in progress") == std::string::npos) {
        return redis::classify_error_reply(options_.target, "start a background save (BGSAVE)",
                                           bgsave.text);
      }
      if (bgsave.kind == Reply::Kind::error || bgsave.text.find("scheduled") != std::string::npos) {
        // A save that started before the freeze misses recent writes, and a
        // save scheduled behind an AOF rewrite is hard to tell apart from
        // one that ends in the same second: wait until no child runs, then
        // ask again, so that the save we wait for is one we started.
        for (;;) {
          if (auto failed = waited_too_long()) {
            return *failed;
          }
          InfoFields fields;
          if (auto status = connection_->info("persistence", bgsave_deadline, fields); !status.is_ok()) {
            return status;
          }
          if (fields["rdb_bgsave_in_progress"] == "0" && fields["aof_rewrite_in_progress"] == "0") {
            break;
          }
          std::this_thread::sleep_for(milliseconds(10));
        }
        continue;
      }
      // "Background saving started": Redis forked at this very command, and
      // rdb_bgsave_in_progress stays 1 until that save ends.
      for (;;) {
        InfoFields fields;
        if (auto status = connection_->info("persistence", bgsave_deadline, fields); !status.is_ok()) {
          return status;
        }
        const bool ours_done = fields["rdb_bgsave_in_progress"] == "0";
        if (ours_done) {
          if (fields["rdb_last_bgsave_status"] != "ok") {
            return Status::retryable("redis " + endpoint +
                                     ": the background save failed (rdb_last_bgsave_status:" +
                                     fields["rdb_last_bgsave_status"] +
                                     "); check the server's log, its disk and the permissions on " +
                                     persistence_.dir);
          }
          last_save_time_ = to_number(fields, "rdb_last_save_time", 0);
          bgsave_ms_ = std::chrono::duration_cast<milliseconds>(Clock::now() - started).count();
          note_sync(persistence_.rdb_path());
          return Status::ok();
        }
        if (auto failed = waited_too_long()) {
          return *failed;
        }
        std::this_thread::sleep_for(milliseconds(5));
      }
    }
  }

  void note_sync(const std::string& path) {
    auto error = sync_path(path);
    files_synced_ = {{"path", path}, {"ok", error.empty()}};
    if (!error.empty()) {
      // Not fatal: a filesystem writer's freeze syncs the page cache too.
      files_synced_["error"] = error;
      log().info("redis writer '{}': could not fsync {} itself: {}", spec_.name, path, error);
    }
  }

  // Ends the pause and restores appendfsync; `broken` gets why the hold
  // cannot be vouched for, if it cannot.
  Status release(Clock::time_point deadline, std::string& broken) {
    auto add = [&](const std::string& reason) { broken += (broken.empty() ? "" : "; ") + reason; };
    const auto frozen_run_id = persistence_.run_id;
    Reply reply;
    if (!connection_ || !connection_->usable() ||
        !connection_->run("check the held connection (PING)", {"PING"}, deadline, reply).is_ok()) {
      add("the connection to " + options_.target.endpoint() + " was lost during the hold");
      connection_.reset();
      auto status = Connection::open(options_.target, deadline, connection_);
      if (!status.is_ok()) {
        // A server that is gone holds no pause and no changed setting: a
        // restarted one reads its own configuration again.
        paused_ = false;
        restore_appendfsync_.reset();
        log().warn("redis writer '{}': {}", spec_.name, status.error().message);
        return Status::ok();
      }
    }
    InfoFields server;
    if (auto status = connection_->info("server", deadline, server); !status.is_ok()) {
      return status;
    }
    if (!frozen_run_id.empty() && server["run_id"] != frozen_run_id) {
      add("the server restarted during the hold (run_id changed)");
      paused_ = false;
      restore_appendfsync_.reset();
      return Status::ok();
    }
    if (paused_) {
      if (Clock::now() > pause_until_) {
        add("the write pause lapsed before thaw (the freeze window outlasted it)");
      }
      if (auto status = connection_->run("end the write pause (CLIENT UNPAUSE)", {"CLIENT", "UNPAUSE"},
                                         deadline, reply);
          !status.is_ok()) {
        return status;
      }
      paused_ = false;
    }
    if (restore_appendfsync_) {
      std::optional<std::string> now;
      if (auto status = connection_->config_get("appendfsync", deadline, now); !status.is_ok()) {
        return status;
      }
      if (now != "always") {
        add("appendfsync was changed to '" + now.value_or("") + "' during the hold");
      }
      if (auto status = connection_->run("restore appendfsync (CONFIG SET appendfsync " +
                                             *restore_appendfsync_ + ")",
                                         {"CONFIG", "SET", "appendfsync", *restore_appendfsync_},
                                         deadline, reply);
          !status.is_ok()) {
        return status;
      }
      restore_appendfsync_.reset();
    }
    return Status::ok();
  }

  WriterSpec spec_;
  RedisOptions options_;
  WriterEnvironment env_;
  std::unique_ptr<Connection> connection_;
  Persistence persistence_;
  bool holding_ = false;
  bool paused_ = false;
  Clock::time_point pause_until_{};
  std::optional<std::string> restore_appendfsync_;  // the setting freeze replaced
  std::optional<long long> last_save_time_;
  std::optional<long long> bgsave_ms_;
  nlohmann::json files_synced_;
};

}  // namespace

void register_redis_writer(WriterRegistry& registry) {
  registry.add(WriterType{
      .type = "redis",
      .default_level = Level::database,
      .description = "makes every acknowledged Redis write durable (AOF fsync or BGSAVE); "
                     "optionally pauses writes",
      .create = [](const WriterSpec& spec, const WriterEnvironment& env) -> std::unique_ptr<Writer> {
        auto options = parse_options(spec.options);
        // hiredis is loaded here, when the config names a redis writer, so
        // that a missing hiredis fails config loading and --check-config.
        (void)redis::hiredis();
        return std::make_unique<RedisWriter>(spec, std::move(options), env);
      },
  });
}

}  // namespace quiesce::writers

#include "writers/exec/exec_writer.hpp"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/logger.h>

#include "quiesce/json_fields.hpp"
#include "quiesce/json_nesting.hpp"
#include "writers/exec/exec_child.hpp"

namespace quiesce::writers {

namespace {

using exec::ExecChild;
using exec::IoResult;

constexpr std::chrono::milliseconds default_restart_backoff{500};
constexpr std::chrono::milliseconds default_hello_timeout{10000};
// What a child gets besides the configured variables: what a program
// expects of a service environment, and nothing the agent's own has.
constexpr const char* child_path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
// How much of an offending line an error message quotes.
constexpr std::size_t quote_bytes = 120;

// Phases a child may list in its hello's capabilities. identify is always
// answered (by the child when it lists it, else from the hello).
constexpr std::array<Phase, 7> known_phases{Phase::identify, Phase::prepare, Phase::freeze,
                                            Phase::thaw, Phase::post_snapshot, Phase::abort,
                                            Phase::post_restore};

std::optional<Phase> parse_phase(std::string_view text) {
  for (auto phase : known_phases) {
    if (to_string(phase) == text) {
      return phase;
    }
  }
  return std::nullopt;
}

std::string quote(std::string_view line) {
  std::string text(line.substr(0, quote_bytes));
  for (auto& c : text) {
    if (static_cast<unsigned char>(c) < 0x20) {
      c = '?';
    }
  }
  return "'" + text + (line.size() > quote_bytes ? "...'" : "'");
}

struct ExecOptions {
  std::vector<std::string> command;
  std::vector<std::string> env;
  std::chrono::milliseconds restart_backoff = default_restart_backoff;
  std::chrono::milliseconds hello_timeout = default_hello_timeout;
};

ExecOptions parse_options(const nlohmann::json& json) {
  ExecOptions options;
  JsonFields fields(json, "options");
  options.command = fields.strings("command");
  if (options.command.empty()) {
    throw FieldError(fields.path_of("command"), "must name the program to run");
  }
  if (options.command.front().empty() || options.command.front().front() != '/') {
    throw FieldError(fields.path_of("command"),
                     "the program '" + options.command.front() +
                         "' must be an absolute path (there is no PATH search)");
  }
  options.env.emplace_back(child_path);
  if (const auto* env = fields.raw("env"); env != nullptr) {
    if (!env->is_object()) {
      throw FieldError(fields.path_of("env"), "expected an object of strings");
    }
    for (const auto& [name, value] : env->items()) {
      if (name.empty() || name.find('=') != std::string::npos) {
        throw FieldError(fields.path_of("env"), "'" + name + "' is not a variable name");
      }
      if (!value.is_string()) {
        throw FieldError(fields.path_of("env") + "." + name,
                         "expected a string, got " + describe_json(value));
      }
      // A configured PATH replaces the default one.
      if (name == "PATH") {
        options.env.front() = "PATH=" + value.get<std::string>();
      } else {
        options.env.push_back(name + "=" + value.get<std::string>());
      }
    }
  }
  options.restart_backoff =
      fields.millis("restart_backoff_ms", default_restart_backoff, std::chrono::minutes(10));
  options.hello_timeout =
      fields.millis("hello_timeout_ms", default_hello_timeout, std::chrono::minutes(10));
  fields.reject_unknown();
  return options;
}

long long millis_until(Clock::time_point deadline) {
  auto now = Clock::now();
  if (deadline <= now) {
    return 0;
  }
  return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
}

class ExecWriter final : public Writer {
 public:
  ExecWriter(WriterSpec spec, ExecOptions options, WriterEnvironment env)
      : spec_(std::move(spec)), options_(std::move(options)), logger_(std::move(env.logger)) {
    if (!logger_) {
      logger_ = std::make_shared<spdlog::logger>("exec");  // no sinks: silent
    }
    options_.env.push_back("QUIESCE_WRITER_NAME=" + spec_.name);
    options_.env.push_back("QUIESCE_EXEC_PROTOCOL=" + std::to_string(exec_protocol_major));
  }

  Status identify(const PhaseContext& ctx, Identity& out) override {
    nlohmann::json reply;
    auto status = exchange(Phase::identify, ctx, nlohmann::json::object(), reply);
    if (!status.is_ok()) {
      return status;
    }
    if (const auto it = reply.find("identity"); it != reply.end()) {
      if (!it->is_object()) {
        return protocol_error(Phase::identify, "\"identity\" is not an object");
      }
      if (const auto c = it->find("components"); c != it->end()) {
        if (!c->is_array()) {
          return protocol_error(Phase::identify, "\"identity.components\" is not an array");
        }
        out.components = *c;
      }
      if (const auto m = it->find("metadata"); m != it->end()) {
        if (!m->is_object()) {
          return protocol_error(Phase::identify, "\"identity.metadata\" is not an object");
        }
        out.metadata.update(*m);
      }
    }
    out.metadata["exec"] = {
        {"name", hello_name_},
        {"pid", child_ ? child_->pid() : -1},
        {"protocol", exec_protocol_major},
        {"capabilities", capability_names()},
        {"command", options_.command},
    };
    return Status::ok();
  }

  Status prepare(const PhaseContext& ctx) override {
    // A new session: whatever the last one left of the hold is history.
    holding_ = false;
    hold_lost_.clear();
    nlohmann::json reply;
    return exchange(Phase::prepare, ctx, nlohmann::json::object(), reply);
  }

  Status freeze(const PhaseContext& ctx) override {
    nlohmann::json reply;
    auto status = exchange(Phase::freeze, ctx, hold_args(ctx), reply);
    if (status.is_ok()) {
      holding_ = true;
      hold_lost_.clear();
    }
    return status;
  }

  Status thaw(const PhaseContext& ctx, HoldReport& hold) override {
    // The hold lives in the child that froze. When that child is gone its
    // hold went with it: there is nothing to release, and a fresh child
    // must not be started just to be told to thaw.
    notice_exit(Phase::thaw);
    if (!child_) {
      finish_hold(hold, true, "");
      return Status::ok();
    }
    nlohmann::json reply;
    auto status = exchange(Phase::thaw, ctx, hold_args(ctx), reply);
    bool continuous = true;
    std::string detail;
    if (status.is_ok()) {
      if (auto it = reply.find("hold_continuous"); it != reply.end()) {
        if (!it->is_boolean()) {
          status = protocol_error(Phase::thaw, "\"hold_continuous\" is not a boolean");
        } else {
          continuous = it->get<bool>();
        }
      }
      if (auto it = reply.find("hold_detail"); it != reply.end() && it->is_string()) {
        detail = it->get<std::string>();
      }
    }
    finish_hold(hold, continuous, detail);
    return status;
  }

  Status post_snapshot(const PhaseContext& ctx, const SnapshotInfo& snapshot,
                       nlohmann::json& artifacts) override {
    nlohmann::json reply;
    auto status = exchange(Phase::post_snapshot, ctx, {{"snapshot_id", snapshot.snapshot_id}},
                           reply);
    if (!status.is_ok()) {
      return status;
    }
    if (auto it = reply.find("artifacts"); it != reply.end() && !it->is_null()) {
      if (!it->is_object()) {
        return protocol_error(Phase::post_snapshot, "\"artifacts\" is not an object");
      }
      artifacts = *it;
    }
    return Status::ok();
  }

  Status abort(const PhaseContext& ctx) override {
    // Unlike thaw, abort goes to a fresh child when the old one is gone:
    // undoing may concern state outside the process (a marker, a flag in
    // the application) that only the writer's code knows how to clean.
    nlohmann::json reply;
    auto status = exchange(Phase::abort, ctx, nlohmann::json::object(), reply);
    holding_ = false;
    hold_lost_.clear();
    return status;
  }

  Status post_restore(const PhaseContext& ctx, const RestoreInfo& restore) override {
    nlohmann::json reply;
    return exchange(Phase::post_restore, ctx,
                    {{"checkpoint_id", restore.checkpoint_id},
                     {"restored_session_id", restore.session_id}},
                    reply);
  }

 private:
  static nlohmann::json hold_args(const PhaseContext& ctx) {
    auto args = nlohmann::json::object();
    if (ctx.hold_deadline != Clock::time_point::max() &&
        ctx.hold_deadline != Clock::time_point{}) {
      args["hold_deadline_ms"] = millis_until(ctx.hold_deadline);
    }
    return args;
  }

  void finish_hold(HoldReport& hold, bool child_says_continuous, const std::string& detail) {
    if (holding_ && !hold_lost_.empty()) {
      hold.continuous = false;
      hold.detail = hold_lost_;
    } else if (!child_says_continuous) {
      hold.continuous = false;
      hold.detail = detail.empty() ? "the writer process reported that it lost its hold" : detail;
    }
    holding_ = false;
    hold_lost_.clear();
  }

  nlohmann::json capability_names() const {
    auto names = nlohmann::json::array();
    for (auto phase : known_phases) {
      if (capabilities_.contains(phase)) {
        names.push_back(to_string(phase));
      }
    }
    return names;
  }

  void log_stderr(std::string_view line) {
    logger_->info("exec writer '{}' (pid {}): {}", spec_.name, current_pid_, line);
  }

  // The child is gone: remember when (for the backoff), and whether a hold
  // went with it.
  void child_ended(const std::string& how) {
    if (holding_ && hold_lost_.empty()) {
      hold_lost_ = "the writer process " + how + " while holding";
    }
    child_.reset();
    ended_at_ = Clock::now();
  }

  // Notices a child that died between calls.
  void notice_exit(Phase phase) {
    if (child_ && child_->exited()) {
      auto how = child_->describe_exit();
      logger_->warn("exec writer '{}': the writer process {} before {}", spec_.name, how,
                    to_string(phase));
      child_ended(how);
    }
  }

  // Its state is unknown (garbage, a missed deadline, a stop): it goes.
  void kill_child() {
    if (child_) {
      child_->kill();
      child_ended("was killed");
    }
  }

  Status protocol_error(Phase phase, const std::string& what) {
    logger_->error("exec writer '{}': protocol error in {}: {}; killing the writer process",
                   spec_.name, to_string(phase), what);
    kill_child();
    return Status::non_retryable("protocol error: " + what);
  }

  Status died(Phase phase, const char* when) {
    std::string how = child_ ? child_->describe_exit() : "ended";
    child_ended(how);
    return Status::non_retryable("writer process " + how + " " + when + " " +
                                 std::string(to_string(phase)));
  }

  Status cut_short(Phase phase, IoResult result, Clock::time_point started) {
    auto waited =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
    kill_child();
    if (result == IoResult::stopped) {
      return Status::timeout(std::string(to_string(phase)) + " cut short after " +
                             std::to_string(waited) +
                             " ms (stop requested); the writer process was killed");
    }
    return Status::timeout("no reply to " + std::string(to_string(phase)) + " within " +
                           std::to_string(waited) +
                           " ms; the writer process was killed (its state is unknown)");
  }

  // Starts a child and reads its hello. Honours the restart backoff.
  Status start_child(const PhaseContext& ctx, Phase phase) {
    if (ended_at_) {
      const auto earliest = *ended_at_ + options_.restart_backoff;
      if (earliest > Clock::now()) {
        if (earliest > ctx.deadline) {
          return Status::retryable("the writer process is restarting (restart_backoff_ms " +
                                   std::to_string(options_.restart_backoff.count()) + ")");
        }
        std::mutex mutex;
        std::condition_variable_any wake;
        std::unique_lock lock(mutex);
        [[maybe_unused]] bool woken = wake.wait_until(lock, ctx.stop, earliest, [] { return false; });
        if (ctx.stop.stop_requested()) {
          return Status::timeout(std::string(to_string(phase)) +
                                 " cut short (stop requested) while waiting to restart");
        }
      }
    }
    std::string error;
    auto child = ExecChild::start(options_.command, options_.env,
                                  [this](std::string_view line) { log_stderr(line); }, error);
    if (!child) {
      ended_at_ = Clock::now();
      return Status::non_retryable("cannot start the writer process: " + error);
    }
    child_ = std::move(child);
    current_pid_ = child_->pid();
    capabilities_.clear();
    hello_name_.clear();
    logger_->info("exec writer '{}': started {} (pid {})", spec_.name, options_.command.front(),
                  current_pid_);

    const auto started = Clock::now();
    const auto deadline = std::min(ctx.deadline, started + options_.hello_timeout);
    std::string line;
    auto result = child_->read_line(line, deadline, ctx.stop);
    switch (result) {
      case IoResult::done:
        break;
      case IoResult::closed:
        return died(phase, "before its hello, at");
      case IoResult::too_long:
        return protocol_error(phase, "hello longer than 1 MiB");
      case IoResult::timeout:
      case IoResult::stopped:
        kill_child();
        return Status::timeout("no hello from the writer process within " +
                               std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  Clock::now() - started)
                                                  .count()) +
                               " ms; it was killed");
    }
    auto hello = parse_untrusted_json(line).value_or(nlohmann::json());
    if (!hello.is_object()) {
      return protocol_error(phase, "the hello is not a JSON object: " + quote(line));
    }
    auto version = hello.find("quiesce_exec");
    if (version == hello.end() || !version->is_number_integer()) {
      return protocol_error(phase, "the hello lacks an integer \"quiesce_exec\" version: " +
                                       quote(line));
    }
    if (version->get<long long>() != exec_protocol_major) {
      return protocol_error(phase, "the writer speaks quiesce_exec " +
                                       std::to_string(version->get<long long>()) +
                                       ", this agent speaks " +
                                       std::to_string(exec_protocol_major));
    }
    auto name = hello.find("name");
    if (name == hello.end() || !name->is_string()) {
      return protocol_error(phase, "the hello lacks a string \"name\"");
    }
    auto caps = hello.find("capabilities");
    if (caps == hello.end() || !caps->is_array()) {
      return protocol_error(phase, "the hello lacks a \"capabilities\" array");
    }
    std::set<Phase> capabilities;
    for (const auto& cap : *caps) {
      if (!cap.is_string()) {
        return protocol_error(phase, "capability " + describe_json(cap) + " is not a string");
      }
      // Unknown phases are tolerated: a newer writer may know more phases.
      if (auto known = parse_phase(cap.get<std::string>())) {
        capabilities.insert(*known);
      } else {
        logger_->warn("exec writer '{}': ignoring unknown capability '{}'", spec_.name,
                      cap.get<std::string>());
      }
    }
    capabilities_ = std::move(capabilities);
    hello_name_ = name->get<std::string>();
    logger_->info("exec writer '{}': hello from '{}' (protocol {}, capabilities {})", spec_.name,
                  hello_name_, exec_protocol_major, capability_names().dump());
    return Status::ok();
  }

  // One request, one reply. `reply` is the child's reply object on success.
  Status exchange(Phase phase, const PhaseContext& ctx, nlohmann::json args,
                  nlohmann::json& reply) {
    if (ctx.stop.stop_requested()) {
      return Status::timeout(std::string(to_string(phase)) + " stopped before it began");
    }
    notice_exit(phase);
    if (!child_) {
      auto started = start_child(ctx, phase);
      if (!started.is_ok()) {
        return started;
      }
    }
    reply = nlohmann::json::object();
    if (!capabilities_.contains(phase)) {
      return Status::ok();  // the writer has nothing to do in this phase
    }
    const auto id = ++next_id_;
    nlohmann::json request = {{"id", id},
                              {"phase", to_string(phase)},
                              {"session_id", ctx.session_id}};
    if (ctx.deadline != Clock::time_point::max()) {
      request["deadline_ms"] = millis_until(ctx.deadline);
    }
    request.update(args);

    const auto started = Clock::now();
    auto written = child_->write_line(request.dump(), ctx.deadline, ctx.stop);
    if (written == IoResult::closed) {
      return died(phase, "before it could be sent");
    }
    if (written != IoResult::done) {
      return cut_short(phase, written, started);
    }
    std::string line;
    auto result = child_->read_line(line, ctx.deadline, ctx.stop);
    if (result == IoResult::closed) {
      return died(phase, "during");
    }
    if (result == IoResult::too_long) {
      return protocol_error(phase, "reply to " + std::string(to_string(phase)) +
                                       " longer than 1 MiB");
    }
    if (result != IoResult::done) {
      return cut_short(phase, result, started);
    }
    reply = parse_untrusted_json(line).value_or(nlohmann::json());
    if (!reply.is_object()) {
      return protocol_error(phase, "reply to " + std::string(to_string(phase)) +
                                       " is not a JSON object: " + quote(line));
    }
    auto reply_id = reply.find("id");
    if (reply_id == reply.end() || !reply_id->is_number_integer() ||
        reply_id->get<long long>() != id) {
      return protocol_error(phase, "expected the reply to request " + std::to_string(id) +
                                       ", got " + quote(line));
    }
    auto ok = reply.find("ok");
    if (ok == reply.end() || !ok->is_boolean()) {
      return protocol_error(phase, "reply lacks a boolean \"ok\": " + quote(line));
    }
    if (ok->get<bool>()) {
      return Status::ok();
    }
    auto error = reply.find("error");
    if (error == reply.end() || !error->is_object()) {
      return protocol_error(phase, "failed reply lacks an \"error\" object: " + quote(line));
    }
    auto error_class = parse_error_class(error->value("class", std::string()));
    if (!error_class) {
      return protocol_error(phase, "error.class must be retryable, non_retryable, timeout or "
                                   "inconsistent: " + quote(line));
    }
    auto message = error->find("message");
    std::string text = message != error->end() && message->is_string()
                           ? message->get<std::string>()
                           : std::string("(no message)");
    return Status::error(*error_class, text);
  }

  WriterSpec spec_;
  ExecOptions options_;
  std::shared_ptr<spdlog::logger> logger_;

  std::unique_ptr<ExecChild> child_;
  pid_t current_pid_ = -1;
  std::optional<Clock::time_point> ended_at_;
  std::set<Phase> capabilities_;
  std::string hello_name_;
  long long next_id_ = 0;
  bool holding_ = false;   // the current child reported frozen and has not thawed
  std::string hold_lost_;  // why the hold broke, once it did
};

}  // namespace

void register_exec_writer(WriterRegistry& registry) {
  registry.add(WriterType{
      .type = "exec",
      .default_level = Level::application,
      .description = "an out-of-process writer speaking JSON lines (docs/exec-writer-protocol.md)",
      .create = [](const WriterSpec& spec,
                   const WriterEnvironment& env) -> std::unique_ptr<Writer> {
        return std::make_unique<ExecWriter>(spec, parse_options(spec.options), env);
      },
  });
}

}  // namespace quiesce::writers

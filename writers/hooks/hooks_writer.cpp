#include "writers/hooks/hooks_writer.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/logger.h>

#include "platform/linux/subprocess.hpp"
#include "quiesce/json_fields.hpp"
#include "writers/hooks/hook_directory.hpp"

namespace quiesce::writers {

namespace {

using hooks::Hook;
using hooks::HookScan;
using platform::Outcome;
using platform::OutputStream;
using platform::SubprocessResult;
using platform::SubprocessSpec;

constexpr const char* default_directory = "/etc/quiesce/hooks.d";
constexpr std::chrono::milliseconds default_timeout{30000};
// Between SIGTERM and SIGKILL for a hook that overran: enough for a script
// to clean up, short next to any freeze window.
constexpr std::chrono::milliseconds kill_grace{1000};
constexpr std::size_t max_output_bytes = 64 * 1024;
// The environment's PATH: what hook scripts expect of a root shell, and
// nothing the agent's own environment might have added.
constexpr const char* hook_path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

enum class Style { quiesce, qemu, vmware };

std::string_view style_name(Style style) {
  switch (style) {
    case Style::quiesce: return "quiesce";
    case Style::qemu: return "qemu";
    case Style::vmware: return "vmware";
  }
  return "unknown";
}

// The phase names hooks see (argv[1] in the quiesce style, QUIESCE_PHASE in all).
std::string_view hook_phase_name(Phase phase) {
  switch (phase) {
    case Phase::identify: return "identify";
    case Phase::prepare: return "prepare";
    case Phase::freeze: return "freeze";
    case Phase::thaw: return "thaw";
    case Phase::post_snapshot: return "post-snapshot";
    case Phase::abort: return "abort";
    case Phase::post_restore: return "post-restore";
  }
  return "unknown";
}

struct HooksOptions {
  std::string directory = default_directory;
  Style style = Style::quiesce;
  std::chrono::milliseconds timeout = default_timeout;
  bool allow_non_root_owner = false;
};

HooksOptions parse_options(const nlohmann::json& json) {
  HooksOptions options;
  JsonFields fields(json, "options");
  const bool explicit_directory = fields.has("directory");
  options.directory = fields.string("directory", std::string(default_directory));
  if (options.directory.empty() || options.directory.front() != '/') {
    throw FieldError(fields.path_of("directory"),
                     "'" + options.directory + "' is not an absolute path");
  }
  while (options.directory.size() > 1 && options.directory.back() == '/') {
    options.directory.pop_back();
  }
  // The default directory may be absent (no hooks installed); one named in
  // the config is expected to be there, and a typo must not go unnoticed.
  if (explicit_directory) {
    struct stat st {};
    if (::stat(options.directory.c_str(), &st) != 0) {
      throw FieldError(fields.path_of("directory"),
                       "'" + options.directory + "' does not exist");
    }
    if (!S_ISDIR(st.st_mode)) {
      throw FieldError(fields.path_of("directory"),
                       "'" + options.directory + "' is not a directory");
    }
  }
  const auto style = fields.string("style", std::string("quiesce"));
  if (style == "quiesce") {
    options.style = Style::quiesce;
  } else if (style == "qemu") {
    options.style = Style::qemu;
  } else if (style == "vmware") {
    options.style = Style::vmware;
  } else {
    throw FieldError(fields.path_of("style"),
                     "expected quiesce, qemu or vmware, got '" + style + "'");
  }
  options.timeout = std::chrono::milliseconds(
      fields.integer("timeout_ms", default_timeout.count(), 1, 24LL * 3600 * 1000));
  options.allow_non_root_owner = fields.boolean("allow_non_root_owner", false);
  fields.reject_unknown();
  return options;
}

// The most serious class among failures: an admin must act > the deadline
// was too short > trying again may help.
ErrorClass worse(ErrorClass a, ErrorClass b) {
  auto rank = [](ErrorClass c) {
    switch (c) {
      case ErrorClass::non_retryable: return 3;
      case ErrorClass::inconsistent: return 2;
      case ErrorClass::timeout: return 1;
      case ErrorClass::retryable: return 0;
    }
    return 0;
  };
  return rank(a) >= rank(b) ? a : b;
}

struct Failures {
  std::optional<ErrorClass> error_class;
  std::vector<std::string> messages;

  void add(ErrorClass c, std::string message) {
    error_class = error_class ? worse(*error_class, c) : c;
    messages.push_back(std::move(message));
  }
  [[nodiscard]] Status status(const std::string& prefix) const {
    if (!error_class) {
      return Status::ok();
    }
    std::string text = prefix;
    for (std::size_t i = 0; i < messages.size(); ++i) {
      text += (i == 0 ? "" : "; ") + messages[i];
    }
    return Status::error(*error_class, text);
  }
};

// What hooks touched in the current session. One session runs at a time
// (DESIGN.md invariant 5), so one record is enough; it is replaced when the
// next session begins.
struct SessionHooks {
  std::string session_id;
  std::vector<Hook> touched;  // quiesce style: called at prepare or freeze, in call order
  std::vector<Hook> frozen;   // completed freeze, in freeze order
};

void add_unique(std::vector<Hook>& hooks, const Hook& hook) {
  if (std::none_of(hooks.begin(), hooks.end(),
                   [&](const Hook& h) { return h.name == hook.name; })) {
    hooks.push_back(hook);
  }
}

class HooksWriter final : public Writer {
 public:
  HooksWriter(WriterSpec spec, HooksOptions options, WriterEnvironment env)
      : spec_(std::move(spec)), options_(std::move(options)), env_(std::move(env)) {
    if (!env_.logger) {
      env_.logger = std::make_shared<spdlog::logger>("hooks");
    }
  }

  Status identify(const PhaseContext&, Identity& out) override {
    auto found = scan_directory();
    auto& meta = out.metadata;
    meta["directory"] = options_.directory;
    meta["directory_exists"] = found.exists;
    meta["style"] = style_name(options_.style);
    meta["timeout_ms"] = options_.timeout.count();
    meta["hooks"] = nlohmann::json::array();
    for (const auto& hook : found.hooks) {
      meta["hooks"].push_back(hook.name);
    }
    auto list = [](const std::vector<hooks::SkippedFile>& files) {
      auto array = nlohmann::json::array();
      for (const auto& file : files) {
        array.push_back({{"name", file.name}, {"reason", file.reason}});
      }
      return array;
    };
    meta["skipped"] = list(found.skipped);
    meta["refused"] = list(found.refused);
    if (!found.exists) {
      meta["note"] = "the hook directory does not exist; there is nothing to run";
    }
    if (!found.directory_error.empty()) {
      meta["directory_error"] = found.directory_error;
    }
    // Describing is not failing: a refused hook fails prepare, with the
    // same message, before anything is held.
    return Status::ok();
  }

  Status prepare(const PhaseContext& ctx) override {
    begin_session(ctx.session_id);
    auto found = scan_directory();
    if (!found.usable()) {
      return Status::non_retryable(found.problem());
    }
    if (options_.style != Style::quiesce) {
      return Status::ok();  // qemu and VMware hooks know only freeze and thaw
    }
    for (const auto& hook : found.hooks) {
      add_unique(session_.touched, hook);
      auto result = run_hook(hook, Phase::prepare, ctx);
      if (!result.success()) {
        return failure_status(hook, Phase::prepare, result);
      }
    }
    return Status::ok();
  }

  Status freeze(const PhaseContext& ctx) override {
    if (ctx.session_id != session_.session_id) {
      begin_session(ctx.session_id);
    }
    auto found = scan_directory();
    if (!found.usable()) {
      return Status::non_retryable(found.problem());
    }
    for (const auto& hook : found.hooks) {
      if (options_.style == Style::quiesce) {
        add_unique(session_.touched, hook);
      }
      auto result = run_hook(hook, Phase::freeze, ctx);
      if (!result.success()) {
        auto status = failure_status(hook, Phase::freeze, result);
        if (!session_.frozen.empty()) {
          log().warn("hooks '{}': {} hook(s) froze before this failure; they are released "
                     "in reverse order at abort",
                     spec_.name, session_.frozen.size());
        }
        return status;
      }
      add_unique(session_.frozen, hook);
    }
    return Status::ok();
  }

  Status thaw(const PhaseContext& ctx, HoldReport&) override {
    // Every hook that froze is thawed, in reverse, even when one fails:
    // a failing thaw hook must not leave the others holding.
    return release(session_.frozen, "thaw", Phase::thaw, ctx);
  }

  Status post_snapshot(const PhaseContext& ctx, const SnapshotInfo&,
                       nlohmann::json& artifacts) override {
    return run_all_forward(Phase::post_snapshot, ctx, &artifacts);
  }

  Status abort(const PhaseContext& ctx) override {
    switch (options_.style) {
      case Style::qemu:
        // qemu-ga has no abort: a hook that froze gets the thaw it expects.
        return release(session_.frozen, "thaw", Phase::abort, ctx);
      case Style::vmware:
        return release(session_.frozen, "freezeFail", Phase::abort, ctx);
      case Style::quiesce: {
        // Quiesce hooks were told every phase; abort goes to each hook that
        // was called at prepare or freeze (including one that failed there),
        // which covers the ones still frozen.
        return release(session_.touched, "abort", Phase::abort, ctx);
      }
    }
    return Status::ok();
  }

  Status post_restore(const PhaseContext& ctx, const RestoreInfo&) override {
    return run_all_forward(Phase::post_restore, ctx, nullptr);
  }

 private:
  spdlog::logger& log() { return *env_.logger; }

  HookScan scan_directory() {
    return hooks::scan_hook_directory(options_.directory,
                                      hooks::ScanRules{options_.allow_non_root_owner});
  }

  void begin_session(const std::string& session_id) {
    if (!session_.frozen.empty()) {
      // Should not happen (the coordinator thaws or aborts every session);
      // say so rather than forget silently.
      log().warn("hooks '{}': session {} begins while {} hook(s) of session {} never got "
                 "thaw or abort",
                 spec_.name, session_id, session_.frozen.size(), session_.session_id);
    }
    session_ = SessionHooks{session_id, {}, {}};
  }

  // Runs `hooks` in reverse with `argument`, all of them whatever fails,
  // and forgets each one that ran to an end (success or not). Hooks that
  // were cut short by the deadline or the stop token, or never started,
  // stay listed so a later abort still releases them.
  Status release(std::vector<Hook>& hooks, std::string_view argument, Phase phase,
                 const PhaseContext& ctx) {
    if (hooks.empty()) {
      return Status::ok();  // idempotent: nothing is held
    }
    Failures failures;
    std::vector<Hook> still_held;
    for (auto it = hooks.rbegin(); it != hooks.rend(); ++it) {
      auto result = run_hook(*it, argument, phase, ctx);
      if (!result.success()) {
        auto status = failure_status(*it, argument, result);
        failures.add(status.error().error_class, status.error().message);
      }
      if (result.outcome == Outcome::timed_out || result.outcome == Outcome::stopped) {
        still_held.insert(still_held.begin(), *it);
      }
    }
    hooks = std::move(still_held);
    if (&hooks == &session_.touched) {
      // A quiesce hook that got abort is no longer frozen either.
      std::erase_if(session_.frozen, [&](const Hook& frozen) {
        return std::none_of(hooks.begin(), hooks.end(),
                            [&](const Hook& h) { return h.name == frozen.name; });
      });
    }
    const std::size_t failed = failures.messages.size();
    return failures.status(std::to_string(failed) + " hook(s) failed at " +
                           std::string(argument) + ": ");
  }

  // post-snapshot and post-restore (quiesce style only): every hook in name
  // order; nothing to undo, so all run and every failure is reported.
  Status run_all_forward(Phase phase, const PhaseContext& ctx, nlohmann::json* artifacts) {
    if (options_.style != Style::quiesce) {
      return Status::ok();
    }
    auto found = scan_directory();
    if (!found.usable()) {
      return Status::non_retryable(found.problem());
    }
    Failures failures;
    auto ran = nlohmann::json::array();
    for (const auto& hook : found.hooks) {
      auto result = run_hook(hook, phase, ctx);
      ran.push_back({{"name", hook.name}, {"ok", result.success()}});
      if (!result.success()) {
        auto status = failure_status(hook, hook_phase_name(phase), result);
        failures.add(status.error().error_class, status.error().message);
      }
    }
    if (artifacts != nullptr) {
      (*artifacts)["hooks"] = std::move(ran);
    }
    return failures.status(std::to_string(failures.messages.size()) + " hook(s) failed at " +
                           std::string(hook_phase_name(phase)) + ": ");
  }

  SubprocessResult run_hook(const Hook& hook, Phase phase, const PhaseContext& ctx) {
    return run_hook(hook, hook_phase_name(phase), phase, ctx);
  }

  SubprocessResult run_hook(const Hook& hook, std::string_view argument, Phase phase,
                            const PhaseContext& ctx) {
    SubprocessSpec spec;
    spec.argv = {hook.path, std::string(argument)};
    spec.env = {
        hook_path,
        "QUIESCE_SESSION_ID=" + ctx.session_id,
        "QUIESCE_PHASE=" + std::string(hook_phase_name(phase)),
        "QUIESCE_WRITER=" + spec_.name,
        "QUIESCE_HOOK_STYLE=" + std::string(style_name(options_.style)),
        "LANG=C",
    };
    spec.stop = ctx.stop;
    spec.max_output_bytes = max_output_bytes;
    const auto now = Clock::now();
    spec.deadline = now + options_.timeout;
    spec.kill_grace = kill_grace;
    const bool call_has_deadline =
        ctx.deadline != Clock::time_point{} && ctx.deadline != Clock::time_point::max();
    if (call_has_deadline && ctx.deadline - now < options_.timeout + kill_grace) {
      // The call's deadline binds: leave room for the grace before it, so
      // the whole group is gone by the time the coordinator gives up.
      auto remaining = std::max(ctx.deadline - now, Clock::duration::zero());
      auto grace = std::min<Clock::duration>(kill_grace, remaining / 4);
      spec.kill_grace = std::chrono::duration_cast<std::chrono::milliseconds>(grace);
      spec.deadline = std::min(spec.deadline, ctx.deadline - grace);
    }
    const std::string& writer = spec_.name;
    spec.on_line = [this, &writer, &hook](OutputStream stream, std::string_view line) {
      if (stream == OutputStream::out) {
        log().info("hooks '{}': {}: {}", writer, hook.name, line);
      } else {
        log().warn("hooks '{}': {} (stderr): {}", writer, hook.name, line);
      }
    };

    log().info("hooks '{}': running {} {}", writer, hook.path, argument);
    auto result = platform::run_subprocess(spec);
    if (result.dropped_bytes > 0) {
      log().warn("hooks '{}': {}: {} byte(s) of output beyond {} per stream not logged", writer,
                 hook.name, result.dropped_bytes, max_output_bytes);
    }
    if (result.success()) {
      log().info("hooks '{}': {} {} done in {} ms", writer, hook.name, argument,
                 result.elapsed.count());
    } else {
      log().error("hooks '{}': {} {}: {}", writer, hook.path, argument, result.describe());
    }
    return result;
  }

  Status failure_status(const Hook& hook, Phase phase, const SubprocessResult& result) {
    return failure_status(hook, hook_phase_name(phase), result);
  }

  Status failure_status(const Hook& hook, std::string_view argument,
                        const SubprocessResult& result) {
    std::string message = "hook " + hook.path + " " + std::string(argument) + ": " +
                          result.describe();
    if (!result.last_stderr_line.empty()) {
      // One line is enough to point at the cause; the rest is in the log.
      constexpr std::size_t max_quoted = 300;
      auto line = result.last_stderr_line.substr(0, max_quoted);
      if (result.last_stderr_line.size() > max_quoted) {
        line += "...";
      }
      message += " (stderr: " + line + ")";
    }
    switch (result.outcome) {
      case Outcome::timed_out:
      case Outcome::stopped:
        return Status::timeout(message);
      case Outcome::spawn_failed:
        return Status::non_retryable(message);
      case Outcome::exited:
      case Outcome::signaled:
        break;
    }
    // A script that said no (a database busy, a lock not taken) may well
    // say yes next time; an admin reads the message either way.
    return Status::retryable(message);
  }

  WriterSpec spec_;
  HooksOptions options_;
  WriterEnvironment env_;
  SessionHooks session_;
};

}  // namespace

void register_hooks_writer(WriterRegistry& registry) {
  registry.add(WriterType{
      .type = "hooks",
      .default_level = Level::application,
      .description = "runs the executables in a hook directory at each phase (qemu-ga "
                     "fsfreeze-hook.d and open-vm-tools backupScripts.d compatible)",
      .create = [](const WriterSpec& spec,
                   const WriterEnvironment& env) -> std::unique_ptr<Writer> {
        return std::make_unique<HooksWriter>(spec, parse_options(spec.options), env);
      },
  });
}

}  // namespace quiesce::writers

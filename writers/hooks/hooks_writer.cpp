#include "writers/hooks/hooks_writer.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/logger.h>

#include "platform/subprocess.hpp"
#include "quiesce/json_fields.hpp"
#include "writers/hooks/hook_directory.hpp"
#include "writers/hooks/hook_system.hpp"

namespace quiesce::writers {

namespace {

using hooks::Hook;
using hooks::HookScan;
using platform::Outcome;
using platform::OutputStream;
using platform::SubprocessResult;
using platform::SubprocessSpec;

// The name under which the legacy pair stands in the list of hooks that
// froze; a '/' cannot occur in a directory entry's name, so no hook clashes.
constexpr const char* legacy_slot_name = "/legacy-scripts";
// The run-dir record of hooks that froze: <run_dir>/hooks-frozen-<writer>.json.
constexpr const char* record_prefix = "hooks-frozen-";
constexpr std::chrono::milliseconds default_timeout{30000};
// Between SIGTERM and SIGKILL for a hook that overran: enough for a script
// to clean up, short next to any freeze window.
constexpr std::chrono::milliseconds kill_grace{1000};
constexpr std::size_t max_output_bytes = hooks::max_hook_output_bytes;

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

// Absolute for the OS the agent runs on ("/..." on Linux, "C:\\..." on Windows).
bool is_absolute_path(const std::string& path) {
  return std::filesystem::path(path).is_absolute();
}

bool ends_in_separator(const std::string& path) {
  return !path.empty() && (path.back() == '/' ||
                           path.back() == static_cast<char>(std::filesystem::path::preferred_separator));
}

struct HooksOptions {
  std::string directory;
  Style style = Style::quiesce;
  std::chrono::milliseconds timeout = default_timeout;
  bool allow_non_root_owner = false;
  std::string legacy_freeze_script;  // vmware style only; "" when none
  std::string legacy_thaw_script;
};

HooksOptions parse_options(const nlohmann::json& json) {
  HooksOptions options;
  JsonFields fields(json, "options");
  const bool explicit_directory = fields.has("directory");
  options.directory = fields.string("directory", hooks::default_hook_directory());
  if (!is_absolute_path(options.directory)) {
    throw FieldError(fields.path_of("directory"),
                     "'" + options.directory + "' is not an absolute path");
  }
  // A root ("/", "C:\\") keeps its separator: it is what makes it a root.
  while (ends_in_separator(options.directory) &&
         std::filesystem::path(options.directory).has_relative_path()) {
    options.directory.pop_back();
  }
  // The default directory may be absent (no hooks installed); one named in
  // the config is expected to be there, and a typo must not go unnoticed.
  if (explicit_directory) {
    std::error_code ec;
    const auto status = std::filesystem::status(options.directory, ec);
    if (!std::filesystem::exists(status)) {
      throw FieldError(fields.path_of("directory"),
                       "'" + options.directory + "' does not exist");
    }
    if (!std::filesystem::is_directory(status)) {
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
  for (const auto& [key, fallback, target] :
       {std::tuple{"legacy_freeze_script", hooks::default_legacy_freeze_script(),
                   &options.legacy_freeze_script},
        std::tuple{"legacy_thaw_script", hooks::default_legacy_thaw_script(),
                   &options.legacy_thaw_script}}) {
    if (fields.has(key) && options.style != Style::vmware) {
      throw FieldError(fields.path_of(key), "only the vmware style runs legacy scripts");
    }
    *target = fields.string(key, options.style == Style::vmware ? fallback : "");
    // "" turns the legacy script off; anything else is a full path, as the
    // ones open-vm-tools has compiled in.
    if (!target->empty() && !is_absolute_path(*target)) {
      throw FieldError(fields.path_of(key), "'" + *target + "' is not an absolute path");
    }
  }
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
  std::optional<Hook> freezing;  // its freeze is running now
};

// The argument a restarted agent gives the hooks a dead one left frozen:
// the session is gone, so what the style does at abort.
std::string_view recovery_argument(Style style) {
  switch (style) {
    case Style::quiesce: return "abort";
    case Style::qemu: return "thaw";
    case Style::vmware: return "freezeFail";
  }
  return "abort";
}

std::optional<Style> style_from_name(std::string_view name) {
  for (auto style : {Style::quiesce, Style::qemu, Style::vmware}) {
    if (style_name(style) == name) {
      return style;
    }
  }
  return std::nullopt;
}

std::string sanitize_file_name(const std::string& name) {
  std::string result;
  for (char c : name) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.';
    result.push_back(plain ? c : '_');
  }
  return result;
}

// What every hook run shares, in the writer and in recovery alike: argv
// only, the fixed PATH, the session's identity in the environment.
SubprocessSpec hook_spec(const std::string& path, std::string_view argument, Phase phase,
                         const std::string& session_id, const std::string& writer, Style style) {
  SubprocessSpec spec;
  spec.argv = {path, std::string(argument)};
  spec.env = hooks::hook_base_environment();
  spec.env.insert(spec.env.end(), {
      "QUIESCE_SESSION_ID=" + session_id,
      "QUIESCE_PHASE=" + std::string(hook_phase_name(phase)),
      "QUIESCE_WRITER=" + writer,
      "QUIESCE_HOOK_STYLE=" + std::string(style_name(style)),
  });
  spec.max_output_bytes = max_output_bytes;
  spec.kill_grace = kill_grace;
  return spec;
}

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
    if (auto status = freeze_legacy_script(ctx); !status.is_ok()) {
      return status;
    }
    for (const auto& hook : found.hooks) {
      if (options_.style == Style::quiesce) {
        add_unique(session_.touched, hook);
      }
      // Recorded before it runs: if the agent dies now, the hook may yet
      // finish its freeze and hold something that only its release undoes.
      session_.freezing = hook;
      write_record();
      auto result = run_hook(hook, Phase::freeze, ctx);
      session_.freezing.reset();
      if (result.outcome == Outcome::timed_out || result.outcome == Outcome::stopped) {
        // Killed half-way, it may well have taken its lock already (found
        // by the fault campaign: SIGTERM of the agent during a freeze left
        // the hook's lock behind). A hook that failed on its own said it
        // holds nothing; one we cut short could not say.
        add_unique(session_.frozen, hook);
      }
      if (!result.success()) {
        write_record();
        auto status = failure_status(hook, Phase::freeze, result);
        if (!session_.frozen.empty()) {
          log().warn("hooks '{}': {} hook(s) froze before this failure; they are released "
                     "in reverse order at abort",
                     spec_.name, session_.frozen.size());
        }
        return status;
      }
      add_unique(session_.frozen, hook);
      write_record();
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
    session_ = SessionHooks{session_id, {}, {}, std::nullopt};
  }

  // vmware style: open-vm-tools' legacy pre-freeze-script runs before the
  // directory's scripts; when either legacy script exists, a slot is kept
  // first in the freeze order so post-thaw-script runs after them all.
  Status freeze_legacy_script(const PhaseContext& ctx) {
    if (options_.style != Style::vmware) {
      return Status::ok();
    }
    const hooks::ScanRules rules{options_.allow_non_root_owner};
    auto freeze_script = hooks::check_single_script(options_.legacy_freeze_script, rules);
    auto thaw_script = hooks::check_single_script(options_.legacy_thaw_script, rules);
    if (!freeze_script.present && !thaw_script.present) {
      return Status::ok();
    }
    // Checked before anything runs: a thaw script that may not run must
    // not be found out only after the freeze script has held something.
    for (const auto& [path, check] : {std::pair{options_.legacy_freeze_script, freeze_script},
                                      std::pair{options_.legacy_thaw_script, thaw_script}}) {
      if (check.present && !check.problem.empty()) {
        return Status::non_retryable("refusing legacy script " + path + ": " + check.problem);
      }
    }
    const Hook slot{legacy_slot_name, options_.legacy_freeze_script};
    if (freeze_script.present) {
      session_.freezing = slot;
      write_record();
      auto result = run_hook(Hook{"pre-freeze-script", options_.legacy_freeze_script},
                             "freeze", Phase::freeze, ctx);
      session_.freezing.reset();
      if (!result.success()) {
        if (result.outcome == Outcome::timed_out || result.outcome == Outcome::stopped) {
          add_unique(session_.frozen, slot);  // as for a directory hook cut short
        }
        write_record();
        return failure_status(slot, "freeze", result);
      }
    }
    add_unique(session_.frozen, slot);
    write_record();
    return Status::ok();
  }

  // What releasing `hook` runs: the hook itself, or for the legacy slot the
  // legacy thaw script (nothing when there is none).
  std::optional<Hook> release_target(const Hook& hook) const {
    if (hook.name != legacy_slot_name) {
      return hook;
    }
    if (!hooks::check_single_script(options_.legacy_thaw_script,
                                    hooks::ScanRules{options_.allow_non_root_owner})
             .present) {
      return std::nullopt;
    }
    return Hook{"post-thaw-script", options_.legacy_thaw_script};
  }

  std::string record_file() const {
    if (env_.run_dir.empty()) {
      return "";
    }
    return (std::filesystem::path(env_.run_dir) /
            (std::string(record_prefix) + sanitize_file_name(spec_.name) + ".json"))
        .string();
  }

  // The hooks a restart must release if the agent dies now, in the run dir
  // (a tmpfs: writing there never meets a frozen filesystem). Removed when
  // nothing is held. A failure to write is logged, not fatal: the hold
  // itself is fine, only its recovery after a crash would be missing.
  void write_record() {
    const auto path = record_file();
    if (path.empty()) {
      return;
    }
    // Frozen ones only (in every style): a restart releases holds, it does
    // not finish a session, so hooks only prepared need nothing from it.
    std::vector<Hook> held = session_.frozen;
    if (session_.freezing) {
      add_unique(held, *session_.freezing);
    }
    std::error_code ec;
    if (held.empty()) {
      helper_output_.forget_pipe_ids();
      std::filesystem::remove(path, ec);
      return;
    }
    nlohmann::json json{{"version", 1},
                        {"writer", spec_.name},
                        {"session_id", session_.session_id},
                        {"style", style_name(options_.style)},
                        {"agent_pid", platform::current_process_id()},
                        {"timeout_ms", options_.timeout.count()},
                        {"allow_non_root_owner", options_.allow_non_root_owner},
                        {"helper_pipes", helper_output_.pipe_ids()},
                        {"hooks", nlohmann::json::array()}};
    for (const auto& hook : held) {
      if (auto target = release_target(hook)) {
        json["hooks"].push_back({{"name", target->name}, {"path", target->path}});
      }
    }
    std::filesystem::create_directories(env_.run_dir, ec);
    const auto temp = path + ".tmp";
    {
      std::ofstream out(temp, std::ios::trunc);
      out << json.dump(2) << "\n";
      if (!out) {
        log().error("hooks '{}': cannot write {}: a restart after a crash would not release "
                    "the hooks now frozen",
                    spec_.name, temp);
        return;
      }
    }
    std::filesystem::rename(temp, path, ec);
    if (ec) {
      log().error("hooks '{}': cannot rename {}: {}", spec_.name, temp, ec.message());
    }
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
      auto target = release_target(*it);
      if (!target) {
        continue;  // the legacy slot with no thaw script: nothing to run
      }
      auto result = run_hook(*target, argument, phase, ctx);
      if (!result.success()) {
        auto status = failure_status(*it, argument, result);
        failures.add(status.error().error_class, status.error().message);
      }
      if (result.outcome == Outcome::timed_out || result.outcome == Outcome::stopped ||
          result.outcome == Outcome::spawn_failed) {
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
    write_record();
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
    auto spec = hook_spec(hook.path, argument, phase, ctx.session_id, spec_.name, options_.style);
    spec.stop = ctx.stop;
    const auto now = Clock::now();
    spec.deadline = now + options_.timeout;
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
    spec.hand_over =
        helper_output_.hand_over(env_.logger, spec_.name, hook.name, std::string(argument));

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
  // Last, so it stops (and stops calling into the logger) before the rest goes.
  hooks::HelperOutput helper_output_;
};

}  // namespace

StaleHooksReport recover_stale_hooks(const std::string& run_dir,
                                     const std::shared_ptr<spdlog::logger>& logger_ptr,
                                     platform::LingeringOutput* helper_output) {
  spdlog::logger& logger = *logger_ptr;
  namespace fs = std::filesystem;
  StaleHooksReport report;
  std::error_code ec;
  std::vector<fs::path> records;
  for (const auto& item : fs::directory_iterator(run_dir, ec)) {
    auto name = item.path().filename().string();
    if (name.starts_with(record_prefix) && name.ends_with(".json")) {
      records.push_back(item.path());
    }
  }
  std::sort(records.begin(), records.end());
  for (const auto& path : records) {
    report.records.push_back(path.string());
    // The record says what runs as root: only one that nobody but the
    // agent's own user could have written is trusted.
    if (auto problem = hooks::record_problem(path.string()); !problem.empty()) {
      logger.error("hooks recovery: {} {}; not running what it lists, removing it",
                   path.string(), problem);
      fs::remove(path, ec);
      continue;
    }
    nlohmann::json json;
    std::optional<Style> style;
    try {
      std::ifstream in(path);
      json = nlohmann::json::parse(in);
      style = style_from_name(json.at("style").get<std::string>());
      if (!style || !json.at("hooks").is_array()) {
        throw std::runtime_error("unknown style or no hook list");
      }
    } catch (const std::exception& e) {
      logger.error("hooks recovery: {} cannot be read ({}); removing it", path.string(),
                   e.what());
      fs::remove(path, ec);
      continue;
    }
    const auto writer = json.value("writer", std::string("hooks"));
    const auto session_id = json.value("session_id", std::string());
    const auto argument = recovery_argument(*style);
    const hooks::ScanRules rules{json.value("allow_non_root_owner", false)};
    const std::chrono::milliseconds timeout{json.value("timeout_ms", default_timeout.count())};
    const auto& hooks = json.at("hooks");
    if (helper_output != nullptr && json.contains("helper_pipes")) {
      const auto attached =
          hooks::reattach_helper_pipes(json["helper_pipes"], *helper_output, logger_ptr, writer);
      if (attached > 0) {
        logger.info("hooks recovery: reading the output pipes of {} helper(s) its hooks left "
                    "running, so their writes do not kill them",
                    attached);
      }
    }
    logger.warn("hooks recovery: writer '{}' (agent pid {}, session {}) left {} hook(s) frozen; "
                "running them with '{}' in reverse order",
                writer, json.value("agent_pid", 0LL), session_id, hooks.size(), argument);
    for (auto it = hooks.rbegin(); it != hooks.rend(); ++it) {
      const auto hook_path_text = it->value("path", std::string());
      const auto hook_name = it->value("name", hook_path_text);
      auto check = hooks::check_single_script(hook_path_text, rules);
      if (!check.present || !check.problem.empty()) {
        logger.error("hooks recovery: not running {}: {}", hook_path_text,
                     check.present ? check.problem : "no longer there");
        ++report.failed;
        continue;
      }
      auto spec = hook_spec(hook_path_text, argument, Phase::abort, session_id, writer, *style);
      spec.deadline = Clock::now() + timeout;
      spec.on_line = [&](OutputStream stream, std::string_view line) {
        logger.log(stream == OutputStream::out ? spdlog::level::info : spdlog::level::warn,
                   "hooks recovery: {}{}: {}", hook_name,
                   stream == OutputStream::out ? "" : " (stderr)", line);
      };
      auto result = platform::run_subprocess(spec);
      if (result.success()) {
        logger.info("hooks recovery: {} {} done in {} ms", hook_path_text, argument,
                    result.elapsed.count());
        ++report.released;
      } else {
        logger.error("hooks recovery: {} {}: {}", hook_path_text, argument, result.describe());
        ++report.failed;
      }
    }
    fs::remove(path, ec);
  }
  return report;
}

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

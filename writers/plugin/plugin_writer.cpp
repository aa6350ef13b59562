#include "writers/plugin/plugin_writer.hpp"

#include <algorithm>
#include <chrono>
#include <limits>
#include <utility>

#include <spdlog/spdlog.h>

#include "quiesce/json_fields.hpp"
#include "quiesce/json_nesting.hpp"

namespace quiesce::writers {

namespace {

using plugin::PluginFunctions;
using plugin::PluginLibrary;

// Where the plugin's log callback lands. Lives in the writer (a stable
// address handed to the plugin) until after quiesce_plugin_destroy.
struct LogBridge {
  std::shared_ptr<spdlog::logger> logger;
  std::string prefix;
};

void log_from_plugin(void* opaque, std::int32_t level, const char* message) {
  const auto* bridge = static_cast<const LogBridge*>(opaque);
  if (bridge == nullptr || message == nullptr) {
    return;
  }
  spdlog::level::level_enum spd_level = spdlog::level::info;
  switch (level) {
    case QUIESCE_PLUGIN_LOG_TRACE: spd_level = spdlog::level::trace; break;
    case QUIESCE_PLUGIN_LOG_DEBUG: spd_level = spdlog::level::debug; break;
    case QUIESCE_PLUGIN_LOG_INFO: spd_level = spdlog::level::info; break;
    case QUIESCE_PLUGIN_LOG_WARN: spd_level = spdlog::level::warn; break;
    default: spd_level = spdlog::level::err; break;
  }
  // The callback is C: nothing may propagate back into the plugin.
  try {
    bridge->logger->log(spd_level, "{}{}", bridge->prefix, message);
  } catch (...) {
  }
}

std::int32_t stop_requested(void* opaque) {
  const auto* stop = static_cast<const std::stop_token*>(opaque);
  return stop != nullptr && stop->stop_requested() ? 1 : 0;
}

std::int64_t ms_until(Clock::time_point deadline, Clock::time_point now) {
  if (deadline == Clock::time_point::max()) {
    return std::numeric_limits<std::int32_t>::max();  // "no deadline": ~24 days
  }
  return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
}

// The C view of a PhaseContext; owns the strings it points to.
class CallContext {
 public:
  explicit CallContext(const PhaseContext& ctx) : session_id_(ctx.session_id), stop_(ctx.stop) {
    const auto now = Clock::now();
    const auto wall_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
    const auto remaining = std::max<std::int64_t>(0, ms_until(ctx.deadline, now));
    c_.session_id = session_id_.c_str();
    c_.remaining_ms = remaining;
    c_.deadline_unix_ms = wall_ms + remaining;
    c_.hold_deadline_unix_ms = ctx.hold_deadline == Clock::time_point{}
                                   ? 0
                                   : wall_ms + ms_until(ctx.hold_deadline, now);
    c_.should_stop = &stop_requested;
    c_.should_stop_opaque = &stop_;
  }
  CallContext(const CallContext&) = delete;
  CallContext& operator=(const CallContext&) = delete;

  [[nodiscard]] const quiesce_plugin_call_context* get() const { return &c_; }

 private:
  std::string session_id_;
  std::stop_token stop_;
  quiesce_plugin_call_context c_{};
};

std::string_view level_name(int level) {
  switch (level) {
    case QUIESCE_PLUGIN_LEVEL_DATABASE: return "database";
    case QUIESCE_PLUGIN_LEVEL_FILESYSTEM: return "filesystem";
    default: return "application";
  }
}

class PluginWriter final : public Writer {
 public:
  PluginWriter(std::shared_ptr<PluginLibrary> library, const WriterSpec& spec,
               const nlohmann::json& plugin_options, const WriterEnvironment& env)
      : library_(std::move(library)),
        fns_(library_->functions()),
        name_(spec.name),
        log_(std::make_unique<LogBridge>(
            LogBridge{env.logger ? env.logger : spdlog::default_logger(),
                      "plugin '" + spec.name + "': "})) {
    const std::string options_text = plugin_options.dump();
    const std::string agent_version = QUIESCE_VERSION;
    const quiesce_plugin_init_input input{
        .options_json = options_text.c_str(),
        .writer_name = name_.c_str(),
        .log = &log_from_plugin,
        .log_opaque = log_.get(),
        .agent_version = agent_version.c_str(),
        .host_abi_version = plugin::host_abi_version(),
        .run_dir = env.run_dir.c_str(),
        .state_dir = env.state_dir.c_str(),
    };
    std::int32_t rc = QUIESCE_PLUGIN_ERROR_NON_RETRYABLE;
    handle_ = fns_.create(&input, &rc);
    if (rc != QUIESCE_PLUGIN_OK || handle_ == nullptr) {
      std::string message = handle_ != nullptr ? last_error() : "";
      if (handle_ != nullptr) {
        fns_.destroy(handle_);
        handle_ = nullptr;
      }
      throw FieldError("options.options",
                       "plugin " + library_->path() + " refused to create writer '" + name_ +
                           "': " + (message.empty() ? "no message (code " + std::to_string(rc) + ")"
                                                    : message));
    }
    const auto& description = library_->description();
    if (level_name(description.level) != to_string(spec.level)) {
      log_->logger->info("plugin '{}': {} describes itself as a {} writer; it runs at level {} "
                         "as configured (set \"level\" in its config entry to change that)",
                         name_, library_->path(), level_name(description.level),
                         to_string(spec.level));
    }
  }

  ~PluginWriter() override {
    if (handle_ != nullptr) {
      fns_.destroy(handle_);
    }
  }
  PluginWriter(const PluginWriter&) = delete;
  PluginWriter& operator=(const PluginWriter&) = delete;

  Status identify(const PhaseContext& ctx, Identity& out) override {
    CallContext call(ctx);
    const char* text = nullptr;
    auto status = to_status("identify", fns_.identify(handle_, call.get(), &text));
    if (!status.is_ok()) {
      return status;
    }
    if (text != nullptr) {
      auto parsed = parse_json("identify", text);
      if (!parsed) {
        return Status::non_retryable(message("identify", "returned invalid JSON"));
      }
      if (!parsed->is_object()) {
        return Status::non_retryable(message("identify", "returned JSON that is not an object"));
      }
      if (auto it = parsed->find("components"); it != parsed->end()) {
        if (!it->is_array()) {
          return Status::non_retryable(message("identify", "\"components\" is not an array"));
        }
        out.components = *it;
      }
      if (auto it = parsed->find("metadata"); it != parsed->end()) {
        if (!it->is_object()) {
          return Status::non_retryable(message("identify", "\"metadata\" is not an object"));
        }
        out.metadata = *it;
      }
    }
    const auto& description = library_->description();
    out.metadata["plugin"] = {
        {"path", library_->path()},
        {"type", description.type_name},
        {"description", description.description},
        {"version", description.plugin_version},
        {"abi_version", plugin::to_string(library_->abi_version())},
        {"default_level", level_name(description.level)},
        {"capabilities", library_->capabilities()},
    };
    return Status::ok();
  }

  Status prepare(const PhaseContext& ctx) override {
    CallContext call(ctx);
    return to_status("prepare", fns_.prepare(handle_, call.get()));
  }

  Status freeze(const PhaseContext& ctx) override {
    CallContext call(ctx);
    return to_status("freeze", fns_.freeze(handle_, call.get()));
  }

  Status thaw(const PhaseContext& ctx, HoldReport& hold) override {
    CallContext call(ctx);
    quiesce_plugin_hold_report report{1, nullptr};
    auto status = to_status("thaw", fns_.thaw(handle_, call.get(), &report));
    // The hold verdict counts even when thaw itself failed.
    if (report.continuous == 0) {
      hold.continuous = false;
      hold.detail = report.detail != nullptr ? report.detail : "plugin reported a broken hold";
    }
    return status;
  }

  Status post_snapshot(const PhaseContext& ctx, const SnapshotInfo& snapshot,
                       nlohmann::json& artifacts) override {
    if (fns_.post_snapshot == nullptr) {
      return Status::ok();  // not a capability of this plugin: nothing to do
    }
    CallContext call(ctx);
    const char* text = nullptr;
    auto status = to_status("post_snapshot", fns_.post_snapshot(handle_, call.get(),
                                                                snapshot.snapshot_id.c_str(), &text));
    if (!status.is_ok() || text == nullptr) {
      return status;
    }
    auto parsed = parse_json("post_snapshot", text);
    if (!parsed || !parsed->is_object()) {
      return Status::non_retryable(message("post_snapshot", "returned artifacts that are not a JSON object"));
    }
    for (auto& [key, value] : parsed->items()) {
      artifacts[key] = value;
    }
    return Status::ok();
  }

  Status abort(const PhaseContext& ctx) override {
    CallContext call(ctx);
    return to_status("abort", fns_.abort(handle_, call.get()));
  }

  Status post_restore(const PhaseContext& ctx, const RestoreInfo& restore) override {
    if (fns_.post_restore == nullptr) {
      return Status::ok();
    }
    PhaseContext with_session = ctx;
    if (with_session.session_id.empty()) {
      with_session.session_id = restore.session_id;
    }
    CallContext call(with_session);
    return to_status("post_restore",
                     fns_.post_restore(handle_, call.get(), restore.checkpoint_id.c_str()));
  }

 private:
  [[nodiscard]] std::string last_error() const {
    const char* text = fns_.get_last_error(handle_);
    return text != nullptr ? text : "";
  }

  [[nodiscard]] std::string message(std::string_view phase, const std::string& what) const {
    return "plugin '" + name_ + "' (" + library_->path() + ") " + std::string(phase) + ": " + what;
  }

  [[nodiscard]] std::optional<nlohmann::json> parse_json(std::string_view phase,
                                                         const char* text) const {
    auto parsed = parse_untrusted_json(text);
    if (!parsed) {
      log_->logger->warn("plugin '{}' {}: invalid JSON from the plugin (or nested deeper than {}): {}",
                         name_, phase, default_max_json_nesting,
                         std::string_view(text).substr(0, 200));
      return std::nullopt;
    }
    return parsed;
  }

  [[nodiscard]] Status to_status(std::string_view phase, std::int32_t rc) const {
    if (rc == QUIESCE_PLUGIN_OK) {
      return Status::ok();
    }
    auto text = last_error();
    if (text.empty()) {
      text = "failed without a message";
    }
    switch (rc) {
      case QUIESCE_PLUGIN_ERROR_RETRYABLE: return Status::retryable(message(phase, text));
      case QUIESCE_PLUGIN_ERROR_NON_RETRYABLE: return Status::non_retryable(message(phase, text));
      case QUIESCE_PLUGIN_ERROR_TIMEOUT: return Status::timeout(message(phase, text));
      case QUIESCE_PLUGIN_ERROR_INCONSISTENT: return Status::inconsistent(message(phase, text));
      default:
        return Status::non_retryable(
            message(phase, "returned unknown code " + std::to_string(rc) + ": " + text));
    }
  }

  std::shared_ptr<PluginLibrary> library_;  // outlives handle_: the code lives there
  PluginFunctions fns_;
  std::string name_;
  std::unique_ptr<LogBridge> log_;
  quiesce_plugin_handle* handle_ = nullptr;
};

}  // namespace

std::unique_ptr<Writer> make_plugin_writer(std::shared_ptr<plugin::PluginLibrary> library,
                                           const WriterSpec& spec,
                                           const nlohmann::json& plugin_options,
                                           const WriterEnvironment& env) {
  return std::make_unique<PluginWriter>(std::move(library), spec, plugin_options, env);
}

void register_plugin_writer(WriterRegistry& registry) {
  registry.add(WriterType{
      .type = "plugin",
      .default_level = Level::application,
      .description = "a third-party writer loaded from a .so through the Quiesce plugin C ABI",
      .create = [](const WriterSpec& spec, const WriterEnvironment& env) -> std::unique_ptr<Writer> {
        JsonFields fields(spec.options, "options");
        const auto path = fields.string("path");
        nlohmann::json plugin_options = nlohmann::json::object();
        if (const auto* value = fields.raw("options")) {
          if (!value->is_object()) {
            throw FieldError(fields.path_of("options"), "expected an object");
          }
          plugin_options = *value;
        }
        plugin::LoadRules rules;
        rules.allow_non_root_owner = fields.boolean("allow_non_root_owner", false);
        fields.reject_unknown();
        std::shared_ptr<PluginLibrary> library;
        try {
          library = PluginLibrary::load(path, rules);
        } catch (const plugin::PluginLoadError& e) {
          throw FieldError(fields.path_of("path"), e.what());
        }
        return make_plugin_writer(std::move(library), spec, plugin_options, env);
      },
  });
}

}  // namespace quiesce::writers

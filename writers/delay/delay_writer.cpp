#include "writers/delay/delay_writer.hpp"

#include <array>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>

#include "quiesce/json_fields.hpp"

namespace quiesce::writers {

namespace {

constexpr std::array<Phase, 7> all_phases{Phase::identify, Phase::prepare, Phase::freeze,
                                           Phase::thaw, Phase::post_snapshot, Phase::abort,
                                           Phase::post_restore};

std::optional<Phase> parse_phase(std::string_view text) {
  for (auto phase : all_phases) {
    if (to_string(phase) == text) {
      return phase;
    }
  }
  return std::nullopt;
}

struct DelayOptions {
  std::map<Phase, std::chrono::milliseconds> delays;
  std::map<Phase, ErrorClass> failures;
  std::set<Phase> throws;
  bool lose_hold = false;
};

DelayOptions parse_options(const nlohmann::json& json) {
  DelayOptions options;
  JsonFields fields(json, "options");
  auto delays = fields.object("delays_ms");
  for (auto phase : all_phases) {
    if (delays.has(to_string(phase))) {
      options.delays[phase] = delays.millis(to_string(phase), std::nullopt);
    }
  }
  delays.reject_unknown();
  auto failures = fields.object("fail");
  for (auto phase : all_phases) {
    if (auto text = failures.optional_string(to_string(phase))) {
      auto error_class = parse_error_class(*text);
      if (!error_class) {
        throw FieldError(failures.path_of(to_string(phase)),
                         "expected retryable, non_retryable, timeout or inconsistent");
      }
      options.failures[phase] = *error_class;
    }
  }
  failures.reject_unknown();
  for (const auto& name : fields.strings("throw", std::vector<std::string>{})) {
    auto phase = parse_phase(name);
    if (!phase) {
      throw FieldError(fields.path_of("throw"), "unknown phase '" + name + "'");
    }
    options.throws.insert(*phase);
  }
  options.lose_hold = fields.boolean("lose_hold", false);
  fields.reject_unknown();
  return options;
}

class DelayWriter final : public Writer {
 public:
  DelayWriter(WriterSpec spec, DelayOptions options)
      : spec_(std::move(spec)), options_(std::move(options)) {}

  Status identify(const PhaseContext& ctx, Identity& out) override {
    out.metadata["delays_ms"] = nlohmann::json::object();
    for (const auto& [phase, delay] : options_.delays) {
      out.metadata["delays_ms"][std::string(to_string(phase))] = delay.count();
    }
    return act(Phase::identify, ctx);
  }
  Status prepare(const PhaseContext& ctx) override { return act(Phase::prepare, ctx); }
  Status freeze(const PhaseContext& ctx) override { return act(Phase::freeze, ctx); }
  Status thaw(const PhaseContext& ctx, HoldReport& hold) override {
    if (options_.lose_hold) {
      hold.continuous = false;
      hold.detail = "delay writer configured with lose_hold";
    }
    return act(Phase::thaw, ctx);
  }
  Status post_snapshot(const PhaseContext& ctx, const SnapshotInfo& snapshot,
                       nlohmann::json& artifacts) override {
    artifacts["snapshot_id"] = snapshot.snapshot_id;
    return act(Phase::post_snapshot, ctx);
  }
  Status abort(const PhaseContext& ctx) override { return act(Phase::abort, ctx); }
  Status post_restore(const PhaseContext& ctx, const RestoreInfo&) override {
    return act(Phase::post_restore, ctx);
  }

 private:
  Status act(Phase phase, const PhaseContext& ctx) {
    if (auto it = options_.delays.find(phase); it != options_.delays.end()) {
      // Sleep, but wake at once when the coordinator gives up on this call.
      std::mutex mutex;
      std::condition_variable_any wake;
      std::unique_lock lock(mutex);
      wake.wait_for(lock, ctx.stop, it->second, [] { return false; });
    }
    if (options_.throws.contains(phase)) {
      throw std::runtime_error("delay writer '" + spec_.name + "': injected exception in " +
                               std::string(to_string(phase)));
    }
    if (auto it = options_.failures.find(phase); it != options_.failures.end()) {
      return Status::error(it->second, "delay writer '" + spec_.name + "': injected " +
                                           std::string(to_string(it->second)) + " failure in " +
                                           std::string(to_string(phase)));
    }
    return Status::ok();
  }

  WriterSpec spec_;
  DelayOptions options_;
};

}  // namespace

void register_delay_writer(WriterRegistry& registry) {
  registry.add(WriterType{
      .type = "delay",
      .default_level = Level::application,
      .description = "sleeps and fails on command; for trials and benchmarks",
      .create = [](const WriterSpec& spec, const WriterEnvironment&) -> std::unique_ptr<Writer> {
        return std::make_unique<DelayWriter>(spec, parse_options(spec.options));
      },
  });
}

}  // namespace quiesce::writers

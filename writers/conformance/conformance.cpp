#include "writers/conformance/conformance.hpp"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <stop_token>
#include <thread>
#include <utility>

namespace quiesce::conformance {

namespace {

using Millis = std::chrono::milliseconds;

// Thrown by a check to fail with a reason.
class CheckFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Millis since(Clock::time_point start) {
  return std::chrono::duration_cast<Millis>(Clock::now() - start);
}

// What one call did.
struct CallOutcome {
  bool returned = false;
  std::optional<WriterError> error;
  Millis elapsed{0};
  Identity identity;
  HoldReport hold;
  nlohmann::json artifacts = nlohmann::json::object();
};

using WriterCall = std::function<Status(Writer&, const PhaseContext&, CallOutcome&)>;

// One writer for one check, called the way the coordinator calls writers.
class Harness {
 public:
  Harness(const WriterType& type, const WriterSpec& spec, const WriterEnvironment& env,
          const CheckLimits& limits, std::string check)
      : writer_(type.create(spec, env)), limits_(limits), check_(std::move(check)) {}

  ~Harness() {
    if (hung_) {
      // A call is still running inside it; destroying it would pull the
      // object out from under that thread.
      [[maybe_unused]] Writer* leaked = writer_.release();
    }
  }
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  [[nodiscard]] bool hung() const { return hung_; }

  // Runs one call on its own thread with `deadline`; at the deadline the
  // stop token fires, and the call must return within stop_bound of it.
  CallOutcome call(Phase phase, const WriterCall& invoke, std::optional<Millis> timeout = {}) {
    struct Shared {
      std::mutex mutex;
      std::condition_variable done_cv;
      bool done = false;
      CallOutcome outcome;
    };
    if (hung_) {
      throw CheckFailed("an earlier call never returned");
    }
    auto shared = std::make_shared<Shared>();
    std::stop_source stop;
    const auto start = Clock::now();
    const auto deadline = start + timeout.value_or(limits_.call_timeout);
    PhaseContext ctx{check_ + "-session-" + std::to_string(session_), deadline,
                     phase == Phase::freeze || phase == Phase::thaw ? deadline + limits_.call_timeout
                                                                    : Clock::time_point::max(),
                     stop.get_token()};
    Writer* writer = writer_.get();
    std::thread worker([shared, ctx = std::move(ctx), writer, invoke]() {
      CallOutcome outcome;
      try {
        Status status = invoke(*writer, ctx, outcome);
        if (!status.is_ok()) {
          outcome.error = status.error();
        }
      } catch (const std::exception& e) {
        outcome.error = WriterError{ErrorClass::non_retryable, std::string("threw: ") + e.what()};
      } catch (...) {
        outcome.error = WriterError{ErrorClass::non_retryable, "threw a non-standard exception"};
      }
      std::lock_guard lock(shared->mutex);
      shared->outcome = std::move(outcome);
      shared->done = true;
      shared->done_cv.notify_all();
    });

    std::unique_lock lock(shared->mutex);
    if (!shared->done_cv.wait_until(lock, deadline, [&] { return shared->done; })) {
      stop.request_stop();
      if (!shared->done_cv.wait_until(lock, deadline + limits_.stop_bound,
                                      [&] { return shared->done; })) {
        hung_ = true;
        // Only a hung call's thread is let go: it has long started by now.
        worker.detach();
        throw CheckFailed(std::string(to_string(phase)) + " did not return within " +
                          std::to_string(limits_.stop_bound.count()) +
                          " ms after its deadline passed and its stop token fired");
      }
    }
    CallOutcome outcome = std::move(shared->outcome);
    // A returned call's thread has only its tail left: joined, not
    // detached. Detaching at once raced winpthreads (mingw-w64): a thread
    // detached before it had started could start with a null argument and
    // crash the kit under wine about one run in three.
    lock.unlock();
    worker.join();
    outcome.returned = true;
    outcome.elapsed = since(start);
    return outcome;
  }

  void next_session() { ++session_; }

  // The phases, each required to succeed (`when` says where in the check).
  Identity identify(const std::string& when) {
    auto outcome = call(Phase::identify, [](Writer& w, const PhaseContext& ctx, CallOutcome& o) {
      return w.identify(ctx, o.identity);
    });
    require_ok(Phase::identify, outcome, when);
    if (!outcome.identity.components.is_array()) {
      throw CheckFailed("identify " + when + ": components is not a JSON array");
    }
    if (!outcome.identity.metadata.is_object()) {
      throw CheckFailed("identify " + when + ": metadata is not a JSON object");
    }
    try {
      // What the agent will do with it: put it on the wire.
      [[maybe_unused]] auto text = outcome.identity.components.dump() +
                                   outcome.identity.metadata.dump();
    } catch (const std::exception& e) {
      throw CheckFailed("identify " + when + ": cannot be serialised: " + e.what());
    }
    last_elapsed_ = outcome.elapsed;
    return outcome.identity;
  }
  void prepare(const std::string& when) {
    require_ok(Phase::prepare, call(Phase::prepare, [](Writer& w, const PhaseContext& ctx,
                                                       CallOutcome&) { return w.prepare(ctx); }),
               when);
  }
  void freeze(const std::string& when) {
    require_ok(Phase::freeze, call(Phase::freeze, [](Writer& w, const PhaseContext& ctx,
                                                     CallOutcome&) { return w.freeze(ctx); }),
               when);
  }
  HoldReport thaw(const std::string& when) {
    auto outcome = call(Phase::thaw, [](Writer& w, const PhaseContext& ctx, CallOutcome& o) {
      return w.thaw(ctx, o.hold);
    });
    require_ok(Phase::thaw, outcome, when);
    return outcome.hold;
  }
  void post_snapshot(const std::string& when) {
    auto outcome =
        call(Phase::post_snapshot, [this](Writer& w, const PhaseContext& ctx, CallOutcome& o) {
          return w.post_snapshot(ctx, SnapshotInfo{check_ + "-snapshot"}, o.artifacts);
        });
    require_ok(Phase::post_snapshot, outcome, when);
    if (!outcome.artifacts.is_object() && !outcome.artifacts.is_null()) {
      throw CheckFailed("post_snapshot " + when + ": artifacts are not a JSON object");
    }
  }
  void abort(const std::string& when) {
    require_ok(Phase::abort, call(Phase::abort, [](Writer& w, const PhaseContext& ctx,
                                                   CallOutcome&) { return w.abort(ctx); }),
               when);
  }
  void post_restore(const std::string& when) {
    require_ok(Phase::post_restore,
               call(Phase::post_restore,
                    [this](Writer& w, const PhaseContext& ctx, CallOutcome&) {
                      return w.post_restore(ctx, RestoreInfo{check_ + "-checkpoint",
                                                             check_ + "-old-session"});
                    }),
               when);
  }

  // A complete undisturbed session, which must keep its hold.
  void full_cycle(const std::string& when) {
    next_session();
    prepare(when);
    freeze(when);
    auto hold = thaw(when);
    if (!hold.continuous) {
      throw CheckFailed("thaw " + when + " reported a broken hold in an undisturbed session: " +
                        hold.detail);
    }
    post_snapshot(when);
  }

  [[nodiscard]] Millis last_elapsed() const { return last_elapsed_; }
  [[nodiscard]] const CheckLimits& limits() const { return limits_; }

 private:
  static void require_ok(Phase phase, const CallOutcome& outcome, const std::string& when) {
    if (outcome.error) {
      throw CheckFailed(std::string(to_string(phase)) + " " + when + " failed (" +
                        std::string(to_string(outcome.error->error_class)) +
                        "): " + outcome.error->message);
    }
  }

  std::unique_ptr<Writer> writer_;
  CheckLimits limits_;
  std::string check_;
  int session_ = 1;
  bool hung_ = false;
  Millis last_elapsed_{0};
};

struct Check {
  std::string name;
  std::string description;
  std::function<std::string(Harness&)> run;  // returns a note; throws CheckFailed
};

std::string abort_after(Harness& h, Phase phase) {
  h.identify("first");
  if (phase != Phase::identify) {
    h.prepare("before abort");
  }
  if (phase == Phase::freeze || phase == Phase::thaw) {
    h.freeze("before abort");
  }
  if (phase == Phase::thaw) {
    [[maybe_unused]] auto hold = h.thaw("before abort");
  }
  h.abort("after " + std::string(to_string(phase)));
  h.full_cycle("in the session after the abort");
  return "";
}

std::vector<Check> all_checks() {
  std::vector<Check> checks;
  checks.push_back({"identify", "identify succeeds and returns serialisable JSON",
                    [](Harness& h) {
                      auto identity = h.identify("on a new writer");
                      return std::to_string(identity.components.size()) + " component(s)";
                    }});
  checks.push_back({"full_cycle", "identify, prepare, freeze, thaw (hold kept), post_snapshot",
                    [](Harness& h) {
                      h.identify("first");
                      h.full_cycle("in a full cycle");
                      return std::string();
                    }});
  checks.push_back({"two_sessions", "the same writer runs two sessions in a row",
                    [](Harness& h) {
                      h.full_cycle("in the first session");
                      h.full_cycle("in the second session");
                      return std::string();
                    }});
  checks.push_back({"thaw_without_freeze", "thaw on a new writer and after prepare succeeds",
                    [](Harness& h) {
                      [[maybe_unused]] auto a = h.thaw("on a new writer");
                      h.prepare("first");
                      [[maybe_unused]] auto b = h.thaw("after prepare, without freeze");
                      h.abort("after the unfrozen thaw");
                      return std::string();
                    }});
  checks.push_back({"thaw_twice", "a second thaw succeeds (thaw is idempotent)",
                    [](Harness& h) {
                      h.prepare("first");
                      h.freeze("first");
                      [[maybe_unused]] auto a = h.thaw("the first time");
                      [[maybe_unused]] auto b = h.thaw("the second time");
                      h.post_snapshot("after two thaws");
                      return std::string();
                    }});
  for (auto phase : {Phase::identify, Phase::prepare, Phase::freeze, Phase::thaw}) {
    auto name = "abort_after_" + std::string(to_string(phase));
    checks.push_back({name,
                      "abort after " + std::string(to_string(phase)) +
                          " succeeds and the next session works",
                      [phase](Harness& h) { return abort_after(h, phase); }});
  }
  checks.push_back({"abort_twice", "a second abort succeeds (abort is idempotent)",
                    [](Harness& h) {
                      h.prepare("first");
                      h.freeze("first");
                      h.abort("the first time");
                      h.abort("the second time");
                      h.full_cycle("in the session after two aborts");
                      return std::string();
                    }});
  checks.push_back(
      {"freeze_deadline",
       "freeze with a short deadline returns soon after its stop token fires; abort then works",
       [](Harness& h) {
         h.prepare("first");
         auto outcome = h.call(
             Phase::freeze,
             [](Writer& w, const PhaseContext& ctx, CallOutcome&) { return w.freeze(ctx); },
             h.limits().short_deadline);
         std::string note = "freeze returned in " + std::to_string(outcome.elapsed.count()) +
                            " ms (" +
                            (outcome.error ? std::string(to_string(outcome.error->error_class))
                                           : std::string("ok")) +
                            ")";
         h.abort("after the short freeze");
         h.identify("after the short freeze");
         if (h.last_elapsed() > h.limits().stop_bound) {
           throw CheckFailed("identify after a stopped call took " +
                             std::to_string(h.last_elapsed().count()) + " ms");
         }
         return note;
       }});
  checks.push_back(
      {"identify_between_phases",
       "identify answers promptly, from other threads, between every phase and while frozen",
       [](Harness& h) {
         Millis slowest{0};
         auto prompt = [&](const std::string& when) {
           h.identify(when);
           slowest = std::max(slowest, h.last_elapsed());
           if (h.last_elapsed() > h.limits().stop_bound) {
             throw CheckFailed("identify " + when + " took " +
                               std::to_string(h.last_elapsed().count()) + " ms");
           }
         };
         prompt("first");
         h.prepare("first");
         prompt("after prepare");
         h.freeze("first");
         prompt("while frozen");
         auto hold = h.thaw("after identify while frozen");
         if (!hold.continuous) {
           throw CheckFailed("identify while frozen broke the hold: " + hold.detail);
         }
         prompt("after thaw");
         h.post_snapshot("first");
         prompt("after post_snapshot");
         return "slowest identify " + std::to_string(slowest.count()) + " ms";
       }});
  checks.push_back({"post_restore", "post_restore succeeds and a session works after it",
                    [](Harness& h) {
                      h.post_restore("on a new writer");
                      h.full_cycle("after post_restore");
                      return std::string();
                    }});
  return checks;
}

std::string pad(std::string text, std::size_t width) {
  if (text.size() < width) {
    text.append(width - text.size(), ' ');
  }
  return text;
}

}  // namespace

bool CheckReport::all_passed() const {
  return !checks.empty() &&
         std::all_of(checks.begin(), checks.end(), [](const auto& c) { return c.passed; });
}

nlohmann::json CheckReport::to_json() const {
  auto list = nlohmann::json::array();
  std::size_t failed = 0;
  for (const auto& check : checks) {
    failed += check.passed ? 0 : 1;
    list.push_back({{"name", check.name},
                    {"description", check.description},
                    {"passed", check.passed},
                    {"detail", check.detail},
                    {"elapsed_ms", check.elapsed.count()}});
  }
  return {{"passed", all_passed()},
          {"total", checks.size()},
          {"failed", failed},
          {"hung", hung},
          {"checks", list}};
}

std::string CheckReport::to_table() const {
  std::ostringstream out;
  out << pad("CHECK", 26) << pad("RESULT", 8) << pad("TIME", 10) << "DETAIL\n";
  std::size_t failed = 0;
  for (const auto& check : checks) {
    failed += check.passed ? 0 : 1;
    out << pad(check.name, 26) << pad(check.passed ? "pass" : "FAIL", 8)
        << pad(std::to_string(check.elapsed.count()) + " ms", 10) << check.detail << "\n";
  }
  out << checks.size() << " checks: " << checks.size() - failed << " passed, " << failed
      << " failed\n";
  return out.str();
}

std::vector<std::string> check_names() {
  std::vector<std::string> names;
  for (const auto& check : all_checks()) {
    names.push_back(check.name);
  }
  return names;
}

CheckReport run_checks(const WriterType& type, const WriterSpec& spec,
                       const WriterEnvironment& env, const CheckLimits& limits) {
  CheckReport report;
  for (const auto& check : all_checks()) {
    CheckResult result{check.name, check.description, false, "", Millis(0)};
    const auto start = Clock::now();
    try {
      Harness harness(type, spec, env, limits, check.name);
      try {
        result.detail = check.run(harness);
        result.passed = true;
      } catch (const CheckFailed& e) {
        result.detail = e.what();
      }
      report.hung = report.hung || harness.hung();
    } catch (const std::exception& e) {
      // The factory or the writer's destructor threw.
      result.passed = false;
      result.detail = std::string("writer could not be created or destroyed: ") + e.what();
    }
    result.elapsed = since(start);
    report.checks.push_back(std::move(result));
  }
  return report;
}

}  // namespace quiesce::conformance

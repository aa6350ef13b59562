#include "agent/core/coordinator.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "agent/core/log_fields.hpp"
#include "platform/files.hpp"

namespace quiesce::agent {

namespace {

constexpr const char* kMarkerFile = "restore-marker.json";
constexpr const char* kLiveMarkerFile = "restore-marker.live";

double millis_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// UTC, to the second, with C++20's calendar (no gmtime_r, which Windows
// lacks, and no locale).
std::string iso_time(std::chrono::system_clock::time_point time) {
  using namespace std::chrono;
  const auto seconds = floor<std::chrono::seconds>(time);
  const auto day = floor<days>(seconds);
  const year_month_day date{day};
  const hh_mm_ss clock{seconds - day};
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%04d-%02u-%02uT%02d:%02d:%02dZ", static_cast<int>(date.year()),
                static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()),
                static_cast<int>(clock.hours().count()), static_cast<int>(clock.minutes().count()),
                static_cast<int>(clock.seconds().count()));
  return buffer;
}

std::string random_hex(std::size_t bytes) {
  std::random_device device;
  std::string out;
  static constexpr char digits[] = "0123456789abcdef";
  for (std::size_t i = 0; i < bytes; ++i) {
    auto byte = static_cast<unsigned>(device() & 0xffU);
    out += digits[byte >> 4U];
    out += digits[byte & 0xfU];
  }
  return out;
}

bool is_terminal(const std::string& state) {
  return state == "completed" || state == "aborted" || state == "failed" || state == "expired";
}

// A second operation is refused at once rather than queued behind the first.
wire::ApiError operation_in_progress() {
  return wire::ApiError{409, "operation_in_progress",
                        "another request is working on the active session", std::nullopt, true};
}

wire::ApiError unknown_session(const std::string& id) {
  return wire::ApiError{404, "unknown_session", "no session " + id, std::nullopt, false};
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

Millis PhaseTimeouts::of(Phase phase) const {
  return const_cast<PhaseTimeouts*>(this)->of(phase);  // NOLINT: same lookup both ways
}

Millis& PhaseTimeouts::of(Phase phase) {
  switch (phase) {
    case Phase::identify: return identify;
    case Phase::prepare: return prepare;
    case Phase::freeze: return freeze;
    case Phase::thaw: return thaw;
    case Phase::post_snapshot: return post_snapshot;
    case Phase::abort: return abort;
    case Phase::post_restore: return post_restore;
  }
  return abort;
}

struct Coordinator::WriterSlot {
  WriterSpec spec;
  std::unique_ptr<Writer> writer;
  std::map<Phase, Millis> timeout_overrides;
  Identity identity;                      // cached from the last identify
  std::optional<WriterError> identify_error;
  std::string last_state = "stable";      // as of the last session that used it
  // Declared last so it is destroyed first: its thread joins before the
  // writer it calls goes away.
  std::unique_ptr<WriterWorker> worker;
};

struct Coordinator::SessionWriter {
  // Shared with slots_: a writer dropped from the agent mid-session (its
  // D-Bus client vanished, UnregisterWriter) stays alive, worker and all,
  // until every session that selected it lets go.
  std::shared_ptr<WriterSlot> slot;
  WriterState state = WriterState::stable;
  std::optional<Phase> failed_phase;
  std::optional<WriterError> error;
  std::map<Phase, double> timings_ms;
  bool touched = false;   // prepare or freeze ran: needs abort when rolled back
  bool released = false;  // its hold was released (thaw or abort ran): exactly once
  HoldReport hold;
  nlohmann::json artifacts = nullptr;
  // What this session's identify returned (the fsfreeze writer's waves and
  // their reasons, a database's paths...); null until it has.
  nlohmann::json identity = nullptr;
};

struct Coordinator::Session {
  std::string id;
  std::string state = "preparing";
  std::optional<std::string> checkpoint_id;
  std::optional<std::vector<std::string>> mountpoints;
  std::string origin = "api";
  Millis freeze_window{0};
  std::chrono::system_clock::time_point created_at = std::chrono::system_clock::now();
  std::vector<SessionWriter> writers;
  std::map<std::string, double> timings_ms;
  nlohmann::json verdict = nullptr;
  std::optional<wire::ApiError> error;
  Clock::time_point last_activity = Clock::now();
  Clock::time_point hold_started{};
  Clock::time_point hold_deadline = Clock::time_point::max();
  Clock::time_point frozen_at{};
  bool hold_active = false;
  bool hold_ended_pending = false;  // thawed; the observer not told yet (after_release)
  bool watchdog_fired = false;
  std::vector<std::string> broken_reasons;
  bool abort_requested = false;
  std::stop_source interrupt;  // abort: cut running writer calls short
};

Coordinator::Coordinator(std::vector<ConfiguredWriter> writers, SessionLimits limits,
                         std::shared_ptr<spdlog::logger> logger, MarkerPaths marker_paths,
                         CoordinatorObserver* observer)
    : limits_(limits),
      logger_(std::move(logger)),
      marker_paths_(std::move(marker_paths)),
      observer_(observer) {
  for (auto& configured : writers) {
    slots_.push_back(make_slot(std::move(configured)));
  }
}

void Coordinator::start_watchdog() {
  std::call_once(watchdog_started_, [this] {
    watchdog_ = std::jthread([this](const std::stop_token& stop) { watchdog_loop(stop); });
  });
}

std::shared_ptr<Coordinator::WriterSlot> Coordinator::make_slot(ConfiguredWriter configured) {
  auto slot = std::make_shared<WriterSlot>();
  slot->spec = std::move(configured.spec);
  slot->writer = std::move(configured.writer);
  slot->timeout_overrides = std::move(configured.timeout_overrides);
  slot->worker = std::make_unique<WriterWorker>(slot->spec.name);
  return slot;
}

Expected<nlohmann::json> Coordinator::add_writer(ConfiguredWriter configured) {
  auto slot = make_slot(std::move(configured));
  std::lock_guard lock(state_mutex_);
  const auto& name = slot->spec.name;
  if (std::any_of(slots_.begin(), slots_.end(),
                  [&](const auto& other) { return other->spec.name == name; })) {
    return wire::ApiError{409, "writer_exists", "a writer named '" + name + "' already exists",
                          name, false};
  }
  slots_.push_back(slot);
  const ScopedLogFields about({"", name, ""});
  logger_->info("writer '{}' ({}) added; it takes part from the next session", name,
                to_string(slot->spec.level));
  return nlohmann::json{{"name", name}, {"level", to_string(slot->spec.level)}};
}

Expected<nlohmann::json> Coordinator::remove_writer(const std::string& name) {
  std::shared_ptr<WriterSlot> removed;
  {
    std::lock_guard lock(state_mutex_);
    auto it = std::find_if(slots_.begin(), slots_.end(),
                           [&](const auto& slot) { return slot->spec.name == name; });
    if (it == slots_.end()) {
      return wire::ApiError{404, "unknown_writer", "no writer named '" + name + "'", name, false};
    }
    removed = std::move(*it);
    slots_.erase(it);
  }
  const ScopedLogFields about({"", name, ""});
  logger_->info("writer '{}' removed; a session that selected it keeps it to its end", name);
  // Released outside the lock: when this was the last reference, the
  // worker's join waits for a call still running (bounded by its deadline).
  removed.reset();
  return nlohmann::json{{"name", name}};
}

std::vector<std::shared_ptr<Coordinator::WriterSlot>> Coordinator::current_slots() const {
  std::lock_guard lock(state_mutex_);
  return slots_;
}

Coordinator::~Coordinator() {
  watchdog_.request_stop();
  watch_wake_.notify_all();
  if (watchdog_.joinable()) {
    watchdog_.join();
  }
}

// ---------------------------------------------------------------------------
// Running writer calls

std::vector<Coordinator::CallResult> Coordinator::call_writers(
    Session& session, const std::vector<SessionWriter*>& group, Phase phase,
    Clock::time_point hard_deadline, bool interruptible, const WriterCall& call,
    const std::function<void()>& posted) {
  struct Batch {
    std::mutex mutex;
    std::condition_variable_any done;
    std::vector<CallResult> results;
    std::vector<std::stop_source> stops;
    std::vector<bool> abandoned;
    std::size_t remaining = 0;
  };
  auto batch = std::make_shared<Batch>();
  const std::size_t count = group.size();
  batch->results.resize(count);
  batch->stops.resize(count);
  batch->abandoned.assign(count, false);
  batch->remaining = count;

  const auto start = Clock::now();
  std::vector<Clock::time_point> deadlines(count);
  for (std::size_t i = 0; i < count; ++i) {
    auto* slot = group[i]->slot.get();
    auto timeout = limits_.phase_timeouts.of(phase);
    if (auto it = slot->timeout_overrides.find(phase); it != slot->timeout_overrides.end()) {
      timeout = it->second;
    }
    deadlines[i] = std::min(start + timeout, hard_deadline);
    PhaseContext ctx{session.id, deadlines[i], session.hold_deadline,
                     batch->stops[i].get_token(), session.mountpoints};
    Writer* writer = slot->writer.get();
    // The session comes from the caller's scope, not session.id: the start-up
    // identify is no session, and post-restore is about the session whose
    // snapshot the system came back from.
    LogFields fields{current_log_fields().session, slot->spec.name, std::string(to_string(phase))};
    // The job owns copies of everything it touches: it may finish long after
    // this function gave up on it.
    slot->worker->post([batch, i, ctx = std::move(ctx), writer, call, fields = std::move(fields)]() {
      // What the writer logs during the call is about this session and phase.
      const ScopedLogFields about(fields);
      const auto began = Clock::now();
      CallScratch scratch;
      std::optional<WriterError> error;
      try {
        Status status = call(*writer, ctx, scratch);
        if (!status.is_ok()) {
          error = status.error();
        }
      } catch (const std::exception& e) {
        error = WriterError{ErrorClass::non_retryable, std::string("writer threw: ") + e.what()};
      } catch (...) {
        error = WriterError{ErrorClass::non_retryable, "writer threw a non-standard exception"};
      }
      std::lock_guard lock(batch->mutex);
      if (batch->abandoned[i]) {
        return;
      }
      auto& result = batch->results[i];
      result.finished = true;
      result.error = std::move(error);
      result.elapsed_ms = millis_between(began, Clock::now());
      result.scratch = std::move(scratch);
      --batch->remaining;
      batch->done.notify_all();
    });
  }

  if (posted) {
    posted();  // while the writers work
  }
  std::stop_token interrupt = interruptible ? session.interrupt.get_token() : std::stop_token{};
  std::unique_lock lock(batch->mutex);
  for (;;) {
    if (batch->remaining == 0 || interrupt.stop_requested()) {
      break;
    }
    const auto now = Clock::now();
    auto next = Clock::time_point::max();
    bool pending = false;
    for (std::size_t i = 0; i < count; ++i) {
      if (batch->results[i].finished || batch->abandoned[i]) {
        continue;
      }
      if (deadlines[i] <= now) {
        batch->abandoned[i] = true;
        --batch->remaining;
        batch->stops[i].request_stop();
        auto& result = batch->results[i];
        result.elapsed_ms = millis_between(start, now);
        result.error = WriterError{
            ErrorClass::timeout,
            "no answer to " + std::string(to_string(phase)) + " within " +
                std::to_string(static_cast<long long>(millis_between(start, deadlines[i]))) +
                " ms"};
      } else {
        pending = true;
        next = std::min(next, deadlines[i]);
      }
    }
    if (!pending) {
      break;
    }
    batch->done.wait_until(lock, interrupt, next, [&] { return batch->remaining == 0; });
  }
  // Interrupted: whatever still runs is cut short and reported as such.
  for (std::size_t i = 0; i < count; ++i) {
    if (!batch->results[i].finished && !batch->abandoned[i]) {
      batch->abandoned[i] = true;
      batch->stops[i].request_stop();
      auto& result = batch->results[i];
      result.elapsed_ms = millis_between(start, Clock::now());
      result.error = WriterError{ErrorClass::retryable,
                                 std::string(to_string(phase)) + " interrupted: session aborted"};
    }
  }
  return batch->results;
}

std::vector<Coordinator::SessionWriter*> Coordinator::writers_at(Session& session, Level level) {
  std::vector<SessionWriter*> group;
  for (auto& writer : session.writers) {
    if (writer.slot->spec.level == level) {
      group.push_back(&writer);
    }
  }
  return group;
}

bool Coordinator::record_batch(Session& session, const std::vector<SessionWriter*>& group,
                               std::vector<CallResult>& results, Phase phase,
                               WriterState on_success) {
  bool failed = false;
  for (std::size_t i = 0; i < group.size(); ++i) {
    auto& writer = *group[i];
    auto& result = results[i];
    writer.timings_ms[phase] = result.elapsed_ms;
    if (result.finished && !result.error) {
      if (phase == Phase::post_snapshot) {
        writer.artifacts = std::move(result.scratch.artifacts);
      }
      set_writer_state(session, writer, on_success);
    } else {
      writer.failed_phase = phase;
      writer.error = result.error;
      set_writer_state(session, writer, WriterState::failed);
      failed = true;
    }
  }
  return failed;
}

void Coordinator::log_failures(const Session& session, const std::vector<SessionWriter*>& group,
                               const std::vector<CallResult>& results, Phase phase) const {
  for (std::size_t i = 0; i < group.size() && i < results.size(); ++i) {
    if (!results[i].error) {
      continue;
    }
    const auto& name = group[i]->slot->spec.name;
    const ScopedLogFields about({session.id, name, std::string(to_string(phase))});
    logger_->warn("session {}: writer '{}' failed at {} ({}): {}", session.id, name,
                  to_string(phase), to_string(results[i].error->error_class),
                  results[i].error->message);
  }
}

void Coordinator::set_writer_state(Session& /*session*/, SessionWriter& writer, WriterState state) {
  writer.state = state;
  writer.slot->last_state = std::string(to_string(state));
}

// ---------------------------------------------------------------------------
// Answering before the bookkeeping

// From an early answer until the operation lock is released: an operation
// that finds the lock taken meanwhile waits instead of being refused, since
// the host sends its next request (thaw after freeze, complete after thaw)
// as soon as it has the answer.
class Coordinator::AnsweredTail {
 public:
  AnsweredTail(Coordinator& coordinator, std::unique_lock<std::timed_mutex>& op)
      : coordinator_(coordinator), op_(op) {
    std::lock_guard lock(coordinator_.tail_mutex_);
    coordinator_.tail_pending_ = true;
  }
  ~AnsweredTail() {
    if (op_.owns_lock()) {
      op_.unlock();
    }
    {
      std::lock_guard lock(coordinator_.tail_mutex_);
      coordinator_.tail_pending_ = false;
    }
    coordinator_.tail_done_.notify_all();
  }
  AnsweredTail(const AnsweredTail&) = delete;
  AnsweredTail& operator=(const AnsweredTail&) = delete;

 private:
  Coordinator& coordinator_;
  std::unique_lock<std::timed_mutex>& op_;
};

bool Coordinator::try_lock_op(std::unique_lock<std::timed_mutex>& op) {
  if (op.try_lock()) {
    return true;
  }
  {
    std::unique_lock lock(tail_mutex_);
    if (!tail_pending_) {
      return false;
    }
    // Bounded: the bookkeeping is a few file removals and log writes.
    tail_done_.wait(lock, [this] { return !tail_pending_; });
  }
  return op.try_lock();
}

// ---------------------------------------------------------------------------
// Session lifecycle

Expected<nlohmann::json> Coordinator::create_session(const SessionRequest& request) {
  // Validate everything before touching anything (invariant 7).
  // The writer list is read once, here. Writers added or removed later (D-Bus
  // RegisterWriter / UnregisterWriter, a client that vanished) change slots_
  // only; a session keeps the writers it started with (shared ownership) and
  // a change takes effect from the next session.
  const auto current = current_slots();
  std::vector<std::shared_ptr<WriterSlot>> selected;
  if (request.writers) {
    if (request.writers->empty()) {
      return wire::ApiError{400, "invalid_field", "writers: the list is empty", std::nullopt,
                            false};
    }
    for (const auto& name : *request.writers) {
      auto it = std::find_if(current.begin(), current.end(),
                             [&](const auto& slot) { return slot->spec.name == name; });
      if (it == current.end()) {
        return wire::ApiError{400, "unknown_writer", "writers: no writer named '" + name + "'",
                              name, false};
      }
      if (std::find(selected.begin(), selected.end(), *it) != selected.end()) {
        return wire::ApiError{400, "invalid_field", "writers: '" + name + "' is listed twice",
                              name, false};
      }
      selected.push_back(*it);
    }
  } else {
    selected = current;
  }
  if (selected.empty()) {
    return wire::ApiError{409, "no_writers", "the agent has no writers configured",
                          std::nullopt, false};
  }
  if (request.mountpoints) {
    for (const auto& mountpoint : *request.mountpoints) {
      if (mountpoint.empty() || mountpoint.front() != '/') {
        return wire::ApiError{400, "invalid_field",
                              "mountpoints: '" + mountpoint + "' is not an absolute path",
                              std::nullopt, false};
      }
    }
    // Only the fsfreeze writer knows mount points; naming some while no
    // fsfreeze writer takes part would silently freeze other filesystems.
    const bool has_fsfreeze = std::any_of(selected.begin(), selected.end(), [](const auto& slot) {
      return slot->spec.type == "fsfreeze";
    });
    if (!has_fsfreeze) {
      return wire::ApiError{400, "invalid_field",
                            "mountpoints: no fsfreeze writer takes part in this session, so "
                            "there is nothing to narrow to these mount points",
                            std::nullopt, false};
    }
  }
  if (request.origin != "api" && request.origin != "qga") {
    return wire::ApiError{400, "invalid_field", "origin: must be 'api' or 'qga'", std::nullopt,
                          false};
  }
  auto window = request.freeze_window.value_or(limits_.default_freeze_window);
  if (window <= Millis(0) || window > limits_.max_freeze_window) {
    return wire::ApiError{400, "invalid_field",
                          "freeze_window_ms: must be between 1 and " +
                              std::to_string(limits_.max_freeze_window.count()),
                          std::nullopt, false};
  }

  std::unique_lock op(op_mutex_, std::defer_lock);
  if (!try_lock_op(op)) {
    return operation_in_progress();
  }
  start_watchdog();  // before the session exists: a session is never unwatched
  Session* session = nullptr;
  {
    std::lock_guard lock(state_mutex_);
    if (auto* active = active_locked()) {
      return wire::ApiError{409, "session_conflict",
                            "session " + active->id + " is active (" + active->state +
                                "); finish or delete it first",
                            std::nullopt, true};
    }
    auto fresh = std::make_unique<Session>();
    fresh->id = "s-" + random_hex(8);
    fresh->checkpoint_id = request.checkpoint_id;
    fresh->mountpoints = request.mountpoints;
    fresh->origin = request.origin;
    fresh->freeze_window = window;
    for (const auto& slot : selected) {
      SessionWriter writer;
      writer.slot = slot;
      fresh->writers.push_back(std::move(writer));
    }
    session = fresh.get();
    sessions_.push_back(std::move(fresh));
  }
  const ScopedLogFields about({session->id, "", std::string(to_string(Phase::identify))});
  logger_->info("session {}: created for {} writer(s) (origin {})", session->id, selected.size(),
                session->origin);
  return run_create(*session);
}

Expected<nlohmann::json> Coordinator::run_create(Session& session) {
  const auto began = Clock::now();
  std::vector<SessionWriter*> everyone;
  for (auto& writer : session.writers) {
    everyone.push_back(&writer);
  }

  // identify
  auto identified = call_writers(session, everyone, Phase::identify, Clock::time_point::max(), true,
                                 [](Writer& w, const PhaseContext& ctx, CallScratch& scratch) {
                                   return w.identify(ctx, scratch.identity);
                                 });
  log_failures(session, everyone, identified, Phase::identify);
  bool failed = false;
  {
    std::lock_guard lock(state_mutex_);
    for (std::size_t i = 0; i < everyone.size(); ++i) {
      auto& writer = *everyone[i];
      auto& result = identified[i];
      writer.timings_ms[Phase::identify] = result.elapsed_ms;
      if (result.finished && !result.error) {
        writer.slot->identity = result.scratch.identity;
        writer.slot->identify_error.reset();
        writer.identity = {{"components", result.scratch.identity.components},
                           {"metadata", result.scratch.identity.metadata}};
      } else {
        writer.slot->identify_error = result.error;
        writer.failed_phase = Phase::identify;
        writer.error = result.error;
        set_writer_state(session, writer, WriterState::failed);
        failed = true;
      }
    }
    session.timings_ms["identify"] = millis_between(began, Clock::now());
  }
  if (failed || session.interrupt.stop_requested()) {
    // Nothing was done yet, so there is nothing to abort.
    auto error = writer_error(session, "writer_failed", "identify failed");
    std::lock_guard lock(state_mutex_);
    session.error = error;
    finish(session, session.abort_requested ? "aborted" : "failed",
           session.abort_requested ? "aborted" : "failed");
    return error;
  }

  // prepare: nothing is held yet, so writers prepare at once, in two
  // batches: every application and database writer, then the filesystem
  // writers. A filesystem writer's prepare flushes the page cache so that
  // its freeze has little left to write; a database's prepare (a
  // checkpoint) dirties it again, and whatever it dirtied after the flush
  // would be written inside the hold.
  const ScopedLogFields preparing({"", "", std::string(to_string(Phase::prepare))});
  const auto prepare_began = Clock::now();
  {
    std::lock_guard lock(state_mutex_);
    for (auto* writer : everyone) {
      writer->touched = true;
    }
  }
  std::vector<SessionWriter*> filesystems;
  std::vector<SessionWriter*> others;
  for (auto* writer : everyone) {
    (writer->slot->spec.level == Level::filesystem ? filesystems : others).push_back(writer);
  }
  for (auto* batch : {&others, &filesystems}) {
    if (batch->empty() || failed || session.interrupt.stop_requested()) {
      continue;
    }
    {
      std::lock_guard lock(state_mutex_);
      for (auto* writer : *batch) {
        set_writer_state(session, *writer, WriterState::preparing);
      }
    }
    auto prepared = call_writers(session, *batch, Phase::prepare, Clock::time_point::max(), true,
                                 [](Writer& w, const PhaseContext& ctx, CallScratch&) {
                                   return w.prepare(ctx);
                                 });
    log_failures(session, *batch, prepared, Phase::prepare);
    std::lock_guard lock(state_mutex_);
    failed = record_batch(session, *batch, prepared, Phase::prepare, WriterState::prepared) || failed;
  }
  {
    std::lock_guard lock(state_mutex_);
    session.timings_ms["prepare"] = millis_between(prepare_began, Clock::now());
  }
  if (failed || session.interrupt.stop_requested()) {
    auto error = session.interrupt.stop_requested()
                     ? wire::ApiError{409, "session_aborted",
                                      "session " + session.id + " was deleted while preparing",
                                      std::nullopt, false}
                     : writer_error(session, "writer_failed", "prepare failed");
    roll_back(session, error.message);
    std::lock_guard lock(state_mutex_);
    session.error = error;
    finish(session, session.abort_requested ? "aborted" : "failed",
           session.abort_requested ? "aborted" : "failed");
    return error;
  }

  write_restore_marker(session);
  {
    std::lock_guard lock(state_mutex_);
    session.state = "prepared";
    session.last_activity = Clock::now();
    ++watch_generation_;
  }
  watch_wake_.notify_all();
  logger_->info("session {}: prepared in {:.1f} ms", session.id,
                millis_between(began, Clock::now()));
  if (observer_ != nullptr) {
    observer_->state_changed("session " + session.id + " prepared");
    observer_->session_changed(session.id, "prepared", nullptr);
  }
  std::lock_guard lock(state_mutex_);
  return status_locked(session);
}

Expected<nlohmann::json> Coordinator::freeze(const std::string& id, const Answer& on_answer) {
  std::unique_lock op(op_mutex_, std::defer_lock);
  if (!try_lock_op(op)) {
    return operation_in_progress();
  }
  Session* session = nullptr;
  {
    std::lock_guard lock(state_mutex_);
    session = find_locked(id);
    if (session == nullptr) {
      return unknown_session(id);
    }
    if (session->state != "prepared") {
      return wire::ApiError{409, "invalid_phase",
                            "session " + id + " is " + session->state +
                                "; freeze needs a prepared session",
                            std::nullopt, false};
    }
    session->state = "freezing";
    session->hold_started = Clock::now();
    session->hold_deadline = session->hold_started + session->freeze_window;
    session->hold_active = true;
    ++watch_generation_;  // the window's end is the watchdog's from here (watchdog_loop)
  }
  const ScopedLogFields about({id, "", std::string(to_string(Phase::freeze))});
  // From here until the hold ends, nothing may write to a disk (invariant 4).
  if (observer_ != nullptr) {
    observer_->hold_started();
  }
  // The watchdog watches the window's end from here. It is woken once the
  // first writers' freeze calls are posted, while they work (a FIFREEZE
  // mostly waits in the kernel), not on the way to them or back: once
  // frozen, its deadline is already the right one.
  bool watchdog_told = false;
  auto tell_watchdog = [&] {
    if (!std::exchange(watchdog_told, true)) {
      watch_wake_.notify_all();
    }
  };

  for (auto level : freeze_order) {
    auto group = writers_at(*session, level);
    if (group.empty()) {
      continue;
    }
    {
      std::lock_guard lock(state_mutex_);
      for (auto* writer : group) {
        set_writer_state(*session, *writer, WriterState::freezing);
      }
    }
    auto results = call_writers(*session, group, Phase::freeze, session->hold_deadline, true,
                                [](Writer& w, const PhaseContext& ctx, CallScratch&) {
                                  return w.freeze(ctx);
                                },
                                tell_watchdog);
    log_failures(*session, group, results, Phase::freeze);
    bool failed = false;
    {
      std::lock_guard lock(state_mutex_);
      failed = record_batch(*session, group, results, Phase::freeze, WriterState::frozen);
    }
    if (failed || session->interrupt.stop_requested()) {
      wire::ApiError error;
      if (!session->interrupt.stop_requested()) {
        error = writer_error(*session, "writer_failed", "freeze failed");
        if (Clock::now() >= session->hold_deadline) {
          error.code = "freeze_window_expired";
          error.message = "the freeze window of " + std::to_string(session->freeze_window.count()) +
                          " ms passed before every writer froze; " + error.message;
        }
      } else {
        error = wire::ApiError{409, "session_aborted",
                               "session " + id + " was deleted while freezing", std::nullopt,
                               false};
      }
      error.message += "; every writer touched was aborted";
      logger_->warn("session {}: {}", id, error.message);
      roll_back(*session, error.message);
      std::lock_guard lock(state_mutex_);
      session->error = error;
      end_hold(*session);
      finish(*session, session->abort_requested ? "aborted" : "failed",
             session->abort_requested ? "aborted" : "failed");
      return error;
    }
  }

  nlohmann::json status;
  tell_watchdog();  // no writer had anything to freeze: not told yet
  {
    std::lock_guard lock(state_mutex_);
    session->state = "frozen";
    session->frozen_at = Clock::now();
    session->timings_ms["freeze"] = millis_between(session->hold_started, session->frozen_at);
    status = status_locked(*session);
  }
  // Every writer holds: the host may snapshot from the moment it has this.
  // What follows changes nothing the answer says.
  std::optional<AnsweredTail> tail;
  if (on_answer) {
    tail.emplace(*this, op);
    on_answer(status);
  }
  // Held in memory like every line until the thaw (invariant 4).
  logger_->info("session {}: frozen in {:.1f} ms", id,
                millis_between(session->hold_started, session->frozen_at));
  if (observer_ != nullptr) {
    observer_->state_changed("session " + id + " frozen");
    observer_->session_changed(id, "frozen", nullptr);
  }
  return status;
}

Expected<nlohmann::json> Coordinator::thaw(const std::string& id, const Answer& on_answer) {
  // Checked before and after taking the operation lock: a thaw that cannot
  // apply is refused at once, while one racing the watchdog's own thaw waits
  // for it and answers with the (broken) verdict rather than a 409.
  auto check = [&]() -> std::optional<Expected<nlohmann::json>> {
    std::lock_guard lock(state_mutex_);
    auto* session = find_locked(id);
    if (session == nullptr) {
      return unknown_session(id);
    }
    // Thaw is idempotent: a repeated thaw answers with the same verdict.
    if (!session->verdict.is_null() && session->state != "frozen") {
      return status_locked(*session);
    }
    if (session->state != "frozen" && session->state != "thawing") {
      return wire::ApiError{409, "invalid_phase",
                            "session " + id + " is " + session->state +
                                "; thaw needs a frozen session",
                            std::nullopt, false};
    }
    return std::nullopt;
  };
  if (auto answer = check()) {
    return *answer;
  }
  std::unique_lock op(op_mutex_, std::defer_lock);
  if (!op.try_lock_for(limits_.phase_timeouts.thaw * 3 + Millis(1000))) {
    return operation_in_progress();
  }
  if (auto answer = check()) {
    return *answer;
  }
  Session* session = nullptr;
  {
    std::lock_guard lock(state_mutex_);
    session = find_locked(id);
  }
  release_hold(*session, false, {});
  nlohmann::json status;
  {
    std::lock_guard lock(state_mutex_);
    status = status_locked(*session);
  }
  // Every writer confirmed its release and the verdict is final: answer,
  // then tidy up (nothing of it changes the verdict).
  std::optional<AnsweredTail> tail;
  if (on_answer) {
    tail.emplace(*this, op);
    on_answer(status);
  }
  after_release(*session);
  return status;
}

void Coordinator::release_hold(Session& session, bool by_watchdog,
                               const std::string& watchdog_reason) {
  const ScopedLogFields about({session.id, "", std::string(to_string(Phase::thaw))});
  const auto thaw_began = Clock::now();
  {
    std::lock_guard lock(state_mutex_);
    session.state = "thawing";
    if (by_watchdog) {
      session.watchdog_fired = true;
      session.broken_reasons.push_back(watchdog_reason);
    }
  }
  for (auto it = freeze_order.rbegin(); it != freeze_order.rend(); ++it) {
    std::vector<SessionWriter*> group;
    for (auto* writer : writers_at(session, *it)) {
      if (writer->state == WriterState::frozen && !writer->released) {
        group.push_back(writer);
      }
    }
    if (group.empty()) {
      continue;
    }
    {
      std::lock_guard lock(state_mutex_);
      for (auto* writer : group) {
        writer->released = true;
        set_writer_state(session, *writer, WriterState::thawing);
      }
    }
    auto results = call_writers(session, group, Phase::thaw, Clock::time_point::max(), false,
                                [](Writer& w, const PhaseContext& ctx, CallScratch& scratch) {
                                  return w.thaw(ctx, scratch.hold);
                                });
    log_failures(session, group, results, Phase::thaw);
    std::lock_guard lock(state_mutex_);
    for (std::size_t i = 0; i < group.size(); ++i) {
      auto& writer = *group[i];
      auto& result = results[i];
      writer.timings_ms[Phase::thaw] = result.elapsed_ms;
      writer.hold = result.scratch.hold;
      const auto& name = writer.slot->spec.name;
      if (result.finished && !result.error) {
        set_writer_state(session, writer, WriterState::thawed);
        if (!writer.hold.continuous) {
          session.broken_reasons.push_back("writer '" + name + "' lost its hold" +
                                           (writer.hold.detail.empty() ? std::string()
                                                                       : ": " + writer.hold.detail));
        }
      } else {
        writer.failed_phase = Phase::thaw;
        writer.error = result.error;
        set_writer_state(session, writer, WriterState::failed);
        // A writer that could not confirm its release cannot vouch for its hold.
        session.broken_reasons.push_back("writer '" + name + "' failed to thaw: " +
                                         result.error->message);
        session.error = wire::ApiError{500, "writer_failed",
                                       "writer '" + name + "' failed to thaw: " +
                                           result.error->message,
                                       name, false};
      }
    }
  }
  std::lock_guard lock(state_mutex_);
  const auto now = Clock::now();
  const double hold_ms = millis_between(session.hold_started, now);
  const bool continuous = session.broken_reasons.empty();
  session.verdict = {{"continuous", continuous},
                     {"hold_ms", hold_ms},
                     {"frozen_ms", session.frozen_at == Clock::time_point{}
                                       ? 0.0
                                       : millis_between(session.frozen_at, thaw_began)},
                     {"watchdog_fired", session.watchdog_fired},
                     {"reasons", session.broken_reasons}};
  session.timings_ms["thaw"] = millis_between(thaw_began, now);
  session.timings_ms["hold"] = hold_ms;
  session.state = "thawed";
  session.last_activity = now;
  ++watch_generation_;
  ++metrics_.holds;
  metrics_.hold_seconds_sum += hold_ms / 1000.0;
  metrics_.last_hold_seconds = hold_ms / 1000.0;
  if (!continuous) {
    ++metrics_.holds_broken;
  }
  if (session.origin == "qga") {
    ++(continuous ? metrics_.qga_continuous : metrics_.qga_broken);
  }
  // Not frozen any more for health and /metrics; the log sink and D-Bus are
  // told in after_release().
  session.hold_ended_pending = session.hold_active;
  session.hold_active = false;
  if (observer_ != nullptr) {
    observer_->session_changed(session.id, "thawed", session.verdict);
  }
}

void Coordinator::after_release(Session& session) {
  const ScopedLogFields about({session.id, "", std::string(to_string(Phase::thaw))});
  // The marker was for a snapshot taken while frozen; the live system must
  // not look restored at its next start. A next session's create waits for
  // this (the operation lock), so it never removes that session's marker.
  remove_restore_marker();
  bool ended = false;
  double hold_ms = 0;
  bool continuous = true;
  std::string reasons;
  {
    std::lock_guard lock(state_mutex_);
    ended = std::exchange(session.hold_ended_pending, false);
    hold_ms = session.timings_ms["hold"];
    continuous = session.broken_reasons.empty();
    if (!continuous) {
      reasons = nlohmann::json(session.broken_reasons).dump();
    }
  }
  if (ended && observer_ != nullptr) {
    observer_->hold_ended();  // the log lines kept during the hold are written out
  }
  watch_wake_.notify_all();  // the session's idle timeout is the watchdog's now
  if (continuous) {
    logger_->info("session {}: thawed, hold {:.1f} ms, continuous", session.id, hold_ms);
  } else {
    logger_->warn("session {}: thawed, hold {:.1f} ms, BROKEN: {}", session.id, hold_ms, reasons);
  }
}

Expected<nlohmann::json> Coordinator::complete(const std::string& id,
                                               const std::string& snapshot_id) {
  std::unique_lock op(op_mutex_, std::defer_lock);
  if (!try_lock_op(op)) {
    return operation_in_progress();
  }
  Session* session = nullptr;
  {
    std::lock_guard lock(state_mutex_);
    session = find_locked(id);
    if (session == nullptr) {
      return unknown_session(id);
    }
    if (session->state != "thawed") {
      return wire::ApiError{409, "invalid_phase",
                            "session " + id + " is " + session->state +
                                (session->state == "frozen"
                                     ? "; thaw it before complete"
                                     : "; complete needs a thawed session"),
                            std::nullopt, false};
    }
    session->state = "completing";
  }
  const ScopedLogFields about({id, "", std::string(to_string(Phase::post_snapshot))});
  const auto began = Clock::now();
  bool failed = false;
  for (auto level : freeze_order) {
    std::vector<SessionWriter*> group;
    for (auto* writer : writers_at(*session, level)) {
      if (writer->state == WriterState::thawed) {
        group.push_back(writer);
      }
    }
    if (group.empty()) {
      continue;
    }
    {
      std::lock_guard lock(state_mutex_);
      for (auto* writer : group) {
        set_writer_state(*session, *writer, WriterState::completing);
      }
    }
    const SnapshotInfo snapshot{snapshot_id};
    auto results = call_writers(*session, group, Phase::post_snapshot, Clock::time_point::max(),
                                true,
                                [snapshot](Writer& w, const PhaseContext& ctx, CallScratch& s) {
                                  return w.post_snapshot(ctx, snapshot, s.artifacts);
                                });
    log_failures(*session, group, results, Phase::post_snapshot);
    std::lock_guard lock(state_mutex_);
    failed = record_batch(*session, group, results, Phase::post_snapshot,
                          WriterState::completed) ||
             failed;
  }
  std::optional<wire::ApiError> error;
  // An abort (DELETE, or the agent stopping on SIGTERM) cuts the writers'
  // calls short, so they fail: report the abort, as every other phase does,
  // not the failures it caused.
  if (session->interrupt.stop_requested()) {
    error = wire::ApiError{409, "session_aborted",
                           "session " + id + " was aborted while completing", std::nullopt, false};
  } else if (failed) {
    error = writer_error(*session, "writer_failed", "post-snapshot failed");
  }
  std::lock_guard lock(state_mutex_);
  session->timings_ms["complete"] = millis_between(began, Clock::now());
  if (error) {
    session->error = error;
    finish(*session, session->abort_requested ? "aborted" : "failed",
           session->abort_requested ? "aborted" : "failed");
    return *error;
  }
  finish(*session, "completed", "completed");
  logger_->info("session {}: completed (snapshot {})", id, snapshot_id);
  return status_locked(*session);
}

Expected<nlohmann::json> Coordinator::abort(const std::string& id) {
  {
    std::lock_guard lock(state_mutex_);
    auto* session = find_locked(id);
    if (session == nullptr) {
      return unknown_session(id);
    }
    if (is_terminal(session->state)) {
      return status_locked(*session);  // abort is idempotent
    }
    session->abort_requested = true;
    session->interrupt.request_stop();
    ++watch_generation_;
  }
  watch_wake_.notify_all();
  // The running operation, if any, sees the stop request and unwinds.
  std::unique_lock op(op_mutex_);
  Session* session = nullptr;
  {
    std::lock_guard lock(state_mutex_);
    session = find_locked(id);
    if (session == nullptr) {
      return unknown_session(id);
    }
    if (is_terminal(session->state)) {
      return status_locked(*session);
    }
    session->state = "aborting";
  }
  const ScopedLogFields about({id, "", std::string(to_string(Phase::abort))});
  logger_->info("session {}: aborting", id);
  run_abort_all(*session, true);
  remove_restore_marker();
  std::lock_guard lock(state_mutex_);
  end_hold(*session);
  finish(*session, "aborted", "aborted");
  return status_locked(*session);
}

Expected<nlohmann::json> Coordinator::session_status(const std::string& id) const {
  std::lock_guard lock(state_mutex_);
  auto* session = find_locked(id);
  if (session == nullptr) {
    return unknown_session(id);
  }
  return status_locked(*session);
}

// Aborts, in reverse level order, every writer that prepare or freeze
// touched and whose hold was not released yet.
void Coordinator::roll_back(Session& session, const std::string& reason) {
  const ScopedLogFields about({session.id, "", std::string(to_string(Phase::abort))});
  logger_->info("session {}: rolling back: {}", session.id, reason);
  run_abort_all(session, false);
  remove_restore_marker();
}

void Coordinator::run_abort_all(Session& session, bool include_released) {
  const ScopedLogFields about({session.id, "", std::string(to_string(Phase::abort))});
  for (auto it = freeze_order.rbegin(); it != freeze_order.rend(); ++it) {
    std::vector<SessionWriter*> group;
    for (auto* writer : writers_at(session, *it)) {
      const bool done = writer->state == WriterState::completed ||
                        writer->state == WriterState::aborted;
      if (writer->touched && !done && (include_released || !writer->released)) {
        group.push_back(writer);
      }
    }
    if (group.empty()) {
      continue;
    }
    std::vector<WriterState> before;
    {
      std::lock_guard lock(state_mutex_);
      for (auto* writer : group) {
        before.push_back(writer->state);
        writer->released = true;
        if (writer->state != WriterState::failed) {
          set_writer_state(session, *writer, WriterState::aborting);
        }
      }
    }
    auto results = call_writers(session, group, Phase::abort, Clock::time_point::max(), false,
                                [](Writer& w, const PhaseContext& ctx, CallScratch&) {
                                  return w.abort(ctx);
                                });
    std::lock_guard lock(state_mutex_);
    for (std::size_t i = 0; i < group.size(); ++i) {
      auto& writer = *group[i];
      auto& result = results[i];
      writer.timings_ms[Phase::abort] = result.elapsed_ms;
      if (result.finished && !result.error) {
        // A writer that failed keeps its failed_at_<phase> state, so the host
        // sees where it went wrong; the others show they were aborted.
        if (before[i] != WriterState::failed) {
          set_writer_state(session, writer, WriterState::aborted);
        }
      } else {
        if (before[i] != WriterState::failed) {
          writer.failed_phase = Phase::abort;
          writer.error = result.error;
          set_writer_state(session, writer, WriterState::failed);
        }
        const ScopedLogFields about_writer({"", writer.slot->spec.name, ""});
        logger_->error("session {}: writer '{}' failed to abort: {}", session.id,
                       writer.slot->spec.name, result.error->message);
      }
    }
  }
}

void Coordinator::end_hold(Session& session) {
  if (session.hold_active) {
    session.hold_active = false;
    if (observer_ != nullptr) {
      observer_->hold_ended();
    }
  }
}

void Coordinator::finish(Session& session, const std::string& state, const char* outcome) {
  session.state = state;
  ++metrics_.sessions_by_outcome[outcome];
  ++watch_generation_;
  watch_wake_.notify_all();
  for (auto& writer : session.writers) {
    if (writer.error) {
      ++metrics_.writer_failures[writer.slot->spec.name + "|" +
                                 std::string(to_string(writer.failed_phase.value_or(Phase::abort))) +
                                 "|" + std::string(to_string(writer.error->error_class))];
    }
  }
  // Keep a bounded history of finished sessions for status queries.
  std::size_t finished = 0;
  for (const auto& s : sessions_) {
    finished += is_terminal(s->state) ? 1 : 0;
  }
  while (finished > limits_.history && !sessions_.empty() && is_terminal(sessions_.front()->state) &&
         sessions_.front().get() != &session) {
    sessions_.pop_front();
    --finished;
  }
  if (observer_ != nullptr) {
    observer_->state_changed("session " + session.id + " " + state);
    observer_->session_changed(session.id, state, session.verdict);
  }
}

void Coordinator::shutdown() {
  std::string id;
  {
    std::lock_guard lock(state_mutex_);
    if (auto* active = active_locked()) {
      id = active->id;
    }
  }
  if (!id.empty()) {
    const ScopedLogFields about({id, "", std::string(to_string(Phase::abort))});
    logger_->warn("shutting down: aborting active session {}", id);
    (void)abort(id);
  }
}

// ---------------------------------------------------------------------------
// Watchdog: the freeze-window deadline and idle expiry. It sleeps until the
// next deadline, or indefinitely when there is none (no periodic wakeups).

void Coordinator::watchdog_loop(const std::stop_token& stop) {
  std::unique_lock lock(state_mutex_);
  while (!stop.stop_requested()) {
    auto due = Clock::time_point::max();
    Session* target = nullptr;
    if (auto* active = active_locked()) {
      if (active->state == "frozen" || active->state == "freezing") {
        // Freezing: each freeze call ends at the window's end itself, and
        // a session frozen just then is thawed here (the state is looked
        // at again below, under the operation lock).
        due = active->hold_deadline;
        target = active;
      } else if (active->state == "prepared" || active->state == "thawed") {
        due = active->last_activity + limits_.idle_timeout;
        target = active;
      }
    }
    const auto seen = watch_generation_;
    if (target == nullptr || Clock::now() < due) {
      watch_wake_.wait_until(lock, stop, due, [&] { return watch_generation_ != seen; });
      continue;
    }
    const std::string id = target->id;
    const std::string state = target->state;
    lock.unlock();
    {
      std::unique_lock op(op_mutex_, std::defer_lock);
      while (!stop.stop_requested() && !op.try_lock_for(Millis(50))) {
      }
      if (op.owns_lock()) {
        Session* session = nullptr;
        {
          std::lock_guard relock(state_mutex_);
          session = find_locked(id);
          if (session != nullptr && session->state != state) {
            session = nullptr;  // something else moved it on meanwhile
          }
        }
        if (session == nullptr && state == "freezing") {
          // Frozen (or failed) meanwhile: look again at what it is now.
          std::lock_guard relock(state_mutex_);
          session = find_locked(id);
          if (session != nullptr && session->state != "frozen") {
            session = nullptr;
          }
        }
        if (session != nullptr && (state == "frozen" || state == "freezing")) {
          const std::string reason =
              "the freeze window of " + std::to_string(session->freeze_window.count()) +
              " ms passed before the host thawed; the agent thawed on its own";
          {
            const ScopedLogFields about({id, "", std::string(to_string(Phase::thaw))});
            logger_->warn("session {}: {}", id, reason);
          }
          release_hold(*session, true, reason);
          after_release(*session);
          if (session->origin == "qga") {
            // No qga client ever completes a session its window ended: a
            // libvirt that reconnects sees "thawed" and sends no thaw. Left
            // "thawed", it would hold off every other session until the idle
            // timeout; ended now, its verdict stays in the history, and the
            // next guest-fsfreeze-thaw reports the broken hold from it.
            logger_->warn("session {}: ended (qga sessions are not completed after a broken "
                          "hold)", id);
            run_abort_all(*session, true);
            std::lock_guard relock(state_mutex_);
            finish(*session, "aborted", "aborted");
          }
        } else if (session != nullptr) {
          const ScopedLogFields about({id, "", std::string(to_string(Phase::abort))});
          logger_->warn("session {}: idle for {} ms in state {}; expiring it", id,
                        limits_.idle_timeout.count(), state);
          run_abort_all(*session, true);
          remove_restore_marker();
          std::lock_guard relock(state_mutex_);
          session->error = wire::ApiError{410, "session_expired",
                                          "session " + id + " expired after " +
                                              std::to_string(limits_.idle_timeout.count()) +
                                              " ms idle in state " + state,
                                          std::nullopt, false};
          finish(*session, "expired", "expired");
        }
      }
    }
    lock.lock();
  }
}

// ---------------------------------------------------------------------------
// Status and metrics

Coordinator::Session* Coordinator::find_locked(const std::string& id) const {
  for (const auto& session : sessions_) {
    if (session->id == id) {
      return session.get();
    }
  }
  return nullptr;
}

Coordinator::Session* Coordinator::active_locked() const {
  for (const auto& session : sessions_) {
    if (!is_terminal(session->state)) {
      return session.get();
    }
  }
  return nullptr;
}

namespace {
nlohmann::json error_json(const std::optional<WriterError>& error) {
  if (!error) {
    return nullptr;
  }
  return {{"class", to_string(error->error_class)}, {"message", error->message}};
}
}  // namespace

nlohmann::json Coordinator::status_locked(const Session& session) const {
  nlohmann::json writers = nlohmann::json::array();
  nlohmann::json artifacts = nlohmann::json::object();
  for (const auto& writer : session.writers) {
    nlohmann::json timings = nlohmann::json::object();
    for (const auto& [phase, ms] : writer.timings_ms) {
      timings[std::string(to_string(phase))] = ms;
    }
    std::string state(to_string(writer.state));
    if (writer.state == WriterState::failed && writer.failed_phase) {
      state = "failed_at_" + std::string(to_string(*writer.failed_phase));
    }
    nlohmann::json entry = {{"name", writer.slot->spec.name},
                            {"type", writer.slot->spec.type},
                            {"level", to_string(writer.slot->spec.level)},
                            {"state", state},
                            {"error", error_json(writer.error)},
                            {"timings_ms", timings},
                            {"identity", writer.identity}};
    if (writer.timings_ms.contains(Phase::thaw)) {
      entry["hold"] = {{"continuous", writer.hold.continuous}, {"detail", writer.hold.detail}};
    }
    writers.push_back(std::move(entry));
    if (!writer.artifacts.is_null()) {
      artifacts[writer.slot->spec.name] = writer.artifacts;
    }
  }
  return {{"id", session.id},
          {"state", session.state},
          {"origin", session.origin},
          {"mountpoints", session.mountpoints ? nlohmann::json(*session.mountpoints)
                                              : nlohmann::json(nullptr)},
          {"checkpoint_id", session.checkpoint_id ? nlohmann::json(*session.checkpoint_id)
                                                  : nlohmann::json(nullptr)},
          {"created_at", iso_time(session.created_at)},
          {"freeze_window_ms", session.freeze_window.count()},
          {"writers", writers},
          {"timings_ms", session.timings_ms},
          {"verdict", session.verdict},
          {"artifacts", artifacts},
          {"error", session.error ? wire::to_json(*session.error)["error"] : nlohmann::json(nullptr)}};
}

nlohmann::json Coordinator::list_sessions() const {
  std::lock_guard lock(state_mutex_);
  nlohmann::json sessions = nlohmann::json::array();
  for (const auto& session : sessions_) {
    sessions.push_back(
        {{"id", session->id},
         {"state", session->state},
         {"origin", session->origin},
         {"created_at", iso_time(session->created_at)},
         {"checkpoint_id", session->checkpoint_id ? nlohmann::json(*session->checkpoint_id)
                                                  : nlohmann::json(nullptr)},
         {"verdict", session->verdict},
         {"error", session->error ? wire::to_json(*session->error)["error"]
                                  : nlohmann::json(nullptr)}});
  }
  return {{"sessions", sessions}};
}

wire::ApiError Coordinator::writer_error(const Session& session, const std::string& code,
                                         const std::string& fallback) const {
  std::lock_guard lock(state_mutex_);
  for (const auto& writer : session.writers) {
    if (writer.error && writer.state == WriterState::failed) {
      const auto& e = *writer.error;
      const bool is_timeout = e.error_class == ErrorClass::timeout;
      return wire::ApiError{is_timeout ? 504U : 500U,
                            is_timeout ? "writer_timeout" : code,
                            "writer '" + writer.slot->spec.name + "' failed at " +
                                std::string(to_string(writer.failed_phase.value_or(Phase::freeze))) +
                                " (" + std::string(to_string(e.error_class)) + "): " + e.message,
                            writer.slot->spec.name,
                            e.error_class == ErrorClass::retryable || is_timeout};
    }
  }
  return wire::ApiError{500, code, fallback, std::nullopt, false};
}

nlohmann::json Coordinator::health() const {
  std::lock_guard lock(state_mutex_);
  std::string state = "idle";
  nlohmann::json session_id = nullptr;
  if (auto* active = active_locked()) {
    session_id = active->id;
    state = active->hold_active ? "frozen" : "session_active";
  }
  return {{"version", QUIESCE_VERSION},
          {"state", state},
          {"session", session_id},
          {"uptime_s", std::chrono::duration<double>(Clock::now() - started_at_).count()},
          {"writers", slots_.size()},
          {"last_restore", last_restore_}};
}

nlohmann::json Coordinator::writers_status() const {
  std::lock_guard lock(state_mutex_);
  nlohmann::json writers = nlohmann::json::array();
  for (const auto& slot : slots_) {
    writers.push_back({{"name", slot->spec.name},
                       {"type", slot->spec.type},
                       {"level", to_string(slot->spec.level)},
                       {"state", slot->last_state},
                       {"identity",
                        {{"components", slot->identity.components},
                         {"metadata", slot->identity.metadata}}},
                       {"error", error_json(slot->identify_error)}});
  }
  return {{"writers", writers}};
}

bool Coordinator::frozen() const {
  std::lock_guard lock(state_mutex_);
  auto* active = active_locked();
  return active != nullptr && active->hold_active;
}

std::string Coordinator::metrics() const {
  std::lock_guard lock(state_mutex_);
  std::ostringstream out;
  auto* active = active_locked();
  out << "# HELP quiesce_build_info Agent version.\n# TYPE quiesce_build_info gauge\n"
      << "quiesce_build_info{version=\"" << QUIESCE_VERSION << "\"} 1\n";
  out << "# HELP quiesce_frozen 1 while a hold is on.\n# TYPE quiesce_frozen gauge\n"
      << "quiesce_frozen " << ((active != nullptr && active->hold_active) ? 1 : 0) << "\n";
  out << "# HELP quiesce_session_active 1 while a session is active.\n"
      << "# TYPE quiesce_session_active gauge\n"
      << "quiesce_session_active " << (active != nullptr ? 1 : 0) << "\n";
  out << "# HELP quiesce_sessions_total Sessions finished, by outcome.\n"
      << "# TYPE quiesce_sessions_total counter\n";
  for (const char* outcome : {"completed", "aborted", "failed", "expired"}) {
    auto it = metrics_.sessions_by_outcome.find(outcome);
    out << "quiesce_sessions_total{outcome=\"" << outcome << "\"} "
        << (it == metrics_.sessions_by_outcome.end() ? 0 : it->second) << "\n";
  }
  out << "# HELP quiesce_hold_seconds Hold windows (freeze start to thaw end).\n"
      << "# TYPE quiesce_hold_seconds summary\n"
      << "quiesce_hold_seconds_sum " << metrics_.hold_seconds_sum << "\n"
      << "quiesce_hold_seconds_count " << metrics_.holds << "\n";
  out << "# HELP quiesce_last_hold_seconds The most recent hold window.\n"
      << "# TYPE quiesce_last_hold_seconds gauge\n"
      << "quiesce_last_hold_seconds " << metrics_.last_hold_seconds << "\n";
  out << "# HELP quiesce_holds_broken_total Holds that were not continuous.\n"
      << "# TYPE quiesce_holds_broken_total counter\n"
      << "quiesce_holds_broken_total " << metrics_.holds_broken << "\n";
  out << "# HELP quiesce_qga_sessions_total Holds of sessions started by guest-fsfreeze-freeze, "
         "by continuity verdict.\n"
      << "# TYPE quiesce_qga_sessions_total counter\n"
      << "quiesce_qga_sessions_total{continuous=\"true\"} " << metrics_.qga_continuous << "\n"
      << "quiesce_qga_sessions_total{continuous=\"false\"} " << metrics_.qga_broken << "\n";
  out << "# HELP quiesce_writer_failures_total Writer failures by phase and class.\n"
      << "# TYPE quiesce_writer_failures_total counter\n";
  for (const auto& [key, count] : metrics_.writer_failures) {
    auto first = key.find('|');
    auto second = key.find('|', first + 1);
    out << "quiesce_writer_failures_total{writer=\"" << key.substr(0, first) << "\",phase=\""
        << key.substr(first + 1, second - first - 1) << "\",class=\"" << key.substr(second + 1)
        << "\"} " << count << "\n";
  }
  return out.str();
}

// ---------------------------------------------------------------------------
// Identify at start, restore detection

void Coordinator::identify_all() {
  Session probe;
  probe.id = "identify";
  std::vector<SessionWriter*> everyone;
  for (const auto& slot : current_slots()) {
    SessionWriter writer;
    writer.slot = slot;
    probe.writers.push_back(writer);
  }
  for (auto& writer : probe.writers) {
    everyone.push_back(&writer);
  }
  auto results = call_writers(probe, everyone, Phase::identify, Clock::time_point::max(), false,
                              [](Writer& w, const PhaseContext& ctx, CallScratch& scratch) {
                                return w.identify(ctx, scratch.identity);
                              });
  std::lock_guard lock(state_mutex_);
  for (std::size_t i = 0; i < everyone.size(); ++i) {
    auto* slot = everyone[i]->slot.get();
    if (results[i].finished && !results[i].error) {
      slot->identity = results[i].scratch.identity;
      slot->identify_error.reset();
    } else {
      slot->identify_error = results[i].error;
      const ScopedLogFields about({"", slot->spec.name, std::string(to_string(Phase::identify))});
      logger_->warn("writer '{}': identify failed: {}", slot->spec.name,
                    results[i].error ? results[i].error->message : "unknown");
    }
  }
}

// The restore marker: written (durably, on the persistent state dir) when a
// session is prepared, so it is inside any snapshot taken during the hold,
// and removed once the hold ends, so the live system does not keep it. A
// companion file in the run dir (volatile) says "this boot wrote it": a
// marker with no companion means the disks came back from a snapshot (or the
// machine went down during a hold).
void Coordinator::write_restore_marker(const Session& session) {
  if (marker_paths_.state_dir.empty() || marker_paths_.run_dir.empty()) {
    return;
  }
  std::error_code ec;
  std::filesystem::create_directories(marker_paths_.state_dir, ec);
  std::filesystem::create_directories(marker_paths_.run_dir, ec);
  nlohmann::json marker = {{"session_id", session.id},
                           {"checkpoint_id", session.checkpoint_id ? *session.checkpoint_id : ""},
                           {"written_at", iso_time(std::chrono::system_clock::now())}};
  // The volatile companion first: a crash between the two then leaves a
  // companion without a marker, which is harmless.
  const auto live = std::filesystem::path(marker_paths_.run_dir) / kLiveMarkerFile;
  if (!platform::write_file_atomically(live.string(), session.id, nullptr, 0600)) {
    logger_->warn("cannot write {}: post-restore will not run for this checkpoint", live.string());
    return;
  }
  const auto path = std::filesystem::path(marker_paths_.state_dir) / kMarkerFile;
  if (!platform::write_file_atomically(path.string(), marker.dump(), nullptr, 0600)) {
    logger_->warn("cannot write restore marker {}: post-restore will not run for this checkpoint",
                  path.string());
  }
}

void Coordinator::remove_restore_marker() {
  if (marker_paths_.state_dir.empty() || marker_paths_.run_dir.empty()) {
    return;
  }
  std::error_code ec;
  std::filesystem::remove(std::filesystem::path(marker_paths_.state_dir) / kMarkerFile, ec);
  std::filesystem::remove(std::filesystem::path(marker_paths_.run_dir) / kLiveMarkerFile, ec);
}

void Coordinator::detect_restore() {
  if (marker_paths_.state_dir.empty() || marker_paths_.run_dir.empty()) {
    return;
  }
  const auto path = std::filesystem::path(marker_paths_.state_dir) / kMarkerFile;
  const auto live = std::filesystem::path(marker_paths_.run_dir) / kLiveMarkerFile;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return;
  }
  auto marker = nlohmann::json::parse(read_file(path), nullptr, false);
  if (!marker.is_object() || !marker.contains("session_id") || !marker["session_id"].is_string()) {
    logger_->warn("ignoring unreadable restore marker {}", path.string());
    std::filesystem::remove(path, ec);
    return;
  }
  const auto session_id = marker["session_id"].get<std::string>();
  if (std::filesystem::exists(live, ec) && read_file(live) == session_id) {
    // This boot wrote it: the agent stopped during a session, no restore.
    logger_->info("removing the restore marker of session {} left by a previous agent run",
                  session_id);
    remove_restore_marker();
    return;
  }
  RestoreInfo info{marker.value("checkpoint_id", std::string()), session_id};
  // The session whose snapshot this system came back from.
  const ScopedLogFields about({session_id, "", std::string(to_string(Phase::post_restore))});
  logger_->warn("this system was restored from checkpoint '{}' (session {}); running post-restore",
                info.checkpoint_id, session_id);

  Session restore;
  restore.id = "restore";
  for (const auto& slot : current_slots()) {
    SessionWriter writer;
    writer.slot = slot;
    restore.writers.push_back(writer);
  }
  nlohmann::json results = nlohmann::json::array();
  // Filesystems first, applications last: the order things come back up.
  for (auto it = freeze_order.rbegin(); it != freeze_order.rend(); ++it) {
    auto group = writers_at(restore, *it);
    if (group.empty()) {
      continue;
    }
    auto outcome = call_writers(restore, group, Phase::post_restore, Clock::time_point::max(),
                                false,
                                [info](Writer& w, const PhaseContext& ctx, CallScratch&) {
                                  return w.post_restore(ctx, info);
                                });
    for (std::size_t i = 0; i < group.size(); ++i) {
      results.push_back({{"writer", group[i]->slot->spec.name},
                         {"ok", outcome[i].finished && !outcome[i].error},
                         {"error", error_json(outcome[i].error)},
                         {"ms", outcome[i].elapsed_ms}});
      if (outcome[i].error) {
        const ScopedLogFields about_writer({"", group[i]->slot->spec.name, ""});
        logger_->error("writer '{}': post-restore failed: {}", group[i]->slot->spec.name,
                       outcome[i].error->message);
      }
    }
  }
  {
    std::lock_guard lock(state_mutex_);
    last_restore_ = {{"checkpoint_id", info.checkpoint_id},
                     {"session_id", session_id},
                     {"marker_written_at", marker.value("written_at", std::string())},
                     {"detected_at", iso_time(std::chrono::system_clock::now())},
                     {"writers", results}};
  }
  std::filesystem::remove(path, ec);
}

}  // namespace quiesce::agent

#pragma once
// The coordinator runs one quiesce session at a time across the configured
// writers, as shared/DESIGN.md describes:
//   create  = identify + prepare (all selected writers in parallel)
//   freeze  = level by level (application, database, filesystem), writers of
//             a level in parallel; on any failure every writer touched is
//             aborted in reverse order and the session fails
//   thaw    = exact reverse order; answers with the continuity verdict
//   complete= post-snapshot, collecting artifacts
//   abort   = undo whatever was done (DELETE)
// plus a watchdog that thaws at the freeze-window deadline and expires idle
// sessions, and post-restore at start.
//
// Concurrency: one operation at a time runs under op_mutex_ (a second one
// gets `operation_in_progress` at once instead of queueing); state_mutex_
// guards what status readers see and is never held while a writer runs, so
// status and abort answer while a writer is busy (invariant 6). Abort and the
// watchdog interrupt a running operation through the session's stop source.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/logger.h>

#include "agent/core/expected.hpp"
#include "agent/core/writer_worker.hpp"
#include "quiesce/writer.hpp"

namespace quiesce::agent {

using Millis = std::chrono::milliseconds;

struct PhaseTimeouts {
  Millis identify{10'000};
  Millis prepare{60'000};
  Millis freeze{10'000};
  Millis thaw{10'000};
  Millis post_snapshot{60'000};
  Millis abort{30'000};
  Millis post_restore{120'000};

  [[nodiscard]] Millis of(Phase phase) const;
  Millis& of(Phase phase);
};

struct SessionLimits {
  Millis default_freeze_window{10'000};
  Millis max_freeze_window{60'000};
  Millis idle_timeout{300'000};  // created-but-not-frozen, thawed-but-not-completed
  PhaseTimeouts phase_timeouts;
  std::size_t history = 16;      // finished sessions kept for status queries
};

// A writer the agent was configured with.
struct ConfiguredWriter {
  WriterSpec spec;
  std::unique_ptr<Writer> writer;
  std::map<Phase, Millis> timeout_overrides;  // per-writer, per-phase
};

struct SessionRequest {
  std::optional<std::vector<std::string>> writers;  // default: all
  std::optional<Millis> freeze_window;
  std::optional<std::string> checkpoint_id;
  // Narrows the fsfreeze writers to these mount points (PhaseContext::mountpoints).
  std::optional<std::vector<std::string>> mountpoints;
  // Who asked for the session: "api" (the v1 API) or "qga" (qemu-guest-agent's
  // guest-fsfreeze-freeze). Shown in the session status; qga sessions'
  // verdicts are counted apart in /metrics.
  std::string origin = "api";
};

// Told about holds and state changes: the log ring buffers while a hold is
// on (invariant 4), systemd gets a STATUS line.
class CoordinatorObserver {
 public:
  virtual ~CoordinatorObserver() = default;
  virtual void hold_started() {}
  virtual void hold_ended() {}
  virtual void state_changed(const std::string& /*summary*/) {}
  // A session reached `state`: "prepared", "frozen", "thawed" (with the
  // continuity verdict), or a final one ("completed", "aborted", "failed",
  // "expired"). May be called with the coordinator's state lock held, from
  // any of its threads: an observer only records or queues, never calls back.
  virtual void session_changed(const std::string& /*session_id*/, const std::string& /*state*/,
                               const nlohmann::json& /*verdict*/) {}
};

// Passes every event to each observer in turn (the log and the D-Bus service
// both watch the coordinator).
class ObserverList final : public CoordinatorObserver {
 public:
  void add(CoordinatorObserver* observer) { observers_.push_back(observer); }
  void hold_started() override {
    for (auto* o : observers_) {
      o->hold_started();
    }
  }
  void hold_ended() override {
    for (auto* o : observers_) {
      o->hold_ended();
    }
  }
  void state_changed(const std::string& summary) override {
    for (auto* o : observers_) {
      o->state_changed(summary);
    }
  }
  void session_changed(const std::string& session_id, const std::string& state,
                       const nlohmann::json& verdict) override {
    for (auto* o : observers_) {
      o->session_changed(session_id, state, verdict);
    }
  }

 private:
  std::vector<CoordinatorObserver*> observers_;
};

// Where the restore marker lives: `state_dir` must be persistent and on a
// disk the host snapshots; `run_dir` must be volatile (cleared at boot, or
// at a simulated power-off). Empty: no marker, no restore detection.
struct MarkerPaths {
  std::string state_dir;
  std::string run_dir;
};

class Coordinator {
 public:
  Coordinator(std::vector<ConfiguredWriter> writers, SessionLimits limits,
              std::shared_ptr<spdlog::logger> logger, MarkerPaths marker_paths = {},
              CoordinatorObserver* observer = nullptr);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  Expected<nlohmann::json> create_session(const SessionRequest& request);
  // `answer`, when given, is called with a successful freeze's or thaw's
  // answer as soon as it is known, before the bookkeeping that does not
  // change it: the watchdog told about the new deadline and the session's
  // log line (freeze); the restore marker removed, the log lines kept
  // during the hold written out, the watchdog told (thaw). The HTTP API
  // sends its response from there (docs/performance.md, "the agent's own
  // hops"). The operation lock is held until that bookkeeping is done; an
  // operation that arrives meanwhile waits for it instead of getting
  // `operation_in_progress`. Failures are only returned.
  using Answer = std::function<void(const Expected<nlohmann::json>&)>;
  Expected<nlohmann::json> freeze(const std::string& id, const Answer& answer = {});
  Expected<nlohmann::json> thaw(const std::string& id, const Answer& answer = {});
  Expected<nlohmann::json> complete(const std::string& id, const std::string& snapshot_id);
  Expected<nlohmann::json> abort(const std::string& id);
  Expected<nlohmann::json> session_status(const std::string& id) const;
  // Every session still kept (the active one and the last `history` finished
  // ones), oldest first, each as a summary: id, state, origin, created_at,
  // checkpoint_id, verdict, error.
  [[nodiscard]] nlohmann::json list_sessions() const;

  [[nodiscard]] nlohmann::json health() const;
  [[nodiscard]] nlohmann::json writers_status() const;
  [[nodiscard]] std::string metrics() const;  // Prometheus text format
  [[nodiscard]] bool frozen() const;

  // Writers registered at run time (D-Bus RegisterWriter). A change applies
  // from the next session: a session copies the writer list when it is
  // created and keeps those writers alive to its end, so one removed
  // meanwhile is still thawed or aborted by the session that froze it.
  // add_writer refuses a name already taken (409 writer_exists);
  // remove_writer an unknown one (404 unknown_writer).
  Expected<nlohmann::json> add_writer(ConfiguredWriter configured);
  Expected<nlohmann::json> remove_writer(const std::string& name);

  // Runs identify on every writer (at start, before the API opens).
  void identify_all();
  // At start: when a restore marker from another boot is found, runs
  // post-restore on every writer and records it for /v1/health.
  void detect_restore();
  // Aborts the active session, if any (SIGTERM).
  void shutdown();

  struct Session;
  struct SessionWriter;
  struct WriterSlot;

 private:
  // What one writer call produced besides its status. Owned by the batch, not
  // the session, so a call that outlives its deadline writes nowhere stale.
  struct CallScratch {
    Identity identity;
    HoldReport hold;
    nlohmann::json artifacts = nlohmann::json::object();
  };
  struct CallResult {
    bool finished = false;
    std::optional<WriterError> error;
    double elapsed_ms = 0;
    CallScratch scratch;
  };
  using WriterCall = std::function<Status(Writer&, const PhaseContext&, CallScratch&)>;

  static std::shared_ptr<WriterSlot> make_slot(ConfiguredWriter configured);
  std::vector<std::shared_ptr<WriterSlot>> current_slots() const;

  std::vector<CallResult> call_writers(Session& session, const std::vector<SessionWriter*>& group,
                                       Phase phase, Clock::time_point hard_deadline,
                                       bool interruptible, const WriterCall& call,
                                       const std::function<void()>& posted = {});
  std::vector<SessionWriter*> writers_at(Session& session, Level level);
  // Writes a batch's outcome into the session (caller holds state_mutex_):
  // timings, then `on_success` or failed_at_<phase>. True when any failed.
  bool record_batch(Session& session, const std::vector<SessionWriter*>& group,
                    std::vector<CallResult>& results, Phase phase, WriterState on_success);
  // One log record per writer that failed or timed out, with its session,
  // writer and phase as structured fields. Reads only the results: called
  // outside state_mutex_, so a slow log target never delays a status reader.
  void log_failures(const Session& session, const std::vector<SessionWriter*>& group,
                    const std::vector<CallResult>& results, Phase phase) const;

  Expected<nlohmann::json> run_create(Session& session);
  void roll_back(Session& session, const std::string& reason);
  // Thaws every frozen writer and records the verdict; then after_release
  // (the marker, the held log lines, the watchdog), which the thaw answer
  // does not wait for.
  void release_hold(Session& session, bool by_watchdog, const std::string& watchdog_reason);
  void after_release(Session& session);
  // Takes the operation lock at once, or after an answered freeze's or
  // thaw's bookkeeping (see freeze()); false: another operation runs.
  bool try_lock_op(std::unique_lock<std::timed_mutex>& op);
  // Marks the bookkeeping after an early answer as under way (see freeze()).
  class AnsweredTail;
  void run_abort_all(Session& session, bool include_finalized);
  void finish(Session& session, const std::string& state, const char* outcome);
  void end_hold(Session& session);

  Session* find_locked(const std::string& id) const;
  Session* active_locked() const;
  nlohmann::json status_locked(const Session& session) const;
  wire::ApiError writer_error(const Session& session, const std::string& code,
                              const std::string& fallback) const;
  void set_writer_state(Session& session, SessionWriter& writer, WriterState state);

  void watchdog_loop(const std::stop_token& stop);

  void start_watchdog();
  void write_restore_marker(const Session& session);
  void remove_restore_marker();

  std::vector<std::shared_ptr<WriterSlot>> slots_;  // guarded by state_mutex_
  SessionLimits limits_;
  std::shared_ptr<spdlog::logger> logger_;
  MarkerPaths marker_paths_;
  CoordinatorObserver* observer_;
  const Clock::time_point started_at_ = Clock::now();

  mutable std::mutex state_mutex_;       // guards sessions_, slots_' cached data, metrics_
  std::timed_mutex op_mutex_;            // one operation at a time
  // True from an early answer (freeze(), thaw()) until the operation lock
  // is released after the bookkeeping that follows it.
  std::mutex tail_mutex_;
  std::condition_variable tail_done_;
  bool tail_pending_ = false;
  std::condition_variable_any watch_wake_;
  std::deque<std::unique_ptr<Session>> sessions_;  // newest last
  nlohmann::json last_restore_ = nullptr;
  std::uint64_t watch_generation_ = 0;  // bumped whenever a deadline may have moved

  struct Metrics {
    std::map<std::string, std::uint64_t> sessions_by_outcome;
    std::uint64_t holds = 0;
    std::uint64_t holds_broken = 0;
    double hold_seconds_sum = 0;
    double last_hold_seconds = 0;
    std::map<std::string, std::uint64_t> writer_failures;  // "writer|phase|class"
    std::uint64_t qga_continuous = 0;  // qga sessions' verdicts (holds released)
    std::uint64_t qga_broken = 0;
  } metrics_;

  // Started with the first session (start_watchdog): it only ever watches
  // an active session, and an agent that is never called runs no thread
  // for it.
  std::once_flag watchdog_started_;
  std::jthread watchdog_;  // last: uses everything above
};

}  // namespace quiesce::agent

#pragma once
// The in-process writer interface that built-in writers implement (and that
// the C ABI adapter for third-party plugins implements in turn).
//
// Threading contract, which the coordinator guarantees:
//   - calls on one writer never overlap: each writer has its own worker
//     thread and its calls run there one after another;
//   - no call runs on an I/O thread;
//   - a call that outlives its deadline is reported as a timeout, its stop
//     token is triggered, and the calls queued after it (thaw / abort) run
//     when it returns. Writers should watch `stop` in anything that can block.
//   - thaw and abort may be called in any state and must be idempotent.

#include <chrono>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/logger.h>

#include "quiesce/protocol.hpp"
#include "quiesce/status.hpp"

namespace quiesce {

using Clock = std::chrono::steady_clock;

struct PhaseContext {
  std::string session_id;
  Clock::time_point deadline;       // this call's deadline
  Clock::time_point hold_deadline;  // end of the freeze window (freeze/thaw only)
  std::stop_token stop;             // triggered on timeout or abort
  // Set when the session was asked to freeze only these mount points
  // (guest-fsfreeze-freeze-list, "mountpoints" in POST /v1/sessions). Only
  // filesystem writers that freeze mounts (fsfreeze) act on it: they narrow
  // their selection to these, and fail identify when one of them is not
  // among the filesystems they would freeze. Unset: the configured mounts.
  std::optional<std::vector<std::string>> mountpoints{};
};

// A writer call's deadline and stop token as the waits inside the call use
// them (a client library's socket, a lock): no deadline is time_point::max().
struct CallBudget {
  Clock::time_point deadline = Clock::time_point::max();
  std::stop_token stop;

  [[nodiscard]] static CallBudget of(const PhaseContext& ctx) {
    return {ctx.deadline == Clock::time_point{} ? Clock::time_point::max() : ctx.deadline,
            ctx.stop};
  }

  // Why nothing more may be started in this call ("" while it may). Checked
  // before sending anything: a wait is not the only place a stop must win,
  // since an answer already there never makes the call wait.
  [[nodiscard]] std::string spent() const {
    if (stop.stop_requested()) {
      return "stopped (the call was aborted or timed out)";
    }
    if (Clock::now() >= deadline) {
      return "no time left before the deadline";
    }
    return "";
  }
};

// Milliseconds since `started`, for the timings writers report.
[[nodiscard]] inline double elapsed_ms(Clock::time_point started) {
  return std::chrono::duration<double, std::milli>(Clock::now() - started).count();
}

// What identify returns: the components a writer protects and anything else
// a host should record in the checkpoint manifest.
struct Identity {
  nlohmann::json components = nlohmann::json::array();  // [{kind, name, path, mount...}]
  nlohmann::json metadata = nlohmann::json::object();   // version, skipped mounts, notes...
};

// What thaw reports about the hold (DESIGN.md invariant 3): false when the
// writer lost its hold at some point since it reported frozen.
struct HoldReport {
  bool continuous = true;
  std::string detail;  // why the hold broke, for the operator
};

struct SnapshotInfo {
  std::string snapshot_id;  // the host's id for the snapshot just taken
};

struct RestoreInfo {
  std::string checkpoint_id;  // from the marker written before freeze
  std::string session_id;
};

class Writer {
 public:
  Writer() = default;
  virtual ~Writer() = default;
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  virtual Status identify(const PhaseContext& ctx, Identity& out) = 0;
  // Slow work before the hold window (a database CHECKPOINT, a sync).
  virtual Status prepare(const PhaseContext& ctx) = 0;
  // Reach a consistent state and hold it until thaw or abort.
  virtual Status freeze(const PhaseContext& ctx) = 0;
  // Release the hold. Idempotent; also fills in whether the hold was kept.
  virtual Status thaw(const PhaseContext& ctx, HoldReport& hold) = 0;
  // After the host's snapshot; artifacts go into the checkpoint manifest.
  virtual Status post_snapshot(const PhaseContext& ctx, const SnapshotInfo& snapshot,
                               nlohmann::json& artifacts) = 0;
  // Undo whatever prepare/freeze did. Idempotent, valid in any state.
  virtual Status abort(const PhaseContext& ctx) = 0;
  // First start after the VM was restored from a checkpoint.
  virtual Status post_restore(const PhaseContext& ctx, const RestoreInfo& restore) = 0;
};

// A writer as configured: `{type, name, level?, options}` in agent.json.
struct WriterSpec {
  std::string type;
  std::string name;
  Level level = Level::application;
  nlohmann::json options = nlohmann::json::object();
};

// What the agent hands a writer it creates.
struct WriterEnvironment {
  std::shared_ptr<spdlog::logger> logger;
  std::string run_dir;    // volatile state (/run/quiesce)
  std::string state_dir;  // persistent state (/var/lib/quiesce)
};

}  // namespace quiesce

#pragma once
// The checkpointer: Hyper-V-style checkpoints of one VM through the agent.
//
// production: create a session (checkpoint id in it, so the restore marker
//   the agent writes carries it) -> freeze -> snapshot every disk, only once
//   freeze answered 200 (every writer frozen) -> thaw -> complete with the
//   checkpoint id -> manifest. Consistency is `application` only when the
//   thaw verdict says the hold was continuous, else `crash`. On any failure
//   after the session exists the session is deleted (abort: thaw and undo),
//   so nothing stays frozen, the disk copies taken so far are freed and the
//   checkpoint is recorded as failed with the error.
// standard: the disks with no help from the guest: `crash` while the VM
//   runs, `application` when it is powered off (a clean shutdown).
// fallback_standard: a production checkpoint whose quiesce fails before any
//   disk was captured (agent unreachable, prepare or freeze refused) is
//   taken as standard instead, with the reason in the manifest.

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "host-bridge/checkpoint/checkpoint_store.hpp"
#include "host-bridge/checkpoint/error.hpp"
#include "host-bridge/checkpoint/snapshot_backend.hpp"
#include "host-bridge/client/agent_client.hpp"

namespace quiesce::host {

// What the checkpointer needs from the hypervisor.
class VirtualMachine {
 public:
  virtual ~VirtualMachine() = default;
  [[nodiscard]] virtual std::vector<DiskSpec> disks() const = 0;
  [[nodiscard]] virtual bool running() const = 0;
  [[nodiscard]] virtual Status power_off() = 0;
  [[nodiscard]] virtual Status power_on() = 0;
  [[nodiscard]] virtual client::ClientOptions agent_client_options() const = 0;
};

// One line of progress: a step starting (ms unset) or finished.
struct ProgressEvent {
  std::string step;
  std::string detail;
  std::optional<double> ms;
  bool failed = false;
};
using ProgressFn = std::function<void(const ProgressEvent&)>;

struct CreateOptions {
  CheckpointType type = CheckpointType::production;
  bool fallback_standard = false;
  std::string label;
  std::optional<unsigned> freeze_window_ms;  // the agent's default when unset
};

struct ApplyOutcome {
  Manifest applied;
  std::optional<Manifest> saved;  // with save_current
  nlohmann::json timings_ms = nlohmann::json::object();
};

struct RemoveOutcome {
  std::vector<std::string> reparented;
  std::optional<std::string> new_parent;
};

class Checkpointer {
 public:
  Checkpointer(const CheckpointStore& store, SnapshotBackend& backend, VirtualMachine& vm,
               ProgressFn progress = {})
      : store_(store), backend_(backend), vm_(vm), progress_(std::move(progress)) {}

  // The manifest of the new checkpoint, or the error (a failed checkpoint's
  // manifest is still saved when the guest had been touched; the error
  // message names it).
  [[nodiscard]] Expected<Manifest> create(const CreateOptions& options);
  // Checks everything first (manifest, status, every snapshot), so a bad
  // checkpoint changes nothing; then powers off, optionally saves the
  // current state as a standard checkpoint, restores, powers on.
  [[nodiscard]] Expected<ApplyOutcome> apply(const std::string& id, bool save_current);
  // Refuses a checkpoint that is a parent unless `force`, which re-parents
  // its children onto its own parent (every checkpoint holds whole disks,
  // so nothing needs merging).
  [[nodiscard]] Expected<RemoveOutcome> remove(const std::string& id, bool force);

 private:
  [[nodiscard]] Expected<Manifest> create_standard(const CreateOptions& options,
                                                   std::optional<std::string> fallback_reason);
  [[nodiscard]] Expected<Manifest> create_production(const CreateOptions& options, bool& can_fall_back);
  // Snapshots every disk into `manifest`; on failure frees what was taken.
  [[nodiscard]] Status snapshot_disks(Manifest& manifest);
  void free_snapshots(Manifest& manifest);
  void report(const std::string& step, const std::string& detail = {}, std::optional<double> ms = {},
              bool failed = false) const;
  [[nodiscard]] Manifest new_manifest(CheckpointType type, const std::string& label) const;

  const CheckpointStore& store_;
  SnapshotBackend& backend_;
  VirtualMachine& vm_;
  ProgressFn progress_;
};

}  // namespace quiesce::host

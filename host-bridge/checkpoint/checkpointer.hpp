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
//   runs, `application` when it is powered off (a clean shutdown). A
//   running VM whose hypervisor can save its state (VmStateCapture) is
//   paused for the disks' snapshot and the state's save, so the checkpoint
//   carries memory matching its disks (Hyper-V's standard checkpoint); any
//   failure there undoes the snapshot and resumes the VM.
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

// What a hypervisor that can save a running VM's device and RAM state
// offers (a qemu VM: host-bridge/qemu/memory_state.hpp). A standard
// checkpoint of a running VM takes the memory with it through this; apply
// of such a checkpoint brings the VM back running where it was.
// Order in create: pause -> the disks' snapshot -> save -> resume -> seal.
class VmStateCapture {
 public:
  virtual ~VmStateCapture() = default;
  // Checks that the state can be saved (nothing blocks it), then stops the
  // vCPUs: the VM's pause starts when this returns. Changes nothing on error.
  [[nodiscard]] virtual Status pause() = 0;
  // Saves the state into a new file in `checkpoint_dir` while the VM stays
  // paused; returns the manifest's "memory" record so far (file, bytes,
  // qemu_command). On error no state file is left.
  [[nodiscard]] virtual Expected<nlohmann::json> save(const std::filesystem::path& checkpoint_dir) = 0;
  // Undoes the disks' snapshot taken during this pause (each disk back on
  // the image it ran from; nothing was written since: the vCPUs are stopped).
  [[nodiscard]] virtual Status undo_disk_snapshots(const std::vector<DiskSnapshot>& snapshots) = 0;
  // Lets the vCPUs run again.
  [[nodiscard]] virtual Status resume() = 0;
  // After resume (nothing here needs the VM paused): flushes the state
  // file to stable storage and adds its sha256 to `memory`.
  [[nodiscard]] virtual Status seal(nlohmann::json& memory, const std::filesystem::path& checkpoint_dir) = 0;
  // Checks that a saved state can be loaded (the file, its size and
  // sha256, the machine to load it into), changing nothing.
  [[nodiscard]] virtual Status verify(const nlohmann::json& memory, const std::filesystem::path& checkpoint_dir) = 0;
  // Starts the powered-off VM from a saved state (its disks already hold
  // the checkpoint's): running where it was, no boot.
  [[nodiscard]] virtual Status start_from(const nlohmann::json& memory,
                                          const std::filesystem::path& checkpoint_dir) = 0;
};

// What the checkpointer needs from the hypervisor.
class VirtualMachine {
 public:
  virtual ~VirtualMachine() = default;
  [[nodiscard]] virtual std::vector<DiskSpec> disks() const = 0;
  [[nodiscard]] virtual bool running() const = 0;
  [[nodiscard]] virtual Status power_off() = 0;
  [[nodiscard]] virtual Status power_on() = 0;
  [[nodiscard]] virtual client::ClientOptions agent_client_options() const = 0;
  // The memory side of standard checkpoints, where the hypervisor has one.
  [[nodiscard]] virtual VmStateCapture* state_capture() { return nullptr; }
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

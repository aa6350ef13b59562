#pragma once
// The memory side of a qemu VM's standard checkpoints (Hyper-V's standard
// checkpoint: disks and the running state), by QEMU's migration to a file.
//
// Save (Checkpointer::create_standard drives the order):
//   pause   query-migrate: refuse when QEMU lists blocked reasons (a device
//           that cannot migrate) or a migration is already running; raise
//           max-bandwidth (QEMU 7.2's default, 128 MiB/s, would make the pause
//           last about 1 s per 128 MiB saved); `stop`. The pause starts here.
//   (the disks' snapshot transaction, while the vCPUs are stopped)
//   save    the state file <checkpoint>/memory.state is created (O_EXCL,
//           0600) and handed to QEMU with `getfd`; `migrate` "fd:..."; wait
//           for `completed` (QEMU's error when `failed`, e.g. no space).
//   resume  `cont` (it also takes the disks back: a completed migration
//           leaves them inactive for the destination); max-bandwidth back.
//   seal    fsync the state file, its sha256. Neither needs the guest
//           paused: the file is final once QEMU says completed, and the
//           checkpoint is recorded only after the fsync.
// When the save fails, the disks' snapshot is undone by an active
// block-commit of each (still empty) overlay into the image it covered,
// then the VM resumes: the VM runs on exactly the files it ran on before.
//
// Apply (the VM is off, its disks already hold the checkpoint's state):
// QEMU starts with the checkpoint's own command line (its qemu_command;
// only each -drive points at the disk's current file, where the restore put
// the checkpoint's data) plus `-S -incoming defer`, then `getfd` and
// `migrate-incoming` "fd:..." from the state file, wait for `completed`,
// `cont`. verify() checks before anything changes: the file exists with the
// recorded size and sha256, the command line is there, its binaries and
// kernel files exist.
//
// The manifest's "memory": {"file": "memory.state", "bytes", "sha256",
// "pause_ms", "qemu_command": [argv], "max_bandwidth_mib_s"}.

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "host-bridge/checkpoint/checkpointer.hpp"

namespace quiesce::host {

class QemuVm;

// The argv to load a state saved under `saved_argv` into the VM as it is
// now: `saved_argv` with each -drive ...,id=disk-<name>,... replaced by the
// same drive of `current_argv` (the disk's present file). Pure.
[[nodiscard]] std::vector<std::string> incoming_command_line(const std::vector<std::string>& saved_argv,
                                                             const std::vector<std::string>& current_argv);

class QemuMemoryState final : public VmStateCapture {
 public:
  explicit QemuMemoryState(QemuVm& vm) : vm_(vm) {}
  ~QemuMemoryState() override;
  QemuMemoryState(const QemuMemoryState&) = delete;
  QemuMemoryState& operator=(const QemuMemoryState&) = delete;

  [[nodiscard]] Status pause() override;
  [[nodiscard]] Expected<nlohmann::json> save(const std::filesystem::path& checkpoint_dir) override;
  [[nodiscard]] Status undo_disk_snapshots(const std::vector<DiskSnapshot>& snapshots) override;
  [[nodiscard]] Status resume() override;
  [[nodiscard]] Status seal(nlohmann::json& memory, const std::filesystem::path& checkpoint_dir) override;
  [[nodiscard]] Status verify(const nlohmann::json& memory, const std::filesystem::path& checkpoint_dir) override;
  [[nodiscard]] Status start_from(const nlohmann::json& memory, const std::filesystem::path& checkpoint_dir) override;

  static constexpr const char* state_file_name = "memory.state";

 private:
  QemuVm& vm_;
  int state_fd_ = -1;                 // the state file between save and seal
  std::uint64_t saved_bandwidth_ = 0;  // max-bandwidth before pause, put back by resume
};

}  // namespace quiesce::host

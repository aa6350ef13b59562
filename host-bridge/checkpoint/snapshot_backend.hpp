#pragma once
// Snapshot backends: how a disk's content is captured into a checkpoint and
// put back. The checkpointer calls snapshot() only while the guest is held
// frozen (production) or without the guest's help (standard), and restore()
// only while the VM is powered off.

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "host-bridge/checkpoint/checkpoint_store.hpp"
#include "host-bridge/checkpoint/error.hpp"

namespace quiesce::host {

// A disk of the VM as the host sees it.
struct DiskSpec {
  std::string name;   // "data"; used for the snapshot file name
  std::string image;  // the image file (absolute)
};

class SnapshotBackend {
 public:
  virtual ~SnapshotBackend() = default;
  [[nodiscard]] virtual std::string name() const = 0;
  // Captures `disk` into checkpoint `checkpoint_id` whose directory is `checkpoint_dir`.
  [[nodiscard]] virtual Expected<DiskSnapshot> snapshot(const DiskSpec& disk,
                                                        const std::string& checkpoint_id,
                                                        const std::filesystem::path& checkpoint_dir) = 0;
  // Checks that a snapshot can be restored (before anything is changed).
  [[nodiscard]] virtual Status verify(const DiskSnapshot& snapshot) = 0;
  // Puts the snapshot back into the disk image (the VM is off).
  [[nodiscard]] virtual Status restore(const DiskSnapshot& snapshot, const DiskSpec& disk,
                                       const std::string& checkpoint_id) = 0;
  // Frees what the snapshot holds (the checkpoint directory itself is the store's).
  [[nodiscard]] virtual Status remove(const DiskSnapshot& snapshot, const std::string& checkpoint_id) = 0;
  // Whether remove() would be refused, asked for every disk before any is
  // removed, so a refusal changes nothing. Backends that never refuse need
  // not say.
  [[nodiscard]] virtual Status check_remove(const DiskSnapshot& /*snapshot*/) { return ok_status(); }
};

// The `file` backend: the snapshot is a copy of the image file in the
// checkpoint directory, made with FICLONE (reflink: instant, shares blocks
// on btrfs/xfs) when the file system can, else a sparse-aware copy that
// copies only the data extents (SEEK_DATA/SEEK_HOLE) and leaves holes as
// holes. Restore copies back the same way into a temp file beside the image
// and renames it over the image, so a failed restore leaves the old image.
class FileBackend final : public SnapshotBackend {
 public:
  [[nodiscard]] std::string name() const override { return "file"; }
  [[nodiscard]] Expected<DiskSnapshot> snapshot(const DiskSpec& disk, const std::string& checkpoint_id,
                                                const std::filesystem::path& checkpoint_dir) override;
  [[nodiscard]] Status verify(const DiskSnapshot& snapshot) override;
  [[nodiscard]] Status restore(const DiskSnapshot& snapshot, const DiskSpec& disk,
                               const std::string& checkpoint_id) override;
  [[nodiscard]] Status remove(const DiskSnapshot& snapshot, const std::string& checkpoint_id) override;
};

struct CopyStats {
  std::string method;  // reflink | sparse_copy
  std::uint64_t bytes = 0;
  std::uint64_t allocated_bytes = 0;
};
// The file copy used by FileBackend: reflink, else sparse-aware copy; the
// destination is created (mode 0600) or truncated, and fsynced.
[[nodiscard]] Expected<CopyStats> copy_image(const std::string& from, const std::string& to);

// The `command` backend: the user's programs do the work. Each command is
// an argv (no shell unless the user names one) where these variables are
// replaced in every argument:
//   {disk}        the disk's name           {image}  its image file
//   {checkpoint}  the checkpoint id         {dest}   <checkpoint dir>/disks/<disk>  (snapshot)
//   {snapshot}    what snapshot recorded (restore, delete): {dest}, or the
//                 last line the snapshot command printed when `snapshot_ref`
//                 is "stdout"
// A non-zero exit (or a timeout) is a failure whose message carries the
// command and the end of its output.
struct CommandBackendOptions {
  std::vector<std::string> snapshot;
  std::vector<std::string> restore;
  std::vector<std::string> remove;   // optional: nothing to free when empty
  std::vector<std::string> verify;   // optional
  bool snapshot_ref_from_stdout = false;
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};

  // {"type": "command", "snapshot": [...], "restore": [...], "delete"?: [...],
  //  "verify"?: [...], "snapshot_ref"?: "dest"|"stdout", "timeout_ms"?: N}
  [[nodiscard]] static Expected<CommandBackendOptions> from_json(const nlohmann::json& json,
                                                                 const std::string& where);
};

class CommandBackend final : public SnapshotBackend {
 public:
  explicit CommandBackend(CommandBackendOptions options) : options_(std::move(options)) {}
  [[nodiscard]] std::string name() const override { return "command"; }
  [[nodiscard]] Expected<DiskSnapshot> snapshot(const DiskSpec& disk, const std::string& checkpoint_id,
                                                const std::filesystem::path& checkpoint_dir) override;
  [[nodiscard]] Status verify(const DiskSnapshot& snapshot) override;
  [[nodiscard]] Status restore(const DiskSnapshot& snapshot, const DiskSpec& disk,
                               const std::string& checkpoint_id) override;
  [[nodiscard]] Status remove(const DiskSnapshot& snapshot, const std::string& checkpoint_id) override;

 private:
  CommandBackendOptions options_;
};

// Replaces {name} by vars[name] in every argument; unknown {x} stay as they are.
[[nodiscard]] std::vector<std::string> expand_command(const std::vector<std::string>& argv,
                                                      const std::map<std::string, std::string>& vars);

// From a VM's "backend" setting: {"type": "file"} (the default), a command
// backend or a qmp backend (qmp_backend.hpp).
[[nodiscard]] Expected<std::unique_ptr<SnapshotBackend>> make_backend(const nlohmann::json& json,
                                                                      const std::string& where);

}  // namespace quiesce::host

#pragma once
// Moving a checkpoint of the qmp backend between VMs (Hyper-V's
// Export-VMSnapshot / Import-VM): a self-contained directory.
//
//   DIR/export.json        {"format": "quiesce-checkpoint-export", "version": 1,
//                           "id", "exported_at", "disks": [{"name", "file",
//                           "virtual_size"}], "files": [...], "qemu_command"}
//   DIR/manifest.json      the checkpoint's manifest (disks[].snapshot made
//                          relative: disks/<disk>.qcow2)
//   DIR/disks/<disk>.qcow2 each disk's state flattened (qemu-img convert of the
//                          whole backing chain): a standalone qcow2
//   DIR/qemu-command.json  the QEMU command line of the VM (restoring memory
//                          state needs the same machine)
//   DIR/<other files>      what else the checkpoint directory holds (a memory
//                          state file), copied as is
//
// Export writes into a hidden sibling of DIR and renames it into place, so
// DIR is either absent or complete. Import checks everything before it
// touches the store (format, manifest, every disk a standalone qcow2 that
// `qemu-img check` passes with the recorded size, the same disk names as the
// VM, file names that stay inside DIR), copies into a hidden directory of the
// store and renames it into place: a refused or failed import leaves the
// store as it was. The imported checkpoint is a root of the tree (its
// parent belongs to another VM); its disks get an empty overlay over the
// copied state, as a checkpoint taken here has, so apply and delete treat it
// alike.

#include <filesystem>
#include <string>
#include <vector>

#include "host-bridge/checkpoint/checkpoint_store.hpp"

namespace quiesce::host {

struct ExportOutcome {
  std::filesystem::path dir;
  std::vector<std::string> files;  // relative to dir
  std::uint64_t bytes = 0;         // what the directory holds
};

// `qemu_command_file`: the VM's qemu-command.json, copied unless the
// checkpoint directory has its own; "" when there is none.
[[nodiscard]] Expected<ExportOutcome> export_checkpoint(const CheckpointStore& store, const std::string& id,
                                                        const std::filesystem::path& dir,
                                                        const std::filesystem::path& qemu_command_file,
                                                        const std::string& qemu_img = "qemu-img");

// `vm_disks`: the importing VM's disks (name, its image), which the
// checkpoint must match by name.
[[nodiscard]] Expected<Manifest> import_checkpoint(const CheckpointStore& store, const std::filesystem::path& dir,
                                                   const std::vector<std::pair<std::string, std::string>>& vm_disks,
                                                   const std::string& qemu_img = "qemu-img");

}  // namespace quiesce::host

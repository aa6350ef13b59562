#pragma once
// The `qmp` backend: QEMU external snapshots through QMP. A checkpoint is
// ONE `transaction` of `blockdev-snapshot-sync` actions over all configured
// disks, so either every disk switches to a new qcow2 overlay at the same
// instant or none does. The image each disk wrote to until then (its
// "base") is frozen from that moment and holds the checkpoint's state; the
// overlay, <checkpoint dir>/disks/<disk>.qcow2, takes the writes made after.
//
// The manifest records the overlay in DiskSnapshot::snapshot (method "qmp");
// the base is the overlay's backing file, which the qcow2 header records
// exactly, so it is read back from there rather than stored twice.
//
// Apply (the VM is off): the base chain is flattened with `qemu-img convert`
// into a temp file beside the VM's image, which is then renamed over it. The
// VM starts from a standalone image holding exactly the checkpoint's state;
// the overlay's writes are discarded. See docs/host-bridge.md for what this
// means for checkpoints built on the VM's image.
//
// Delete removes the checkpoint's overlay after merging its data into what
// is built on it (another checkpoint's overlay, the VM's top layer, the
// layer a running QEMU writes to): qemu-img commit/rebase when QEMU does not
// have it open, block-commit/block-stream jobs when it does (layer_merge.hpp).

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "host-bridge/checkpoint/checkpointer.hpp"
#include "host-bridge/checkpoint/snapshot_backend.hpp"

namespace quiesce::host {

// How QMP names a disk: a block device (-drive id=...) or a node name.
struct QmpDiskTarget {
  std::string device;
  std::string node_name;
  [[nodiscard]] const std::string& label() const { return device.empty() ? node_name : device; }
};

struct QmpBackendOptions {
  std::string socket;                          // QEMU's -qmp unix:<socket>,server=on
  std::map<std::string, QmpDiskTarget> disks;  // VM disk name -> QMP target
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};
  std::string qemu_img = "qemu-img";

  // {"type": "qmp", "socket": "/run/vm.qmp",
  //  "disks": {"data": "disk0", "logs": {"node_name": "node1"}},
  //  "timeout_ms"?: N, "qemu_img"?: "/usr/bin/qemu-img"}
  [[nodiscard]] static Expected<QmpBackendOptions> from_json(const nlohmann::json& json, const std::string& where);
};

// What one snapshot transaction did to one disk.
struct QmpDiskRecord {
  std::string disk;
  std::string target;   // the QMP device or node name
  std::string base;     // the image it wrote to before; frozen since, the checkpoint's state
  std::string overlay;  // the new qcow2 it writes to now
  std::uint64_t virtual_size = 0;
};

struct QmpTransactionRecord {
  std::string checkpoint_id;
  std::vector<QmpDiskRecord> disks;
};

class QmpBackend final : public SnapshotBackend {
 public:
  explicit QmpBackend(QmpBackendOptions options) : options_(std::move(options)) {}
  [[nodiscard]] std::string name() const override { return "qmp"; }
  // The checkpointer asks disk by disk; the first call for a checkpoint runs
  // the transaction over ALL configured disks and later calls for the same
  // checkpoint return what it did to their disk. That keeps the snapshot
  // atomic across disks without changing the per-disk interface.
  [[nodiscard]] Expected<DiskSnapshot> snapshot(const DiskSpec& disk, const std::string& checkpoint_id,
                                                const std::filesystem::path& checkpoint_dir) override;
  [[nodiscard]] Status verify(const DiskSnapshot& snapshot) override;
  [[nodiscard]] Status restore(const DiskSnapshot& snapshot, const DiskSpec& disk,
                               const std::string& checkpoint_id) override;
  [[nodiscard]] Status remove(const DiskSnapshot& snapshot, const std::string& checkpoint_id) override;
  [[nodiscard]] Status check_remove(const DiskSnapshot& snapshot) override;

  // The last successful transaction, and how many transactions were sent
  // (for reporting, and for tests to see the disks went in one).
  [[nodiscard]] const std::optional<QmpTransactionRecord>& last_transaction() const { return last_; }
  [[nodiscard]] unsigned transactions_sent() const { return transactions_sent_; }

  // The backing file of a qcow2 overlay, read from its header.
  [[nodiscard]] Expected<std::string> backing_of(const std::string& overlay) const;

  // Where a delete's merges report their steps and block job progress.
  void set_progress(ProgressFn progress) { progress_ = std::move(progress); }

 private:
  [[nodiscard]] Status merge_out(const DiskSnapshot& snapshot, bool check_only);
  [[nodiscard]] Status run_transaction(const std::string& checkpoint_id, const std::filesystem::path& checkpoint_dir);

  QmpBackendOptions options_;
  std::optional<QmpTransactionRecord> last_;
  unsigned transactions_sent_ = 0;
  ProgressFn progress_;
};

}  // namespace quiesce::host

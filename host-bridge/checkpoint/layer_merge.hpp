#pragma once
// Deleting a qcow2 layer of the checkpoint tree without breaking anything
// built on it: its data is merged into what depends on it first.
//
// The qmp backend's layers: a checkpoint's overlay O (<store>/<id>/disks/
// <disk>.qcow2) is backed by X, the image the disk wrote to before, which
// holds the checkpoint's state. Deleting the checkpoint removes O, but O
// may be the base of another checkpoint's overlay, of the VM's top layer
// (<vm>/disks/*.qcow2), or the layer a running QEMU writes to. Whatever
// reads through O must read the same after O is gone:
//
//   where O is                 X has no other child       X has other children
//   not open in QEMU, no child remove O                   remove O
//   not open in QEMU           qemu-img commit O into X,  qemu-img rebase each
//                              rebase -u the children     child onto X (copies
//                              onto X, remove O           O's data into it)
//   open, below the top (Y)    block-commit O into X      block-stream O into Y
//   QEMU's active layer        block-commit (active,      refused: power off and
//                              pivots QEMU onto X)        delete again
//
// X holds only the deleted checkpoint's state, which nothing needs any
// more once the checkpoint is gone, so writing O's data into it is safe when
// nothing else is built on X. Copying O's data up (rebase, stream) is only
// done into layers that are no checkpoint's: a checkpoint's state is its
// overlay's base, so re-pointing its overlay lower would change it; that
// case is refused. (A VM of kind qemu never builds two layers on one base:
// apply flattens into the VM's own top layer. Stream and rebase serve
// layers others built beside ours.) Every step keeps every image reading the same
// if it is interrupted: commit copies before anything is re-pointed, rebase
// -u re-points only once X holds O's data, O is removed last.
//
// Refused (conflict, nothing changed): a block job already running on the
// VM, or a QEMU whose QMP socket does not answer (another client holds it,
// e.g. a delete merging with a job of its own).

#include <chrono>
#include <filesystem>
#include <string>

#include "host-bridge/checkpoint/checkpointer.hpp"
#include "host-bridge/checkpoint/error.hpp"

namespace quiesce::host {

struct LayerMergeOptions {
  std::string qemu_img = "qemu-img";
  std::string qmp_socket;  // QEMU's, when it may be running; "" when there is none
  // Every qcow2 in these folders' */disks/ (the store) and in <store>/../disks
  // (a qemu VM's top layers) is looked at for children of the layer.
  std::filesystem::path store_root;
  std::chrono::milliseconds qmp_timeout{std::chrono::seconds(30)};
  std::chrono::milliseconds merge_deadline{std::chrono::hours(1)};  // a block job or qemu-img run
  ProgressFn progress;
  // Only find out whether the merge would be refused; change nothing.
  bool check_only = false;
};

// Removes `overlay` (disk `disk` of a checkpoint) after merging its data
// into whatever depends on it. A missing overlay is already gone: ok.
[[nodiscard]] Status merge_out_layer(const std::string& disk, const std::filesystem::path& overlay,
                                     const LayerMergeOptions& options);

// The backing file of a qcow2 image as its header records it ("" for none),
// read with `qemu-img info --force-share` (safe while QEMU has it open).
[[nodiscard]] Expected<std::string> qcow2_backing_file(const std::string& qemu_img, const std::string& image);

}  // namespace quiesce::host

#pragma once
// What each selected filesystem is stored on: its block device, and below
// that partitions, device-mapper and md members, loop devices and the
// filesystems holding their image files, down to other selected filesystems.
// A filesystem must be frozen before every filesystem it is stored on: its
// freeze flushes through the stack, and a write into an already frozen lower
// filesystem blocks in the kernel for good.
//
// Everything the graph learns from the system goes through StorageProbe: sysfs
// under an injected root (so unit tests build a fake tree in a temp dir), and
// the few system calls (stat, LOOP_GET_STATUS64, /proc/swaps), which a test
// overrides.

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "platform/linux/mountinfo.hpp"

namespace quiesce::writers::fsfreeze {

struct SelectedFilesystem;

class StorageProbe {
 public:
  explicit StorageProbe(std::filesystem::path sysfs_root = "/sys");
  virtual ~StorageProbe() = default;
  StorageProbe(const StorageProbe&) = default;
  StorageProbe& operator=(const StorageProbe&) = default;

  // sysfs, by paths relative to its root ("dev/block/7:0/loop/backing_file").
  // The first line of a file, without its newline; nullopt if unreadable.
  [[nodiscard]] std::optional<std::string> read(const std::string& relative) const;
  [[nodiscard]] bool exists(const std::string& relative) const;
  // The entries of a directory, sorted; empty when there is none.
  [[nodiscard]] std::vector<std::string> list(const std::string& relative) const;
  // The directory a sysfs link leads to (symlinks resolved), or nullopt.
  [[nodiscard]] std::optional<std::filesystem::path> resolve(const std::string& relative) const;
  [[nodiscard]] const std::filesystem::path& sysfs_root() const { return sysfs_root_; }

  // The device of the filesystem the loop device /dev/<name> reads its image
  // from (LOOP_GET_STATUS64 lo_device): right even when the image file was
  // deleted or lives in another mount namespace.
  [[nodiscard]] virtual std::optional<platform::DeviceId> loop_backing_device(
      const std::string& name) const;
  // st_dev of `path` (the filesystem holding it), without following a final
  // symlink; nullopt when it cannot be reached.
  [[nodiscard]] virtual std::optional<platform::DeviceId> device_of_path(
      const std::string& path) const;
  // st_rdev of a device node ("/dev/disk/by-label/x"), nullopt if not one.
  [[nodiscard]] virtual std::optional<platform::DeviceId> device_node(
      const std::string& path) const;
  // /proc/swaps.
  [[nodiscard]] virtual std::string swaps() const;

 private:
  std::filesystem::path sysfs_root_;
};

// "upper freezes before lower": the filesystem `upper` is stored on `lower`
// (both indexes into the selected filesystems).
struct StorageEdge {
  std::size_t upper = 0;
  std::size_t lower = 0;
  std::string how;  // "on loop0, image /data/img/upper.img on /data"
};

struct StorageGraph {
  std::vector<StorageEdge> edges;
  // Per selected filesystem (same indexes): what cannot be ordered safely
  // or is worth knowing (FUSE beneath it, a swap file on it, an overlay's
  // upper directory on it, a storage cycle, a deleted image file...).
  std::vector<std::vector<std::string>> notes;
  // Per selected filesystem: it rests on a FUSE filesystem, whose daemon's
  // storage is unknown; it freezes in the earliest wave.
  std::vector<bool> on_fuse;
};

// Builds the graph for `selected` (a filesystem per superblock, as chosen
// from `table`).
[[nodiscard]] StorageGraph build_storage_graph(const platform::MountTable& table,
                                               const std::vector<SelectedFilesystem>& selected,
                                               const StorageProbe& probe);

// The mount of the filesystem that holds `path`: by the device stat gives
// when that device is in the table, else by the path (the longest mount
// point above it). nullptr when neither works.
[[nodiscard]] const platform::MountEntry* filesystem_holding(const platform::MountTable& table,
                                                             const std::string& path,
                                                             const StorageProbe* probe);

// An image or swap path as the kernel shows it, without the " (deleted)"
// the kernel appends once the file is unlinked; `deleted` says if it was.
[[nodiscard]] std::string strip_deleted(std::string path, bool* deleted = nullptr);

}  // namespace quiesce::writers::fsfreeze

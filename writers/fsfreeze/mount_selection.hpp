#pragma once
// Which filesystems the fsfreeze writer freezes, and in which order, worked
// out from a mount table and what the storage graph learns through a
// StorageProbe (sysfs under an injected root), so it can be tested on
// recorded samples and fake sysfs trees.

#include <optional>
#include <string>
#include <vector>

#include "platform/linux/mountinfo.hpp"
#include "writers/fsfreeze/storage_graph.hpp"

namespace quiesce::writers::fsfreeze {

struct SelectionOptions {
  std::vector<std::string> mounts;  // explicit mount points (normalised, absolute)
  bool all = false;                 // every freezable filesystem instead
  std::vector<std::string> exclude;          // fnmatch globs on mount points (with all)
  std::vector<std::string> exclude_fstypes;  // fnmatch globs on fstypes (with all)
};

// One filesystem (superblock) to freeze, through one of its mounts.
struct SelectedFilesystem {
  platform::MountEntry mount;                 // the mount whose path is opened
  std::vector<std::string> other_mount_points;  // bind mounts, other subvolumes
  // Freeze order: waves go up, the filesystems of one wave freeze in
  // parallel. A filesystem freezes before every filesystem it is stored on
  // (loop image, device-mapper, partition...) and before the filesystems it
  // is mounted beneath; "/" is alone in the last wave.
  int wave = 0;
  std::string wave_reason;             // "after /srv/a (mounted beneath it)"
  std::vector<std::string> stored_on;  // mount points of the selected filesystems beneath it
  std::vector<std::string> notes;      // what could not be ordered safely, or is worth knowing
};

struct SkippedMount {
  std::string mount_point;
  std::string fstype;
  std::string reason;
};

struct Selection {
  std::vector<SelectedFilesystem> filesystems;  // sorted by wave, then mount point
  std::vector<SkippedMount> skipped;
  // Explicitly listed mounts that are not there or cannot be frozen; index
  // into SelectionOptions::mounts plus the message.
  std::vector<std::pair<std::size_t, std::string>> errors;
};

// Why a filesystem type is never frozen ("pseudo filesystem", "network
// filesystem"...), or nullopt when it may be.
[[nodiscard]] std::optional<std::string> unfreezable_reason(const std::string& fstype);

// With a probe, the waves follow the storage graph as well as the mount
// paths, and an explicitly listed overlay selects the filesystem holding its
// upper directory. Without one, mount paths alone order the waves.
[[nodiscard]] Selection select_filesystems(const platform::MountTable& table,
                                           const SelectionOptions& options,
                                           const StorageProbe* probe = nullptr);

}  // namespace quiesce::writers::fsfreeze

#pragma once
// Which filesystems the fsfreeze writer freezes, worked out from a mount
// table alone (no system calls), so it can be tested on recorded samples.

#include <optional>
#include <string>
#include <vector>

#include "platform/linux/mountinfo.hpp"

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
  // parallel. A filesystem mounted beneath another is in an earlier wave;
  // "/" is alone in the last one.
  int wave = 0;
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

[[nodiscard]] Selection select_filesystems(const platform::MountTable& table,
                                           const SelectionOptions& options);

}  // namespace quiesce::writers::fsfreeze

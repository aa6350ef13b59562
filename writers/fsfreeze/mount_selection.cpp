#include "writers/fsfreeze/mount_selection.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <array>
#include <functional>
#include <map>
#include <set>
#include <string_view>

namespace quiesce::writers::fsfreeze {

namespace {

using platform::DeviceId;
using platform::MountEntry;
using platform::MountTable;

// Kernel-internal and in-memory filesystems: nothing on a disk to protect
// (and most cannot be frozen at all).
constexpr auto pseudo_fstypes = std::to_array<std::string_view>({
    "proc",     "sysfs",     "devtmpfs",  "devpts",     "tmpfs",      "ramfs",   "rootfs",
    "cgroup",   "cgroup2",   "pstore",    "bpf",        "tracefs",    "debugfs", "securityfs",
    "configfs", "fusectl",   "mqueue",    "hugetlbfs",  "autofs",     "binfmt_misc",
    "rpc_pipefs", "nfsd",    "efivarfs",  "selinuxfs",  "nsfs",       "pipefs",  "sockfs",
    "smackfs",  "apparmorfs", "cpuset",   "devfs",      "usbfs"});
// Their data lives on another machine (or the host): freezing the client
// side proves nothing about the server's disk.
constexpr auto network_fstypes = std::to_array<std::string_view>({
    "nfs",   "nfs4",     "cifs",  "smb3",   "smbfs",  "ceph",   "9p",    "afs",  "glusterfs",
    "lustre", "ncpfs",   "coda",  "davfs",  "virtiofs", "vboxsf", "vmhgfs", "ocfs2"});
// Read-only by design: nothing can change, nothing to freeze.
constexpr auto readonly_fstypes =
    std::to_array<std::string_view>({"squashfs", "erofs", "iso9660", "cramfs", "romfs"});

bool contains(const auto& list, std::string_view value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

bool glob_matches(const std::string& pattern, const std::string& text) {
  return ::fnmatch(pattern.c_str(), text.c_str(), 0) == 0;
}

const std::string* first_match(const std::vector<std::string>& patterns, const std::string& text) {
  for (const auto& pattern : patterns) {
    if (glob_matches(pattern, text)) {
      return &pattern;
    }
  }
  return nullptr;
}

// Why this one mount is not a candidate (beyond its fstype), or nullopt.
std::optional<std::string> mount_skip_reason(const MountTable& table, const MountEntry& entry) {
  if (auto reason = unfreezable_reason(entry.fstype)) {
    return reason;
  }
  if (table.is_overmounted(entry)) {
    return "hidden by another mount on the same mount point";
  }
  if (entry.read_only()) {
    return "read-only mount";
  }
  return std::nullopt;
}

// Orders the selected filesystems: a filesystem with a mount beneath one of
// another filesystem's mounts freezes first (longest-path layering), "/"
// last of all.
void assign_waves(const MountTable& table, std::vector<SelectedFilesystem>& selected) {
  std::map<DeviceId, std::vector<std::string>> mount_points;
  for (const auto& entry : table.entries) {
    if (!table.is_overmounted(entry)) {
      mount_points[entry.device].push_back(entry.mount_point);
    }
  }
  const auto count = selected.size();
  // below[i]: filesystems with a mount strictly beneath one of i's mounts.
  std::vector<std::vector<std::size_t>> below(count);
  for (std::size_t i = 0; i < count; ++i) {
    for (std::size_t j = 0; j < count; ++j) {
      if (i == j) {
        continue;
      }
      bool beneath = false;
      for (const auto& upper : mount_points[selected[i].mount.device]) {
        for (const auto& lower : mount_points[selected[j].mount.device]) {
          if (lower != upper && platform::path_is_beneath(lower, upper)) {
            beneath = true;
          }
        }
      }
      if (beneath) {
        below[i].push_back(j);
      }
    }
  }
  // Depth-first; a cycle (possible with bind mounts going both ways) is cut
  // where it is found, which still freezes each filesystem exactly once.
  std::vector<int> wave(count, -1);
  std::vector<bool> visiting(count, false);
  std::function<int(std::size_t)> height = [&](std::size_t i) -> int {
    if (wave[i] >= 0) {
      return wave[i];
    }
    visiting[i] = true;
    int result = 0;
    for (auto j : below[i]) {
      if (!visiting[j]) {
        result = std::max(result, height(j) + 1);
      }
    }
    visiting[i] = false;
    wave[i] = result;
    return result;
  };
  int last = 0;
  for (std::size_t i = 0; i < count; ++i) {
    last = std::max(last, height(i));
  }
  for (std::size_t i = 0; i < count; ++i) {
    selected[i].wave = wave[i];
    if (selected[i].mount.mount_point == "/") {
      selected[i].wave = last + 1;
    }
  }
  std::sort(selected.begin(), selected.end(), [](const auto& a, const auto& b) {
    return a.wave != b.wave ? a.wave < b.wave : a.mount.mount_point < b.mount.mount_point;
  });
  // Close gaps so waves count 0, 1, 2... (only "/" may have left one).
  int next = 0;
  int previous = -1;
  for (auto& filesystem : selected) {
    if (filesystem.wave != previous) {
      previous = filesystem.wave;
      filesystem.wave = next++;
    } else {
      filesystem.wave = next - 1;
    }
  }
}

void fill_other_mount_points(const MountTable& table, std::vector<SelectedFilesystem>& selected) {
  for (auto& filesystem : selected) {
    for (const auto& entry : table.entries) {
      if (entry.device == filesystem.mount.device &&
          entry.mount_point != filesystem.mount.mount_point && !table.is_overmounted(entry)) {
        filesystem.other_mount_points.push_back(entry.mount_point);
      }
    }
  }
}

}  // namespace

std::optional<std::string> unfreezable_reason(const std::string& fstype) {
  if (contains(pseudo_fstypes, fstype)) {
    return "pseudo filesystem (" + fstype + ")";
  }
  if (contains(network_fstypes, fstype) || fstype.starts_with("nfs")) {
    return "network or shared filesystem (" + fstype + ")";
  }
  if (fstype == "fuse" || fstype == "fuseblk" || fstype.starts_with("fuse.")) {
    return "FUSE filesystem (" + fstype + "), cannot be frozen";
  }
  if (fstype == "overlay" || fstype == "aufs") {
    return "union filesystem (" + fstype + "); its upper layer's filesystem is frozen instead";
  }
  if (contains(readonly_fstypes, fstype)) {
    return "read-only filesystem type (" + fstype + ")";
  }
  return std::nullopt;
}

Selection select_filesystems(const MountTable& table, const SelectionOptions& options) {
  Selection selection;
  std::map<DeviceId, std::size_t> chosen;  // device -> index into filesystems

  auto choose = [&](const MountEntry& entry) {
    auto [it, inserted] = chosen.emplace(entry.device, selection.filesystems.size());
    if (inserted) {
      selection.filesystems.push_back(SelectedFilesystem{entry, {}, 0});
      return;
    }
    // Another mount of a filesystem already chosen: prefer the one that
    // shows the filesystem's root, which is what a reader expects to see.
    auto& current = selection.filesystems[it->second].mount;
    if (!options.all) {
      return;
    }
    if ((entry.root == "/" && current.root != "/") ||
        (entry.root == current.root && entry.mount_point.size() < current.mount_point.size())) {
      current = entry;
    }
  };

  if (!options.all) {
    for (std::size_t i = 0; i < options.mounts.size(); ++i) {
      const auto& path = options.mounts[i];
      const auto* entry = table.find_mount_point(path);
      if (entry == nullptr) {
        const auto* holder = table.mount_containing(path);
        selection.errors.emplace_back(
            i, "'" + path + "' is not a mount point" +
                   (holder != nullptr ? " (it is on the filesystem mounted at '" +
                                            holder->mount_point + "')"
                                      : ""));
        continue;
      }
      if (auto reason = unfreezable_reason(entry->fstype)) {
        selection.errors.emplace_back(i, "'" + path + "' cannot be frozen: " + *reason);
        continue;
      }
      if (entry->read_only()) {
        // Not an error: a read-only mount is consistent as it is, and may be
        // remounted read-write later.
        selection.skipped.push_back({path, entry->fstype, "read-only mount"});
        continue;
      }
      choose(*entry);
    }
  } else {
    // A filesystem is excluded when any of its mounts is: freezing it
    // through another mount would freeze the excluded one too.
    auto own_exclusion = [&](const MountEntry& entry) -> std::optional<std::string> {
      if (const auto* pattern = first_match(options.exclude, entry.mount_point)) {
        return "excluded: '" + entry.mount_point + "' matches '" + *pattern + "'";
      }
      if (const auto* pattern = first_match(options.exclude_fstypes, entry.fstype)) {
        return "excluded: fstype '" + entry.fstype + "' matches '" + *pattern + "'";
      }
      return std::nullopt;
    };
    std::map<DeviceId, std::string> excluded;
    for (const auto& entry : table.entries) {
      if (auto reason = own_exclusion(entry)) {
        excluded.emplace(entry.device, *reason);
      }
    }
    for (const auto& entry : table.entries) {
      if (auto it = excluded.find(entry.device); it != excluded.end()) {
        auto reason = own_exclusion(entry);
        selection.skipped.push_back(
            {entry.mount_point, entry.fstype, reason ? *reason : it->second});
        continue;
      }
      if (auto reason = mount_skip_reason(table, entry)) {
        selection.skipped.push_back({entry.mount_point, entry.fstype, *reason});
        continue;
      }
      choose(entry);
    }
    // A read-only mount of a filesystem that is frozen through another
    // mount is not really skipped; say so instead of listing it.
    for (auto& skipped : selection.skipped) {
      const auto* entry = table.find_mount_point(skipped.mount_point);
      if (entry != nullptr && skipped.reason == "read-only mount" && chosen.contains(entry->device)) {
        skipped.reason = "read-only mount of a filesystem frozen through '" +
                         selection.filesystems[chosen[entry->device]].mount.mount_point + "'";
      }
    }
  }
  fill_other_mount_points(table, selection.filesystems);
  assign_waves(table, selection.filesystems);
  return selection;
}

}  // namespace quiesce::writers::fsfreeze

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

// "first freezes before then", and why.
struct Constraint {
  enum class Kind { stored, mounted, fuse };
  std::size_t first = 0;
  std::size_t then = 0;
  Kind kind = Kind::stored;
};

// below[i]: filesystems with a mount strictly beneath one of i's mounts.
std::vector<std::vector<std::size_t>> mounted_beneath(
    const MountTable& table, const std::vector<SelectedFilesystem>& selected) {
  std::map<DeviceId, std::vector<std::string>> mount_points;
  for (const auto& entry : table.entries) {
    if (!table.is_overmounted(entry)) {
      mount_points[entry.device].push_back(entry.mount_point);
    }
  }
  const auto count = selected.size();
  std::vector<std::vector<std::size_t>> below(count);
  for (std::size_t i = 0; i < count; ++i) {
    for (std::size_t j = 0; j < count; ++j) {
      bool beneath = false;
      for (const auto& upper : mount_points[selected[i].mount.device]) {
        for (const auto& lower : mount_points[selected[j].mount.device]) {
          beneath =
              beneath || (i != j && lower != upper && platform::path_is_beneath(lower, upper));
        }
      }
      if (beneath) {
        below[i].push_back(j);
      }
    }
  }
  return below;
}

// reach[i][j]: i must freeze before j through "stored on" edges alone.
std::vector<std::vector<bool>> storage_reach(std::size_t count, const StorageGraph& graph) {
  std::vector<std::vector<bool>> reach(count, std::vector<bool>(count, false));
  for (const auto& edge : graph.edges) {
    reach[edge.upper][edge.lower] = true;
  }
  for (std::size_t k = 0; k < count; ++k) {
    for (std::size_t i = 0; i < count; ++i) {
      for (std::size_t j = 0; reach[i][k] && j < count; ++j) {
        reach[i][j] = reach[i][j] || reach[k][j];
      }
    }
  }
  return reach;
}

// Orders the selected filesystems: wave = the longest path over "stored on"
// edges (a filesystem freezes before what it is stored on) and mount-path
// layering (a filesystem mounted beneath another freezes first); "/" alone
// last. Independent branches share a wave and freeze in parallel.
void assign_waves(const MountTable& table, const StorageGraph& graph,
                  std::vector<SelectedFilesystem>& selected) {
  const auto count = selected.size();
  auto point = [&](std::size_t i) -> const std::string& { return selected[i].mount.mount_point; };
  std::vector<Constraint> constraints;
  std::vector<std::vector<std::size_t>> before(count);  // constraint indexes, by `then`
  auto add = [&](std::size_t first, std::size_t then, Constraint::Kind kind) {
    before[then].push_back(constraints.size());
    constraints.push_back({first, then, kind});
  };
  for (const auto& edge : graph.edges) {
    add(edge.upper, edge.lower, Constraint::Kind::stored);
    auto& stored_on = selected[edge.upper].stored_on;
    if (std::find(stored_on.begin(), stored_on.end(), point(edge.lower)) == stored_on.end()) {
      stored_on.push_back(point(edge.lower));
    }
  }
  const auto reach = storage_reach(count, graph);
  const auto below = mounted_beneath(table, selected);
  for (std::size_t i = 0; i < count; ++i) {
    for (auto j : below[i]) {
      if (reach[i][j]) {
        // Mount order is a habit, storage order is what avoids a deadlock.
        selected[j].notes.push_back("mounted beneath " + point(i) + ", but " + point(i) +
                                    " is stored on it: it freezes after " + point(i));
        continue;
      }
      add(j, i, Constraint::Kind::mounted);
    }
  }
  // Which filesystems must freeze before i, through any constraint so far.
  std::vector<std::vector<bool>> ancestor(count, std::vector<bool>(count, false));
  for (const auto& constraint : constraints) {
    ancestor[constraint.then][constraint.first] = true;
  }
  for (std::size_t k = 0; k < count; ++k) {
    for (std::size_t i = 0; i < count; ++i) {
      for (std::size_t j = 0; ancestor[i][k] && j < count; ++j) {
        ancestor[i][j] = ancestor[i][j] || ancestor[k][j];
      }
    }
  }
  // Resting on FUSE, a filesystem may be stored on any of the others
  // through the daemon: it goes before all that need not go before it.
  for (std::size_t f = 0; f < count; ++f) {
    for (std::size_t x = 0; graph.on_fuse[f] && x < count; ++x) {
      if (x != f && !graph.on_fuse[x] && !ancestor[f][x]) {
        add(f, x, Constraint::Kind::fuse);
      }
    }
  }

  // Longest path, depth-first; a cycle is cut where it is found (and said),
  // which still freezes each filesystem exactly once.
  std::vector<int> wave(count, -1);
  std::vector<std::optional<std::size_t>> decided_by(count);  // the constraint that set the wave
  std::vector<bool> visiting(count, false);
  std::function<int(std::size_t)> height = [&](std::size_t i) -> int {
    if (wave[i] >= 0) {
      return wave[i];
    }
    visiting[i] = true;
    int result = 0;
    for (auto c : before[i]) {
      const auto first = constraints[c].first;
      if (visiting[first]) {
        selected[i].notes.push_back("ordering cycle with " + point(first) +
                                    ": cut, it is not held to freeze after " + point(first));
        continue;
      }
      if (height(first) + 1 > result) {
        result = height(first) + 1;
        decided_by[i] = c;
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
    auto& filesystem = selected[i];
    filesystem.wave = wave[i];
    std::string storage;
    for (const auto& edge : graph.edges) {
      if (edge.upper == i) {
        storage += (storage.empty() ? "" : "; ") + edge.how;
      }
    }
    if (filesystem.mount.mount_point == "/" && storage.empty()) {
      filesystem.wave = last + 1;
      filesystem.wave_reason = "root filesystem: last";
      continue;
    }
    std::string why = "first: nothing is stored on it or mounted beneath it";
    if (decided_by[i]) {
      const auto& constraint = constraints[*decided_by[i]];
      const auto& first = point(constraint.first);
      switch (constraint.kind) {
        case Constraint::Kind::stored:
          why = "after " + first + " (stored on it)";
          break;
        case Constraint::Kind::mounted:
          why = "after " + first + " (mounted beneath it)";
          break;
        case Constraint::Kind::fuse:
          why = "after " + first + " (it rests on FUSE and goes first)";
          break;
      }
    } else if (graph.on_fuse[i]) {
      why = "first: rests on FUSE, whose daemon's storage is unknown";
    } else if (!storage.empty()) {
      why = "first";
    }
    filesystem.wave_reason = storage.empty() ? why : why + "; " + storage;
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

Selection select_filesystems(const MountTable& table, const SelectionOptions& options,
                             const StorageProbe* probe) {
  Selection selection;
  std::map<DeviceId, std::vector<std::string>> pending_notes;  // by device, for chosen ones
  std::map<DeviceId, std::size_t> chosen;  // device -> index into filesystems

  auto choose = [&](const MountEntry& entry) {
    auto [it, inserted] = chosen.emplace(entry.device, selection.filesystems.size());
    if (inserted) {
      SelectedFilesystem filesystem;
      filesystem.mount = entry;
      selection.filesystems.push_back(std::move(filesystem));
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
      if (entry->fstype == "overlay") {
        // An overlay has no freeze of its own: freezing the filesystem that
        // holds its upper directory holds every write made through it.
        auto upper = entry->super_option("upperdir");
        if (!upper) {
          selection.skipped.push_back(
              {path, entry->fstype, "overlay with no upper directory (read-only)"});
          continue;
        }
        const auto* holder = filesystem_holding(table, *upper, probe);
        if (holder == nullptr) {
          selection.errors.emplace_back(i, "'" + path + "' is an overlay whose upper directory '" +
                                               *upper + "' is on no filesystem found");
          continue;
        }
        if (auto reason = mount_skip_reason(table, *holder)) {
          selection.errors.emplace_back(i, "'" + path + "' is an overlay whose upper directory '" +
                                               *upper + "' is on '" + holder->mount_point +
                                               "', which cannot be frozen: " + *reason);
          continue;
        }
        pending_notes[holder->device].push_back("selected for the overlay " + path +
                                                " (listed in mounts): it holds its upper directory " +
                                                *upper);
        choose(*holder);
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
  StorageGraph graph;
  if (probe != nullptr) {
    graph = build_storage_graph(table, selection.filesystems, *probe);
  } else {
    graph.notes.resize(selection.filesystems.size());
    graph.on_fuse.assign(selection.filesystems.size(), false);
  }
  for (std::size_t i = 0; i < selection.filesystems.size(); ++i) {
    auto& notes = selection.filesystems[i].notes;
    notes.insert(notes.end(), graph.notes[i].begin(), graph.notes[i].end());
    notes.insert(notes.end(), pending_notes[selection.filesystems[i].mount.device].begin(),
                 pending_notes[selection.filesystems[i].mount.device].end());
  }
  assign_waves(table, graph, selection.filesystems);
  return selection;
}

}  // namespace quiesce::writers::fsfreeze

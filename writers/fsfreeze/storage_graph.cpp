#include "writers/fsfreeze/storage_graph.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "platform/linux/block_devices.hpp"
#include "writers/fsfreeze/mount_selection.hpp"

namespace quiesce::writers::fsfreeze {

namespace fs = std::filesystem;
using platform::DeviceId;
using platform::MountEntry;
using platform::MountTable;

namespace {

constexpr std::string_view deleted_suffix = " (deleted)";

std::optional<std::string> first_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) {
    return std::nullopt;
  }
  return line;
}

std::string join(const std::vector<std::string>& items, const char* separator = ", ") {
  std::string text;
  for (const auto& item : items) {
    text += (text.empty() ? "" : separator) + item;
  }
  return text;
}

bool is_fuse(const std::string& fstype) {
  return fstype == "fuse" || fstype == "fuseblk" || fstype.starts_with("fuse.");
}

// A mount of the filesystem with this superblock device, preferring one
// that is visible and holds `path`.
const MountEntry* mount_of_device(const MountTable& table, DeviceId device,
                                  const std::string& path = {}) {
  const MountEntry* found = nullptr;
  for (const auto& entry : table.entries) {
    if (entry.device != device || table.is_overmounted(entry)) {
      continue;
    }
    if (!path.empty() && platform::path_is_beneath(path, entry.mount_point)) {
      return &entry;
    }
    if (found == nullptr) {
      found = &entry;
    }
  }
  return found;
}

// Walks down from one selected filesystem to everything it is stored on.
class Walker {
 public:
  Walker(const MountTable& table, const std::vector<SelectedFilesystem>& selected,
         const StorageProbe& probe, StorageGraph& graph)
      : table_(table), selected_(selected), probe_(probe), graph_(graph) {
    for (std::size_t i = 0; i < selected.size(); ++i) {
      by_device_.emplace(selected[i].mount.device, i);
    }
  }

  void walk(std::size_t index) {
    current_ = index;
    blocks_on_path_.clear();
    filesystems_on_path_.clear();
    walk_devices_of(selected_[index].mount, {});
  }

 private:
  void note(const std::string& text) {
    auto& notes = graph_.notes[current_];
    if (std::find(notes.begin(), notes.end(), text) == notes.end()) {
      notes.push_back(text);
    }
  }

  std::string block_name(DeviceId device) const {
    if (auto dir = probe_.resolve("dev/block/" + device.to_string())) {
      auto name = dir->filename().string();
      if (auto dm_name = first_line(*dir / "dm" / "name")) {
        name += " (" + *dm_name + ")";
      }
      return name;
    }
    return device.to_string();
  }

  // The kernel name ("loop3", "dm-0") of a device node path.
  std::optional<std::string> kernel_name(const std::string& source) const {
    if (source.starts_with("/dev/mapper/")) {
      auto wanted = source.substr(std::string("/dev/mapper/").size());
      for (const auto& name : probe_.list("block")) {
        if (probe_.read("block/" + name + "/dm/name") == wanted) {
          return name;
        }
      }
    } else if (source.starts_with("/dev/") && source.find('/', 5) == std::string::npos) {
      return source.substr(5);
    }
    if (auto rdev = probe_.device_node(source)) {
      if (auto dir = probe_.resolve("dev/block/" + rdev->to_string())) {
        return dir->filename().string();
      }
    }
    return std::nullopt;
  }

  // Btrfs shows an anonymous device (0:NN) in mountinfo; its real devices
  // are listed under /sys/fs/btrfs/<fsid>/devices/.
  std::vector<DeviceId> btrfs_devices(const MountEntry& mount) const {
    std::vector<DeviceId> devices;
    auto name = kernel_name(mount.source);
    if (!name) {
      return devices;
    }
    for (const auto& fsid : probe_.list("fs/btrfs")) {
      const auto base = "fs/btrfs/" + fsid + "/devices/";
      if (!probe_.exists(base + *name)) {
        continue;
      }
      for (const auto& member : probe_.list(base)) {
        if (auto dir = probe_.resolve(base + member)) {
          if (auto text = first_line(*dir / "dev")) {
            if (auto id = DeviceId::parse(*text)) {
              devices.push_back(*id);
            }
          }
        }
      }
      break;
    }
    return devices;
  }

  void walk_devices_of(const MountEntry& mount, const std::vector<std::string>& steps) {
    std::vector<DeviceId> devices;
    if (mount.device.major != 0) {
      devices.push_back(mount.device);
    } else if (mount.fstype == "btrfs") {
      devices = btrfs_devices(mount);
      if (devices.empty()) {
        note("the block devices of btrfs " + mount.mount_point + " (" + mount.source +
             ") were not found under /sys/fs/btrfs; what it is stored on is unknown");
      }
    }
    for (auto device : devices) {
      auto next = steps;
      next.push_back("on " + block_name(device));
      walk_block(device, next);
    }
  }

  void walk_block(DeviceId device, const std::vector<std::string>& steps) {
    if (!blocks_on_path_.insert(device).second) {
      note("storage cycle at " + block_name(device) + " (" + join(steps) + "): cut there");
      return;
    }
    auto dir = probe_.resolve("dev/block/" + device.to_string());
    if (dir) {
      if (fs::exists(*dir / "partition")) {
        auto parent = dir->parent_path();
        if (auto text = first_line(parent / "dev")) {
          if (auto id = DeviceId::parse(*text)) {
            auto next = steps;
            next.push_back("partition of " + block_name(*id));
            walk_block(*id, next);
          }
        }
      }
      std::error_code ec;
      std::vector<std::string> slaves;
      for (const auto& item : fs::directory_iterator(*dir / "slaves", ec)) {
        slaves.push_back(item.path().filename().string());
      }
      std::sort(slaves.begin(), slaves.end());
      for (const auto& slave : slaves) {
        auto slave_dir = fs::canonical(*dir / "slaves" / slave, ec);
        auto text = ec ? std::nullopt : first_line(slave_dir / "dev");
        if (auto id = text ? DeviceId::parse(*text) : std::nullopt) {
          auto next = steps;
          next.push_back("over " + block_name(*id));
          walk_block(*id, next);
        }
      }
      if (auto backing = first_line(*dir / "loop" / "backing_file")) {
        walk_loop(dir->filename().string(), *backing, steps);
      }
    }
    blocks_on_path_.erase(device);
  }

  void walk_loop(const std::string& name, const std::string& backing,
                 const std::vector<std::string>& steps) {
    bool deleted = false;
    auto file = strip_deleted(backing, &deleted);
    // lo_device first: right even for a deleted file or one in another
    // mount namespace; then stat; then the path alone.
    const MountEntry* holder = nullptr;
    if (auto device = probe_.loop_backing_device(name)) {
      holder = mount_of_device(table_, *device, file);
    }
    if (holder == nullptr && !deleted) {
      if (auto device = probe_.device_of_path(file)) {
        holder = mount_of_device(table_, *device, file);
      }
    }
    if (holder == nullptr && file.starts_with('/')) {
      holder = table_.mount_containing(file);
    }
    if (deleted) {
      note("the image of " + name + " (" + file + ") was deleted; it still lives on " +
           (holder != nullptr ? holder->mount_point : std::string("an unknown filesystem")));
    }
    if (holder == nullptr) {
      note("the filesystem holding " + name + "'s image " + file +
           " was not found: what it is stored on is unknown");
      return;
    }
    auto next = steps;
    next.push_back("image " + file + (deleted ? std::string(deleted_suffix) : "") + " on " +
                   holder->mount_point);
    reach_filesystem(*holder, next);
  }

  void reach_filesystem(const MountEntry& mount, std::vector<std::string> steps) {
    if (auto it = by_device_.find(mount.device); it != by_device_.end()) {
      if (it->second == current_) {
        note("stored on itself (" + join(steps) + "): storage cycle cut");
      } else {
        graph_.edges.push_back({current_, it->second, join(steps)});
      }
      return;
    }
    if (!filesystems_on_path_.insert(mount.device).second) {
      note("storage cycle at " + mount.mount_point + " (" + join(steps) + "): cut there");
      return;
    }
    if (is_fuse(mount.fstype)) {
      graph_.on_fuse[current_] = true;
      note("rests on the FUSE filesystem " + mount.mount_point + " (" + join(steps) +
           "): its daemon's storage is unknown, so it is frozen in the earliest wave");
    } else if (mount.fstype == "overlay") {
      if (auto upper = mount.super_option("upperdir")) {
        if (const auto* holder = filesystem_holding(table_, *upper, &probe_)) {
          steps.push_back("overlay " + mount.mount_point + " with its upper directory " + *upper +
                          " on " + holder->mount_point);
          reach_filesystem(*holder, steps);
        }
      }
    } else if (!unfreezable_reason(mount.fstype)) {
      steps.back() += " (not frozen)";
      walk_devices_of(mount, steps);
    }
    filesystems_on_path_.erase(mount.device);
  }

  const MountTable& table_;
  const std::vector<SelectedFilesystem>& selected_;
  const StorageProbe& probe_;
  StorageGraph& graph_;
  std::map<DeviceId, std::size_t> by_device_;
  std::size_t current_ = 0;
  // On the way down from current_: block devices, and filesystems (by
  // superblock device) that are not selected.
  std::set<DeviceId> blocks_on_path_;
  std::set<DeviceId> filesystems_on_path_;
};

// A swap file on a selected filesystem: swap I/O goes to the file's blocks
// directly, beneath the filesystem, so the freeze does not hold it.
void note_swap_files(const MountTable& table, const std::vector<SelectedFilesystem>& selected,
                     const StorageProbe& probe, StorageGraph& graph) {
  std::istringstream lines(probe.swaps());
  std::string line;
  std::getline(lines, line);  // header
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string name;
    std::string type;
    if (!(fields >> name >> type) || type != "file") {
      continue;
    }
    auto path = strip_deleted(platform::unescape_mount_path(name));
    const auto* holder = filesystem_holding(table, path, &probe);
    for (std::size_t i = 0; holder != nullptr && i < selected.size(); ++i) {
      if (selected[i].mount.device == holder->device) {
        graph.notes[i].push_back("swap file " + path +
                                 " is on it: swap I/O bypasses the freeze (it is written to "
                                 "the file's blocks directly), so swap pages may change in the "
                                 "snapshot");
      }
    }
  }
}

// An overlay has no freeze of its own: its writes land in the upper
// directory, and are held when the filesystem holding it is frozen.
void note_overlays(const MountTable& table, const std::vector<SelectedFilesystem>& selected,
                   const StorageProbe& probe, StorageGraph& graph) {
  std::set<DeviceId> seen;
  for (const auto& entry : table.entries) {
    if (entry.fstype != "overlay" || !seen.insert(entry.device).second) {
      continue;
    }
    auto upper = entry.super_option("upperdir");
    const auto* holder = upper ? filesystem_holding(table, *upper, &probe) : nullptr;
    for (std::size_t i = 0; holder != nullptr && i < selected.size(); ++i) {
      if (selected[i].mount.device == holder->device) {
        graph.notes[i].push_back("holds the upper directory " + *upper + " of the overlay at " +
                                 entry.mount_point +
                                 ": an overlay has no freeze of its own, its writes are held by "
                                 "freezing this filesystem");
      }
    }
  }
}

}  // namespace

StorageProbe::StorageProbe(fs::path sysfs_root) : sysfs_root_(std::move(sysfs_root)) {}

std::optional<std::string> StorageProbe::read(const std::string& relative) const {
  return first_line(sysfs_root_ / relative);
}

bool StorageProbe::exists(const std::string& relative) const {
  std::error_code ec;
  return fs::exists(sysfs_root_ / relative, ec);
}

std::vector<std::string> StorageProbe::list(const std::string& relative) const {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& item : fs::directory_iterator(sysfs_root_ / relative, ec)) {
    names.push_back(item.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::optional<fs::path> StorageProbe::resolve(const std::string& relative) const {
  std::error_code ec;
  auto path = fs::canonical(sysfs_root_ / relative, ec);
  if (ec) {
    return std::nullopt;
  }
  return path;
}

std::optional<DeviceId> StorageProbe::loop_backing_device(const std::string& name) const {
  return platform::loop_backing_device("/dev/" + name);
}

std::optional<DeviceId> StorageProbe::device_of_path(const std::string& path) const {
  return platform::device_of_path(path);
}

std::optional<DeviceId> StorageProbe::device_node(const std::string& path) const {
  return platform::block_device_node(path);
}

std::string StorageProbe::swaps() const {
  std::ifstream in("/proc/swaps");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string strip_deleted(std::string path, bool* deleted) {
  const bool was = path.ends_with(deleted_suffix);
  if (was) {
    path.resize(path.size() - deleted_suffix.size());
  }
  if (deleted != nullptr) {
    *deleted = was;
  }
  return path;
}

const MountEntry* filesystem_holding(const MountTable& table, const std::string& path,
                                     const StorageProbe* probe) {
  if (probe != nullptr) {
    if (auto device = probe->device_of_path(path)) {
      if (const auto* entry = mount_of_device(table, *device, path)) {
        return entry;
      }
    }
  }
  // Btrfs subvolumes give stat a device of their own, absent from mountinfo:
  // fall back to the path.
  if (path.empty() || path.front() != '/') {
    return nullptr;
  }
  auto normal = fs::path(path).lexically_normal().string();
  while (normal.size() > 1 && normal.back() == '/') {
    normal.pop_back();
  }
  return table.mount_containing(normal);
}

StorageGraph build_storage_graph(const MountTable& table,
                                 const std::vector<SelectedFilesystem>& selected,
                                 const StorageProbe& probe) {
  StorageGraph graph;
  graph.notes.resize(selected.size());
  graph.on_fuse.assign(selected.size(), false);
  Walker walker(table, selected, probe, graph);
  for (std::size_t i = 0; i < selected.size(); ++i) {
    walker.walk(i);
  }
  note_swap_files(table, selected, probe, graph);
  note_overlays(table, selected, probe, graph);
  return graph;
}

}  // namespace quiesce::writers::fsfreeze

#pragma once
// Stacked storage for the root tests and the benchmark: filesystems on loop
// devices whose images live on other filesystems of the stack, dm-linear
// over loop, btrfs subvolumes, an overlay's upper directory. Everything is
// made under one temp dir and undone when the stack goes away (every mount
// thawed first, then unmounted top down, devices detached), whatever
// happened in between. Needs root. Throws std::runtime_error when a step
// fails (no doctest here: the benchmark uses it too).

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace quiesce::test {

// What the sessions of one layout work with and must see.
struct Layout {
  std::string name;
  std::vector<std::string> mounts;       // the writer's `mounts` (and qemu-ga's mountpoints)
  std::vector<std::string> data_dirs;    // where unsynced data is written before each session
  std::vector<std::string> frozen_dirs;  // a write there must block while frozen
  std::vector<std::string> thawed_dirs;  // and be possible again after the thaw
  // Every filesystem, lowest in the stack first: what a watchdog thaws to
  // break a deadlock (a stuck freeze of an upper one then returns).
  std::vector<std::string> lowest_first;
  std::vector<std::pair<std::string, std::string>> order;  // (upper, lower): upper freezes first
  bool expect_busy = false;  // someone else froze a filesystem: the freeze must refuse
};

class StorageStack {
 public:
  explicit StorageStack(std::filesystem::path dir);
  ~StorageStack();
  StorageStack(const StorageStack&) = delete;
  StorageStack& operator=(const StorageStack&) = delete;

  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  [[nodiscard]] Layout& layout() { return layout_; }

  // A sparse image attached to a loop device; returns /dev/loopN.
  std::string loop(const std::filesystem::path& image, int size_mb);
  // A new filesystem on a new image, mounted at `mount_point`; returns its device.
  std::string filesystem(const std::string& fstype, const std::filesystem::path& image, int size_mb,
                         const std::string& mount_point);
  // mkfs.<fstype> on `device`.
  void mkfs(const std::string& fstype, const std::string& device);
  // mount <args...> <mount_point>, creating the mount point.
  void mount(std::vector<std::string> args, const std::string& mount_point);
  // dmsetup create <name> with one linear target over all of `device`.
  std::string dm_linear(const std::string& name, const std::string& device);
  // fsfreeze -f, undone (fsfreeze -u) with the rest.
  void freeze_by_someone_else(const std::string& mount_point);

 private:
  void run(const std::vector<std::string>& argv, std::string* output = nullptr);

  std::filesystem::path dir_;
  Layout layout_;
  std::vector<std::string> mounted_;
  std::vector<std::function<void()>> undo_;  // run last first
};

// The layouts by name, built under `dir` (which must exist):
//   two-deep              ext4 on loop on ext4 on loop on ext4, mounted side by side
//   two-deep-bind-last    the same plus a bind of the lowest, mounted last beneath the top
//   dm-over-loop          ext4 on dm-linear over a loop device whose image is on ext4
//   btrfs-subvolumes      btrfs (image on ext4) with two subvolumes mounted on their own
//                         and an ext4 image in one of them
//   xfs-on-ext4           xfs on loop on ext4
//   overlay-upper         overlay whose upper dir is on ext4, an ext4 image written through it
//   frozen-by-other       two-deep with the top frozen by fsfreeze(8) beforehand
[[nodiscard]] std::vector<std::string> layout_names();
[[nodiscard]] std::unique_ptr<StorageStack> build_layout(const std::string& name,
                                                         const std::filesystem::path& dir);

// Thaws the given filesystems (lowest in the stack first) when a session is
// not over by its deadline, so that a freeze deadlocked on a frozen lower
// filesystem returns: a deadlock becomes a reported failure, not a hang.
class ThawWatchdog {
 public:
  explicit ThawWatchdog(std::vector<std::string> lowest_first);
  ~ThawWatchdog();
  ThawWatchdog(const ThawWatchdog&) = delete;
  ThawWatchdog& operator=(const ThawWatchdog&) = delete;

  void arm(std::chrono::steady_clock::duration timeout);
  // True when it fired (and thawed) since arm().
  bool disarm();

 private:
  void run();

  std::vector<std::string> mounts_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  bool fired_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

// Writes `bytes` to `path` (replacing it) without fsync: dirty page cache a
// freeze must flush through the stack. The content depends on `seed`, and
// is returned for has_content.
std::string write_unsynced(const std::string& path, std::size_t bytes, int seed);
[[nodiscard]] bool has_content(const std::string& path, const std::string& expected);

// The mkfs command line for ext4 (inode tables written now, not lazily in
// the background where they would race the test), xfs or btrfs.
[[nodiscard]] std::vector<std::string> mkfs_command(const std::string& fstype,
                                                    const std::string& device);

// False when the kernel has no device-mapper (`dmsetup version` fails).
[[nodiscard]] bool device_mapper_available();

}  // namespace quiesce::test

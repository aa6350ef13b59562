#pragma once
// Loop-mounted filesystems for root tests: a sparse image in a temp dir,
// attached to a loop device, formatted and mounted; unmounted (lazily if
// need be), thawed and detached when the object goes away, even when the
// test failed half-way.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/support/write_probe.hpp"

namespace quiesce::test {

class LoopFs {
 public:
  // fstype: ext4, xfs or btrfs. size_mb: the image size (sparse).
  LoopFs(const std::filesystem::path& dir, const std::string& name, const std::string& fstype,
         int size_mb = 0);
  ~LoopFs();
  LoopFs(const LoopFs&) = delete;
  LoopFs& operator=(const LoopFs&) = delete;

  [[nodiscard]] const std::string& mount_point() const { return mount_point_; }
  [[nodiscard]] const std::string& device() const { return loop_device_; }
  [[nodiscard]] const std::string& fstype() const { return fstype_; }
  // Extra mounts of this filesystem (bind mounts, btrfs subvolumes) that
  // the destructor unmounts first.
  void add_extra_mount(const std::string& mount_point) { extra_mounts_.push_back(mount_point); }

 private:
  std::string image_;
  std::string loop_device_;
  std::string mount_point_;
  std::string fstype_;
  std::vector<std::string> extra_mounts_;
};

// Runs a command; fails the current test (REQUIRE) when it exits non-zero.
void must_run(const std::vector<std::string>& argv);
// Unmounts `path` (thawing it first, in case a test left it frozen), lazily
// if a normal unmount fails.
void unmount(const std::string& path);

}  // namespace quiesce::test

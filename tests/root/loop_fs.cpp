#include "tests/root/loop_fs.hpp"

#include <doctest/doctest.h>

#include "tests/support/processes.hpp"
#include "tests/support/storage_layouts.hpp"

// Every case in this binary needs root (loop devices, mount, FIFREEZE).
extern "C" int quiesce_tests_need_root() { return 1; }

namespace quiesce::test {

namespace {

int default_size_mb(const std::string& fstype) {
  // The smallest sizes the mkfs tools accept (xfs wants 300 MB, btrfs ~110 MB).
  if (fstype == "xfs") {
    return 300;
  }
  if (fstype == "btrfs") {
    return 128;
  }
  return 64;
}

}  // namespace

void must_run(const std::vector<std::string>& argv) {
  std::string output;
  int code = run_command(argv, &output);
  std::string command;
  for (const auto& arg : argv) {
    command += arg + " ";
  }
  INFO("command: " << command << "\noutput: " << output);
  REQUIRE(code == 0);
}

void unmount(const std::string& path) {
  std::string ignored;
  // A test that failed while frozen would make umount hang or fail: thaw
  // first. This is only ever called on mounts the tests created.
  run_command({"fsfreeze", "-u", path}, &ignored);
  if (run_command({"umount", path}, &ignored) != 0) {
    run_command({"umount", "-l", path}, &ignored);
  }
}

LoopFs::LoopFs(const std::filesystem::path& dir, const std::string& name,
               const std::string& fstype, int size_mb)
    : fstype_(fstype) {
  image_ = (dir / (name + ".img")).string();
  mount_point_ = (dir / name).string();
  std::filesystem::create_directories(mount_point_);
  must_run({"truncate", "-s", std::to_string(size_mb > 0 ? size_mb : default_size_mb(fstype)) + "M",
            image_});
  std::string output;
  REQUIRE(run_command({"losetup", "-f", "--show", image_}, &output) == 0);
  while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) {
    output.pop_back();
  }
  loop_device_ = output;
  must_run(mkfs_command(fstype, loop_device_));
  must_run({"mount", loop_device_, mount_point_});
}

LoopFs::~LoopFs() {
  for (auto it = extra_mounts_.rbegin(); it != extra_mounts_.rend(); ++it) {
    unmount(*it);
  }
  unmount(mount_point_);
  std::string ignored;
  if (!loop_device_.empty()) {
    run_command({"losetup", "-d", loop_device_}, &ignored);
  }
  std::error_code ec;
  std::filesystem::remove(image_, ec);
}

}  // namespace quiesce::test

#include "tests/support/loop_image.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <vector>

#include "tests/support/processes.hpp"

namespace quiesce::test {

namespace {

void must(const std::vector<std::string>& argv) {
  std::string output;
  const int code = run_command(argv, &output);
  std::string command;
  for (const auto& arg : argv) {
    command += arg + " ";
  }
  INFO("command: " << command << "\noutput: " << output);
  REQUIRE(code == 0);
}

std::string trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
    text.pop_back();
  }
  return text;
}

}  // namespace

LoopImage::~LoopImage() {
  std::string ignored;
  if (mounted_) {
    // Only ever mounts this object made; a frozen one would make umount hang.
    run_command({"fsfreeze", "-u", mount_point_}, &ignored);
    if (run_command({"umount", mount_point_}, &ignored) != 0) {
      run_command({"umount", "-l", mount_point_}, &ignored);
    }
  }
  if (!device_.empty()) {
    run_command({"losetup", "-d", device_}, &ignored);
  }
}

void LoopImage::attach_device() {
  std::string output;
  REQUIRE(run_command({"losetup", "-f", "--show", image_}, &output) == 0);
  device_ = trimmed(output);
}

void LoopImage::create(const std::string& image, const std::string& mount_point, int size_mb) {
  image_ = image;
  mount_point_ = mount_point;
  std::filesystem::create_directories(mount_point_);
  must({"truncate", "-s", std::to_string(size_mb) + "M", image_});
  attach_device();
  must({"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", device_});
  must({"mount", device_, mount_point_});
  mounted_ = true;
}

void LoopImage::attach(const std::string& image, const std::string& mount_point) {
  image_ = image;
  mount_point_ = mount_point;
  std::filesystem::create_directories(mount_point_);
  attach_device();
  must({"mount", "-o", "rw", device_, mount_point_});
  mounted_ = true;
}

}  // namespace quiesce::test

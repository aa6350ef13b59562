#pragma once
// An ext4 image on a loop device, mounted where a test wants it: a new image
// (create) or an existing one such as a snapshot copy (attach). Unmounted
// (thawed first, in case a failed test left it frozen) and detached when the
// object goes away, whatever happened in between. Needs root; unlike
// tests/root/loop_fs it does not make its binary root-only.

#include <string>

namespace quiesce::test {

class LoopImage {
 public:
  LoopImage() = default;
  ~LoopImage();
  LoopImage(const LoopImage&) = delete;
  LoopImage& operator=(const LoopImage&) = delete;

  // Makes a sparse image of `size_mb`, formats it ext4 and mounts it.
  void create(const std::string& image, const std::string& mount_point, int size_mb = 64);
  // Attaches an existing image (a copy) and mounts it read-write.
  void attach(const std::string& image, const std::string& mount_point);

  [[nodiscard]] const std::string& mount_point() const { return mount_point_; }
  [[nodiscard]] const std::string& image() const { return image_; }

 private:
  void attach_device();
  std::string image_;
  std::string device_;
  std::string mount_point_;
  bool mounted_ = false;
};

}  // namespace quiesce::test

#pragma once
// The few system calls that tell what a filesystem is stored on: which
// filesystem a loop device reads its image from, the filesystem holding a
// path, the device a /dev node stands for. (sysfs is read by the caller.)

#include <optional>
#include <string>

#include "platform/linux/mountinfo.hpp"

namespace quiesce::platform {

// LOOP_GET_STATUS64 lo_device of the loop device at `device_path`
// ("/dev/loop3"): the device of the filesystem holding its image, right even
// when the image was deleted or opened in another mount namespace.
[[nodiscard]] std::optional<DeviceId> loop_backing_device(const std::string& device_path);
// st_dev of `path` (lstat: a final symlink is not followed); nullopt when
// it cannot be reached.
[[nodiscard]] std::optional<DeviceId> device_of_path(const std::string& path);
// st_rdev of a block device node; nullopt when `path` is not one.
[[nodiscard]] std::optional<DeviceId> block_device_node(const std::string& path);

}  // namespace quiesce::platform

#include "platform/linux/block_devices.hpp"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

namespace quiesce::platform {

namespace {
DeviceId device_from(dev_t dev) { return DeviceId{::major(dev), ::minor(dev)}; }
}  // namespace

std::optional<DeviceId> loop_backing_device(const std::string& device_path) {
  int fd = ::open(device_path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    return std::nullopt;
  }
  loop_info64 info{};
  const int result = ::ioctl(fd, LOOP_GET_STATUS64, &info);
  ::close(fd);
  if (result != 0) {
    return std::nullopt;
  }
  return device_from(static_cast<dev_t>(info.lo_device));
}

std::optional<DeviceId> device_of_path(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    return std::nullopt;
  }
  return device_from(st.st_dev);
}

std::optional<DeviceId> block_device_node(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) {
    return std::nullopt;
  }
  return device_from(st.st_rdev);
}

}  // namespace quiesce::platform

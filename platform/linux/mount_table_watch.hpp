#pragma once
// Tells, without reading or parsing anything, whether the mount table
// changed (a mount, an unmount, a remount) since the watch was started:
// /proc/self/mountinfo signals POLLPRI on an fd opened before the change
// (proc(5)). One poll(2), cheap enough for a hold window.

namespace quiesce::platform {

class MountTableWatch {
 public:
  MountTableWatch() = default;
  ~MountTableWatch();
  MountTableWatch(const MountTableWatch&) = delete;
  MountTableWatch& operator=(const MountTableWatch&) = delete;

  // Starts (or restarts) watching from now.
  void start();
  void stop();
  // True after a change, and always when the watch is not started or the
  // poll failed: a caller then reads the table again.
  [[nodiscard]] bool changed() const;

 private:
  int fd_ = -1;
};

}  // namespace quiesce::platform

#include "platform/linux/mount_table_watch.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

namespace quiesce::platform {

MountTableWatch::~MountTableWatch() { stop(); }

void MountTableWatch::start() {
  stop();
  fd_ = ::open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
}

void MountTableWatch::stop() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

bool MountTableWatch::changed() const {
  if (fd_ < 0) {
    return true;
  }
  // Unchanged: no POLLPRI (POLLIN, always set for this file, is not asked for).
  pollfd pfd{.fd = fd_, .events = POLLPRI, .revents = 0};
  return ::poll(&pfd, 1, 0) != 0;
}

}  // namespace quiesce::platform

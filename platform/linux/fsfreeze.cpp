#include "platform/linux/fsfreeze.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace quiesce::platform {

namespace {

FreezeResult classify(int error_number, bool thawing) {
  switch (error_number) {
    case 0:
      return {FreezeOutcome::ok, 0};
    case EOPNOTSUPP:
    case ENOTTY:
      return {FreezeOutcome::not_supported, error_number};
    case EBUSY:
      return {thawing ? FreezeOutcome::failed : FreezeOutcome::already_frozen, error_number};
    case EINVAL:
      // FITHAW answers EINVAL for "not frozen"; FIFREEZE only for a bad fd
      // or a filesystem that cannot be frozen in its current state.
      return {thawing ? FreezeOutcome::not_frozen : FreezeOutcome::invalid, error_number};
    case EPERM:
    case EACCES:
      return {FreezeOutcome::permission, error_number};
    case EBADF:
    case ENOTDIR:
      return {FreezeOutcome::invalid, error_number};
    default:
      return {FreezeOutcome::failed, error_number};
  }
}

int ioctl_errno(int fd, unsigned long request) {
  int unused = 0;
  // Retry on EINTR: a signal to the caller must not look like a failed freeze.
  for (;;) {
    if (::ioctl(fd, request, &unused) == 0) {
      return 0;
    }
    if (errno != EINTR) {
      return errno;
    }
  }
}

}  // namespace

std::string_view to_string(FreezeOutcome outcome) {
  switch (outcome) {
    case FreezeOutcome::ok:
      return "ok";
    case FreezeOutcome::not_supported:
      return "not supported";
    case FreezeOutcome::already_frozen:
      return "already frozen";
    case FreezeOutcome::not_frozen:
      return "not frozen";
    case FreezeOutcome::permission:
      return "permission denied";
    case FreezeOutcome::invalid:
      return "invalid";
    case FreezeOutcome::failed:
      return "failed";
  }
  return "unknown";
}

std::string FreezeResult::describe() const {
  std::string text(to_string(outcome_));
  if (errno_ != 0) {
    text += " (";
    const char* name = ::strerrorname_np(errno_);
    text += name != nullptr ? name : std::to_string(errno_);
    text += ": ";
    text += std::strerror(errno_);
    text += ")";
  }
  return text;
}

FreezeResult freeze_filesystem(int fd) { return classify(ioctl_errno(fd, FIFREEZE), false); }

FreezeResult thaw_filesystem(int fd) { return classify(ioctl_errno(fd, FITHAW), true); }

FreezeResult sync_filesystem(int fd) {
  if (::syncfs(fd) == 0) {
    return {FreezeOutcome::ok, 0};
  }
  return classify(errno, false);
}

int open_mount_point(const std::string& path) {
  // Bind mounts of single files (containers' /etc/hosts) are mount points
  // too, so not O_DIRECTORY; O_NONBLOCK so a FIFO cannot hang the open, and
  // anything but a directory or a regular file is refused.
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
  if (fd < 0) {
    return -errno;
  }
  struct stat info {};
  if (::fstat(fd, &info) != 0 || (!S_ISDIR(info.st_mode) && !S_ISREG(info.st_mode))) {
    ::close(fd);
    return -EINVAL;
  }
  return fd;
}

unsigned long long mount_id_of(int fd) {
  struct statx info {};
  if (::statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_MNT_ID, &info) != 0) {
    return 0;
  }
  return (info.stx_mask & STATX_MNT_ID) != 0 ? info.stx_mnt_id : 0;
}

}  // namespace quiesce::platform

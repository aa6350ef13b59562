#pragma once
// FIFREEZE / FITHAW on an open file descriptor, with the errno sorted into
// what a caller can act on. A result type instead of an int: the caller has
// to look at it.

#include <string>
#include <string_view>

namespace quiesce::platform {

enum class FreezeOutcome {
  ok,
  not_supported,   // EOPNOTSUPP/ENOTTY: the filesystem has no freeze support
  already_frozen,  // EBUSY on FIFREEZE: someone else froze it (or is freezing it)
  not_frozen,      // EINVAL on FITHAW: it was not frozen (someone else thawed it)
  permission,      // EPERM/EACCES: needs CAP_SYS_ADMIN
  invalid,         // EINVAL on FIFREEZE, EBADF...: not a file on a freezable mount
  failed,          // anything else (EIO, ENOMEM...)
};

[[nodiscard]] std::string_view to_string(FreezeOutcome outcome);

class [[nodiscard]] FreezeResult {
 public:
  FreezeResult(FreezeOutcome outcome, int error_number)
      : outcome_(outcome), errno_(error_number) {}
  [[nodiscard]] bool ok() const { return outcome_ == FreezeOutcome::ok; }
  [[nodiscard]] FreezeOutcome outcome() const { return outcome_; }
  [[nodiscard]] int error_number() const { return errno_; }
  // "already frozen (EBUSY: Device or resource busy)"
  [[nodiscard]] std::string describe() const;

 private:
  FreezeOutcome outcome_;
  int errno_;
};

// Freezes the filesystem `fd` lives on. Blocks while the kernel flushes dirty
// data, which can take long; there is no way to interrupt it.
[[nodiscard]] FreezeResult freeze_filesystem(int fd);
[[nodiscard]] FreezeResult thaw_filesystem(int fd);
// syncfs(2): flushes the filesystem `fd` lives on (before a freeze, so that
// the freeze itself, inside the hold window, has little left to write).
[[nodiscard]] FreezeResult sync_filesystem(int fd);

// Opens a mount point for the ioctls: a directory or regular file (a file
// bind mount), read-only, close-on-exec. Returns the fd, or -errno.
[[nodiscard]] int open_mount_point(const std::string& path);

// The id of the mount `fd` lives on (statx STATX_MNT_ID, Linux >= 5.8), the
// same number as mountinfo's first field; 0 when the kernel cannot tell.
[[nodiscard]] unsigned long long mount_id_of(int fd);

}  // namespace quiesce::platform

#pragma once
// Why a file or directory may not be trusted to load or run in a root
// process: anyone who can write it (or, for a directory, add files to it)
// could run code as root. One rule for plugins (platform/trusted_file) and
// hook scripts (writers/hooks).

#include <sys/stat.h>

#include <string>

namespace quiesce::platform {

// "" when `st` may be trusted. `allow_foreign_owner` (tests only) accepts an
// owner other than root; write access for the group or others never passes.
inline std::string ownership_problem(const struct stat& st, bool allow_foreign_owner) {
  if (!allow_foreign_owner && st.st_uid != 0) {
    return "owned by uid " + std::to_string(st.st_uid) + ", not root";
  }
  if ((st.st_mode & S_IWGRP) != 0) {
    return "writable by its group";
  }
  if ((st.st_mode & S_IWOTH) != 0) {
    return "writable by others";
  }
  return "";
}

}  // namespace quiesce::platform

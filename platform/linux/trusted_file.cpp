#include "platform/trusted_file.hpp"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace quiesce::platform {

namespace {

// Why `st` may not be trusted to load into a root process ("" when it may).
std::string ownership_problem(const struct stat& st, const TrustRules& rules) {
  if (!rules.allow_foreign_owner && st.st_uid != 0) {
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

}  // namespace

TrustedFile check_trusted_file(const std::string& path, const std::string& what,
                               const TrustRules& rules) {
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) == nullptr) {
    return {"", what + " " + path + ": " + std::strerror(errno)};
  }
  const std::string real(resolved);
  struct stat file_stat {};
  if (::stat(real.c_str(), &file_stat) != 0) {
    return {"", what + " " + path + ": " + std::strerror(errno)};
  }
  if (!S_ISREG(file_stat.st_mode)) {
    return {"", what + " " + path + ": not a regular file"};
  }
  if (auto problem = ownership_problem(file_stat, rules); !problem.empty()) {
    return {"", what + " " + path + " refused: " + problem};
  }
  const auto directory = std::filesystem::path(real).parent_path().string();
  struct stat dir_stat {};
  if (::stat(directory.c_str(), &dir_stat) != 0) {
    return {"", what + " directory " + directory + ": " + std::strerror(errno)};
  }
  if (auto problem = ownership_problem(dir_stat, rules); !problem.empty()) {
    return {"", what + " " + path + " refused: its directory " + directory + " is " + problem};
  }
  return {real, ""};
}

}  // namespace quiesce::platform

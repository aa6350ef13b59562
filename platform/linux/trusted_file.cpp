#include "platform/trusted_file.hpp"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "platform/linux/file_ownership.hpp"

namespace quiesce::platform {

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
  if (auto problem = ownership_problem(file_stat, rules.allow_foreign_owner); !problem.empty()) {
    return {"", what + " " + path + " refused: " + problem};
  }
  const auto directory = std::filesystem::path(real).parent_path().string();
  struct stat dir_stat {};
  if (::stat(directory.c_str(), &dir_stat) != 0) {
    return {"", what + " directory " + directory + ": " + std::strerror(errno)};
  }
  if (auto problem = ownership_problem(dir_stat, rules.allow_foreign_owner); !problem.empty()) {
    return {"", what + " " + path + " refused: its directory " + directory + " is " + problem};
  }
  return {real, ""};
}

}  // namespace quiesce::platform

#include "platform/secret_file.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace quiesce::platform {

std::string secret_file_problem(const std::string& path, const std::string& what) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    return "cannot read " + what + " " + path + ": " + std::strerror(errno);
  }
  if (info.st_uid != 0 && info.st_uid != ::geteuid()) {
    return what + " " + path + " must be owned by root";
  }
  if ((info.st_mode & 077) != 0) {
    return what + " " + path + " must not be accessible by group or others (chmod 600)";
  }
  return "";
}

}  // namespace quiesce::platform

#include "platform/scratch_directory.hpp"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace quiesce::platform {

std::filesystem::path make_scratch_directory(const std::string& prefix) {
  std::error_code ec;
  auto temp = std::filesystem::temp_directory_path(ec);
  if (ec) {
    temp = "/tmp";
  }
  std::string name_template = (temp / (prefix + "-XXXXXX")).string();
  if (::mkdtemp(name_template.data()) == nullptr) {
    throw std::runtime_error("cannot create a scratch directory in " + temp.string() + ": " +
                             std::strerror(errno));
  }
  return name_template;
}

}  // namespace quiesce::platform

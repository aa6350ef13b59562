#include "platform/trusted_file.hpp"

#include <filesystem>

#include "platform/win/acl.hpp"
#include "platform/win/win_error.hpp"

// Windows: the file and its directory must be owned by SYSTEM or the
// Administrators (TrustRules::allow_foreign_owner: any owner) and must not
// let the broad groups (Everyone, Users, Authenticated Users) write, delete
// or change permissions: Program Files gives them read and execute only.

namespace quiesce::platform {

namespace {

std::string ownership_problem(const std::string& path, const TrustRules& rules) {
  const auto security = win::read_file_security(path);
  if (!security.error.empty()) {
    return "its permissions cannot be read: " + security.error;
  }
  if (!rules.allow_foreign_owner && !security.trusted_owner) {
    return "not owned by SYSTEM or the Administrators";
  }
  if (!security.has_access_list || win::grants_change(security.broad_read)) {
    return "writable by Everyone, Users or Authenticated Users";
  }
  return "";
}

}  // namespace

TrustedFile check_trusted_file(const std::string& path, const std::string& what,
                               const TrustRules& rules) {
  std::error_code ec;
  const auto real_path = std::filesystem::canonical(std::filesystem::path(win::widen(path)), ec);
  if (ec) {
    return {"", what + " " + path + ": " + ec.message()};
  }
  const std::string real = win::narrow(real_path.wstring());
  if (!std::filesystem::is_regular_file(real_path, ec)) {
    return {"", what + " " + path + ": not a regular file"};
  }
  if (auto problem = ownership_problem(real, rules); !problem.empty()) {
    return {"", what + " " + path + " refused: " + problem};
  }
  const auto directory = win::narrow(real_path.parent_path().wstring());
  if (auto problem = ownership_problem(directory, rules); !problem.empty()) {
    return {"", what + " " + path + " refused: its directory " + directory + " is " + problem};
  }
  return {real, ""};
}

}  // namespace quiesce::platform

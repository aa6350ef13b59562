#include "platform/secret_file.hpp"

#include <windows.h>

#include "platform/win/acl.hpp"
#include "platform/win/win_error.hpp"

// Windows: "private" means owned by SYSTEM, the Administrators or the
// agent's own account, with nothing granted to the broad groups (Everyone,
// Authenticated Users, Users, Guests, Anonymous). A file under ProgramData
// inherits "Users: read" unless its ACL is replaced, as the installer does;
// by hand: icacls FILE /inheritance:r /grant:r SYSTEM:F Administrators:F

namespace quiesce::platform {

std::string secret_file_problem(const std::string& path, const std::string& what) {
  if (::GetFileAttributesW(win::widen(path).c_str()) == INVALID_FILE_ATTRIBUTES) {
    return "cannot read " + what + " " + path + ": " + win::last_error_text();
  }
  const auto security = win::read_file_security(path);
  if (!security.error.empty()) {
    return "cannot read the permissions of " + what + " " + path + ": " + security.error;
  }
  if (!security.trusted_owner) {
    return what + " " + path + " must be owned by SYSTEM or the Administrators";
  }
  if (!security.has_access_list || security.broad_read != 0) {
    return what + " " + path +
           " must not be accessible by Everyone, Users or Authenticated Users"
           " (icacls /inheritance:r /grant:r SYSTEM:F Administrators:F)";
  }
  return "";
}

}  // namespace quiesce::platform

#pragma once
// Who owns a file and what its access list grants to the broad groups
// (Everyone, Authenticated Users, Users, Guests, Anonymous): the Windows
// side of "owned by root, not writable by group or others".

#include <string>

namespace quiesce::platform::win {

struct [[nodiscard]] FileSecurity {
  std::string error;          // could not be read: why ("" when it was)
  bool trusted_owner = false;  // SYSTEM, the Administrators, or this process's account
  bool has_access_list = true;  // false: a null DACL, which grants everyone everything
  unsigned long broad_read = 0;   // access rights any broad group is allowed
};

FileSecurity read_file_security(const std::string& path);

// Any write, delete or permission change in `rights`.
[[nodiscard]] bool grants_change(unsigned long rights);

}  // namespace quiesce::platform::win

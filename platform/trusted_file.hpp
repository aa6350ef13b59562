#pragma once
// Whether a file the agent (root, or SYSTEM on Windows) is asked to load or
// run may be trusted: anyone who can write the file, or replace it through
// its directory, could run code with the agent's rights. Plugins use it;
// the rules are the same as for hook scripts.

#include <string>

namespace quiesce::platform {

struct TrustRules {
  // Tests only: accept a file and directory not owned by root (SYSTEM or
  // the Administrators on Windows). Ones that others may write are refused
  // regardless.
  bool allow_foreign_owner = false;
};

struct [[nodiscard]] TrustedFile {
  std::string real_path;  // symbolic links resolved, when `problem` is ""
  std::string problem;    // the whole message naming the file as `what`, or ""
};

// `path` must be absolute. Messages: "<what> <path>: <system error>",
// "<what> <path>: not a regular file", "<what> <path> refused: owned by ...",
// "<what> <path> refused: its directory <dir> is writable by others", ...
TrustedFile check_trusted_file(const std::string& path, const std::string& what,
                               const TrustRules& rules);

}  // namespace quiesce::platform

#pragma once
// Whether a file that holds a secret (the API token) is private to the
// agent's account: only its owner (root, or on Windows SYSTEM or the
// Administrators) may read it. The config refuses a token anyone else could
// read.

#include <string>

namespace quiesce::platform {

// "" when `path` is private; otherwise the whole message, naming the file as
// `what` ("token file"): "token file /x must be owned by root", ...
[[nodiscard]] std::string secret_file_problem(const std::string& path, const std::string& what);

}  // namespace quiesce::platform

#pragma once
// Whole-file reads and crash-safe whole-file writes: the one place the host
// side (manifests, VM records, QEMU command lines) and the agent (its
// restore marker) replace a file, so every writer gets the same guarantee.

#include <string>

namespace quiesce::platform {

// Writes `content` to `path` atomically and durably: a temp file in the
// same directory, fsync, rename, fsync of the directory. A reader (or a
// reboot) sees the old or the new file, never half of one. On failure the
// temp file is removed, the old file is left as it was, and `error` (when
// given) says what failed. A new file gets `mode` (0600 for what only its
// owner may read).
[[nodiscard]] bool write_file_atomically(const std::string& path, const std::string& content,
                                         std::string* error = nullptr, unsigned mode = 0644);

// The whole file, or false when it cannot be opened or read.
[[nodiscard]] bool read_whole_file(const std::string& path, std::string& content);

}  // namespace quiesce::platform

#pragma once
// A new, private, uniquely named directory under the system's temp
// directory, for a tool's scratch files (quiesce-writer-check's run and
// state directories). The caller removes it.

#include <filesystem>
#include <string>

namespace quiesce::platform {

// `<temp>/<prefix>-<random>`, created so that no other process could have
// made it first (Linux: mkdtemp, mode 0700; Windows: CreateDirectoryW,
// which fails on an existing name, under the user's own %TEMP%).
// Throws std::runtime_error naming the directory and the reason.
[[nodiscard]] std::filesystem::path make_scratch_directory(const std::string& prefix);

}  // namespace quiesce::platform

#pragma once
// Running external programs from the host side (mkfs, losetup, mount, a
// user's snapshot command): always an argv, never a shell, so a disk path
// with spaces or quotes cannot change the command.

#include <chrono>
#include <string>
#include <vector>

namespace quiesce::host {

struct CommandResult {
  int exit_code = -1;   // -1: could not start; 128+N: killed by signal N
  bool timed_out = false;
  std::string output;   // stdout and stderr together (trimmed to the last 64 KiB)
};

// Runs argv to completion (or until `timeout`, then SIGKILL).
[[nodiscard]] CommandResult run_command(const std::vector<std::string>& argv,
                                        std::chrono::milliseconds timeout = std::chrono::minutes(10));

// "mount -o loop 'a b'" style rendering for messages.
[[nodiscard]] std::string render_argv(const std::vector<std::string>& argv);

// Milliseconds since `start`, for timings.
[[nodiscard]] double ms_since(std::chrono::steady_clock::time_point start);

// Writes `content` to `path` atomically: a temp file in the same directory,
// fsync, rename, fsync of the directory. A reader sees the old or the new
// file, never half of one.
[[nodiscard]] bool write_file_atomically(const std::string& path, const std::string& content,
                                         std::string* error = nullptr);
[[nodiscard]] bool read_whole_file(const std::string& path, std::string& content);

// UTC "2026-11-24T20:29:53Z".
[[nodiscard]] std::string iso_time_now();

}  // namespace quiesce::host

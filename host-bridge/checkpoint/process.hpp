#pragma once
// Running external programs from the host side (mkfs, losetup, mount,
// qemu-img, a user's snapshot command): always an argv, never a shell, so a
// disk path with spaces or quotes cannot change the command. A thin layer
// over platform::run_subprocess (the one runner), plus the time helpers the
// host side shares.

#include <chrono>
#include <string>
#include <vector>

namespace quiesce::host {

struct CommandResult {
  int exit_code = -1;   // 127: could not run; 128+N: killed by signal N
  bool timed_out = false;
  std::string output;   // stdout and stderr lines as they came (the first 64 KiB of each)
};

// Runs argv to completion (or until `timeout`, then its process group gets
// SIGTERM and SIGKILL). argv[0] without a '/' is looked up in PATH; the
// environment is the caller's.
[[nodiscard]] CommandResult run_command(const std::vector<std::string>& argv,
                                        std::chrono::milliseconds timeout = std::chrono::minutes(10));

// "mount -o loop 'a b'" style rendering for messages.
[[nodiscard]] std::string render_argv(const std::vector<std::string>& argv);

// Milliseconds since `start`, for timings.
[[nodiscard]] double ms_since(std::chrono::steady_clock::time_point start);

// UTC "2026-11-24T20:29:53Z".
[[nodiscard]] std::string iso_time_now();

}  // namespace quiesce::host

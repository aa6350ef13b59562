#pragma once
// Linux's additions to platform/subprocess.hpp: a program started to run
// alongside the caller, with pipes the caller reads and writes itself.

#include <sys/types.h>

#include <string>
#include <vector>

#include "platform/subprocess.hpp"

namespace quiesce::platform {

// A program started to run alongside the caller (an exec writer's
// long-lived child): the same careful start as run_subprocess (argv only,
// explicit environment, own process group, every other descriptor closed,
// default signal dispositions), but with pipes on its stdin, stdout and
// stderr that the caller reads and writes itself, and no waiting.
struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0]: the path passed to execve
  std::vector<std::string> env;   // the complete environment, "NAME=value" each
  std::string working_dir = "/";
};

// Ownership: on success the caller owns the three descriptors (all
// close-on-exec; stdout and stderr non-blocking) and must reap `pid`, which
// is also the id of the child's process group.
struct [[nodiscard]] SpawnedProcess {
  pid_t pid = -1;
  int stdin_fd = -1;   // write end of the child's stdin
  int stdout_fd = -1;  // read end of the child's stdout
  int stderr_fd = -1;  // read end of the child's stderr
  std::string error;   // pid < 0: why it did not start
};

[[nodiscard]] SpawnedProcess spawn_process(const SpawnSpec& spec);

}  // namespace quiesce::platform

#pragma once
// What a starting agent cleans up after a previous instance that died:
// filesystems its freeze holder record says are still frozen.

#include <string>

#include <spdlog/logger.h>

namespace quiesce::agent {

void recover_from_previous_instance(const std::string& run_dir, spdlog::logger& logger);

}  // namespace quiesce::agent

#include "agent/core/startup_recovery.hpp"

namespace quiesce::agent {

void recover_from_previous_instance(const std::string& run_dir, spdlog::logger& logger) {
  logger.debug("checking {} for state left by a previous agent", run_dir);
}

}  // namespace quiesce::agent

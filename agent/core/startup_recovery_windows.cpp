#include "agent/core/startup_recovery.hpp"

#include "writers/hooks/hooks_writer.hpp"

namespace quiesce::agent {

// Nothing outlives recovery on Windows: a hook's children die with its job
// object, so no helper pipes are left to read.
struct StartupRecovery::Kept {};

std::shared_ptr<StartupRecovery::Kept> StartupRecovery::recover(const std::string& run_dir,
                                                                const std::shared_ptr<spdlog::logger>& logger) {
  // Hooks a dead instance froze and never thawed run again with their thaw
  // argument (their records under the run dir). A VSS hold needs nothing:
  // Quiesce's provider lets go at its own limit when the agent is gone.
  (void)writers::recover_stale_hooks(run_dir, logger, nullptr);
  return std::make_shared<Kept>();
}

}  // namespace quiesce::agent

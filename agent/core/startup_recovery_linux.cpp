#include "agent/core/startup_recovery.hpp"

#include "platform/linux/lingering_output.hpp"
#include "writers/fsfreeze/fsfreeze_writer.hpp"
#include "writers/hooks/hooks_writer.hpp"

namespace quiesce::agent {

struct StartupRecovery::Kept {
  platform::LingeringOutput helper_output;
};

std::shared_ptr<StartupRecovery::Kept> StartupRecovery::recover(const std::string& run_dir,
                                                                const std::shared_ptr<spdlog::logger>& logger) {
  auto kept = std::make_shared<Kept>();
  // The freeze holder normally thaws when the agent dies; its record under
  // the run dir covers the case where the holder died too (SIGKILL of the
  // whole group, OOM). Runs even when fsfreeze is no longer configured.
  (void)writers::recover_stale_fsfreeze(run_dir, *logger);
  // Then the hooks (application level, so released after the filesystems,
  // as a thaw would): a thaw hook may write, so filesystems come first.
  (void)writers::recover_stale_hooks(run_dir, logger, &kept->helper_output);
  return kept;
}

}  // namespace quiesce::agent

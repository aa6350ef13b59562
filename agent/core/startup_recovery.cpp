#include "agent/core/startup_recovery.hpp"

#include "writers/fsfreeze/fsfreeze_writer.hpp"

namespace quiesce::agent {

void recover_from_previous_instance(const std::string& run_dir, spdlog::logger& logger) {
  // The freeze holder normally thaws when the agent dies; its record under
  // the run dir covers the case where the holder died too (SIGKILL of the
  // whole group, OOM). Runs even when fsfreeze is no longer configured.
  (void)writers::recover_stale_fsfreeze(run_dir, logger);
}

}  // namespace quiesce::agent

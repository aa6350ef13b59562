#include "agent/core/startup_recovery.hpp"

#include "writers/fsfreeze/fsfreeze_writer.hpp"
#include "writers/hooks/hooks_writer.hpp"

namespace quiesce::agent {

namespace {
// Far more lines than a recovery writes (a few per frozen filesystem).
constexpr std::size_t kMemoryLines = 4096;
}  // namespace

StartupRecovery::StartupRecovery(const std::string& run_dir)
    : memory_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(kMemoryLines)),
      logger_(std::make_shared<spdlog::logger>("recovery", memory_)) {
  auto& logger = *logger_;
  logger.set_level(spdlog::level::trace);
  // The freeze holder normally thaws when the agent dies; its record under
  // the run dir covers the case where the holder died too (SIGKILL of the
  // whole group, OOM). Runs even when fsfreeze is no longer configured.
  (void)writers::recover_stale_fsfreeze(run_dir, logger);
  // Then the hooks (application level, so released after the filesystems,
  // as a thaw would): a thaw hook may write, so filesystems come first.
  (void)writers::recover_stale_hooks(run_dir, logger_, &helper_output_);
}

void StartupRecovery::replay_to(spdlog::logger& logger) const {
  for (const auto& line : memory_->last_raw()) {
    logger.log(line.time, line.source, line.level, line.payload);
  }
}

}  // namespace quiesce::agent

#pragma once
// What a starting agent cleans up after a previous instance that died:
// on Linux, filesystems its freeze holder record says are still frozen,
// then hooks its hooks writers' records say froze and were never released;
// on Windows, the hooks (a VSS hold ends by itself: the provider's own
// limit). The steps per OS: startup_recovery_<os>.cpp.
//
// It runs first, before the agent opens its log or touches its state dir:
// the filesystem they live on may be one of those still frozen (a restart
// of the service while "/" is frozen), and a write there would block the
// very start that is meant to thaw it. What it has to say is kept in
// memory and written once the log is open.

#include <memory>
#include <string>

#include <spdlog/logger.h>

namespace quiesce::agent {

class RecoveryLogMemory;  // what recovery logged, until the agent's log is open

class StartupRecovery {
 public:
  // Thaws what the records under `run_dir` (a tmpfs) say a previous
  // instance left frozen. Does no I/O outside `run_dir` and the frozen
  // filesystems' ioctls.
  explicit StartupRecovery(const std::string& run_dir);
  StartupRecovery(const StartupRecovery&) = delete;
  StartupRecovery& operator=(const StartupRecovery&) = delete;
  // Writes what recovery found to the agent's log, in order, with the
  // times it happened.
  void replay_to(spdlog::logger& logger) const;

 private:
  // What this OS's recovery keeps for as long as this object lives (the
  // agent's). On Linux: the pipes of hook helpers a dead instance left
  // running, read so that their writes do not kill them.
  struct Kept;
  // This OS's recovery steps (startup_recovery_<os>.cpp), logging to `logger`.
  static std::shared_ptr<Kept> recover(const std::string& run_dir, const std::shared_ptr<spdlog::logger>& logger);

  std::shared_ptr<RecoveryLogMemory> memory_;
  std::shared_ptr<spdlog::logger> logger_;
  std::shared_ptr<Kept> kept_;  // shared_ptr: Kept is complete only in the OS file
};

}  // namespace quiesce::agent

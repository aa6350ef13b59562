#pragma once
// What a starting agent cleans up after a previous instance that died:
// filesystems its freeze holder record says are still frozen, then hooks
// its hooks writers' records say froze and were never released.
//
// It runs first, before the agent opens its log or touches its state dir:
// the filesystem they live on may be one of those still frozen (a restart
// of the service while "/" is frozen), and a write there would block the
// very start that is meant to thaw it. What it has to say is kept in
// memory and written once the log is open.

#include <memory>
#include <string>

#include <spdlog/logger.h>

#include "platform/linux/lingering_output.hpp"

namespace quiesce::agent {

class RecoveryLogMemory;  // what recovery logged, until the agent's log is open

class StartupRecovery {
 public:
  // Thaws what the records under `run_dir` (a tmpfs) say a previous
  // instance left frozen. Does no I/O outside `run_dir` and the frozen
  // filesystems' ioctls.
  explicit StartupRecovery(const std::string& run_dir);
  // Writes what recovery found to the agent's log, in order, with the
  // times it happened.
  void replay_to(spdlog::logger& logger) const;

 private:
  std::shared_ptr<RecoveryLogMemory> memory_;
  std::shared_ptr<spdlog::logger> logger_;
  // Reads the pipes of hook helpers a dead instance left running, for as
  // long as this object lives (the agent's): what they write after the
  // log was replayed stays in memory, but they are not killed by it.
  platform::LingeringOutput helper_output_;
};

}  // namespace quiesce::agent

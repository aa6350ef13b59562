#pragma once
// The `fsfreeze` writer: freezes filesystems with FIFREEZE for the hold
// window (docs/writers/fsfreeze.md). The freeze itself is made and held by
// quiesce-freeze-holder, a helper process that thaws everything when the
// agent dies, when the hold deadline passes, or when it is signalled.
//
// options:
//   "mounts":          ["/srv/data", "/"]   explicit mount points, or
//   "all":             true                 every freezable filesystem
//   "exclude":         ["/boot*"]           globs on mount points (with all)
//   "exclude_fstypes": ["vfat"]             globs on fstypes (with all)
//   "ignore_frozen":   false                skip filesystems someone else froze
//   "holder_path":     "/usr/sbin/quiesce-freeze-holder"   default: next to the agent

#include <string>
#include <vector>

#include <spdlog/logger.h>

#include "quiesce/writer_registry.hpp"

namespace quiesce::writers {

void register_fsfreeze_writer(WriterRegistry& registry);

// What recover_stale_fsfreeze found and did, mount point by mount point.
struct StaleFreezeReport {
  std::vector<std::string> records;     // record files read (and removed)
  std::vector<std::string> thawed;      // were still frozen; thawed now
  std::vector<std::string> not_frozen;  // listed but already thawed
  std::vector<std::string> skipped;     // gone, or a different filesystem now
  std::vector<std::string> failed;      // could not be thawed (record kept)
};

// Called once by the agent at start, before any writer runs: thaws what a
// previous agent instance's fsfreeze records say it froze (only those
// mounts, only if still frozen), logs it, and removes the records.
StaleFreezeReport recover_stale_fsfreeze(const std::string& run_dir, spdlog::logger& logger);

}  // namespace quiesce::writers

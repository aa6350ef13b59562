#pragma once
// The record of what the fsfreeze writer is about to freeze, written under
// the run dir (tmpfs) before the freeze and removed after the thaw. If the
// agent and its freeze holder both die while frozen (SIGKILL to the whole
// service cgroup, the OOM killer), the next agent start reads it and thaws
// exactly those filesystems (recover_stale_fsfreeze).

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/logger.h>

namespace quiesce::writers::fsfreeze {

struct RecordedMount {
  std::string mount_point;
  std::string device;  // "major:minor", as in mountinfo
  std::uint64_t mount_id = 0;
  std::string fstype;
  int wave = 0;
};

struct FreezeRecord {
  std::string writer;      // the writer's configured name
  std::string session_id;
  std::int64_t agent_pid = 0;
  std::int64_t holder_pid = 0;
  std::string written_at;  // UTC, ISO 8601
  std::vector<RecordedMount> mounts;
};

inline constexpr const char* record_prefix = "fsfreeze-frozen";

// <run_dir>/fsfreeze-frozen-<writer name>.json
[[nodiscard]] std::string record_path(const std::string& run_dir, const std::string& writer_name);
// Writes atomically (temp file + rename). Returns an error message or "".
[[nodiscard]] std::string write_record(const std::string& path, const FreezeRecord& record);
[[nodiscard]] std::optional<FreezeRecord> read_record(const std::string& path, std::string& error);

struct ThawOutcome {
  std::vector<std::string> thawed;      // were frozen, now thawed
  std::vector<std::string> not_frozen;  // already thawed
  std::vector<std::string> skipped;     // no longer the recorded filesystem
  std::vector<std::string> failed;      // "path: reason"
};

// Thaws, in reverse wave order, the recorded mounts that are still mounted
// where and as recorded (same device, same mount id). Opening a path on a
// frozen filesystem does no write, so it is safe here.
[[nodiscard]] ThawOutcome thaw_recorded(const std::vector<RecordedMount>& mounts);

// thaw_recorded() for when the holder that froze them is gone or no longer
// answers while it may still have a FIFREEZE inside the kernel (killed, or
// hung, during a freeze stuck on a filesystem beneath): thawing the lower
// filesystems lets that call finish, and it then freezes its filesystem with
// nobody left to thaw it. So this thaws again until no thread of
// `holder_pid` is left in the kernel, for at most `patience`.
[[nodiscard]] ThawOutcome thaw_recorded_until_holder_gone(const std::vector<RecordedMount>& mounts,
                                                         std::int64_t holder_pid,
                                                         std::chrono::milliseconds patience);

// True while a thread of process `pid` is still running (not a zombie):
// /proc/<pid>/task/*/stat.
[[nodiscard]] bool process_has_live_thread(std::int64_t pid);

}  // namespace quiesce::writers::fsfreeze

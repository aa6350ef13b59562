#pragma once
// The pure parts of the `vss` writer, portable so they are tested on every
// build: its options, what each VSS writer state means as a Quiesce writer
// state, and the freeze window clamped to what VSS can hold.
//
// options:
//   "backup_type":        "full" | "copy"   VSS_BT_FULL (writers may truncate
//                                           logs, as after a backup) or VSS_BT_COPY
//                                           (nothing in the applications changes)
//   "volumes":            ["C:\\", ...]     default: every fixed volume (qemu-ga's choice)
//   "freeze_window_ms":   9000              the longest the provider holds
//                                           writes; at most vss_hold_limit
//   "require_provider":   true              refuse to start when Quiesce's VSS
//                                           provider is not registered

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace quiesce::writers::vss {

// VSS gives up holding writes 10 s after the flush-and-hold began
// (VSS_E_HOLD_WRITES_TIMEOUT); the hold must end before that, with a
// margin for the provider to return and VSS to release the volumes.
constexpr std::chrono::milliseconds vss_hold_limit{10000};
constexpr std::chrono::milliseconds vss_hold_margin{1000};
constexpr std::chrono::milliseconds default_freeze_window = vss_hold_limit - vss_hold_margin;

enum class BackupType { full, copy };

struct VssOptions {
  BackupType backup_type = BackupType::full;
  std::vector<std::string> volumes;  // empty: every fixed volume
  std::chrono::milliseconds freeze_window = default_freeze_window;
  bool freeze_window_clamped = false;  // asked for more than VSS can hold
  std::chrono::milliseconds freeze_window_requested = default_freeze_window;
  bool require_provider = true;
};

// Throws FieldError (quiesce/json_fields.hpp) naming the bad field.
[[nodiscard]] VssOptions parse_vss_options(const nlohmann::json& options);

struct FreezeWindow {
  std::chrono::milliseconds effective;
  bool clamped = false;
  std::string note;  // why it was clamped, for identify and the log ("" when not)
};

// The hold this session gets: the shorter of the session's window (from
// now to its hold deadline) and the writer's window, never beyond what VSS
// can hold.
[[nodiscard]] FreezeWindow clamp_freeze_window(std::chrono::milliseconds session_window,
                                               std::chrono::milliseconds writer_window);

// VSS_WRITER_STATE (vss.h), by value: this header stays free of windows.h.
// vss_writer.cpp checks each value against the SDK's enum.
enum class VssWriterState : int {
  unknown = 0,
  stable = 1,
  waiting_for_freeze = 2,
  waiting_for_thaw = 3,
  waiting_for_post_snapshot = 4,
  waiting_for_backup_complete = 5,
  failed_at_identify = 6,
  failed_at_prepare_backup = 7,
  failed_at_prepare_snapshot = 8,
  failed_at_freeze = 9,
  failed_at_thaw = 10,
  failed_at_post_snapshot = 11,
  failed_at_backup_complete = 12,
  failed_at_pre_restore = 13,
  failed_at_post_restore = 14,
  failed_at_backup_shutdown = 15,
};

// One VSS writer's state as Quiesce reports its writers' (DESIGN.md:
// stable, preparing, frozen, thawed, failed_at_<phase>, with an error
// class): "frozen" while VSS waits for thaw, "failed_at_freeze" with
// class "retryable" for a writer that failed at VSS's freeze, ...
struct MappedState {
  std::string state;        // Quiesce's word
  std::string vss_state;    // VSS's name, "VSS_WS_FAILED_AT_FREEZE"
  bool failed = false;
  std::string error_class;  // when failed: retryable | non_retryable | timeout | inconsistent
  std::string failure;      // when failed: what the writer's HRESULT says
};

// `writer_failure` is the writer's last failure (GatherWriterStatus's
// hrWriterFailure), an HRESULT; 0 when none.
[[nodiscard]] MappedState map_writer_state(int vss_state, std::uint32_t writer_failure);

// "VSS_E_WRITERERROR_TIMEOUT (0x800423F2): the writer timed out", or the
// hex value alone for codes this table does not know.
[[nodiscard]] std::string describe_hresult(std::uint32_t hresult);

}  // namespace quiesce::writers::vss

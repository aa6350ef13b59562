#pragma once
// The vocabulary of the writer protocol (shared/DESIGN.md, "The writer
// protocol"): levels, phases, writer states and error classes, with their
// wire spellings. Header-only vocabulary so the agent, the writers and the
// host-side wire types all spell them the same way.

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace quiesce {

// Freeze order: application writers first, filesystems last; thaw reverses.
enum class Level { application = 0, database = 1, filesystem = 2 };
inline constexpr std::array<Level, 3> freeze_order{Level::application, Level::database,
                                                   Level::filesystem};

enum class Phase { identify, prepare, freeze, thaw, post_snapshot, abort, post_restore };

enum class ErrorClass {
  retryable,      // a later attempt may succeed (busy, locked)
  non_retryable,  // needs an admin (bad credentials, missing privilege)
  timeout,        // the writer did not answer within its deadline
  inconsistent,   // the writer cannot vouch for consistency (lost its hold)
};

// VSS-like writer states. A failure is `failed` plus the phase it failed in,
// spelled "failed_at_<phase>" on the wire.
enum class WriterState {
  stable, preparing, prepared, freezing, frozen, thawing, thawed,
  completing, completed, aborting, aborted, failed
};

std::string_view to_string(Level level);
std::string_view to_string(Phase phase);
std::string_view to_string(ErrorClass error_class);
std::string_view to_string(WriterState state);

std::optional<Level> parse_level(std::string_view text);
std::optional<ErrorClass> parse_error_class(std::string_view text);

}  // namespace quiesce

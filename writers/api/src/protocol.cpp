#include "quiesce/protocol.hpp"

namespace quiesce {

std::string_view to_string(Level level) {
  switch (level) {
    case Level::application: return "application";
    case Level::database: return "database";
    case Level::filesystem: return "filesystem";
  }
  return "unknown";
}

std::string_view to_string(Phase phase) {
  switch (phase) {
    case Phase::identify: return "identify";
    case Phase::prepare: return "prepare";
    case Phase::freeze: return "freeze";
    case Phase::thaw: return "thaw";
    case Phase::post_snapshot: return "post_snapshot";
    case Phase::abort: return "abort";
    case Phase::post_restore: return "post_restore";
  }
  return "unknown";
}

std::string_view to_string(ErrorClass error_class) {
  switch (error_class) {
    case ErrorClass::retryable: return "retryable";
    case ErrorClass::non_retryable: return "non_retryable";
    case ErrorClass::timeout: return "timeout";
    case ErrorClass::inconsistent: return "inconsistent";
  }
  return "unknown";
}

std::string_view to_string(WriterState state) {
  switch (state) {
    case WriterState::stable: return "stable";
    case WriterState::preparing: return "preparing";
    case WriterState::prepared: return "prepared";
    case WriterState::freezing: return "freezing";
    case WriterState::frozen: return "frozen";
    case WriterState::thawing: return "thawing";
    case WriterState::thawed: return "thawed";
    case WriterState::completing: return "completing";
    case WriterState::completed: return "completed";
    case WriterState::aborting: return "aborting";
    case WriterState::aborted: return "aborted";
    case WriterState::failed: return "failed";
  }
  return "unknown";
}

std::optional<Level> parse_level(std::string_view text) {
  for (auto level : freeze_order) {
    if (to_string(level) == text) {
      return level;
    }
  }
  return std::nullopt;
}

std::optional<ErrorClass> parse_error_class(std::string_view text) {
  for (auto c : {ErrorClass::retryable, ErrorClass::non_retryable, ErrorClass::timeout,
                 ErrorClass::inconsistent}) {
    if (to_string(c) == text) {
      return c;
    }
  }
  return std::nullopt;
}

}  // namespace quiesce

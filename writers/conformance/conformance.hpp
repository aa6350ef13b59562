#pragma once
// The conformance checks behind quiesce-writer-check: each one creates a
// fresh writer from its type's factory and walks it through one part of
// the protocol contract (quiesce/writer.hpp), as the coordinator would:
// on another thread, with a deadline, triggering the stop token when the
// deadline passes. A writer that does not return within a bound after that
// is reported as hung (and leaked, since it cannot be destroyed while a
// call is still running in it).

#include <chrono>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quiesce/writer_registry.hpp"

namespace quiesce::conformance {

struct CheckLimits {
  // The deadline of an ordinary call.
  std::chrono::milliseconds call_timeout{10000};
  // The deadline given to freeze in the freeze_deadline check.
  std::chrono::milliseconds short_deadline{250};
  // How long after its stop token fired a call may take to return, and how
  // long identify may take between phases ("promptly").
  std::chrono::milliseconds stop_bound{2000};
};

struct CheckResult {
  std::string name;
  std::string description;
  bool passed = false;
  std::string detail;  // why it failed, or a note when it passed
  std::chrono::milliseconds elapsed{0};
};

struct CheckReport {
  std::vector<CheckResult> checks;
  bool hung = false;  // some call never returned: the process should _Exit
  [[nodiscard]] bool all_passed() const;
  [[nodiscard]] nlohmann::json to_json() const;
  [[nodiscard]] std::string to_table() const;
};

// The check names, in the order they run.
[[nodiscard]] std::vector<std::string> check_names();

// Runs every check on writers made by `type.create(spec, env)`.
[[nodiscard]] CheckReport run_checks(const WriterType& type, const WriterSpec& spec,
                                     const WriterEnvironment& env, const CheckLimits& limits);

}  // namespace quiesce::conformance

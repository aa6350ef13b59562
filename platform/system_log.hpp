#pragma once
// The operating system's own log: journald on Linux, the Event Log
// (Application log) on Windows. The config names it by the same word the
// platform uses (`log.target`: "journald" or "eventlog").

#include <memory>
#include <string>

#include <spdlog/sinks/sink.h>

namespace quiesce::platform {

// "journald" or "eventlog".
[[nodiscard]] const char* system_log_name();

#ifdef _WIN32
// A sink writing to the Event Log, entries tagged with `ident` (the Event Log
// source). On Linux the journald sink is the agent's own
// (agent/core/journald_sink.hpp): it adds the session, writer and phase
// fields, which need the agent's log context.
[[nodiscard]] std::shared_ptr<spdlog::sinks::sink> make_system_log_sink(const std::string& ident);
#endif

}  // namespace quiesce::platform

#pragma once
// The operating system's own log, as an spdlog sink: journald on Linux, the
// Event Log (Application log) on Windows. The config names it by the same
// word the platform uses (`log.target`: "journald" or "eventlog").

#include <memory>
#include <string>

#include <spdlog/sinks/sink.h>

namespace quiesce::platform {

// "journald" or "eventlog".
[[nodiscard]] const char* system_log_name();

// A sink writing to that log, entries tagged with `ident` (the syslog
// identifier, or the Event Log source).
[[nodiscard]] std::shared_ptr<spdlog::sinks::sink> make_system_log_sink(const std::string& ident);

}  // namespace quiesce::platform

#include "platform/system_log.hpp"

#include <windows.h>

#include <spdlog/sinks/win_eventlog_sink.h>

namespace quiesce::platform {

const char* system_log_name() { return "eventlog"; }

// The source is registered by the installer (packaging/windows); an
// unregistered one still logs, with a "description not found" preamble in
// the Event Viewer.
std::shared_ptr<spdlog::sinks::sink> make_system_log_sink(const std::string& ident) {
  return std::make_shared<spdlog::sinks::win_eventlog_sink_mt>(ident);
}

}  // namespace quiesce::platform

#include "agent/core/os_log_sink.hpp"

#include "platform/system_log.hpp"

namespace quiesce::agent {

spdlog::sink_ptr make_os_log_sink(const LogConfig& config) {
  if (config.target != platform::system_log_name()) {
    return nullptr;
  }
  // The Event Log stamps time, level and source itself.
  auto sink = platform::make_system_log_sink("quiesce-agent");
  sink->set_pattern("%v");
  return sink;
}

}  // namespace quiesce::agent

#include "platform/system_log.hpp"

#include <spdlog/sinks/systemd_sink.h>

namespace quiesce::platform {

const char* system_log_name() { return "journald"; }

std::shared_ptr<spdlog::sinks::sink> make_system_log_sink(const std::string& ident) {
  return std::make_shared<spdlog::sinks::systemd_sink_mt>(ident);
}

}  // namespace quiesce::platform

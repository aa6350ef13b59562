#include "agent/core/agent_logging.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include "agent/core/os_log_sink.hpp"

namespace quiesce::agent {

AgentLogger make_agent_logger(const LogConfig& config) {
  spdlog::sink_ptr target;
  if (config.target == "file") {
    target = std::make_shared<spdlog::sinks::basic_file_sink_mt>(config.file, false);
    target->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %l [%t] %v");
  } else if (auto os_sink = make_os_log_sink(config)) {
    target = std::move(os_sink);  // journald, the Event Log
  } else {
    target = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    target->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
  }
  auto hold_sink = std::make_shared<HoldAwareSink>(target, config.ring_lines);
  auto logger = std::make_shared<spdlog::logger>("quiesce", hold_sink);
  logger->set_level(config.level);
  logger->flush_on(spdlog::level::info);
  return AgentLogger{logger, hold_sink};
}

}  // namespace quiesce::agent

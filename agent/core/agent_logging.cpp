#include "agent/core/agent_logging.hpp"

#include <unistd.h>

#include <cstdlib>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include "agent/core/journald_sink.hpp"
#include "platform/system_log.hpp"

namespace quiesce::agent {

AgentLogger make_agent_logger(const LogConfig& config) {
  spdlog::sink_ptr target;
  // "stderr" under systemd is the journal already (JOURNAL_STREAM): native
  // records carry the session, writer and phase fields besides the text.
  if (config.target == "journald" ||
      (config.target == "stderr" && is_journal_stream(STDERR_FILENO, std::getenv("JOURNAL_STREAM")))) {
    target = std::make_shared<JournaldSink>("quiesce-agent");
  } else if (config.target == platform::system_log_name()) {
    // The OS's own log where it is not journald (the Windows Event Log).
    target = platform::make_system_log_sink("quiesce-agent");
    target->set_pattern("%v");
  } else if (config.target == "file") {
    target = std::make_shared<spdlog::sinks::basic_file_sink_mt>(config.file, false);
    target->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %l [%t] %v");
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

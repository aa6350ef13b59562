#pragma once
// The agent's logger: stderr, journald or a file, behind a HoldAwareSink so
// nothing is written while frozen.

#include <memory>

#include <spdlog/logger.h>

#include "agent/core/config.hpp"
#include "agent/core/hold_aware_sink.hpp"

namespace quiesce::agent {

struct AgentLogger {
  std::shared_ptr<spdlog::logger> logger;
  std::shared_ptr<HoldAwareSink> hold_sink;
};

// Throws std::runtime_error when the log file cannot be opened.
AgentLogger make_agent_logger(const LogConfig& config);

// Buffers logs while a hold is on and tells systemd what the agent is doing.
class HoldLogObserver final : public CoordinatorObserver {
 public:
  using StatusCallback = std::function<void(const std::string&)>;
  HoldLogObserver(std::shared_ptr<HoldAwareSink> sink, StatusCallback on_status)
      : sink_(std::move(sink)), on_status_(std::move(on_status)) {}
  void hold_started() override { sink_->begin_hold(); }
  void hold_ended() override { sink_->end_hold(); }
  void state_changed(const std::string& summary) override {
    if (on_status_) {
      on_status_(summary);
    }
  }

 private:
  std::shared_ptr<HoldAwareSink> sink_;
  StatusCallback on_status_;
};

}  // namespace quiesce::agent

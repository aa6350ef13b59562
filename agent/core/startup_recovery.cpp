#include "agent/core/startup_recovery.hpp"

#include <deque>
#include <mutex>

#include <spdlog/details/log_msg_buffer.h>
#include <spdlog/sinks/base_sink.h>


namespace quiesce::agent {

namespace {
// Far more lines than a recovery writes (a few per frozen filesystem).
constexpr std::size_t kMemoryLines = 4096;
}  // namespace

// Keeps the last kMemoryLines lines recovery logged. It grows with what is
// logged: spdlog's ringbuffer sink allocates and fills its whole capacity
// up front, which for 4096 lines was 1.5 MiB, resident for the agent's
// life (this object lives as long as the agent), to hold nothing at all on
// a normal start.
class RecoveryLogMemory final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  [[nodiscard]] std::vector<spdlog::details::log_msg_buffer> lines() {
    std::lock_guard lock(mutex_);
    return {lines_.begin(), lines_.end()};
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& message) override {
    if (lines_.size() == kMemoryLines) {
      lines_.pop_front();
    }
    lines_.emplace_back(message);
  }
  void flush_() override {}

 private:
  std::deque<spdlog::details::log_msg_buffer> lines_;
};

StartupRecovery::StartupRecovery(const std::string& run_dir)
    : memory_(std::make_shared<RecoveryLogMemory>()),
      logger_(std::make_shared<spdlog::logger>("recovery", memory_)) {
  logger_->set_level(spdlog::level::trace);
  kept_ = recover(run_dir, logger_);
}

void StartupRecovery::replay_to(spdlog::logger& logger) const {
  for (const auto& line : memory_->lines()) {
    logger.log(line.time, line.source, line.level, line.payload);
  }
}

}  // namespace quiesce::agent

#include "agent/core/hold_aware_sink.hpp"

#include <string>

namespace quiesce::agent {

HoldAwareSink::HoldAwareSink(spdlog::sink_ptr target, std::size_t capacity)
    : target_(std::move(target)), capacity_(capacity == 0 ? 1 : capacity) {
  // Formatting is the target's business; this sink passes messages through.
  target_->set_level(spdlog::level::trace);
}

void HoldAwareSink::begin_hold() {
  std::lock_guard lock(mutex_);
  holding_ = true;
}

void HoldAwareSink::end_hold() {
  std::lock_guard lock(mutex_);
  if (!holding_) {
    return;
  }
  holding_ = false;
  for (const auto& line : ring_) {
    const ScopedLogFields as_logged(line.fields, ScopedLogFields::Exactly{});
    target_->log(line.msg);
  }
  ring_.clear();
  if (dropped_ > 0) {
    const std::string text = std::to_string(dropped_) +
                             " log line(s) were dropped while frozen (in-memory ring full)";
    spdlog::details::log_msg note("quiesce", spdlog::level::warn, text);
    const ScopedLogFields about_nothing({}, ScopedLogFields::Exactly{});
    target_->log(note);
    dropped_ = 0;
  }
  target_->flush();
}

bool HoldAwareSink::holding() {
  std::lock_guard lock(mutex_);
  return holding_;
}

std::size_t HoldAwareSink::buffered() {
  std::lock_guard lock(mutex_);
  return ring_.size();
}

void HoldAwareSink::sink_it_(const spdlog::details::log_msg& msg) {
  if (!holding_) {
    target_->log(msg);
    return;
  }
  if (ring_.size() >= capacity_) {
    ring_.pop_front();
    ++dropped_;
  }
  ring_.push_back(HeldLine{spdlog::details::log_msg_buffer(msg), current_log_fields()});
}

void HoldAwareSink::flush_() {
  if (!holding_) {
    target_->flush();
  }
}

}  // namespace quiesce::agent

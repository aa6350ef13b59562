#pragma once
// A log sink that keeps lines in memory while a hold is on (DESIGN.md
// invariant 4: no I/O on a frozen filesystem; the log file, the journal's
// files or a redirected stderr may all be on one) and writes them out after
// the thaw. The ring is bounded; what overflows is counted and reported.

#include <cstddef>
#include <deque>
#include <mutex>

#include <spdlog/details/log_msg_buffer.h>
#include <spdlog/sinks/base_sink.h>

namespace quiesce::agent {

class HoldAwareSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  HoldAwareSink(spdlog::sink_ptr target, std::size_t capacity);

  void begin_hold();
  // Writes what was kept, in order, then passes lines through again.
  void end_hold();
  [[nodiscard]] bool holding();
  [[nodiscard]] std::size_t buffered();

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override;
  void flush_() override;

 private:
  spdlog::sink_ptr target_;
  std::size_t capacity_;
  bool holding_ = false;
  std::deque<spdlog::details::log_msg_buffer> ring_;
  std::size_t dropped_ = 0;
};

}  // namespace quiesce::agent

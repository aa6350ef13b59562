#pragma once
// A log sink that keeps lines in memory while a hold is on (DESIGN.md
// invariant 4: no I/O on a frozen filesystem; the log file, the journal's
// files or a redirected stderr may all be on one) and writes them out after
// the thaw. The ring is bounded; what overflows is counted and reported.
// Each held line keeps the structured fields (log_fields.hpp) it was logged
// with, and is written out with them.

#include <cstddef>
#include <deque>
#include <mutex>

#include <spdlog/details/log_msg_buffer.h>
#include <spdlog/sinks/base_sink.h>

#include "agent/core/log_fields.hpp"

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
  struct HeldLine {
    spdlog::details::log_msg_buffer msg;
    LogFields fields;
  };
  std::deque<HeldLine> ring_;
  std::size_t dropped_ = 0;
};

}  // namespace quiesce::agent

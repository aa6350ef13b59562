// Invariant 4: while frozen, log lines stay in memory, and come out in order
// after the thaw.

#include <doctest/doctest.h>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <sstream>

#include "agent/core/hold_aware_sink.hpp"

using quiesce::agent::HoldAwareSink;

TEST_CASE("log lines are held in memory during a hold and written after it") {
  std::ostringstream out;
  auto target = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  target->set_pattern("%v");
  auto sink = std::make_shared<HoldAwareSink>(target, 3);
  spdlog::logger logger("t", sink);

  logger.info("before");
  CHECK(out.str() == "before\n");
  sink->begin_hold();
  for (int i = 1; i <= 5; ++i) {
    logger.info("during {}", i);
  }
  logger.flush();
  CHECK(out.str() == "before\n");  // nothing reached the target
  CHECK(sink->buffered() == 3);
  sink->end_hold();
  CHECK(out.str() ==
        "before\nduring 3\nduring 4\nduring 5\n"
        "2 log line(s) were dropped while frozen (in-memory ring full)\n");
  logger.info("after");
  CHECK(out.str().ends_with("after\n"));
}

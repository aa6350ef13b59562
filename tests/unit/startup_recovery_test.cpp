// What a starting agent's recovery logs is kept in memory (the log's own
// filesystem may be frozen) and written, in order, once the log is open.

#include <doctest/doctest.h>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <fstream>
#include <sstream>

#include "agent/core/startup_recovery.hpp"
#include "tests/support/temp_dir.hpp"

TEST_CASE("startup recovery: what it logged is replayed to the agent's log, in order") {
  quiesce::test::TempDir run_dir("quiesce-recovery");
  // Two unreadable freeze records: recovery says so for each, and removes them.
  std::ofstream(run_dir / "fsfreeze-frozen-a.json") << "not json";
  std::ofstream(run_dir / "fsfreeze-frozen-b.json") << "{";
  const quiesce::agent::StartupRecovery recovery(run_dir.path().string());
  CHECK_FALSE(std::filesystem::exists(run_dir / "fsfreeze-frozen-a.json"));

  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_pattern("%v");
  spdlog::logger log("agent", sink);
  recovery.replay_to(log);
  const auto text = out.str();
  const auto first = text.find("fsfreeze-frozen-a.json");
  const auto second = text.find("fsfreeze-frozen-b.json");
  REQUIRE(first != std::string::npos);
  REQUIRE(second != std::string::npos);
  CHECK(first < second);
  CHECK(text.find("removing it") != std::string::npos);
}

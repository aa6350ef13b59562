// The agent's journald records carry QUIESCE_SESSION, QUIESCE_WRITER and
// QUIESCE_PHASE (agent/core/log_fields.hpp), also for lines held in memory
// while frozen. The records are seen through JournaldSink's send hook: no
// journald runs here; the systemd guest (tests/vm/systemd_guest_test.cpp)
// queries the real one with journalctl.

#include <doctest/doctest.h>

#include <spdlog/logger.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>

#include "agent/core/agent_logging.hpp"
#include "agent/core/coordinator.hpp"
#include "agent/core/journald_sink.hpp"
#include "agent/core/log_fields.hpp"
#include "tests/support/fake_writer.hpp"

using namespace quiesce;
using namespace quiesce::agent;
using namespace std::chrono_literals;

namespace {

using Record = std::vector<std::string>;

// What journald would have received, in order.
struct RecordedJournal {
  std::mutex mutex;
  std::vector<Record> records;

  JournaldSink::Send sender() {
    return [this](const Record& record) {
      std::lock_guard lock(mutex);
      records.push_back(record);
      return 0;
    };
  }
  // The first record whose MESSAGE contains `text` (empty when none).
  Record find(const std::string& text) {
    std::lock_guard lock(mutex);
    for (const auto& record : records) {
      if (!record.empty() && record[0].find(text) != std::string::npos) {
        return record;
      }
    }
    return {};
  }
};

bool has(const Record& record, const std::string& entry) {
  return std::find(record.begin(), record.end(), entry) != record.end();
}

std::string field(const Record& record, const std::string& name) {
  for (const auto& entry : record) {
    if (entry.rfind(name + "=", 0) == 0) {
      return entry.substr(name.size() + 1);
    }
  }
  return "(none)";
}

}  // namespace

TEST_CASE("a journal record has the message, priority, identifier and only the fields that are set") {
  spdlog::details::log_msg msg("quiesce", spdlog::level::warn, "writer 'db' failed");
  const auto record = journal_record(msg, {"s-1", "db", "freeze"}, "quiesce-agent");
  CHECK(record[0] == "MESSAGE=writer 'db' failed");
  CHECK(has(record, "PRIORITY=4"));
  CHECK(has(record, "SYSLOG_IDENTIFIER=quiesce-agent"));
  CHECK(has(record, "QUIESCE_SESSION=s-1"));
  CHECK(has(record, "QUIESCE_WRITER=db"));
  CHECK(has(record, "QUIESCE_PHASE=freeze"));

  const auto bare = journal_record(msg, {}, "quiesce-agent");
  CHECK(field(bare, "QUIESCE_SESSION") == "(none)");
  CHECK(field(bare, "QUIESCE_WRITER") == "(none)");
  CHECK(field(bare, "QUIESCE_PHASE") == "(none)");
}

TEST_CASE("JOURNAL_STREAM is matched against the file descriptor's device and inode") {
  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
  struct stat st {};
  REQUIRE(::fstat(pair[0], &st) == 0);
  const auto matching = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  CHECK(is_journal_stream(pair[0], matching.c_str()));
  CHECK_FALSE(is_journal_stream(pair[1], matching.c_str()));  // another socket: stderr redirected
  CHECK_FALSE(is_journal_stream(pair[0], nullptr));           // not started by systemd
  CHECK_FALSE(is_journal_stream(pair[0], ""));
  CHECK_FALSE(is_journal_stream(pair[0], (matching + "x").c_str()));
  CHECK_FALSE(is_journal_stream(pair[0], std::to_string(st.st_dev).c_str()));
  CHECK_FALSE(is_journal_stream(pair[0], (":" + std::to_string(st.st_ino)).c_str()));
  ::close(pair[0]);
  ::close(pair[1]);
}

TEST_CASE("log field scopes nest and restore what was there") {
  CHECK(current_log_fields() == LogFields{});
  {
    const ScopedLogFields session({"s-1", "", "freeze"});
    {
      const ScopedLogFields writer({"", "db", ""});
      CHECK(current_log_fields() == LogFields{"s-1", "db", "freeze"});
      const ScopedLogFields replay({"", "", "thaw"}, ScopedLogFields::Exactly{});
      CHECK(current_log_fields() == LogFields{"", "", "thaw"});
    }
    CHECK(current_log_fields() == LogFields{"s-1", "", "freeze"});
  }
  CHECK(current_log_fields() == LogFields{});
}

TEST_CASE("a line held while frozen reaches the journal after the thaw with the fields it was logged with") {
  RecordedJournal journal;
  auto hold_sink = std::make_shared<HoldAwareSink>(
      std::make_shared<JournaldSink>("quiesce-agent", journal.sender()), 100);
  spdlog::logger logger("t", hold_sink);
  hold_sink->begin_hold();
  {
    const ScopedLogFields about({"s-7", "fs", "freeze"});
    logger.info("froze /");
  }
  CHECK(journal.records.empty());
  {
    const ScopedLogFields elsewhere({"s-other", "x", "abort"});
    hold_sink->end_hold();  // replayed on a thread whose context differs
  }
  const auto record = journal.find("froze /");
  CHECK(field(record, "QUIESCE_SESSION") == "s-7");
  CHECK(field(record, "QUIESCE_WRITER") == "fs");
  CHECK(field(record, "QUIESCE_PHASE") == "freeze");
}

TEST_CASE("the coordinator's records name the session, the phase and the writer that failed") {
  RecordedJournal journal;
  auto hold_sink = std::make_shared<HoldAwareSink>(
      std::make_shared<JournaldSink>("quiesce-agent", journal.sender()), 1000);
  auto logger = std::make_shared<spdlog::logger>("t", hold_sink);
  HoldLogObserver holding(hold_sink, {});

  auto calls = std::make_shared<test::Journal>();
  test::FakeScript failing;
  failing.phases[Phase::freeze].fail = ErrorClass::retryable;
  SessionLimits limits;
  limits.default_freeze_window = 5s;
  limits.max_freeze_window = 30s;
  std::vector<ConfiguredWriter> writers;
  for (const auto& [name, level, script] :
       {std::tuple{"app", Level::application, test::FakeScript{}},
        std::tuple{"db", Level::database, failing}}) {
    ConfiguredWriter configured;
    configured.spec = WriterSpec{"fake", name, level, nlohmann::json::object()};
    configured.writer = std::make_unique<test::FakeWriter>(name, calls, script);
    writers.push_back(std::move(configured));
  }
  Coordinator coordinator(std::move(writers), limits, logger, {}, &holding);

  auto created = coordinator.create_session({});
  REQUIRE(created.ok());
  const auto id = created.value()["id"].get<std::string>();
  auto frozen = coordinator.freeze(id);  // db fails: app is aborted
  REQUIRE_FALSE(frozen.ok());

  const auto made = journal.find("created for 2 writer(s)");
  CHECK(field(made, "QUIESCE_SESSION") == id);
  CHECK(field(made, "QUIESCE_PHASE") == "identify");
  CHECK(field(made, "QUIESCE_WRITER") == "(none)");
  CHECK(field(journal.find("prepared in"), "QUIESCE_PHASE") == "prepare");

  // Logged during the hold, so held in memory, and sent after it with its fields.
  const auto failed = journal.find("writer 'db' failed at freeze");
  CHECK(field(failed, "QUIESCE_SESSION") == id);
  CHECK(field(failed, "QUIESCE_WRITER") == "db");
  CHECK(field(failed, "QUIESCE_PHASE") == "freeze");
  CHECK(has(failed, "PRIORITY=4"));
  const auto rolled_back = journal.find("rolling back");
  CHECK(field(rolled_back, "QUIESCE_SESSION") == id);
  CHECK(field(rolled_back, "QUIESCE_PHASE") == "abort");

  // Nothing stays set on the calling thread once the operations returned.
  CHECK(current_log_fields() == LogFields{});
}

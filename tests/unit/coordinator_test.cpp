// The writer protocol engine, driven with scripted fake writers. Each
// invariant of shared/DESIGN.md has a test here that fails if it breaks.

#include <doctest/doctest.h>

#include <spdlog/sinks/null_sink.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "agent/core/coordinator.hpp"
#include "tests/support/fake_writer.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
using namespace quiesce::agent;
using namespace std::chrono_literals;
using test::FakeScript;
using test::FakeWriter;
using test::Journal;
using test::PhaseScript;

namespace {

std::shared_ptr<spdlog::logger> quiet_logger() {
  return std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
}

SessionLimits fast_limits() {
  SessionLimits limits;
  limits.default_freeze_window = 5s;
  limits.max_freeze_window = 30s;
  limits.idle_timeout = 60s;
  for (auto phase : {Phase::identify, Phase::prepare, Phase::freeze, Phase::thaw,
                     Phase::post_snapshot, Phase::abort, Phase::post_restore}) {
    limits.phase_timeouts.of(phase) = 3s;
  }
  return limits;
}

struct WriterDef {
  std::string name;
  Level level;
  FakeScript script;
  std::map<Phase, Millis> timeouts;
};

struct Rig {
  std::shared_ptr<Journal> journal = std::make_shared<Journal>();
  std::unique_ptr<Coordinator> coordinator;

  explicit Rig(std::vector<WriterDef> defs, SessionLimits limits = fast_limits(),
               MarkerPaths paths = {}, CoordinatorObserver* observer = nullptr) {
    std::vector<ConfiguredWriter> writers;
    for (auto& def : defs) {
      ConfiguredWriter configured;
      configured.spec = WriterSpec{"fake", def.name, def.level, nlohmann::json::object()};
      configured.writer = std::make_unique<FakeWriter>(def.name, journal, def.script);
      configured.timeout_overrides = def.timeouts;
      writers.push_back(std::move(configured));
    }
    coordinator = std::make_unique<Coordinator>(std::move(writers), limits, quiet_logger(), paths,
                                                observer);
  }

  std::string create(SessionRequest request = {}) {
    auto result = coordinator->create_session(request);
    REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message));
    return result.value()["id"].get<std::string>();
  }
  nlohmann::json status(const std::string& id) {
    auto result = coordinator->session_status(id);
    REQUIRE(result.ok());
    return result.value();
  }
  // How often `writer` had its hold released (thaw or abort).
  std::size_t releases(const std::string& writer) {
    return journal->count(writer + ":thaw") + journal->count(writer + ":abort");
  }
};

std::vector<WriterDef> three_levels() {
  return {{"app", Level::application, {}, {}},
          {"db", Level::database, {}, {}},
          {"fs", Level::filesystem, {}, {}}};
}

std::string writer_state(const nlohmann::json& status, const std::string& name) {
  for (const auto& writer : status["writers"]) {
    if (writer["name"] == name) {
      return writer["state"];
    }
  }
  return "missing";
}

}  // namespace

TEST_CASE("a session walks every phase: freeze by level, thaw in exact reverse") {
  Rig rig({{"app", Level::application, {}, {}},
           {"fs", Level::filesystem, {}, {}},
           {"db", Level::database, {}, {}}});
  auto id = rig.create();
  CHECK(rig.status(id)["state"] == "prepared");
  // The session status carries what each writer's identify returned.
  const auto status = rig.status(id);  // kept: a range-for over a temporary's member dangles
  for (const auto& writer : status["writers"]) {
    CHECK(writer["identity"]["components"][0]["name"] == writer["name"]);
  }
  auto frozen = rig.coordinator->freeze(id);
  REQUIRE(frozen.ok());
  CHECK(frozen.value()["state"] == "frozen");
  auto thawed = rig.coordinator->thaw(id);
  REQUIRE(thawed.ok());
  CHECK(thawed.value()["verdict"]["continuous"] == true);
  CHECK(thawed.value()["verdict"]["hold_ms"].get<double>() >= 0.0);
  auto done = rig.coordinator->complete(id, "snap-1");
  REQUIRE(done.ok());
  CHECK(done.value()["state"] == "completed");
  CHECK(done.value()["artifacts"]["db"]["snapshot_id"] == "snap-1");

  auto& j = *rig.journal;
  CHECK(j.index_of("app:freeze") < j.index_of("db:freeze"));
  CHECK(j.index_of("db:freeze") < j.index_of("fs:freeze"));
  CHECK(j.index_of("fs:thaw") < j.index_of("db:thaw"));
  CHECK(j.index_of("db:thaw") < j.index_of("app:thaw"));
  for (const auto* name : {"app", "db", "fs"}) {
    CHECK(rig.releases(name) == 1);
    CHECK(j.count(std::string(name) + ":prepare") == 1);
    CHECK(j.count(std::string(name) + ":post_snapshot") == 1);
  }
}

TEST_CASE("writers of one level freeze at the same time") {
  // Each writer waits at a barrier for the other two: run one after another,
  // the first would wait alone and fail.
  auto barrier = std::make_shared<test::Barrier>(3);
  FakeScript script;
  script.phases[Phase::freeze].barrier = barrier;
  Rig rig({{"a", Level::database, script, {}},
           {"b", Level::database, script, {}},
           {"c", Level::database, script, {}}});
  auto id = rig.create();
  auto frozen = rig.coordinator->freeze(id);
  REQUIRE_MESSAGE(frozen.ok(), (frozen.ok() ? "" : frozen.error().message));
  REQUIRE(rig.coordinator->thaw(id).ok());
}

TEST_CASE("filesystem writers prepare after the others, which prepare together") {
  // A filesystem writer's prepare flushes the page cache; a database's
  // prepare (a checkpoint) dirties it, so the flush must come after it or
  // the freeze writes what the checkpoint left. app and db meet at a
  // barrier (together); fs starts only once both returned.
  auto barrier = std::make_shared<test::Barrier>(2);
  FakeScript together;
  together.phases[Phase::prepare].barrier = barrier;
  together.phases[Phase::prepare].delay = std::chrono::milliseconds(30);
  Rig rig({{"fs", Level::filesystem, {}, {}},
           {"app", Level::application, together, {}},
           {"db", Level::database, together, {}}});
  auto id = rig.create();
  CHECK(rig.status(id)["state"] == "prepared");
  auto& j = *rig.journal;
  CHECK(j.index_of("app:prepare") < j.index_of("fs:prepare"));
  CHECK(j.index_of("db:prepare") < j.index_of("fs:prepare"));
}

TEST_CASE("invariant 1: a failure at freeze releases every writer that began, once, in reverse") {
  struct Fault {
    const char* label;
    PhaseScript script;
  };
  PhaseScript fails;
  fails.fail = ErrorClass::retryable;
  PhaseScript throws;
  throws.throws = true;
  PhaseScript hangs;
  hangs.hang = true;
  for (const auto& fault : {Fault{"fails", fails}, Fault{"throws", throws}, Fault{"hangs", hangs}}) {
    for (auto failing_level : freeze_order) {
      CAPTURE(fault.label);
      CAPTURE(to_string(failing_level));
      auto defs = three_levels();
      for (auto& def : defs) {
        if (def.level == failing_level) {
          def.script.phases[Phase::freeze] = fault.script;
          def.timeouts[Phase::freeze] = 200ms;
        }
      }
      Rig rig(defs);
      auto id = rig.create();
      auto result = rig.coordinator->freeze(id);
      REQUIRE_FALSE(result.ok());
      CHECK(result.error().code == (fault.script.hang ? "writer_timeout" : "writer_failed"));
      auto status = rig.status(id);
      CHECK(status["state"] == "failed");
      const std::string failing = std::string(to_string(failing_level)) == "application" ? "app"
                                  : failing_level == Level::database                   ? "db"
                                                                                        : "fs";
      CHECK(writer_state(status, failing) == "failed_at_freeze");
      CHECK(result.error().writer == failing);
      // A hung writer gets its abort once its freeze call returns.
      if (fault.script.hang) {
        CHECK(rig.journal->wait_for(failing + ":abort", 2s));
      }
      for (const auto* name : {"app", "db", "fs"}) {
        CAPTURE(name);
        CHECK(rig.releases(name) == 1);
      }
      // Reverse order: the later level is released before the earlier one.
      auto& j = *rig.journal;
      CHECK(j.index_of("fs:abort") < j.index_of("db:abort"));
      CHECK(j.index_of("db:abort") < j.index_of("app:abort"));
      // Nothing stays active: a new session can start.
      CHECK(rig.coordinator->create_session({}).ok());
    }
  }
}

TEST_CASE("invariant 1: failures and exceptions in prepare, thaw and post-snapshot") {
  SUBCASE("prepare fails: every prepared writer is aborted once, nothing frozen") {
    auto defs = three_levels();
    defs[1].script.phases[Phase::prepare].fail = ErrorClass::non_retryable;
    Rig rig(defs);
    auto result = rig.coordinator->create_session({});
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().writer == "db");
    CHECK_FALSE(result.error().retryable);
    for (const auto* name : {"app", "db", "fs"}) {
      CHECK(rig.releases(name) == 1);
      CHECK(rig.journal->count(std::string(name) + ":freeze") == 0);
    }
  }
  SUBCASE("prepare throws") {
    auto defs = three_levels();
    defs[0].script.phases[Phase::prepare].throws = true;
    Rig rig(defs);
    auto result = rig.coordinator->create_session({});
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().message.find("scripted exception") != std::string::npos);
  }
  SUBCASE("thaw throws in one writer: the others still thaw, the verdict is broken") {
    auto defs = three_levels();
    defs[1].script.phases[Phase::thaw].throws = true;
    Rig rig(defs);
    auto id = rig.create();
    REQUIRE(rig.coordinator->freeze(id).ok());
    auto thawed = rig.coordinator->thaw(id);
    REQUIRE(thawed.ok());
    CHECK(thawed.value()["verdict"]["continuous"] == false);
    CHECK(writer_state(thawed.value(), "db") == "failed_at_thaw");
    for (const auto* name : {"app", "db", "fs"}) {
      CHECK(rig.releases(name) == 1);
    }
  }
  SUBCASE("thaw hangs: answered at the phase timeout, the others thawed") {
    auto defs = three_levels();
    defs[2].script.phases[Phase::thaw].hang = true;
    defs[2].timeouts[Phase::thaw] = 200ms;
    Rig rig(defs);
    auto id = rig.create();
    REQUIRE(rig.coordinator->freeze(id).ok());
    auto thawed = rig.coordinator->thaw(id);
    REQUIRE(thawed.ok());
    CHECK(writer_state(thawed.value(), "fs") == "failed_at_thaw");
    CHECK(thawed.value()["verdict"]["continuous"] == false);
    CHECK(rig.journal->count("app:thaw") == 1);
  }
  SUBCASE("post-snapshot fails: the session fails and names the writer") {
    auto defs = three_levels();
    defs[1].script.phases[Phase::post_snapshot].fail = ErrorClass::retryable;
    Rig rig(defs);
    auto id = rig.create();
    REQUIRE(rig.coordinator->freeze(id).ok());
    REQUIRE(rig.coordinator->thaw(id).ok());
    auto done = rig.coordinator->complete(id, "s");
    REQUIRE_FALSE(done.ok());
    CHECK(done.error().writer == "db");
    CHECK(done.error().retryable);
    CHECK(rig.status(id)["state"] == "failed");
    CHECK(writer_state(rig.status(id), "db") == "failed_at_post_snapshot");
  }
  SUBCASE("identify fails: the session fails and nothing is aborted") {
    auto defs = three_levels();
    defs[0].script.phases[Phase::identify].fail = ErrorClass::non_retryable;
    Rig rig(defs);
    auto result = rig.coordinator->create_session({});
    REQUIRE_FALSE(result.ok());
    CHECK(rig.journal->count("app:abort") == 0);
    CHECK(rig.journal->count("app:prepare") == 0);
  }
}

TEST_CASE("invariant 1: the host never thaws, the watchdog thaws at the freeze-window deadline") {
  Rig rig(three_levels());
  SessionRequest request;
  request.freeze_window = 150ms;
  auto id = rig.create(request);
  REQUIRE(rig.coordinator->freeze(id).ok());
  CHECK(rig.coordinator->frozen());
  REQUIRE(rig.journal->wait_for("app:thaw", 3s));
  REQUIRE(test::eventually(2s, [&] { return rig.status(id)["state"] == "thawed"; }));
  CHECK_FALSE(rig.coordinator->frozen());
  auto status = rig.status(id);
  CHECK(status["verdict"]["continuous"] == false);
  CHECK(status["verdict"]["watchdog_fired"] == true);
  // The host's late thaw gets the broken verdict, not an error.
  auto late = rig.coordinator->thaw(id);
  REQUIRE(late.ok());
  CHECK(late.value()["verdict"]["continuous"] == false);
  for (const auto* name : {"app", "db", "fs"}) {
    CHECK(rig.releases(name) == 1);
  }
  auto& j = *rig.journal;
  CHECK(j.index_of("fs:thaw") < j.index_of("db:thaw"));
  CHECK(j.index_of("db:thaw") < j.index_of("app:thaw"));
}

TEST_CASE("invariant 1: the freeze window passing during a slow freeze fails it and aborts") {
  auto defs = three_levels();
  defs[2].script.phases[Phase::freeze].hang = true;  // fs never finishes freezing
  Rig rig(defs);
  SessionRequest request;
  request.freeze_window = 200ms;
  auto id = rig.create(request);
  auto result = rig.coordinator->freeze(id);
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code == "freeze_window_expired");
  CHECK(rig.journal->wait_for("fs:abort", 2s));
  for (const auto* name : {"app", "db", "fs"}) {
    CHECK(rig.releases(name) == 1);
  }
}

TEST_CASE("invariant 2: frozen is reported only when every writer reported frozen") {
  auto defs = three_levels();
  defs[2].script.phases[Phase::freeze].delay = 300ms;
  Rig rig(defs);
  auto id = rig.create();
  auto freezing = std::async(std::launch::async, [&] { return rig.coordinator->freeze(id); });
  REQUIRE(rig.journal->wait_for("fs:freeze", 2s));
  // fs is still working: neither the session nor health may say frozen.
  auto status = rig.status(id);
  CHECK(status["state"] == "freezing");
  CHECK(writer_state(status, "fs") == "freezing");
  CHECK(writer_state(status, "app") == "frozen");
  auto result = freezing.get();
  REQUIRE(result.ok());
  CHECK(result.value()["state"] == "frozen");
  REQUIRE(rig.coordinator->thaw(id).ok());
}

TEST_CASE("invariant 3: a writer that lost its hold makes the verdict crash-consistent") {
  auto defs = three_levels();
  defs[1].script.lose_hold = true;
  Rig rig(defs);
  auto id = rig.create();
  REQUIRE(rig.coordinator->freeze(id).ok());
  auto thawed = rig.coordinator->thaw(id);
  REQUIRE(thawed.ok());
  const auto& verdict = thawed.value()["verdict"];
  CHECK(verdict["continuous"] == false);
  CHECK(verdict["watchdog_fired"] == false);
  REQUIRE(verdict["reasons"].size() == 1);
  CHECK(verdict["reasons"][0].get<std::string>().find("'db' lost its hold") != std::string::npos);
}

TEST_CASE("invariant 5: one session at a time, the second names the first") {
  Rig rig(three_levels());
  auto first = rig.create();
  auto second = rig.coordinator->create_session({});
  REQUIRE_FALSE(second.ok());
  CHECK(second.error().code == "session_conflict");
  CHECK(second.error().http_status == 409);
  CHECK(second.error().message.find(first) != std::string::npos);
  REQUIRE(rig.coordinator->abort(first).ok());
  CHECK(rig.coordinator->create_session({}).ok());
}

TEST_CASE("invariant 6: status and abort answer while a writer is busy") {
  auto defs = three_levels();
  defs[1].script.phases[Phase::freeze].hang = true;
  defs[1].timeouts[Phase::freeze] = 20s;
  Rig rig(defs);
  SessionRequest request;
  request.freeze_window = 20000ms;
  auto id = rig.create(request);
  auto freezing = std::async(std::launch::async, [&] { return rig.coordinator->freeze(id); });
  REQUIRE(rig.journal->wait_for("db:freeze", 2s));
  const auto began = std::chrono::steady_clock::now();
  CHECK(rig.status(id)["state"] == "freezing");
  CHECK(rig.coordinator->health()["state"] == "frozen");
  // A second operation is refused at once rather than queued.
  auto concurrent = rig.coordinator->thaw(id);
  CHECK_FALSE(concurrent.ok());
  auto aborted = rig.coordinator->abort(id);
  REQUIRE(aborted.ok());
  CHECK(aborted.value()["state"] == "aborted");
  // Well before the 20 s timeouts: abort cut the hung call short.
  CHECK(std::chrono::steady_clock::now() - began < 10s);
  auto result = freezing.get();
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code == "session_aborted");
  CHECK(rig.journal->wait_for("db:abort", 3s));
  for (const auto* name : {"app", "db"}) {
    CHECK(rig.releases(name) == 1);
  }
  CHECK(rig.journal->count("fs:freeze") == 0);
  CHECK(rig.releases("fs") == 1);  // prepared, so aborted
}

TEST_CASE("an agent stopping (SIGTERM) during complete answers session_aborted, as in other phases") {
  // Issue #15 item 5: the shutdown's abort cut the post-snapshot call short
  // and complete answered 500 writer_failed, blaming the writer.
  auto defs = three_levels();
  defs[1].script.phases[Phase::post_snapshot].hang = true;
  // A real writer whose call is cut short reports the interruption as an error.
  defs[1].script.phases[Phase::post_snapshot].fail = ErrorClass::retryable;
  defs[1].timeouts[Phase::post_snapshot] = 20s;
  Rig rig(defs);
  auto id = rig.create();
  REQUIRE(rig.coordinator->freeze(id).ok());
  REQUIRE(rig.coordinator->thaw(id).ok());
  auto completing = std::async(std::launch::async, [&] { return rig.coordinator->complete(id, "snap-1"); });
  REQUIRE(rig.journal->wait_for("db:post_snapshot", 2s));
  rig.coordinator->shutdown();  // what the daemon does on SIGTERM
  auto result = completing.get();
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code == "session_aborted");
  CHECK(result.error().http_status == 409);
  CHECK(rig.status(id)["state"] == "aborted");
}

TEST_CASE("invariant 7: phases out of order and unknown ids are refused and change nothing") {
  Rig rig(three_levels());
  auto id = rig.create();
  auto before = rig.journal->entries().size();

  auto thaw_early = rig.coordinator->thaw(id);
  REQUIRE_FALSE(thaw_early.ok());
  CHECK(thaw_early.error().code == "invalid_phase");
  auto complete_early = rig.coordinator->complete(id, "s");
  REQUIRE_FALSE(complete_early.ok());
  CHECK(complete_early.error().code == "invalid_phase");
  CHECK(rig.status(id)["state"] == "prepared");
  CHECK(rig.journal->entries().size() == before);

  REQUIRE(rig.coordinator->freeze(id).ok());
  auto freeze_twice = rig.coordinator->freeze(id);
  REQUIRE_FALSE(freeze_twice.ok());
  CHECK(freeze_twice.error().code == "invalid_phase");
  auto complete_frozen = rig.coordinator->complete(id, "s");
  REQUIRE_FALSE(complete_frozen.ok());
  CHECK(complete_frozen.error().message.find("thaw it before complete") != std::string::npos);
  CHECK(rig.status(id)["state"] == "frozen");

  for (auto* call : {+[](Coordinator& c) { return c.freeze("s-nope"); },
                     +[](Coordinator& c) { return c.thaw("s-nope"); },
                     +[](Coordinator& c) { return c.abort("s-nope"); },
                     +[](Coordinator& c) { return c.session_status("s-nope"); }}) {
    auto result = call(*rig.coordinator);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code == "unknown_session");
    CHECK(result.error().http_status == 404);
  }
  CHECK(rig.status(id)["state"] == "frozen");
  REQUIRE(rig.coordinator->thaw(id).ok());
  // Thaw is idempotent and answers with the same verdict.
  auto again = rig.coordinator->thaw(id);
  REQUIRE(again.ok());
  CHECK(rig.releases("fs") == 1);
}

TEST_CASE("invariant 7: bad session requests are refused before anything runs") {
  Rig rig(three_levels());
  SessionRequest unknown_writer;
  unknown_writer.writers = std::vector<std::string>{"app", "nope"};
  auto r1 = rig.coordinator->create_session(unknown_writer);
  REQUIRE_FALSE(r1.ok());
  CHECK(r1.error().code == "unknown_writer");
  CHECK(r1.error().writer == "nope");

  SessionRequest too_long;
  too_long.freeze_window = 31s;
  auto r2 = rig.coordinator->create_session(too_long);
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.error().code == "invalid_field");
  CHECK(rig.journal->entries().empty());
}

TEST_CASE("a session can pick a subset of writers") {
  Rig rig(three_levels());
  SessionRequest request;
  request.writers = std::vector<std::string>{"fs"};
  auto id = rig.create(request);
  REQUIRE(rig.coordinator->freeze(id).ok());
  REQUIRE(rig.coordinator->thaw(id).ok());
  CHECK(rig.journal->count("app:freeze") == 0);
  CHECK(rig.journal->count("fs:freeze") == 1);
}

TEST_CASE("sessions left idle expire and their writers are aborted") {
  auto limits = fast_limits();
  limits.idle_timeout = 150ms;
  SUBCASE("created but never frozen") {
    Rig rig(three_levels(), limits);
    auto id = rig.create();
    REQUIRE(test::eventually(3s, [&] { return rig.status(id)["state"] == "expired"; }));
    CHECK(rig.releases("app") == 1);
    CHECK(rig.status(id)["error"]["code"] == "session_expired");
    CHECK(rig.coordinator->create_session({}).ok());
  }
  SUBCASE("thawed but never completed") {
    Rig rig(three_levels(), limits);
    auto id = rig.create();
    REQUIRE(rig.coordinator->freeze(id).ok());
    REQUIRE(rig.coordinator->thaw(id).ok());
    REQUIRE(test::eventually(3s, [&] { return rig.status(id)["state"] == "expired"; }));
    // Thawed once; the abort afterwards undoes post-snapshot state.
    CHECK(rig.journal->count("db:thaw") == 1);
    CHECK(rig.journal->count("db:abort") == 1);
  }
}

TEST_CASE("prepare timeouts are per writer and reported with the timeout class") {
  auto defs = three_levels();
  defs[0].script.phases[Phase::prepare].hang = true;
  defs[0].timeouts[Phase::prepare] = 100ms;
  Rig rig(defs);
  auto result = rig.coordinator->create_session({});
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code == "writer_timeout");
  CHECK(result.error().http_status == 504);
  CHECK(result.error().retryable);
}

TEST_CASE("the hold observer brackets exactly the hold window") {
  struct Recorder : CoordinatorObserver {
    std::vector<std::string> events;
    void hold_started() override { events.emplace_back("start"); }
    void hold_ended() override { events.emplace_back("end"); }
  } recorder;
  Rig rig(three_levels(), fast_limits(), {}, &recorder);
  auto id = rig.create();
  CHECK(recorder.events.empty());
  REQUIRE(rig.coordinator->freeze(id).ok());
  CHECK(recorder.events == std::vector<std::string>{"start"});
  REQUIRE(rig.coordinator->thaw(id).ok());
  CHECK(recorder.events == std::vector<std::string>{"start", "end"});

  // A failed freeze ends the hold too.
  auto defs = three_levels();
  defs[2].script.phases[Phase::freeze].fail = ErrorClass::retryable;
  Recorder second;
  Rig failing(defs, fast_limits(), {}, &second);
  auto id2 = failing.create();
  CHECK_FALSE(failing.coordinator->freeze(id2).ok());
  CHECK(second.events == std::vector<std::string>{"start", "end"});
}

TEST_CASE("restore marker: in the snapshot, gone from the live system, post-restore on restore") {
  test::TempDir dir;
  MarkerPaths paths{(dir / "state").string(), (dir / "run").string()};
  const auto marker = dir / "state" / "restore-marker.json";
  std::string snapshot_copy;
  {
    Rig rig(three_levels(), fast_limits(), paths);
    SessionRequest request;
    request.checkpoint_id = "cp-42";
    auto id = rig.create(request);
    REQUIRE(rig.coordinator->freeze(id).ok());
    // What a disk snapshot taken now would hold:
    REQUIRE(std::filesystem::exists(marker));
    {
      // Closed before the thaw: Windows cannot delete a file that is open.
      std::ifstream in(marker);
      snapshot_copy.assign(std::istreambuf_iterator<char>(in), {});
    }
    REQUIRE(rig.coordinator->thaw(id).ok());
    CHECK_FALSE(std::filesystem::exists(marker));
  }
  SUBCASE("same boot, agent restarted: not a restore") {
    Rig rig(three_levels(), fast_limits(), paths);
    auto id = rig.create();
    (void)id;
    // Simulate the agent dying while prepared: marker and live flag remain.
    Rig restarted(three_levels(), fast_limits(), paths);
    restarted.coordinator->detect_restore();
    CHECK(restarted.journal->count("fs:post_restore") == 0);
    CHECK(restarted.coordinator->health()["last_restore"].is_null());
    CHECK_FALSE(std::filesystem::exists(marker));
  }
  SUBCASE("disks restored from the snapshot, run dir fresh: post-restore runs") {
    std::ofstream(marker) << snapshot_copy;
    std::filesystem::remove_all(dir / "run");
    Rig restored(three_levels(), fast_limits(), paths);
    restored.coordinator->detect_restore();
    auto& j = *restored.journal;
    CHECK(j.count("app:restored-from:cp-42") == 1);
    CHECK(j.index_of("fs:post_restore") < j.index_of("db:post_restore"));
    CHECK(j.index_of("db:post_restore") < j.index_of("app:post_restore"));
    auto health = restored.coordinator->health();
    CHECK(health["last_restore"]["checkpoint_id"] == "cp-42");
    CHECK_FALSE(std::filesystem::exists(marker));
  }
}

TEST_CASE("metrics count sessions and broken holds in Prometheus text format") {
  auto defs = three_levels();
  defs[0].script.lose_hold = true;
  Rig rig(defs);
  auto id = rig.create();
  REQUIRE(rig.coordinator->freeze(id).ok());
  REQUIRE(rig.coordinator->thaw(id).ok());
  REQUIRE(rig.coordinator->complete(id, "x").ok());
  auto text = rig.coordinator->metrics();
  CHECK(text.find("quiesce_sessions_total{outcome=\"completed\"} 1") != std::string::npos);
  CHECK(text.find("quiesce_holds_broken_total 1") != std::string::npos);
  CHECK(text.find("quiesce_hold_seconds_count 1") != std::string::npos);
  CHECK(text.find("# TYPE quiesce_frozen gauge") != std::string::npos);
}

TEST_CASE("writers added or removed at run time change the next session, never the running one") {
  Rig rig({{"app", Level::application, {}, {}}});
  auto added_writer = [&](const std::string& name) {
    ConfiguredWriter configured;
    configured.spec = WriterSpec{"fake", name, Level::database, nlohmann::json::object()};
    configured.writer = std::make_unique<FakeWriter>(name, rig.journal, FakeScript{});
    return configured;
  };
  // A name already taken is refused and changes nothing.
  auto clash = rig.coordinator->add_writer(added_writer("app"));
  REQUIRE_FALSE(clash.ok());
  CHECK(clash.error().code == "writer_exists");
  CHECK(rig.coordinator->writers_status()["writers"].size() == 1);
  CHECK(rig.coordinator->remove_writer("nobody").error().code == "unknown_writer");

  REQUIRE(rig.coordinator->add_writer(added_writer("early")).ok());
  auto id = rig.create();
  // Added mid-session: not in this one. Removed mid-session: still thawed by it.
  REQUIRE(rig.coordinator->add_writer(added_writer("late")).ok());
  REQUIRE(rig.coordinator->remove_writer("early").ok());
  CHECK(writer_state(rig.status(id), "late") == "missing");
  REQUIRE(rig.coordinator->freeze(id).ok());
  REQUIRE(rig.coordinator->thaw(id).ok());
  CHECK(rig.journal->count("early:freeze") == 1);
  CHECK(rig.releases("early") == 1);
  CHECK(rig.journal->count("late:freeze") == 0);
  REQUIRE(rig.coordinator->complete(id, "snap").ok());

  auto next = rig.create();
  CHECK(writer_state(rig.status(next), "early") == "missing");
  CHECK(writer_state(rig.status(next), "late") == "prepared");
  REQUIRE(rig.coordinator->abort(next).ok());
}

// The first promise when a freeze deadlocks in the kernel, and when the
// freeze holder itself is killed: nothing stays frozen past the window + 1 s.
//
// The deadlock is the real one: an ext4 on a loop device whose image lives
// on another ext4 ("upper" stored on "lower"), with dirty data in both, and
// the fsfreeze writer told (QUIESCE_TEST_INVERT_FREEZE_ORDER=1, a test-only
// switch) to freeze in the unsafe order, lower first. The upper freeze then
// writes back through the loop device into the frozen lower filesystem and
// blocks inside the kernel until lower is thawed.

#include <doctest/doctest.h>

#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <fstream>
#include <thread>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "host-bridge/client/agent_client.hpp"
#include "quiesce/writer_registry.hpp"
#include "tests/root/loop_fs.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/running_agent.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/writer_harness.hpp"
#include "writers/fsfreeze/freeze_record.hpp"
#include "writers/fsfreeze/fsfreeze_writer.hpp"

using namespace std::chrono_literals;
using quiesce::Clock;
using quiesce::test::LoopFs;
using quiesce::test::message_of;
using quiesce::test::WriteProbe;

namespace {

constexpr const char* invert_switch = "QUIESCE_TEST_INVERT_FREEZE_ORDER";

std::int64_t ms_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// Leaves `megabytes` of dirty page cache in `directory` (written, not synced),
// so that freezing its filesystem has writeback to do.
void write_dirty_data(const std::string& directory, int megabytes) {
  static int counter = 0;
  std::ofstream out(directory + "/dirty-" + std::to_string(counter++), std::ios::binary);
  const std::string chunk(1 << 20, 'q');
  for (int i = 0; i < megabytes; ++i) {
    out << chunk;
  }
}

// "upper" is an ext4 on a loop device whose image file is on "lower".
struct StackedFilesystems {
  quiesce::test::TempDir dir{"freeze-deadlock"};
  LoopFs lower{dir.path(), "lower", "ext4", 256};
  LoopFs upper{lower.mount_point(), "upper", "ext4", 96};

  void make_dirty() {
    write_dirty_data(lower.mount_point(), 8);
    write_dirty_data(upper.mount_point(), 16);
  }
  [[nodiscard]] nlohmann::json mounts() const {
    return {lower.mount_point(), upper.mount_point()};
  }
  // Both writable, each probe started at `since`'s caller: the time it took.
  [[nodiscard]] bool both_writable_within(std::chrono::milliseconds timeout) const {
    WriteProbe lower_probe(lower.mount_point());
    WriteProbe upper_probe(upper.mount_point());
    return lower_probe.finished_within(timeout) && upper_probe.finished_within(timeout);
  }
};

struct FsfreezeWriter {
  quiesce::WriterRegistry registry;
  std::unique_ptr<quiesce::Writer> writer;

  FsfreezeWriter(const std::string& run_dir, const nlohmann::json& mounts, bool invert) {
    quiesce::writers::register_fsfreeze_writer(registry);
    nlohmann::json options = {
        {"mounts", mounts},
        {"holder_path", quiesce::test::built_binary("quiesce-freeze-holder").string()}};
    quiesce::WriterSpec spec{"fsfreeze", "fs", quiesce::Level::filesystem, options};
    auto logger = std::make_shared<spdlog::logger>(
        "deadlock-test", std::make_shared<spdlog::sinks::null_sink_mt>());
    if (invert) {
      ::setenv(invert_switch, "1", 1);
    }
    writer = registry.find("fsfreeze")->create(spec, {logger, run_dir, run_dir});
    ::unsetenv(invert_switch);
  }
};

// The real agent with an fsfreeze writer on both filesystems, listening on
// `stack.dir / "agent.sock"`; `invert` freezes in the unsafe order.
std::unique_ptr<quiesce::test::ChildProcess> start_agent_on(const StackedFilesystems& stack,
                                                            bool invert) {
  auto config = quiesce::test::agent_config(
      stack.dir, {{{"type", "fsfreeze"}, {"name", "fs"}, {"options", {{"mounts", stack.mounts()}}}}});
  config["session"]["phase_timeouts_ms"] = {{"freeze", 30000}};
  std::ofstream(stack.dir / "agent.json") << config.dump(2);
  std::vector<std::string> env;
  if (invert) {
    env.push_back(std::string(invert_switch) + "=1");
  }
  auto process = std::make_unique<quiesce::test::ChildProcess>(
      std::vector<std::string>{quiesce::test::built_binary("quiesce-agent").string(), "--config",
                               (stack.dir / "agent.json").string()},
      stack.dir / "agent.stderr", env);
  REQUIRE_MESSAGE(quiesce::test::eventually(
                      10s, [&] { return std::filesystem::exists(stack.dir / "agent.sock"); }),
                  "the agent did not open its socket: "
                      << quiesce::test::read_text(stack.dir / "agent.stderr"));
  return process;
}

quiesce::client::ClientOptions client_options(const std::filesystem::path& socket) {
  quiesce::client::ClientOptions options;
  options.endpoint = quiesce::client::Endpoint::parse("unix:" + socket.string());
  return options;
}

// Creates a session (20 s window), leaves dirty data, and starts its freeze
// on a thread of its own, which the agent (started with the unsafe order)
// answers with an error or not at all: only the filesystems matter to the
// callers. Returns once the freeze has had time to get stuck (lower frozen,
// upper's FIFREEZE blocked on it).
std::thread start_stuck_freeze(StackedFilesystems& stack, quiesce::client::AgentClient& client,
                               const quiesce::client::ClientOptions& options) {
  auto created = client.create_session({{"freeze_window_ms", 20000}});
  REQUIRE_MESSAGE(created.ok(), quiesce::test::describe(created));
  const std::string id = created.body["id"];
  stack.make_dirty();
  std::thread freezer([options, id] {
    try {
      (void)quiesce::client::AgentClient(options).freeze(id);
    } catch (const std::exception&) {
    }
  });
  std::this_thread::sleep_for(1500ms);
  return freezer;
}

pid_t holder_pid_from_record(const std::string& run_dir) {
  std::string error;
  auto record = quiesce::writers::fsfreeze::read_record(
      quiesce::writers::fsfreeze::record_path(run_dir, "fs"), error);
  REQUIRE_MESSAGE(record, error);
  return static_cast<pid_t>(record->holder_pid);
}

}  // namespace

TEST_CASE("freeze deadlock: the freeze deadline thaws lower first, names the stuck filesystem, "
          "the next session freezes for real") {
  StackedFilesystems stack;
  const std::string run_dir = (stack.dir / "run").string();
  std::filesystem::create_directories(run_dir);
  FsfreezeWriter inverted(run_dir, stack.mounts(), true);

  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    stack.make_dirty();
    const auto started = Clock::now();
    // A 2 s freeze call inside a 3 s window.
    auto ctx = quiesce::test::context("deadlock", 2s, 3s);
    auto status = inverted.writer->freeze(ctx);
    const auto freeze_ms = ms_since(started);
    REQUIRE_FALSE(status.is_ok());
    const auto message = message_of(status);
    CAPTURE(message);
    CHECK(message.find("the freeze of " + stack.upper.mount_point() + " had not returned") !=
          std::string::npos);
    CHECK(freeze_ms < 2500);
    quiesce::HoldReport hold;
    REQUIRE_MESSAGE(inverted.writer->thaw(quiesce::test::context("deadlock"), hold).is_ok(),
                    "thaw after the failed freeze");
    REQUIRE(inverted.writer->abort(quiesce::test::context("deadlock")).is_ok());
    // window (3 s) + 1 s from the freeze request, whatever the deadlock did.
    const auto budget = std::chrono::milliseconds(4000 - ms_since(started));
    CHECK_MESSAGE(stack.both_writable_within(budget),
                  "a filesystem stayed frozen past the window + 1 s");
    MESSAGE("round " << round << ": freeze gave up after " << freeze_ms
                     << " ms, both writable " << ms_since(started) << " ms after the request");
  }

  // The same filesystems in the safe order, through a fresh writer: a real,
  // continuous freeze of both.
  FsfreezeWriter safe(run_dir, stack.mounts(), false);
  stack.make_dirty();
  auto ctx = quiesce::test::context("after", 20s, 20s);
  REQUIRE_MESSAGE(safe.writer->freeze(ctx).is_ok(), "the safe order froze");
  CHECK_FALSE(WriteProbe(stack.upper.mount_point()).finished_within(200ms));
  CHECK_FALSE(WriteProbe(stack.lower.mount_point()).finished_within(200ms));
  quiesce::HoldReport hold;
  REQUIRE(safe.writer->thaw(ctx, hold).is_ok());
  CHECK(hold.continuous);
  CHECK(stack.both_writable_within(2s));
}

TEST_CASE("freeze deadlock: the hold deadline alone ends it when the freeze call waits longer") {
  StackedFilesystems stack;
  const std::string run_dir = (stack.dir / "run").string();
  std::filesystem::create_directories(run_dir);
  FsfreezeWriter inverted(run_dir, stack.mounts(), true);
  stack.make_dirty();
  const auto started = Clock::now();
  // The call may wait 30 s, the window is 2 s: the holder's hold deadline
  // must release everything at 2 s although the freeze never finished.
  auto ctx = quiesce::test::context("deadline", 30s, 2s);
  auto status = inverted.writer->freeze(ctx);
  REQUIRE_FALSE(status.is_ok());
  CHECK(message_of(status).find("hold deadline passed while freezing") != std::string::npos);
  CHECK(ms_since(started) < 3000);
  CHECK(stack.both_writable_within(std::chrono::milliseconds(3000 - ms_since(started))));
  REQUIRE(inverted.writer->abort(quiesce::test::context("deadline")).is_ok());
}

TEST_CASE("freeze holder: SIGABRT, SIGSEGV or SIGKILL to the holder while frozen thaws at once") {
  StackedFilesystems stack;
  const std::string run_dir = (stack.dir / "run").string();
  std::filesystem::create_directories(run_dir);
  FsfreezeWriter safe(run_dir, stack.mounts(), false);
  for (int signo : {SIGABRT, SIGSEGV, SIGKILL, SIGTERM}) {
    CAPTURE(signo);
    stack.make_dirty();
    auto ctx = quiesce::test::context("signal", 20s, 30s);
    REQUIRE_MESSAGE(safe.writer->freeze(ctx).is_ok(), "froze");
    REQUIRE_FALSE(WriteProbe(stack.lower.mount_point()).finished_within(100ms));
    const auto killed = Clock::now();
    REQUIRE(::kill(holder_pid_from_record(run_dir), signo) == 0);
    // The holder thaws before it dies (caught signals); after SIGKILL the
    // writer's watch on its connection thaws from the record.
    CHECK(stack.both_writable_within(1s));
    MESSAGE("signal " << signo << ": writable " << ms_since(killed) << " ms after it");
    quiesce::HoldReport hold;
    REQUIRE(safe.writer->thaw(ctx, hold).is_ok());
    CHECK_FALSE(hold.continuous);
    CHECK_FALSE(hold.detail.empty());
  }
  // And the writer goes on with a new holder.
  auto ctx = quiesce::test::context("after", 20s, 20s);
  REQUIRE(safe.writer->freeze(ctx).is_ok());
  quiesce::HoldReport hold;
  REQUIRE(safe.writer->thaw(ctx, hold).is_ok());
  CHECK(hold.continuous);
}

TEST_CASE("freeze deadlock: SIGTERM to the agent thaws everything, a restarted agent finds "
          "nothing frozen and freezes for real") {
  StackedFilesystems stack;
  const auto socket = stack.dir / "agent.sock";
  auto start_agent = [&](bool invert) { return start_agent_on(stack, invert); };
  auto options = client_options(socket);
  options.timeout = 40s;

  {
    auto agent = start_agent(true);
    quiesce::client::AgentClient client(options);
    auto freezer = start_stuck_freeze(stack, client, options);
    CHECK_FALSE(WriteProbe(stack.lower.mount_point()).finished_within(50ms));
    const auto terminated = Clock::now();
    agent->signal(SIGTERM);
    CHECK_MESSAGE(stack.both_writable_within(1500ms),
                  "still frozen 1.5 s after SIGTERM to the agent");
    MESSAGE("writable " << ms_since(terminated) << " ms after SIGTERM");
    CHECK(agent->wait_for(10s).has_value());
    freezer.join();
    std::filesystem::remove(socket);
  }
  // A new agent (the safe order): recovery finds nothing frozen, and a
  // session freezes both filesystems for real.
  auto agent = start_agent(false);
  quiesce::client::AgentClient client(options);
  CHECK(stack.both_writable_within(1s));
  auto created = client.create_session();
  REQUIRE(created.ok());
  const std::string id = created.body["id"];
  stack.make_dirty();
  auto frozen = client.freeze(id);
  REQUIRE_MESSAGE(frozen.ok(), quiesce::test::describe(frozen));
  CHECK_FALSE(WriteProbe(stack.upper.mount_point()).finished_within(200ms));
  auto thawed = client.thaw(id);
  REQUIRE(thawed.ok());
  CHECK(thawed.body["verdict"]["continuous"] == true);
  CHECK(stack.both_writable_within(2s));
}

TEST_CASE("freeze deadlock: SIGKILL to the agent and its holder during a stuck freeze, a new agent "
          "thaws both filesystems") {
  StackedFilesystems stack;
  const auto socket = stack.dir / "agent.sock";
  auto start_agent = [&](bool invert) { return start_agent_on(stack, invert); };
  auto options = client_options(socket);
  options.timeout = 5s;

  auto agent = start_agent(true);
  quiesce::client::AgentClient client(options);
  auto freezer = start_stuck_freeze(stack, client, options);
  REQUIRE_FALSE(WriteProbe(stack.lower.mount_point()).finished_within(50ms));
  // The whole process group, as systemd's SIGKILL to a unit's cgroup: the
  // holder's freezing thread is inside the kernel and cannot die yet.
  REQUIRE(::kill(-agent->pid(), SIGKILL) == 0);
  CHECK(agent->wait_for(5s).has_value());
  freezer.join();
  std::filesystem::remove(socket);
  const auto restarted = Clock::now();
  auto next = start_agent(false);
  CHECK_MESSAGE(stack.both_writable_within(3s), "still frozen after the new agent's recovery: "
                                                    << quiesce::test::read_text(stack.dir / "agent.log"));
  MESSAGE("both writable " << ms_since(restarted) << " ms after the new agent started");
  auto log = quiesce::test::read_text(stack.dir / "agent.log");
  CHECK(log.find("fsfreeze recovery: thawed " + stack.lower.mount_point()) != std::string::npos);
}

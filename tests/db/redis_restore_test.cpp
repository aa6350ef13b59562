// Restore-verified consistency for the redis writer, and the difference it
// makes. Redis' data dir sits on a loop-mounted ext4; a workload SETs keys
// and records each one Redis acknowledged; a checkpoint goes through the
// real agent binary with the image copied while frozen; the copy is mounted
// somewhere new, a fresh redis-server loads it, and every key acknowledged
// before the freeze request must be there.
//
// Without AOF and with a save policy that has not fired, fsfreeze alone
// snapshots an RDB file that misses the recent writes; with the redis
// writer (BGSAVE at freeze) none are missing. Both outcomes are asserted.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <vector>

#include "host-bridge/client/agent_client.hpp"
#include "tests/db/redis_server.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/loop_image.hpp"
#include "tests/support/running_agent.hpp"

using namespace std::chrono_literals;
using quiesce::test::RedisClient;
using quiesce::test::RedisServer;
using quiesce::test::RedisServerOptions;

using quiesce::test::RunningAgent;
using quiesce::test::agent_config;
using quiesce::test::read_text;
using quiesce::test::describe;

namespace {

void must_run(const std::vector<std::string>& argv) {
  std::string output;
  const int code = quiesce::test::run_command(argv, &output);
  std::string command;
  for (const auto& arg : argv) {
    command += arg + " ";
  }
  INFO("command: " << command << "\noutput: " << output);
  REQUIRE(code == 0);
}

// SETs w:<n> one at a time on its own connection, as an application would,
// and records n once Redis answered OK.
class Workload {
 public:
  explicit Workload(std::string socket) : socket_(std::move(socket)) {
    thread_ = std::jthread([this](std::stop_token stop) { run(stop); });
  }
  ~Workload() { stop(); }
  Workload(const Workload&) = delete;
  Workload& operator=(const Workload&) = delete;

  void stop() {
    if (thread_.joinable()) {
      thread_.request_stop();
      thread_.join();
    }
  }
  [[nodiscard]] std::size_t count() const {
    std::lock_guard lock(mutex_);
    return acked_.size();
  }
  [[nodiscard]] std::vector<long> acknowledged() const {
    std::lock_guard lock(mutex_);
    return acked_;
  }

 private:
  void run(const std::stop_token& stop) {
    RedisClient client(socket_, 10s);
    for (long n = 1; !stop.stop_requested(); ++n) {
      if (client.command({"SET", "w:" + std::to_string(n), std::string(100, 'x')}) != "OK") {
        break;
      }
      {
        std::lock_guard lock(mutex_);
        acked_.push_back(n);
      }
      std::this_thread::sleep_for(1ms);
    }
  }

  std::string socket_;
  mutable std::mutex mutex_;
  std::vector<long> acked_;
  std::jthread thread_;
};

struct Outcome {
  std::size_t acked_before_freeze = 0;
  std::size_t missing = 0;
  std::size_t restored_keys = 0;
  bool continuous = false;
  double freeze_ms = 0;
  nlohmann::json artifacts;
};

// One checkpoint-and-restore round. `with_writer`: the redis writer joins
// the fsfreeze writer in the agent's config.
Outcome checkpoint_and_restore(const std::string& label, bool with_writer, RedisServerOptions options) {
  Outcome outcome;
  quiesce::test::TempDir dir("redis-restore-" + label);
  quiesce::test::LoopImage data;
  data.create((dir / "data.img").string(), (dir / "data").string());
  const auto redis_dir = std::filesystem::path(data.mount_point()) / "redis";

  nlohmann::json writers = nlohmann::json::array();
  auto server = std::make_unique<RedisServer>(dir / "server", redis_dir, options);
  if (with_writer) {
    writers.push_back({{"type", "redis"}, {"name", "cache"}, {"options", {{"socket", server->socket()}}}});
  }
  writers.push_back({{"type", "fsfreeze"}, {"name", "fs"}, {"options", {{"mounts", {data.mount_point()}}}}});
  RunningAgent agent(dir, agent_config(dir, writers));
  auto client = agent.client();

  // Older data that is on disk already: the RDB file exists, it is only stale.
  {
    RedisClient setup(server->socket());
    REQUIRE(setup.command({"SET", "seed", "1"}) == "OK");
    REQUIRE(setup.command({"SAVE"}) == "OK");
  }

  auto workload = std::make_unique<Workload>(server->socket());
  REQUIRE(quiesce::test::eventually(10s, [&] { return workload->count() >= 500; }));

  auto created = client.create_session({{"checkpoint_id", "cp-redis-" + label}});
  REQUIRE_MESSAGE(created.ok(), describe(created));
  const std::string id = created.body["id"];
  const auto before_freeze = workload->acknowledged();
  const auto freeze_sent = std::chrono::steady_clock::now();
  auto frozen = client.freeze(id);
  outcome.freeze_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - freeze_sent).count();
  const std::string frozen_text = describe(frozen) + "\n" + read_text(dir / "agent.log");
  REQUIRE_MESSAGE(frozen.ok(), frozen_text);
  must_run({"cp", "--sparse=always", (dir / "data.img").string(), (dir / "copy.img").string()});
  auto thawed = client.thaw(id);
  REQUIRE_MESSAGE(thawed.ok(), describe(thawed));
  outcome.continuous = thawed.body["verdict"]["continuous"] == true;
  auto completed = client.complete(id, "snap-" + label);
  REQUIRE_MESSAGE(completed.ok(), describe(completed));
  outcome.artifacts = completed.body["artifacts"];
  // The workload carries on after the thaw.
  const auto at_thaw = workload->count();
  CHECK(quiesce::test::eventually(10s, [&] { return workload->count() > at_thaw + 50; }));
  workload.reset();
  server.reset();  // before the mount goes away

  // Restore: the copy mounted somewhere new, a fresh server loading it.
  quiesce::test::LoopImage restored;
  restored.attach((dir / "copy.img").string(), (dir / "restored").string());
  RedisServer restored_server(dir / "restored-server",
                              std::filesystem::path(restored.mount_point()) / "redis", options);
  RedisClient check(restored_server.socket(), 10s);
  REQUIRE(check.command({"GET", "seed"}) == "1");
  std::unordered_set<std::string> present;
  {
    std::string keys = check.command({"KEYS", "w:*"});
    std::size_t start = 0;
    while (start < keys.size()) {
      auto end = keys.find('\n', start);
      if (end == std::string::npos) {
        end = keys.size();
      }
      present.insert(keys.substr(start, end - start));
      start = end + 1;
    }
  }
  outcome.acked_before_freeze = before_freeze.size();
  outcome.restored_keys = present.size();
  for (auto n : before_freeze) {
    if (!present.contains("w:" + std::to_string(n))) {
      ++outcome.missing;
    }
  }
  MESSAGE("redis restore (" << label << "): " << outcome.acked_before_freeze
          << " keys acknowledged before the freeze request, " << outcome.missing
          << " missing from the restored copy (" << outcome.restored_keys
          << " w:* keys restored); freeze answered in " << outcome.freeze_ms << " ms");
  return outcome;
}

bool running_as_root() { return ::geteuid() == 0; }

}  // namespace

TEST_CASE("redis restore: without AOF, fsfreeze alone loses recent writes - the redis writer loses none") {
  if (!running_as_root() || !quiesce::test::redis_server_available()) {
    MESSAGE("needs root (loop devices, mount, FIFREEZE) and redis-server; skipping");
    return;
  }
  // A save policy that will not fire during the test: the RDB file on disk
  // is the one written at setup.
  RedisServerOptions options;
  options.save = "3600 1";
  const auto without = checkpoint_and_restore("fsfreeze-only", false, options);
  CHECK(without.continuous);
  CHECK_MESSAGE(without.missing > 0,
                "fsfreeze alone should have snapshotted a stale RDB file");
  CHECK(without.missing == without.acked_before_freeze);

  const auto with = checkpoint_and_restore("redis-writer", true, options);
  CHECK(with.continuous);
  CHECK_MESSAGE(with.missing == 0, with.missing << " of " << with.acked_before_freeze
                                                << " acknowledged keys are missing");
  CAPTURE(with.artifacts.dump());
  CHECK(with.artifacts["cache"]["persistence"] == "rdb");
  CHECK(with.artifacts["cache"]["bgsave_ms"].is_number());
}

TEST_CASE("redis restore: with AOF (everysec), a checkpoint through the agent keeps every acknowledged key") {
  if (!running_as_root() || !quiesce::test::redis_server_available()) {
    MESSAGE("needs root (loop devices, mount, FIFREEZE) and redis-server; skipping");
    return;
  }
  RedisServerOptions options;
  options.aof = true;
  options.appendfsync = "everysec";
  const auto with = checkpoint_and_restore("aof", true, options);
  CHECK(with.continuous);
  CHECK_MESSAGE(with.missing == 0, with.missing << " of " << with.acked_before_freeze
                                                << " acknowledged keys are missing");
  CAPTURE(with.artifacts.dump());
  CHECK(with.artifacts["cache"]["persistence"] == "aof");
  CHECK(with.artifacts["cache"]["appendfsync"] == "everysec");
}

#pragma once
// A private redis-server for db tests: a generated config in a temp dir,
// no TCP port, a Unix socket in the temp dir, its data `dir` wherever the
// test says (a loop mount for restore tests), running in the foreground as a
// child process that is killed when the object goes away, even when the
// test failed half-way. And a minimal hiredis client for the tests' side.

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/processes.hpp"

struct redisContext;

namespace quiesce::test {

struct RedisServerOptions {
  bool aof = false;
  std::string appendfsync = "everysec";
  std::string save;  // "" = no save policy; "3600 1" etc.
  std::string requirepass;
  std::vector<std::string> extra_lines;  // more config lines
};

// True when redis-server is installed (tests skip with a message otherwise).
[[nodiscard]] bool redis_server_available();

class RedisServer {
 public:
  // Config, socket and log go to `work_dir`; data to `data_dir` (created).
  RedisServer(const std::filesystem::path& work_dir, const std::filesystem::path& data_dir,
              RedisServerOptions options = {});
  ~RedisServer() = default;
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  [[nodiscard]] const std::string& socket() const { return socket_; }
  [[nodiscard]] const std::filesystem::path& log() const { return log_; }
  // SIGKILL, no save: as if the server crashed.
  void kill();
  [[nodiscard]] bool running() { return process_ && process_->running(); }

 private:
  std::string socket_;
  std::filesystem::path log_;
  std::unique_ptr<ChildProcess> process_;
};

// A blocking client for the test's own commands.
class RedisClient {
 public:
  explicit RedisClient(const std::string& socket, std::chrono::milliseconds timeout = std::chrono::seconds(5));
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  [[nodiscard]] bool connected() const;
  // The reply as text (strings, status, errors "ERR ...", integers in
  // decimal; arrays as their elements joined by '\n'); "<io error>" when the
  // connection failed or timed out.
  std::string command(const std::vector<std::string>& argv);
  // Several commands in one round trip.
  std::vector<std::string> pipeline(const std::vector<std::vector<std::string>>& commands);

 private:
  redisContext* context_ = nullptr;
};

// "key:value" from an INFO section.
[[nodiscard]] std::string info_field(RedisClient& client, const std::string& section,
                                     const std::string& key);

}  // namespace quiesce::test

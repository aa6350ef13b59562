#pragma once
// The real quiesce-agent binary for a test: writes the config into the test's
// temp dir, starts the agent there (killed with its process group when the
// object goes away), waits for its socket, and hands out clients for it.

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "host-bridge/client/agent_client.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

namespace quiesce::test {

class RunningAgent {
 public:
  // `config` must listen on `dir / "agent.sock"`; the agent's stdout and
  // stderr go to `dir / "agent.out"`.
  RunningAgent(const TempDir& dir, const nlohmann::json& config);

  [[nodiscard]] client::AgentClient client(
      std::chrono::milliseconds timeout = std::chrono::seconds(30)) const;

  std::filesystem::path socket;
  std::unique_ptr<ChildProcess> process;
};

// The config the agent tests start from, everything in `dir`: listening on
// `dir / "agent.sock"` only (as RunningAgent expects; no vsock in a test),
// state and run dirs, and a debug log in `dir / "agent.log"` to attach to a
// failure message. A test adds to it or changes it where it needs more.
nlohmann::json agent_config(const TempDir& dir, nlohmann::json writers);

// A result as one line for failure messages.
std::string describe(const client::Result& result);

// The whole file, or "" when it cannot be read.
std::string read_text(const std::filesystem::path& path);

}  // namespace quiesce::test

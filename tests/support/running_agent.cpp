#include "tests/support/running_agent.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <utility>

namespace quiesce::test {

RunningAgent::RunningAgent(const TempDir& dir, const nlohmann::json& config)
    : socket(dir / "agent.sock") {
  const auto config_path = dir / "agent.json";
  std::ofstream(config_path) << config.dump(2);
  process = std::make_unique<ChildProcess>(
      std::vector<std::string>{built_binary("quiesce-agent").string(), "--config",
                               config_path.string()},
      dir / "agent.out");
  REQUIRE_MESSAGE(eventually(std::chrono::seconds(10),
                             [&] { return std::filesystem::exists(socket); }),
                  "the agent did not open its socket; see " << (dir / "agent.out").string());
}

client::AgentClient RunningAgent::client(std::chrono::milliseconds timeout) const {
  client::ClientOptions options;
  options.endpoint = client::Endpoint::parse("unix:" + socket.string());
  options.timeout = timeout;
  return client::AgentClient(options);
}

nlohmann::json agent_config(const TempDir& dir, nlohmann::json writers) {
  return {{"listen", {{"unix", {{"path", (dir / "agent.sock").string()}}}, {"vsock", false}}},
          {"state_dir", (dir / "state").string()},
          {"run_dir", (dir / "run").string()},
          {"log", {{"target", "file"}, {"file", (dir / "agent.log").string()}, {"level", "debug"}}},
          {"writers", std::move(writers)}};
}

std::string describe(const client::Result& result) {
  return std::to_string(result.status) + " " + result.body.dump();
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace quiesce::test

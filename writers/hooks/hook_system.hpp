#pragma once
// What the hooks writer needs from the OS it runs on, chosen by CMake
// (hook_system_linux.cpp, hook_system_windows.cpp) so hooks_writer.cpp has
// no #ifdef: where hooks live, the environment they start with, and the
// output pipes of helpers a hook leaves running.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/logger.h>

#include "platform/subprocess.hpp"

namespace quiesce::platform {
class LingeringOutput;
}

namespace quiesce::writers::hooks {

constexpr std::size_t max_hook_output_bytes = 64 * 1024;

// Linux: /etc/quiesce/hooks.d; Windows: C:\ProgramData\Quiesce\hooks.d
// (under %ProgramData%, where the MSI puts it).
[[nodiscard]] std::string default_hook_directory();
// open-vm-tools runs these around its backupScripts.d directory (scriptOps.c:
// the freeze script before the directory's scripts, the thaw script after
// them at thaw and at freezeFail); the vmware style does the same.
[[nodiscard]] std::string default_legacy_freeze_script();
[[nodiscard]] std::string default_legacy_thaw_script();

// What every hook's environment starts with, before the QUIESCE_*
// variables: a fixed PATH and what the OS's interpreters need, nothing
// the agent's own environment might have added.
[[nodiscard]] std::vector<std::string> hook_base_environment();

// Why a run-dir record of frozen hooks may not be trusted ("" when it may):
// it says what runs with the agent's rights, so only one nobody but the
// agent's own user could have written counts.
[[nodiscard]] std::string record_problem(const std::string& path);

// Keeps reading the output pipes that helpers a hook left running still
// hold, where the OS needs that (Linux: a closed pipe kills the helper with
// SIGPIPE at its next write; see platform/linux/lingering_output.hpp).
// Windows has no SIGPIPE: nothing to keep, hand_over() is empty there.
class HelperOutput {
 public:
  HelperOutput();
  ~HelperOutput();
  HelperOutput(const HelperOutput&) = delete;
  HelperOutput& operator=(const HelperOutput&) = delete;

  // The SubprocessSpec::hand_over for one hook run (empty where unneeded).
  [[nodiscard]] std::function<void(platform::OutputStream, int)> hand_over(
      std::shared_ptr<spdlog::logger> logger, std::string writer, std::string hook_name,
      std::string argument);
  // Ids of the pipes being read on, for the run-dir record (Linux: their
  // inodes), so a restarted agent can find them again.
  [[nodiscard]] std::vector<std::uint64_t> pipe_ids() const;
  void forget_pipe_ids();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// For a restarted agent: opens again the pipes listed in a record
// (`pipe_ids` of the dead agent) and reads them through `reader`. Returns
// how many it found.
[[nodiscard]] std::size_t reattach_helper_pipes(const nlohmann::json& pipe_ids,
                                                platform::LingeringOutput& reader,
                                                const std::shared_ptr<spdlog::logger>& logger,
                                                const std::string& writer);

}  // namespace quiesce::writers::hooks

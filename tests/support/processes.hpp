#pragma once
// A child process for tests: started in its own process group, its output
// going to a file, and killed (the whole group) when the object goes away, so
// a failing test leaves no process behind.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace quiesce::test {

class ChildProcess {
 public:
  // argv[0] is the program path. stdout+stderr go to `log_path` (or /dev/null).
  ChildProcess(std::vector<std::string> argv, const std::filesystem::path& log_path = {},
               std::vector<std::string> extra_env = {});
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  [[nodiscard]] pid_t pid() const { return pid_; }
  void signal(int signo) const;
  // Exit status (as from waitpid) or nullopt when it is still running at the deadline.
  std::optional<int> wait_for(std::chrono::milliseconds timeout);
  [[nodiscard]] bool running();

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// Runs a command to completion; returns its exit code (-1 if it could not run).
int run_command(const std::vector<std::string>& argv, std::string* output = nullptr);

// A child of `parent` whose command name (the kernel's 15 characters)
// starts with `name_prefix`, e.g. the agent's quiesce-freeze-holder.
std::optional<pid_t> child_named(pid_t parent, const std::string& name_prefix);

// Path of a binary built by this build tree.
std::filesystem::path built_binary(const std::string& name);

// Polls `predicate` every 5 ms until it holds or `timeout` passes.
template <typename Predicate>
bool eventually(std::chrono::milliseconds timeout, Predicate predicate);

}  // namespace quiesce::test

#include <thread>

template <typename Predicate>
bool quiesce::test::eventually(std::chrono::milliseconds timeout, Predicate predicate) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (predicate()) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return predicate();
}

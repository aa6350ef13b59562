#include "host-bridge/checkpoint/process.hpp"

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <ctime>
#include <string_view>

#include "platform/linux/subprocess.hpp"

extern char** environ;

namespace quiesce::host {

namespace {

// run_subprocess takes the path execve runs; a bare name (qemu-img, mkfs.ext4)
// is looked up in PATH here, as a user typing it would expect.
std::string resolve_program(const std::string& name) {
  if (name.find('/') != std::string::npos) {
    return name;
  }
  const char* path = std::getenv("PATH");
  std::string_view dirs = path != nullptr ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  while (!dirs.empty()) {
    const auto colon = dirs.find(':');
    const std::string dir(dirs.substr(0, colon));
    dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
    const std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return name;  // execve fails and the result says "cannot run"
}

}  // namespace

CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  CommandResult result;
  if (argv.empty()) {
    result.output = "empty command";
    return result;
  }
  platform::SubprocessSpec spec;
  spec.argv = argv;
  spec.argv[0] = resolve_program(argv[0]);
  for (char** e = environ; *e != nullptr; ++e) {
    spec.env.emplace_back(*e);
  }
  spec.working_dir = "";
  spec.deadline = std::chrono::steady_clock::now() + timeout;
  // Both streams in the order their lines arrived: messages read like a terminal's.
  spec.on_line = [&](platform::OutputStream, std::string_view line) {
    result.output.append(line);
    result.output.push_back('\n');
  };
  const auto ran = platform::run_subprocess(spec);
  switch (ran.outcome) {
    case platform::Outcome::exited: result.exit_code = ran.exit_code; break;
    case platform::Outcome::signaled: result.exit_code = 128 + ran.signal; break;
    case platform::Outcome::timed_out:
    case platform::Outcome::stopped:
      result.timed_out = true;
      result.exit_code = 128 + (ran.signal != 0 ? ran.signal : SIGKILL);
      break;
    case platform::Outcome::spawn_failed:
      result.exit_code = 127;
      result.output = "cannot run " + argv[0] + ": " + ran.error;
      break;
  }
  while (!result.output.empty() && (result.output.back() == '\n' || result.output.back() == ' ')) {
    result.output.pop_back();
  }
  return result;
}

std::string render_argv(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) {
      out += ' ';
    }
    const bool plain = !a.empty() && a.find_first_of(" \t'\"\\$`;&|<>*?()") == std::string::npos;
    if (plain) {
      out += a;
    } else {
      out += '\'';
      for (char c : a) {
        if (c == '\'') {
          out += "'\\''";
        } else {
          out += c;
        }
      }
      out += '\'';
    }
  }
  return out;
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

std::string iso_time_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace quiesce::host

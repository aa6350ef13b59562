// The hooks writer on Linux (hook_system.hpp): /etc/quiesce/hooks.d, a
// root shell's PATH, and helpers' output pipes read on after their hook
// exited (SIGPIPE would kill them otherwise).
#include "writers/hooks/hook_system.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string_view>

#include "platform/linux/lingering_output.hpp"

namespace quiesce::writers::hooks {

using platform::OutputStream;

std::string default_hook_directory() { return "/etc/quiesce/hooks.d"; }
std::string default_legacy_freeze_script() { return "/usr/sbin/pre-freeze-script"; }
std::string default_legacy_thaw_script() { return "/usr/sbin/post-thaw-script"; }

std::vector<std::string> hook_base_environment() {
  // What hook scripts expect of a root shell.
  return {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"};
}

std::string record_problem(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || st.st_uid != ::geteuid() ||
      (st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return "is not owned by the agent's user or is writable by others";
  }
  return "";
}

struct HelperOutput::State {
  // Inodes of the pipes handed to `lingering` (recorded, see recover_stale_hooks).
  std::vector<std::uint64_t> inodes;
  // Last, so it stops (and stops calling into the logger) before the rest goes.
  platform::LingeringOutput lingering;
};

HelperOutput::HelperOutput() : state_(std::make_unique<State>()) {}
HelperOutput::~HelperOutput() = default;

std::vector<std::uint64_t> HelperOutput::pipe_ids() const { return state_->inodes; }
void HelperOutput::forget_pipe_ids() { state_->inodes.clear(); }

// A helper the hook left running still holds this pipe: read on, so its
// next write does not die of SIGPIPE (and take its cleanup with it), and
// its lines still reach the log. See lingering_output.hpp for why not a file.
std::function<void(OutputStream, int)> HelperOutput::hand_over(
    std::shared_ptr<spdlog::logger> logger, std::string writer, std::string hook_name,
    std::string argument) {
  return [state = state_.get(), logger = std::move(logger), writer = std::move(writer),
          hook_name = std::move(hook_name),
          argument = std::move(argument)](OutputStream stream, int fd) {
    const auto* stream_name = stream == OutputStream::out ? "stdout" : "stderr";
    logger->info("hooks '{}': {} {} exited; something it left running still holds its {}, "
                 "read on until it closes",
                 writer, hook_name, argument, stream_name);
    auto on_line = [logger, writer, hook_name](OutputStream s, std::string_view line) {
      if (s == OutputStream::out) {
        logger->info("hooks '{}': {} (background): {}", writer, hook_name, line);
      } else {
        logger->warn("hooks '{}': {} (background, stderr): {}", writer, hook_name, line);
      }
    };
    auto on_closed = [logger, writer, hook_name, stream_name](std::size_t dropped) {
      logger->info("hooks '{}': {}: every background writer of its {} has closed it", writer,
                   hook_name, stream_name);
      if (dropped > 0) {
        logger->warn("hooks '{}': {}: {} byte(s) of background output not logged", writer,
                     hook_name, dropped);
      }
    };
    struct stat st {};
    if (::fstat(fd, &st) == 0) {
      // For a restart after a crash: it finds the pipe again by its inode.
      state->inodes.push_back(static_cast<std::uint64_t>(st.st_ino));
    }
    if (!state->lingering.adopt(fd, stream, on_line, on_closed, max_hook_output_bytes)) {
      logger->warn("hooks '{}': too many hook helpers hold output pipes; closing the {} of {} "
                   "(its next write there fails)",
                   writer, stream_name, hook_name);
    }
  };
}

// The helpers a dead agent's hooks left running write to pipes nobody reads
// any more; the first write after the release (mysql-flush.sh's) would kill
// them with SIGPIPE before their unlock and cleanup. A pipe can be opened
// again through /proc/<pid>/fd of a process that holds it: that makes the
// restarted agent a reader before it runs the releases.
std::size_t reattach_helper_pipes(const nlohmann::json& inodes,
                                  platform::LingeringOutput& reader,
                                  const std::shared_ptr<spdlog::logger>& logger,
                                  const std::string& writer) {
  std::vector<std::string> wanted;
  for (const auto& inode : inodes) {
    if (inode.is_number_unsigned()) {
      wanted.push_back("pipe:[" + std::to_string(inode.get<std::uint64_t>()) + "]");
    }
  }
  std::size_t attached = 0;
  std::error_code ec;
  for (const auto& process : std::filesystem::directory_iterator("/proc", ec)) {
    const auto pid = process.path().filename().string();
    if (wanted.empty() || pid.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    std::error_code fd_ec;
    for (const auto& fd : std::filesystem::directory_iterator(process.path() / "fd", fd_ec)) {
      std::error_code link_ec;
      const auto target = std::filesystem::read_symlink(fd.path(), link_ec).string();
      auto it = std::find(wanted.begin(), wanted.end(), target);
      if (link_ec || it == wanted.end()) {
        continue;
      }
      const int read_end = ::open(fd.path().c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
      if (read_end < 0) {
        continue;
      }
      wanted.erase(it);
      auto on_line = [logger, writer](OutputStream, std::string_view line) {
        logger->warn("hooks recovery: '{}' helper (background): {}", writer, line);
      };
      if (reader.adopt(read_end, OutputStream::err, on_line, {}, max_hook_output_bytes)) {
        ++attached;
      }
    }
  }
  return attached;
}

}  // namespace quiesce::writers::hooks

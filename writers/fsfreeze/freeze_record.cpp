#include "writers/fsfreeze/freeze_record.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "platform/linux/fsfreeze.hpp"
#include "platform/linux/mountinfo.hpp"

namespace quiesce::writers::fsfreeze {

namespace {

std::string sanitize(const std::string& name) {
  std::string result;
  for (char c : name) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.';
    result.push_back(plain ? c : '_');
  }
  return result.empty() ? "fsfreeze" : result;
}

}  // namespace

std::string record_path(const std::string& run_dir, const std::string& writer_name) {
  return (std::filesystem::path(run_dir) /
          (std::string(record_prefix) + "-" + sanitize(writer_name) + ".json"))
      .string();
}

std::string write_record(const std::string& path, const FreezeRecord& record) {
  nlohmann::json json{{"version", 1},
                      {"writer", record.writer},
                      {"session_id", record.session_id},
                      {"agent_pid", record.agent_pid},
                      {"holder_pid", record.holder_pid},
                      {"written_at", record.written_at},
                      {"mounts", nlohmann::json::array()}};
  for (const auto& mount : record.mounts) {
    json["mounts"].push_back({{"mount_point", mount.mount_point},
                              {"device", mount.device},
                              {"mount_id", mount.mount_id},
                              {"fstype", mount.fstype},
                              {"wave", mount.wave}});
  }
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  const std::string temp = path + ".tmp";
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return "cannot write " + temp + ": " + std::strerror(errno);
  }
  auto text = json.dump(2) + "\n";
  std::size_t written = 0;
  while (written < text.size()) {
    auto n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      int error = errno;
      ::close(fd);
      return "cannot write " + temp + ": " + std::strerror(error);
    }
    written += static_cast<std::size_t>(n);
  }
  // The run dir is normally tmpfs, but a test or an admin may point it at a
  // disk: make the record durable before anything is frozen.
  ::fsync(fd);
  ::close(fd);
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    return "cannot rename " + temp + " to " + path + ": " + std::strerror(errno);
  }
  return "";
}

std::optional<FreezeRecord> read_record(const std::string& path, std::string& error) {
  std::ifstream in(path);
  if (!in) {
    error = "cannot read " + path;
    return std::nullopt;
  }
  std::stringstream text;
  text << in.rdbuf();
  auto json = nlohmann::json::parse(text.str(), nullptr, false);
  if (json.is_discarded() || !json.is_object() || !json.contains("mounts") ||
      !json["mounts"].is_array()) {
    error = path + " is not a fsfreeze record";
    return std::nullopt;
  }
  FreezeRecord record;
  record.writer = json.value("writer", "");
  record.session_id = json.value("session_id", "");
  record.agent_pid = json.value("agent_pid", std::int64_t{0});
  record.holder_pid = json.value("holder_pid", std::int64_t{0});
  record.written_at = json.value("written_at", "");
  for (const auto& item : json["mounts"]) {
    if (!item.is_object() || !item.contains("mount_point") || !item["mount_point"].is_string()) {
      error = path + ": a mount without mount_point";
      return std::nullopt;
    }
    RecordedMount mount;
    mount.mount_point = item["mount_point"].get<std::string>();
    mount.device = item.value("device", "");
    mount.mount_id = item.value("mount_id", std::uint64_t{0});
    mount.fstype = item.value("fstype", "");
    mount.wave = item.value("wave", 0);
    record.mounts.push_back(std::move(mount));
  }
  return record;
}

namespace {

struct PendingThaw {
  std::string mount_point;
  std::mutex mutex;
  std::condition_variable done;
  std::optional<platform::FreezeResult> result;
};

// How long thaw_recorded waits for a FITHAW (normally a few microseconds).
constexpr auto blocked_thaw_patience = std::chrono::milliseconds(500);

}  // namespace

ThawOutcome thaw_recorded(const std::vector<RecordedMount>& mounts) {
  ThawOutcome outcome;
  std::vector<std::shared_ptr<PendingThaw>> pending;
  auto table = platform::read_mountinfo();
  auto ordered = mounts;
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const auto& a, const auto& b) { return a.wave > b.wave; });
  for (const auto& mount : ordered) {
    const platform::MountEntry* entry =
        table.table ? table.table->find_mount_point(mount.mount_point) : nullptr;
    if (entry == nullptr) {
      outcome.skipped.push_back(mount.mount_point + " (no longer mounted)");
      continue;
    }
    // Never thaw a filesystem that merely sits where the recorded one was.
    if ((!mount.device.empty() && entry->device.to_string() != mount.device) ||
        (mount.mount_id != 0 && entry->mount_id != mount.mount_id)) {
      outcome.skipped.push_back(mount.mount_point + " (now a different mount: " +
                                entry->device.to_string() + ")");
      continue;
    }
    int fd = platform::open_mount_point(mount.mount_point);
    if (fd < 0) {
      outcome.failed.push_back(mount.mount_point + ": cannot open: " + std::strerror(-fd));
      continue;
    }
    // A FITHAW on a filesystem whose FIFREEZE is still inside the kernel
    // (a dead holder's stuck freeze) waits for that freeze, which may be
    // waiting for a filesystem further down the list: each thaw gets its
    // own thread, and one that does not return in time is left to finish
    // (it thaws its filesystem once the freeze returns) rather than block
    // the thaws of the others.
    auto thaw = std::make_shared<PendingThaw>();
    thaw->mount_point = mount.mount_point;
    std::thread([thaw, fd] {
      auto result = platform::thaw_filesystem(fd);
      ::close(fd);
      std::lock_guard lock(thaw->mutex);
      thaw->result = result;
      thaw->done.notify_all();
    }).detach();
    pending.push_back(std::move(thaw));
  }
  const auto deadline = std::chrono::steady_clock::now() + blocked_thaw_patience;
  for (const auto& thaw : pending) {
    std::unique_lock lock(thaw->mutex);
    if (!thaw->done.wait_until(lock, deadline, [&] { return thaw->result.has_value(); })) {
      outcome.failed.push_back(thaw->mount_point +
                               ": the thaw waits for a freeze still in the kernel; it completes "
                               "when that freeze returns");
    } else if (thaw->result->ok()) {
      outcome.thawed.push_back(thaw->mount_point);
    } else if (thaw->result->outcome() == platform::FreezeOutcome::not_frozen) {
      outcome.not_frozen.push_back(thaw->mount_point);
    } else {
      outcome.failed.push_back(thaw->mount_point + ": " + thaw->result->describe());
    }
  }
  return outcome;
}

bool process_has_live_thread(std::int64_t pid) {
  if (pid <= 0) {
    return false;
  }
  std::error_code ec;
  const auto tasks = std::filesystem::path("/proc") / std::to_string(pid) / "task";
  for (const auto& task : std::filesystem::directory_iterator(tasks, ec)) {
    std::ifstream stat(task.path() / "stat");
    std::string line;
    std::getline(stat, line);
    // "tid (comm) S ...": the state follows the last ')' (comm may hold any byte).
    auto close = line.rfind(')');
    if (close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z' &&
        line[close + 2] != 'X') {
      return true;
    }
  }
  return false;
}

ThawOutcome thaw_recorded_until_holder_gone(const std::vector<RecordedMount>& mounts,
                                            std::int64_t holder_pid,
                                            std::chrono::milliseconds patience) {
  auto outcome = thaw_recorded(mounts);
  const auto deadline = std::chrono::steady_clock::now() + patience;
  bool waiting = process_has_live_thread(holder_pid);
  while (waiting) {
    waiting = process_has_live_thread(holder_pid) && std::chrono::steady_clock::now() < deadline;
    if (waiting) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    // Once more after the holder is gone: its last call may have just returned.
    auto again = thaw_recorded(mounts);
    for (auto& mount : again.thawed) {
      if (std::find(outcome.thawed.begin(), outcome.thawed.end(), mount) == outcome.thawed.end()) {
        outcome.thawed.push_back(mount);
        std::erase(outcome.not_frozen, mount);
      }
    }
  }
  return outcome;
}

}  // namespace quiesce::writers::fsfreeze

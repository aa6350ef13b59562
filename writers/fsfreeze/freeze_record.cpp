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

ThawOutcome thaw_recorded(const std::vector<RecordedMount>& mounts) {
  ThawOutcome outcome;
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
    auto result = platform::thaw_filesystem(fd);
    ::close(fd);
    if (result.ok()) {
      outcome.thawed.push_back(mount.mount_point);
    } else if (result.outcome() == platform::FreezeOutcome::not_frozen) {
      outcome.not_frozen.push_back(mount.mount_point);
    } else {
      outcome.failed.push_back(mount.mount_point + ": " + result.describe());
    }
  }
  return outcome;
}

}  // namespace quiesce::writers::fsfreeze

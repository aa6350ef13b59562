#include "host-bridge/qemu/memory_state.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <thread>

#include "host-bridge/checkpoint/process.hpp"
#include "host-bridge/checkpoint/qmp_client.hpp"
#include "host-bridge/qemu/qemu_vm.hpp"
#include "platform/files.hpp"

namespace quiesce::host {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr const char* fd_name = "quiesce-state";
// Each QMP step; the save and the load themselves wait up to save_limit.
constexpr auto qmp_timeout = 30s;
constexpr auto save_limit = 30min;
// "Unlimited" for QEMU's max-bandwidth (bytes/s): 1 TiB/s.
constexpr std::uint64_t unlimited_bandwidth = std::uint64_t{1} << 40;

// The options of a -drive value ("file=a,,b,id=disk-x,if=none"): ",," is a
// literal comma. Returns the value of `key`, or "".
std::string drive_option(const std::string& value, const std::string& key) {
  std::vector<std::string> options(1);
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (value[i] == ',') {
      if (i + 1 < value.size() && value[i + 1] == ',') {
        options.back() += ',';
        ++i;
        continue;
      }
      options.emplace_back();
      continue;
    }
    options.back() += value[i];
  }
  for (const auto& option : options) {
    if (option.rfind(key + "=", 0) == 0) {
      return option.substr(key.size() + 1);
    }
  }
  return {};
}

std::string errno_text() { return std::strerror(errno); }

// Polls query-migrate until the migration (outgoing, or incoming on a
// destination) ends; the error carries QEMU's own description.
Status wait_for_migration(QmpClient& qmp, const char* what) {
  const auto deadline = Clock::now() + save_limit;
  while (Clock::now() < deadline) {
    auto info = qmp.execute("query-migrate");
    if (!info) {
      return info.error();
    }
    const auto status = info->value("status", std::string());
    if (status == "completed") {
      return ok_status();
    }
    if (status == "failed" || status == "cancelled") {
      return Error{ErrorKind::backend, std::string(what) + " " + status + ": " +
                                           info->value("error-desc", std::string("QEMU gave no reason"))};
    }
    std::this_thread::sleep_for(5ms);
  }
  return Error{ErrorKind::backend, std::string(what) + " did not finish within " +
                                       std::to_string(std::chrono::duration_cast<std::chrono::minutes>(save_limit).count()) +
                                       " min"};
}

Expected<std::string> sha256_of(const std::filesystem::path& file) {
  const std::vector<std::string> argv{"sha256sum", "--", file.string()};
  auto result = run_command(argv, 30min);
  if (result.exit_code != 0 || result.output.size() < 64) {
    return Error{ErrorKind::system, "`" + render_argv(argv) + "` failed: " + result.output};
  }
  return result.output.substr(0, 64);
}

Expected<std::vector<std::string>> read_command(const std::filesystem::path& file) {
  std::string text;
  if (!platform::read_whole_file(file.string(), text)) {
    return Error{ErrorKind::not_found, file.string() + " cannot be read: the VM's command line is unknown "
                                                       "(was it started by quiesce-host vm up?)"};
  }
  const auto j = json::parse(text, nullptr, false);
  if (!j.is_array() || j.empty()) {
    return Error{ErrorKind::invalid_input, file.string() + ": expected a JSON array (QEMU's argv)"};
  }
  std::vector<std::string> argv;
  for (const auto& a : j) {
    if (!a.is_string()) {
      return Error{ErrorKind::invalid_input, file.string() + ": expected an array of strings"};
    }
    argv.push_back(a.get<std::string>());
  }
  return argv;
}

}  // namespace

std::vector<std::string> incoming_command_line(const std::vector<std::string>& saved,
                                               const std::vector<std::string>& current) {
  // Where this host keeps the VM's QMP socket, console log and pid file is
  // not part of the machine the state was saved from: those options come
  // from the VM that loads it. A checkpoint imported from another VM would
  // otherwise start on that VM's pid file (locked while it runs) and socket.
  static const std::set<std::string> host_side{"-name", "-qmp", "-serial", "-pidfile"};
  auto current_value = [&](const std::string& option) -> const std::string* {
    for (std::size_t k = 0; k + 1 < current.size(); ++k) {
      if (current[k] == option) {
        return &current[k + 1];
      }
    }
    return nullptr;
  };
  // A disk's file and a channel's socket are the loading VM's, matched by id:
  // the guest sees the devices, not where the host keeps their backends.
  auto current_with_id = [&](const std::string& option, const std::string& value) -> const std::string* {
    const auto id = drive_option(value, "id");
    for (std::size_t k = 0; k + 1 < current.size(); ++k) {
      if (current[k] == option && !id.empty() && drive_option(current[k + 1], "id") == id) {
        return &current[k + 1];
      }
    }
    return nullptr;
  };
  std::vector<std::string> argv;
  for (std::size_t i = 0; i < saved.size(); ++i) {
    // The state was saved by a QEMU that may itself have been loaded from
    // a state: its own -S and -incoming are not part of the machine.
    if (saved[i] == "-S") {
      continue;
    }
    if (saved[i] == "-incoming" && i + 1 < saved.size()) {
      ++i;
      continue;
    }
    argv.push_back(saved[i]);
    if (i + 1 >= saved.size()) {
      continue;
    }
    const std::string* replacement = nullptr;
    if (host_side.count(saved[i]) != 0) {
      replacement = current_value(saved[i]);
    } else if (saved[i] == "-drive" || saved[i] == "-chardev") {
      replacement = current_with_id(saved[i], saved[i + 1]);
    } else {
      continue;
    }
    ++i;
    argv.push_back(replacement != nullptr ? *replacement : saved[i]);
  }
  return argv;
}

QemuMemoryState::~QemuMemoryState() {
  if (state_fd_ >= 0) {
    ::close(state_fd_);
  }
}

Status QemuMemoryState::pause() {
  const auto& config = vm_.config();
  if (auto command = read_command(config.command_file()); !command) {
    return command.error();
  }
  auto qmp = QmpClient::connect(config.qmp_socket().string(), qmp_timeout);
  if (!qmp) {
    return qmp.error();
  }
  auto info = qmp->execute("query-migrate");
  if (!info) {
    return info.error();
  }
  // QEMU names what forbids migrating this machine (a device without
  // migration support, a host device): asked before the VM is touched.
  if (auto reasons = info->find("blocked-reasons"); reasons != info->end() && reasons->is_array() &&
                                                    !reasons->empty()) {
    std::string text;
    for (const auto& r : *reasons) {
      text += (text.empty() ? "" : "; ") + r.get<std::string>();
    }
    return Error{ErrorKind::conflict, "QEMU cannot save this VM's memory: " + text};
  }
  const auto migration = info->value("status", std::string("none"));
  if (migration != "none" && migration != "completed" && migration != "failed" && migration != "cancelled") {
    return Error{ErrorKind::conflict, "a migration of this VM is already under way (" + migration + ")"};
  }
  auto state = qmp->execute("query-status");
  if (!state) {
    return state.error();
  }
  if (state->value("status", std::string()) != "running") {
    return Error{ErrorKind::conflict, "the VM is not running (QEMU's state: " +
                                          state->value("status", std::string("?")) +
                                          "); a memory checkpoint is taken of a running VM"};
  }
  auto params = qmp->execute("query-migrate-parameters");
  if (!params) {
    return params.error();
  }
  saved_bandwidth_ = params->value("max-bandwidth", std::uint64_t{0});
  const std::uint64_t limit = config.memory_save_bandwidth_mib_s == 0
                                  ? unlimited_bandwidth
                                  : std::uint64_t{config.memory_save_bandwidth_mib_s} * 1024 * 1024;
  if (auto set = qmp->execute("migrate-set-parameters", {{"max-bandwidth", limit}}); !set) {
    return set.error();
  }
  if (auto stopped = qmp->execute("stop"); !stopped) {
    (void)qmp->execute("migrate-set-parameters", {{"max-bandwidth", saved_bandwidth_}});
    return stopped.error();
  }
  return ok_status();
}

Expected<json> QemuMemoryState::save(const std::filesystem::path& checkpoint_dir) {
  const auto& config = vm_.config();
  auto command = read_command(config.command_file());
  if (!command) {
    return command.error();
  }
  const auto path = checkpoint_dir / state_file_name;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return Error{ErrorKind::system, "cannot create " + path.string() + ": " + errno_text()};
  }
  auto fail = [&](Error error) -> Expected<json> {
    ::close(fd);
    std::error_code ec;
    std::filesystem::remove(path, ec);
    if (!vm_.running()) {
      error.message = "QEMU exited while saving the VM's state (" + error.message + ")";
    }
    return error;
  };
  auto qmp = QmpClient::connect(config.qmp_socket().string(), qmp_timeout);
  if (!qmp) {
    return fail(qmp.error());
  }
  if (auto passed = qmp->pass_fd(fd_name, fd); !passed) {
    return fail(passed.error());
  }
  if (auto started = qmp->execute("migrate", {{"uri", std::string("fd:") + fd_name}}); !started) {
    (void)qmp->execute("closefd", {{"fdname", fd_name}});
    return fail(started.error());
  }
  if (auto done = wait_for_migration(*qmp, "saving the VM's state"); !done) {
    (void)qmp->execute("migrate_cancel");
    return fail(done.error());
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return fail(Error{ErrorKind::system, "fstat " + path.string() + ": " + errno_text()});
  }
  state_fd_ = fd;
  json memory = {{"file", state_file_name},
                 {"bytes", static_cast<std::uint64_t>(st.st_size)},
                 {"qemu_command", *command},
                 {"max_bandwidth_mib_s", config.memory_save_bandwidth_mib_s == 0
                                             ? json("unlimited")
                                             : json(config.memory_save_bandwidth_mib_s)}};
  return memory;
}

Status QemuMemoryState::undo_disk_snapshots(const std::vector<DiskSnapshot>& snapshots) {
  // QEMU gone (killed during the save): the VM is off and its next start
  // uses the images it ran from before (active-disks.json was not moved to
  // the overlays), so there is nothing to undo.
  if (snapshots.empty() || !vm_.running()) {
    return ok_status();
  }
  auto qmp = QmpClient::connect(vm_.config().qmp_socket().string(), qmp_timeout);
  if (!qmp) {
    return qmp.error();
  }
  for (const auto& snap : snapshots) {
    // An active commit of the overlay into the image it covers (named as
    // base: left out, QEMU would commit down to the bottom of the chain,
    // into files other checkpoints own). The overlay holds nothing yet, so
    // the job is ready at once; completing it moves the disk back.
    const std::string job = "quiesce-undo-" + snap.name;
    if (auto started = qmp->execute("block-commit", {{"job-id", job},
                                                     {"device", "disk-" + snap.name},
                                                     {"base", snap.image}});
        !started) {
      return Error{started.error().kind, "disk '" + snap.name + "': " + started.error().message};
    }
    bool completed = false;
    const auto deadline = Clock::now() + qmp_timeout;
    while (true) {
      if (Clock::now() > deadline) {
        (void)qmp->execute("block-job-cancel", {{"device", job}, {"force", true}});
        return Error{ErrorKind::backend, "disk '" + snap.name + "': the commit back into " + snap.image +
                                             " did not finish in time"};
      }
      auto jobs = qmp->execute("query-block-jobs");
      if (!jobs) {
        return jobs.error();
      }
      const json* mine = nullptr;
      for (const auto& j : *jobs) {
        if (j.value("device", std::string()) == job) {
          mine = &j;
        }
      }
      if (mine == nullptr) {
        break;  // gone: completed (auto-dismissed) or failed
      }
      if (!completed && mine->value("ready", false)) {
        if (auto complete = qmp->execute("block-job-complete", {{"device", job}}); !complete) {
          return Error{complete.error().kind, "disk '" + snap.name + "': " + complete.error().message};
        }
        completed = true;
      }
      std::this_thread::sleep_for(5ms);
    }
    auto blocks = qmp->execute("query-block");
    if (!blocks) {
      return blocks.error();
    }
    for (const auto& b : *blocks) {
      if (b.value("device", std::string()) == "disk-" + snap.name && b.contains("inserted") &&
          b["inserted"].value("file", std::string()) != snap.image) {
        return Error{ErrorKind::backend, "disk '" + snap.name + "' still runs from " +
                                             b["inserted"].value("file", std::string()) + ", not " + snap.image};
      }
    }
  }
  return ok_status();
}

Status QemuMemoryState::resume() {
  if (!vm_.running()) {
    return Error{ErrorKind::system, "QEMU is gone: the VM is off, nothing is left paused"};
  }
  auto qmp = QmpClient::connect(vm_.config().qmp_socket().string(), qmp_timeout);
  if (!qmp) {
    return qmp.error();
  }
  auto resumed = qmp->execute("cont");
  (void)qmp->execute("migrate-set-parameters", {{"max-bandwidth", saved_bandwidth_}});
  if (!resumed) {
    return resumed.error();
  }
  auto state = qmp->execute("query-status");
  if (state && state->value("status", std::string()) != "running") {
    return Error{ErrorKind::backend, "after cont QEMU is " + state->value("status", std::string("?")) +
                                         ", not running"};
  }
  return ok_status();
}

Status QemuMemoryState::seal(json& memory, const std::filesystem::path& checkpoint_dir) {
  const auto path = checkpoint_dir / memory.value("file", std::string(state_file_name));
  if (state_fd_ < 0) {
    return Error{ErrorKind::system, "no state file to seal"};
  }
  const int rc = ::fsync(state_fd_);
  const int saved_errno = errno;
  ::close(state_fd_);
  state_fd_ = -1;
  if (rc != 0) {
    return Error{ErrorKind::system, "fsync " + path.string() + ": " + std::strerror(saved_errno)};
  }
  auto sum = sha256_of(path);
  if (!sum) {
    return sum.error();
  }
  memory["sha256"] = *sum;
  return ok_status();
}

Status QemuMemoryState::verify(const json& memory, const std::filesystem::path& checkpoint_dir) {
  const auto file = memory.value("file", std::string());
  if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
    return Error{ErrorKind::invalid_input, "memory.file: expected a file name in the checkpoint, got \"" + file + "\""};
  }
  const auto path = checkpoint_dir / file;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return Error{ErrorKind::not_found, "memory state file " + path.string() + " is missing"};
  }
  const auto bytes = std::filesystem::file_size(path, ec);
  const auto recorded = memory.value("bytes", std::uint64_t{0});
  if (ec || bytes != recorded) {
    return Error{ErrorKind::invalid_input, "memory state file " + path.string() + " is " + std::to_string(bytes) +
                                               " bytes, the checkpoint recorded " + std::to_string(recorded) +
                                               " (truncated or replaced)"};
  }
  auto sum = sha256_of(path);
  if (!sum) {
    return sum.error();
  }
  if (*sum != memory.value("sha256", std::string())) {
    return Error{ErrorKind::invalid_input, "memory state file " + path.string() + " has sha256 " + *sum +
                                               ", the checkpoint recorded " + memory.value("sha256", std::string()) +
                                               " (corrupt)"};
  }
  std::vector<std::string> argv;
  for (const auto& a : memory.value("qemu_command", json::array())) {
    argv.push_back(a.is_string() ? a.get<std::string>() : std::string());
  }
  if (argv.empty() || argv[0].empty()) {
    return Error{ErrorKind::invalid_input, "the checkpoint has no QEMU command line to load its memory into"};
  }
  // QEMU and the files it loads at start must still be there, or the VM
  // would be left off after the disks were restored.
  const std::set<std::string> file_options = {"-kernel", "-initrd", "-bios"};
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const bool is_file = i == 0 || (file_options.count(argv[i - 1]) != 0);
    if (is_file && !std::filesystem::exists(argv[i], ec)) {
      return Error{ErrorKind::not_found, "the checkpoint's QEMU command line needs " + argv[i] + ", which is missing"};
    }
  }
  if (vm_.config().qemu != argv[0]) {
    return Error{ErrorKind::invalid_input, "the checkpoint was saved by " + argv[0] + ", the VM now runs " +
                                               vm_.config().qemu.string() + "; a state loads into the QEMU that saved it"};
  }
  return ok_status();
}

Status QemuMemoryState::start_from(const json& memory, const std::filesystem::path& checkpoint_dir) {
  const auto& config = vm_.config();
  if (vm_.running()) {
    return Error{ErrorKind::conflict, "the VM is on; its memory state loads into a VM that is off"};
  }
  std::vector<std::string> saved;
  for (const auto& a : memory.value("qemu_command", json::array())) {
    saved.push_back(a.get<std::string>());
  }
  auto argv = incoming_command_line(saved, qemu_command_line(config));
  argv.insert(argv.end(), {"-S", "-incoming", "defer"});
  std::error_code ec;
  std::filesystem::remove_all(config.run_dir(), ec);
  std::filesystem::create_directories(config.run_dir(), ec);
  std::filesystem::create_directories(config.console_log().parent_path(), ec);
  std::string error;
  if (!platform::write_file_atomically(config.command_file().string(), json(argv).dump(2) + "\n", &error)) {
    return Error{ErrorKind::system, error};
  }
  const auto path = checkpoint_dir / memory.value("file", std::string(state_file_name));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Error{ErrorKind::system, "cannot open " + path.string() + ": " + errno_text()};
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  const auto started = run_command(argv, 2min);
  if (started.exit_code != 0) {
    return Error{ErrorKind::system, "QEMU did not start (" + render_argv(argv) + "): " + started.output};
  }
  auto qmp = QmpClient::connect(config.qmp_socket().string(), qmp_timeout);
  if (!qmp) {
    return qmp.error();
  }
  if (auto passed = qmp->pass_fd(fd_name, fd); !passed) {
    return passed.error();
  }
  if (auto incoming = qmp->execute("migrate-incoming", {{"uri", std::string("fd:") + fd_name}}); !incoming) {
    return incoming.error();
  }
  // QEMU exits when a load fails (the stream does not fit this machine).
  if (auto loaded = wait_for_migration(*qmp, "loading the VM's state"); !loaded) {
    if (!vm_.running()) {
      return Error{ErrorKind::backend, "QEMU exited while loading the state (the machine differs from the one "
                                       "that saved it?): " + loaded.error().message};
    }
    return loaded.error();
  }
  if (auto resumed = qmp->execute("cont"); !resumed) {
    return resumed.error();
  }
  auto state = qmp->execute("query-status");
  if (!state) {
    return state.error();
  }
  if (state->value("status", std::string()) != "running") {
    return Error{ErrorKind::backend, "after loading the state QEMU is " + state->value("status", std::string("?")) +
                                         ", not running"};
  }
  return ok_status();
}

}  // namespace quiesce::host

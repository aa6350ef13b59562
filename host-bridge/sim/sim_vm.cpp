#include "host-bridge/sim/sim_vm.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <set>
#include <thread>

#include "host-bridge/checkpoint/process.hpp"
#include "host-bridge/checkpoint/vm_directory.hpp"
#include "platform/files.hpp"

extern char** environ;

namespace quiesce::host {

using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::string errno_text() { return std::strerror(errno); }

// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot. With
// the pid it names one process, so a reused pid is never signalled.
unsigned long long process_start_time(int pid, char* state = nullptr) {
  std::string text;
  if (!platform::read_whole_file("/proc/" + std::to_string(pid) + "/stat", text)) {
    return 0;
  }
  const auto close = text.rfind(')');
  if (close == std::string::npos) {
    return 0;
  }
  std::istringstream in(text.substr(close + 2));
  std::string field;
  unsigned long long value = 0;
  for (int i = 3; i <= 22 && in >> field; ++i) {
    if (i == 3 && state != nullptr) {
      *state = field.empty() ? '?' : field[0];
    }
    if (i == 22) {
      value = std::stoull(field);
    }
  }
  return value;
}

bool process_alive(int pid, unsigned long long start_time) {
  if (pid <= 0) {
    return false;
  }
  // Our own child (the same process powered it on): reap it if it died.
  int status = 0;
  if (::waitpid(pid, &status, WNOHANG) == pid) {
    return false;
  }
  char state = '?';
  const auto now = process_start_time(pid, &state);
  return now != 0 && now == start_time && state != 'Z' && state != 'X';
}

// Signals the process group (services may have children), waits, escalates.
void stop_process(int pid, unsigned long long start_time, std::chrono::milliseconds grace, bool group) {
  if (!process_alive(pid, start_time)) {
    return;
  }
  ::kill(group ? -pid : pid, SIGTERM);
  const auto deadline = Clock::now() + grace;
  while (Clock::now() < deadline) {
    if (!process_alive(pid, start_time)) {
      return;
    }
    std::this_thread::sleep_for(10ms);
  }
  ::kill(group ? -pid : pid, SIGKILL);
  const auto kill_deadline = Clock::now() + 5s;
  while (Clock::now() < kill_deadline && process_alive(pid, start_time)) {
    std::this_thread::sleep_for(10ms);
  }
}

// Starts argv in its own session with output appended to `log`. A failing
// exec is reported through a close-on-exec pipe.
Expected<int> spawn(const std::vector<std::string>& argv, const std::filesystem::path& log,
                    const std::filesystem::path& cwd, const std::vector<std::string>& extra_env) {
  std::vector<std::string> args = argv;
  std::vector<char*> c_argv;
  for (auto& a : args) {
    c_argv.push_back(a.data());
  }
  c_argv.push_back(nullptr);
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    env.emplace_back(*e);
  }
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> c_env;
  for (auto& e : env) {
    c_env.push_back(e.data());
  }
  c_env.push_back(nullptr);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return Error{ErrorKind::system, "pipe: " + errno_text()};
  }
  const std::string log_path = log.string();
  const std::string dir = cwd.string();
  const pid_t pid = ::fork();
  if (pid < 0) {
    return Error{ErrorKind::system, "fork: " + errno_text()};
  }
  if (pid == 0) {
    ::setsid();
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) {
      ::dup2(null_fd, 0);
    }
    if (::chdir(dir.c_str()) != 0) {
      // Stay where we are: the program gets absolute paths anyway.
    }
    ::execve(c_argv[0], c_argv.data(), c_env.data());
    const int error = errno;
    [[maybe_unused]] auto n = ::write(pipe_fds[1], &error, sizeof error);
    ::_exit(127);
  }
  ::close(pipe_fds[1]);
  int child_errno = 0;
  ssize_t n = 0;
  do {
    n = ::read(pipe_fds[0], &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  ::close(pipe_fds[0]);
  if (n > 0) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return Error{ErrorKind::system, "cannot run " + argv[0] + ": " + std::strerror(child_errno)};
  }
  return static_cast<int>(pid);
}

Status must_run(const std::vector<std::string>& argv, const std::string& what) {
  auto result = run_command(argv, 2min);
  if (result.exit_code != 0) {
    return Error{ErrorKind::system, what + ": `" + render_argv(argv) + "` failed (" +
                                        std::to_string(result.exit_code) + "): " + result.output};
  }
  return ok_status();
}

bool is_mount_point(const std::filesystem::path& path) {
  std::string text;
  if (!platform::read_whole_file("/proc/self/mountinfo", text)) {
    return false;
  }
  std::error_code ec;
  const auto canonical = std::filesystem::weakly_canonical(path, ec).string();
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, mount_point;
    fields >> id >> parent >> dev >> root >> mount_point;
    if (mount_point == canonical) {
      return true;
    }
  }
  return false;
}

// Unmounts a mount the sim made. A filesystem still frozen (an agent killed
// in the middle of a hold, whose freeze holder is still letting go) makes
// umount wait or fail: retry for a while, thaw our own mount, then detach
// lazily as a last resort.
Status unmount(const std::filesystem::path& mount_point) {
  const auto deadline = Clock::now() + 5s;
  while (is_mount_point(mount_point)) {
    if (::umount2(mount_point.c_str(), 0) == 0) {
      continue;
    }
    if (errno == EINVAL || errno == ENOENT) {
      break;
    }
    if (Clock::now() > deadline) {
      (void)run_command({"fsfreeze", "--unfreeze", mount_point.string()}, 5s);
      if (::umount2(mount_point.c_str(), MNT_DETACH) != 0) {
        return Error{ErrorKind::system, "cannot unmount " + mount_point.string() + ": " + errno_text()};
      }
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  return ok_status();
}

std::string loop_backing_file(const std::string& device) {
  const auto name = std::filesystem::path(device).filename().string();
  std::string text;
  if (!platform::read_whole_file("/sys/block/" + name + "/loop/backing_file", text)) {
    return {};
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
    text.pop_back();
  }
  return text;
}

}  // namespace

std::filesystem::path default_agent_binary() {
  if (const char* env = std::getenv("QUIESCE_AGENT_BIN"); env != nullptr && *env != '\0') {
    return env;
  }
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return self.parent_path() / "quiesce-agent";
}

Expected<std::unique_ptr<SimVm>> SimVm::open(const std::filesystem::path& dir_in) {
  auto vm_json = read_vm_json(dir_in);
  if (!vm_json) {
    return vm_json.error();
  }
  const auto& dir = vm_json->dir;
  const auto& config_path = vm_json->path;
  const auto& j = vm_json->json;
  const std::string where = config_path.string() + ": ";
  if (!j.is_object()) {
    return Error{ErrorKind::invalid_input, where + "not a JSON object"};
  }
  auto bad = [&](const std::string& field, const std::string& what) {
    return Error{ErrorKind::invalid_input, where + field + ": " + what};
  };
  const std::set<std::string> known = {"kind", "name", "disks", "state_disk", "agent", "services", "backend"};
  for (const auto& [key, value] : j.items()) {
    if (known.count(key) == 0) {
      return bad(key, "unknown field");
    }
  }
  if (j.contains("kind") && j["kind"] != "sim") {
    return bad("kind", "expected \"sim\" (a VM of another kind is not a simulated one)");
  }
  std::unique_ptr<SimVm> vm(new SimVm());
  vm->dir_ = dir;
  vm->name_ = j.value("name", dir.filename().string());
  if (!j.contains("disks") || !j["disks"].is_array() || j["disks"].empty()) {
    return bad("disks", "expected a non-empty array");
  }
  std::set<std::string> names;
  for (std::size_t i = 0; i < j["disks"].size(); ++i) {
    const auto& d = j["disks"][i];
    const std::string field = "disks[" + std::to_string(i) + "]";
    if (!d.is_object() || !d.contains("name") || !d["name"].is_string() ||
        !valid_checkpoint_id(d["name"].get<std::string>())) {
      return bad(field + ".name", "expected a name (letters, digits, '.', '_', '-')");
    }
    for (const auto& [key, value] : d.items()) {
      if (key != "name" && key != "size_mb" && key != "image" && key != "mount" && key != "fstype") {
        return bad(field + "." + key, "unknown field");
      }
    }
    SimDisk disk;
    disk.name = d["name"].get<std::string>();
    if (!names.insert(disk.name).second) {
      return bad(field + ".name", "\"" + disk.name + "\" appears twice");
    }
    if (d.contains("size_mb")) {
      if (!d["size_mb"].is_number_unsigned() || d["size_mb"].get<unsigned>() < 16) {
        return bad(field + ".size_mb", "expected an integer >= 16");
      }
      disk.size_mb = d["size_mb"].get<unsigned>();
    }
    for (const char* key : {"image", "mount", "fstype"}) {
      if (d.contains(key) && !d[key].is_string()) {
        return bad(field + "." + key, "expected a string");
      }
    }
    disk.fstype = d.value("fstype", std::string("ext4"));
    if (disk.fstype != "ext4" && disk.fstype != "xfs" && disk.fstype != "btrfs") {
      return bad(field + ".fstype", "expected ext4, xfs or btrfs");
    }
    const std::filesystem::path image = d.value("image", "disks/" + disk.name + ".img");
    const std::filesystem::path mount = d.value("mount", "guest/" + disk.name);
    disk.image = image.is_absolute() ? image : dir / image;
    disk.mount = mount.is_absolute() ? mount : dir / mount;
    vm->disks_.push_back(std::move(disk));
  }
  vm->state_disk_ = vm->disks_.front().name;
  if (j.contains("state_disk")) {
    if (!j["state_disk"].is_string() || names.count(j["state_disk"].get<std::string>()) == 0) {
      return bad("state_disk", "expected the name of one of the disks");
    }
    vm->state_disk_ = j["state_disk"].get<std::string>();
  }
  if (j.contains("agent")) {
    if (!j["agent"].is_object()) {
      return bad("agent", "expected an object");
    }
    for (const auto& [key, value] : j["agent"].items()) {
      if (key != "binary" && key != "writers" && key != "session" && key != "log_level") {
        return bad("agent." + key, "unknown field");
      }
    }
    vm->agent_ = j["agent"];
  }
  if (j.contains("services")) {
    if (!j["services"].is_array()) {
      return bad("services", "expected an array");
    }
    for (std::size_t i = 0; i < j["services"].size(); ++i) {
      const auto& s = j["services"][i];
      const std::string field = "services[" + std::to_string(i) + "]";
      if (!s.is_object() || !s.contains("name") || !s["name"].is_string() ||
          !valid_checkpoint_id(s["name"].get<std::string>())) {
        return bad(field + ".name", "expected a name");
      }
      if (!s.contains("argv") || !s["argv"].is_array() || s["argv"].empty()) {
        return bad(field + ".argv", "expected a non-empty array of strings");
      }
      SimService service;
      service.name = s["name"].get<std::string>();
      for (const auto& a : s["argv"]) {
        if (!a.is_string()) {
          return bad(field + ".argv", "expected a non-empty array of strings");
        }
        service.argv.push_back(a.get<std::string>());
      }
      vm->services_.push_back(std::move(service));
    }
  }
  vm->backend_ = j.value("backend", json(nullptr));
  if (auto backend = make_backend(vm->backend_, where + "backend"); !backend) {
    return backend.error();
  }
  return vm;
}

std::vector<DiskSpec> SimVm::disks() const {
  std::vector<DiskSpec> out;
  for (const auto& d : disks_) {
    out.push_back({d.name, d.image.string()});
  }
  return out;
}

bool SimVm::running() const {
  std::error_code ec;
  return std::filesystem::exists(state_file(), ec);
}

client::ClientOptions SimVm::agent_client_options() const {
  client::ClientOptions options;
  options.endpoint.kind = client::Endpoint::Kind::unix_socket;
  options.endpoint.path = socket_path().string();
  options.timeout = 30s;
  return options;
}

int SimVm::agent_pid() const {
  std::string text;
  if (!platform::read_whole_file(state_file().string(), text)) {
    return 0;
  }
  const auto state = json::parse(text, nullptr, false);
  if (!state.is_object() || !state.contains("agent")) {
    return 0;
  }
  return state["agent"].value("pid", 0);
}

std::string SimVm::expand(const std::string& text) const {
  std::map<std::string, std::string> vars = {{"vm", dir_.string()}};
  for (const auto& d : disks_) {
    vars["mount:" + d.name] = d.mount.string();
  }
  return expand_command({text}, vars).front();
}

std::filesystem::path SimVm::agent_binary() const {
  if (agent_.contains("binary") && agent_["binary"].is_string()) {
    return expand(agent_["binary"].get<std::string>());
  }
  return default_agent_binary();
}

json SimVm::agent_config() const {
  std::filesystem::path state_dir;
  json fs_mounts = json::array();
  for (const auto& d : disks_) {
    fs_mounts.push_back(d.mount.string());
    if (d.name == state_disk_) {
      state_dir = d.mount / ".quiesce" / "state";
    }
  }
  json writers = agent_.value("writers", json::array({{{"type", "fsfreeze"}, {"name", "fs"},
                                                       {"options", {{"mounts", fs_mounts}}}}}));
  // {vm} and {mount:NAME} in every string of the writers' settings.
  std::function<void(json&)> expand_all = [&](json& value) {
    if (value.is_string()) {
      value = expand(value.get<std::string>());
    } else if (value.is_structured()) {
      for (auto& child : value) {
        expand_all(child);
      }
    }
  };
  expand_all(writers);
  json config = {{"listen", {{"unix", {{"path", socket_path().string()}, {"mode", "0600"}}}, {"vsock", false}}},
                 {"state_dir", state_dir.string()},
                 {"run_dir", (dir_ / "run" / "agent").string()},
                 {"log", {{"target", "file"}, {"file", (dir_ / "logs" / "agent.log").string()},
                          {"level", agent_.value("log_level", std::string("info"))}}},
                 {"writers", writers}};
  if (agent_.contains("session")) {
    config["session"] = agent_["session"];
  }
  return config;
}

void SimVm::save_state(const json& state) const {
  (void)platform::write_file_atomically(state_file().string(), state.dump(2) + "\n");
}

void SimVm::report(const std::string& step, const std::string& detail, std::optional<double> ms,
                   bool failed) const {
  if (progress_) {
    progress_(ProgressEvent{step, detail, ms, failed});
  }
}

Status SimVm::power_on() {
  if (::geteuid() != 0) {
    return Error{ErrorKind::system, "the simulated host needs root (loop devices, mount); run as root"};
  }
  if (running()) {
    return Error{ErrorKind::conflict, "VM '" + name_ + "' is already on (" + state_file().string() + " exists)"};
  }
  std::error_code ec;
  std::filesystem::create_directories(dir_ / "run" / "agent", ec);
  std::filesystem::create_directories(dir_ / "logs", ec);
  json state = {{"vm", name_}, {"powered_on_at", iso_time_now()}, {"disks", json::array()},
                {"services", json::array()}};
  save_state(state);
  auto status = power_on_steps(state);
  if (!status) {
    // Undo the half-started VM so a failed power-on leaves nothing attached.
    (void)power_off();
    return status;
  }
  return ok_status();
}

Status SimVm::power_on_steps(json& state) {
  std::error_code ec;
  for (const auto& disk : disks_) {
    auto start = Clock::now();
    if (!std::filesystem::exists(disk.image, ec)) {
      report("create disk " + disk.name, disk.image.string());
      std::filesystem::create_directories(disk.image.parent_path(), ec);
      {
        std::ofstream(disk.image, std::ios::binary);
      }
      std::filesystem::resize_file(disk.image, static_cast<std::uintmax_t>(disk.size_mb) * 1024 * 1024, ec);
      if (ec) {
        return Error{ErrorKind::system, "cannot create " + disk.image.string() + ": " + ec.message()};
      }
      const std::vector<std::string> mkfs =
          disk.fstype == "ext4"  ? std::vector<std::string>{"mkfs.ext4", "-q", "-F", "-L", disk.name, disk.image.string()}
          : disk.fstype == "xfs" ? std::vector<std::string>{"mkfs.xfs", "-q", "-f", "-L", disk.name, disk.image.string()}
                                 : std::vector<std::string>{"mkfs.btrfs", "-q", "-f", "-L", disk.name, disk.image.string()};
      if (auto status = must_run(mkfs, "formatting disk '" + disk.name + "'"); !status) {
        std::filesystem::remove(disk.image, ec);
        return status;
      }
      report("create disk " + disk.name, disk.fstype + ", " + std::to_string(disk.size_mb) + " MiB", ms_since(start));
      start = Clock::now();
    }
    auto attached = run_command({"losetup", "--find", "--show", disk.image.string()}, 30s);
    if (attached.exit_code != 0) {
      return Error{ErrorKind::system, "disk '" + disk.name + "': losetup failed: " + attached.output};
    }
    const std::string device = attached.output;
    state["disks"].push_back({{"name", disk.name}, {"device", device}, {"image", disk.image.string()},
                              {"mount", disk.mount.string()}, {"mounted", false}});
    save_state(state);
    std::filesystem::create_directories(disk.mount, ec);
    if (auto status = must_run({"mount", "-t", disk.fstype, device, disk.mount.string()},
                               "mounting disk '" + disk.name + "'");
        !status) {
      return status;
    }
    state["disks"].back()["mounted"] = true;
    save_state(state);
    report("attach " + disk.name, device + " on " + disk.mount.string(), ms_since(start));
  }

  auto config = agent_config();
  std::filesystem::create_directories(config["state_dir"].get<std::string>(), ec);
  const auto config_path = dir_ / "run" / "agent.json";
  if (!platform::write_file_atomically(config_path.string(), config.dump(2) + "\n")) {
    return Error{ErrorKind::system, "cannot write " + config_path.string()};
  }
  auto start = Clock::now();
  const auto binary = agent_binary();
  auto pid = spawn({binary.string(), "--config", config_path.string()}, dir_ / "logs" / "agent.out", dir_, {});
  if (!pid) {
    return pid.error();
  }
  const auto start_time = process_start_time(*pid);
  state["agent"] = {{"pid", *pid}, {"start_time", start_time}, {"binary", binary.string()}};
  save_state(state);
  const auto deadline = Clock::now() + 15s;
  for (;;) {
    if (std::filesystem::exists(socket_path(), ec)) {
      break;
    }
    if (!process_alive(*pid, start_time)) {
      std::string out;
      (void)platform::read_whole_file((dir_ / "logs" / "agent.out").string(), out);
      return Error{ErrorKind::system, "the agent exited at start: " + out.substr(out.size() > 2000 ? out.size() - 2000 : 0)};
    }
    if (Clock::now() > deadline) {
      return Error{ErrorKind::system, "the agent did not open " + socket_path().string() + " within 15 s"};
    }
    std::this_thread::sleep_for(10ms);
  }
  report("start agent", "pid " + std::to_string(*pid), ms_since(start));

  for (const auto& service : services_) {
    start = Clock::now();
    std::vector<std::string> argv;
    for (const auto& a : service.argv) {
      argv.push_back(expand(a));
    }
    auto service_pid = spawn(argv, dir_ / "logs" / (service.name + ".log"), dir_,
                             {"QUIESCE_VM=" + dir_.string()});
    if (!service_pid) {
      return Error{ErrorKind::system, "service '" + service.name + "': " + service_pid.error().message};
    }
    state["services"].push_back(
        {{"name", service.name}, {"pid", *service_pid}, {"start_time", process_start_time(*service_pid)}});
    save_state(state);
    report("start service " + service.name, "pid " + std::to_string(*service_pid), ms_since(start));
  }
  return ok_status();
}

Status SimVm::power_off() {
  std::string text;
  json state;
  if (platform::read_whole_file(state_file().string(), text)) {
    state = json::parse(text, nullptr, false);
  }
  if (!state.is_object()) {
    state = json::object();
  }
  std::optional<Error> first_error;
  // Services first (they use the disks), then the agent: SIGTERM makes it
  // thaw and abort whatever session is active.
  auto start = Clock::now();
  for (const auto& s : state.value("services", json::array())) {
    stop_process(s.value("pid", 0), s.value("start_time", 0ULL), 10s, true);
  }
  if (!state.value("services", json::array()).empty()) {
    report("stop services", "", ms_since(start));
  }
  if (state.contains("agent")) {
    start = Clock::now();
    stop_process(state["agent"].value("pid", 0), state["agent"].value("start_time", 0ULL), 10s, false);
    report("stop agent", "", ms_since(start));
  }
  auto disks = state.value("disks", json::array());
  for (auto it = disks.rbegin(); it != disks.rend(); ++it) {
    start = Clock::now();
    const std::string mount = it->value("mount", std::string());
    const std::string device = it->value("device", std::string());
    if (!mount.empty()) {
      if (auto status = unmount(mount); !status && !first_error) {
        first_error = status.error();
      }
    }
    // Detach only the loop device that still holds our image.
    if (!device.empty() && loop_backing_file(device) == it->value("image", std::string())) {
      if (auto status = must_run({"losetup", "-d", device}, "detaching " + device); !status && !first_error) {
        first_error = status.error();
      }
    }
    report("detach " + it->value("name", std::string()), device, ms_since(start));
  }
  if (first_error) {
    return *first_error;  // keep <vm>/run: it says what is still attached
  }
  // The guest's volatile state goes with the power.
  std::error_code ec;
  std::filesystem::remove_all(dir_ / "run", ec);
  return ok_status();
}

json SimVm::status() const {
  json out = {{"vm", name_}, {"dir", dir_.string()}, {"power", running() ? "on" : "off"}};
  json disks = json::array();
  for (const auto& d : disks_) {
    std::error_code ec;
    const bool exists = std::filesystem::exists(d.image, ec);
    disks.push_back({{"name", d.name}, {"image", d.image.string()}, {"exists", exists},
                     {"mount", d.mount.string()}, {"mounted", is_mount_point(d.mount)}});
  }
  out["disks"] = disks;
  std::string text;
  if (running() && platform::read_whole_file(state_file().string(), text)) {
    const auto state = json::parse(text, nullptr, false);
    if (state.is_object()) {
      out["powered_on_at"] = state.value("powered_on_at", std::string());
      if (state.contains("agent")) {
        const int pid = state["agent"].value("pid", 0);
        out["agent"] = {{"pid", pid}, {"alive", process_alive(pid, state["agent"].value("start_time", 0ULL))}};
      }
      json services = json::array();
      for (const auto& s : state.value("services", json::array())) {
        services.push_back({{"name", s.value("name", std::string())}, {"pid", s.value("pid", 0)},
                            {"alive", process_alive(s.value("pid", 0), s.value("start_time", 0ULL))}});
      }
      out["services"] = services;
    }
    try {
      auto options = agent_client_options();
      options.timeout = 3s;
      options.retries = 0;
      client::AgentClient agent(options);
      auto health = agent.health();
      out["health"] = health.body;
    } catch (const std::exception& e) {
      out["health"] = {{"error", e.what()}};
    }
  }
  return out;
}

}  // namespace quiesce::host

#include "host-bridge/qemu/qemu_vm.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <set>
#include <thread>

#include "host-bridge/checkpoint/checkpoint_store.hpp"
#include "host-bridge/checkpoint/process.hpp"
#include "host-bridge/checkpoint/qmp_client.hpp"
#include "host-bridge/checkpoint/vm_directory.hpp"
#include "platform/files.hpp"

namespace quiesce::host {

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::filesystem::path under(const std::filesystem::path& dir, const std::string& path) {
  const std::filesystem::path p(path);
  return p.is_absolute() ? p : dir / p;
}

// A name QEMU takes in an id= and a virtio-serial port name without quoting
// trouble (a ',' would start another option).
bool plain_name(const std::string& name) {
  if (name.empty() || name.size() > 64) {
    return false;
  }
  for (const char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

// QEMU's -drive and -chardev options are comma-separated; a comma in a path
// is written twice.
std::string qemu_escape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    out += c;
    if (c == ',') {
      out += ',';
    }
  }
  return out;
}

}  // namespace

bool kvm_usable() {
  const int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return false;
  }
  ::close(fd);
  return true;
}

const char* key_of(PowerOffMethod method) {
  switch (method) {
    case PowerOffMethod::already_off: return "already_off";
    case PowerOffMethod::acpi: return "acpi";
    case PowerOffMethod::quit: return "quit";
    case PowerOffMethod::kill: return "kill";
  }
  return "?";
}

const char* to_string(PowerOffMethod method) {
  switch (method) {
    case PowerOffMethod::already_off: return "already off";
    case PowerOffMethod::acpi: return "clean shutdown (ACPI power-down)";
    case PowerOffMethod::quit: return "hard stop (QMP quit after the ACPI deadline)";
    case PowerOffMethod::kill: return "hard stop (SIGKILL: QEMU did not quit)";
  }
  return "?";
}

Expected<QemuVmConfig> QemuVmConfig::from_json(const json& j, const std::filesystem::path& dir, bool kvm) {
  const std::string where = (dir / "vm.json").string() + ": ";
  auto bad = [&](const std::string& field, const std::string& what) {
    return Error{ErrorKind::invalid_input, where + field + ": " + what};
  };
  if (!j.is_object()) {
    return Error{ErrorKind::invalid_input, where + "not a JSON object"};
  }
  const std::set<std::string> known = {"kind",      "name",     "memory_mib", "vcpus",
                                       "accel",     "machine",  "kernel",     "initrd",
                                       "cmdline",   "boot_disk", "disks",     "agent",
                                       "channels",  "shutdown_timeout_s", "boot_timeout_s", "qemu",
                                       "backend",   "checkpoint_type", "memory_save_bandwidth_mib_s"};
  for (const auto& [key, value] : j.items()) {
    if (known.count(key) == 0) {
      return bad(key, "unknown field");
    }
  }
  if (j.value("kind", std::string()) != "qemu") {
    return bad("kind", "expected \"qemu\"");
  }
  QemuVmConfig c;
  c.dir = dir;
  auto string_field = [&](const char* key, std::string& out) -> std::optional<Error> {
    if (!j.contains(key)) {
      return std::nullopt;
    }
    if (!j[key].is_string() || j[key].get<std::string>().empty()) {
      return bad(key, "expected a non-empty string");
    }
    out = j[key].get<std::string>();
    return std::nullopt;
  };
  auto number_field = [&](const char* key, unsigned low, unsigned high, unsigned& out) -> std::optional<Error> {
    if (!j.contains(key)) {
      return std::nullopt;
    }
    if (!j[key].is_number_integer() || j[key].get<long long>() < static_cast<long long>(low) ||
        j[key].get<long long>() > static_cast<long long>(high)) {
      return bad(key, "expected an integer from " + std::to_string(low) + " to " + std::to_string(high));
    }
    out = j[key].get<unsigned>();
    return std::nullopt;
  };
  c.name = dir.filename().string();
  std::string kernel;
  std::string initrd;
  std::string qemu;
  unsigned shutdown_s = 60;
  unsigned boot_s = 300;
  for (auto error : {string_field("name", c.name), string_field("machine", c.machine),
                     string_field("kernel", kernel), string_field("initrd", initrd),
                     string_field("cmdline", c.cmdline), string_field("boot_disk", c.boot_disk),
                     string_field("qemu", qemu), string_field("accel", c.accel),
                     number_field("memory_mib", 64, 1024 * 1024, c.memory_mib),
                     number_field("vcpus", 1, 64, c.vcpus),
                     number_field("shutdown_timeout_s", 1, 3600, shutdown_s),
                     number_field("boot_timeout_s", 1, 3600, boot_s),
                     number_field("memory_save_bandwidth_mib_s", 1, 1024 * 1024, c.memory_save_bandwidth_mib_s)}) {
    if (error) {
      return *error;
    }
  }
  if (auto error = string_field("checkpoint_type", c.checkpoint_type)) {
    return *error;
  }
  if (c.checkpoint_type != "production" && c.checkpoint_type != "production-only" &&
      c.checkpoint_type != "standard" && c.checkpoint_type != "disabled") {
    return bad("checkpoint_type", "expected production, production-only, standard or disabled");
  }
  c.shutdown_timeout = std::chrono::seconds(shutdown_s);
  c.boot_timeout = std::chrono::seconds(boot_s);
  if (!plain_name(c.machine)) {
    return bad("machine", "expected a machine type such as pc or q35");
  }
  if (c.accel.empty()) {
    c.accel = kvm ? "kvm" : "tcg";
  } else if (c.accel != "kvm" && c.accel != "tcg") {
    return bad("accel", "expected kvm or tcg, got \"" + c.accel + "\"");
  } else if (c.accel == "kvm" && !kvm) {
    return bad("accel", "kvm is not usable on this host (/dev/kvm cannot be opened); use tcg or leave it out");
  }
  if (!qemu.empty()) {
    c.qemu = under(dir, qemu);
  }
  if (!j.contains("disks") || !j["disks"].is_array() || j["disks"].empty()) {
    return bad("disks", "expected a non-empty array");
  }
  std::set<std::string> names;
  for (std::size_t i = 0; i < j["disks"].size(); ++i) {
    const auto& d = j["disks"][i];
    const std::string field = "disks[" + std::to_string(i) + "]";
    if (!d.is_object()) {
      return bad(field, "expected an object");
    }
    for (const auto& [key, value] : d.items()) {
      if (key != "name" && key != "image") {
        return bad(field + "." + key, "unknown field");
      }
    }
    if (!d.contains("name") || !d["name"].is_string() || !plain_name(d["name"].get<std::string>())) {
      return bad(field + ".name", "expected a name (letters, digits, '.', '_', '-')");
    }
    QemuDisk disk{d["name"].get<std::string>(), {}};
    if (!names.insert(disk.name).second) {
      return bad(field + ".name", "\"" + disk.name + "\" appears twice");
    }
    if (!d.contains("image") || !d["image"].is_string() || d["image"].get<std::string>().empty()) {
      return bad(field + ".image", "expected the path of a qcow2 image");
    }
    disk.image = under(dir, d["image"].get<std::string>());
    c.disks.push_back(std::move(disk));
  }
  const bool direct_kernel = !kernel.empty();
  if (direct_kernel == !c.boot_disk.empty()) {
    return bad("kernel", "give either kernel (with initrd and cmdline if needed) or boot_disk");
  }
  if (!direct_kernel && (!initrd.empty() || !c.cmdline.empty())) {
    return bad(initrd.empty() ? "cmdline" : "initrd", "only with kernel");
  }
  if (direct_kernel) {
    c.kernel = under(dir, kernel);
    if (!initrd.empty()) {
      c.initrd = under(dir, initrd);
    }
  } else if (names.count(c.boot_disk) == 0) {
    return bad("boot_disk", "no disk named \"" + c.boot_disk + "\" in disks");
  }
  if (j.contains("agent")) {
    const auto& a = j["agent"];
    if (a.is_null()) {
      c.agent_channel = false;
    } else if (!a.is_object() || a.size() != 1 || a.value("channel", std::string()) != "virtio-serial") {
      return bad("agent", "expected {\"channel\": \"virtio-serial\"} or null (no agent)");
    }
  }
  std::set<std::string> ports = {"org.qemu.guest_agent.0"};
  if (j.contains("channels")) {
    if (!j["channels"].is_array()) {
      return bad("channels", "expected an array");
    }
    for (std::size_t i = 0; i < j["channels"].size(); ++i) {
      const auto& ch = j["channels"][i];
      const std::string field = "channels[" + std::to_string(i) + "]";
      if (!ch.is_object() || ch.size() != 2 || !ch.contains("name") || !ch["name"].is_string() ||
          !ch.contains("socket") || !ch["socket"].is_string() || ch["socket"].get<std::string>().empty()) {
        return bad(field, "expected {\"name\": PORT, \"socket\": PATH}");
      }
      QemuChannel channel{ch["name"].get<std::string>(), under(dir, ch["socket"].get<std::string>())};
      if (!plain_name(channel.name)) {
        return bad(field + ".name", "expected a port name (letters, digits, '.', '_', '-')");
      }
      if (!ports.insert(channel.name).second) {
        return bad(field + ".name", "\"" + channel.name + "\" is already a port of this VM");
      }
      c.channels.push_back(std::move(channel));
    }
  }
  if (j.contains("backend")) {
    c.backend = j["backend"];
  } else {
    json disks = json::object();
    for (const auto& d : c.disks) {
      disks[d.name] = "disk-" + d.name;
    }
    c.backend = {{"type", "qmp"}, {"socket", c.qmp_socket().string()}, {"disks", disks}};
  }
  return c;
}

std::vector<std::string> qemu_command_line(const QemuVmConfig& c, const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {
      c.qemu.string(), "-name", c.name, "-machine", c.machine, "-accel", c.accel,
      "-m", std::to_string(c.memory_mib), "-smp", std::to_string(c.vcpus),
      "-nodefaults", "-display", "none", "-no-user-config",
      "-qmp", "unix:" + c.qmp_socket().string() + ",server=on,wait=off",
      "-serial", "file:" + c.console_log().string(),
      "-pidfile", c.pid_file().string(), "-daemonize"};
  if (!c.kernel.empty()) {
    argv.insert(argv.end(), {"-kernel", c.kernel.string()});
    if (!c.initrd.empty()) {
      argv.insert(argv.end(), {"-initrd", c.initrd.string()});
    }
    if (!c.cmdline.empty()) {
      argv.insert(argv.end(), {"-append", c.cmdline});
    }
  }
  for (const auto& d : c.disks) {
    std::string drive = "file=" + qemu_escape(d.image.string()) + ",id=disk-" + d.name +
                        ",if=none,format=qcow2,cache=writeback";
    std::string device = "virtio-blk-pci,drive=disk-" + d.name;
    if (d.name == c.boot_disk) {
      device += ",bootindex=0";
    }
    argv.insert(argv.end(), {"-drive", drive, "-device", device});
  }
  if (c.agent_channel || !c.channels.empty()) {
    argv.insert(argv.end(), {"-device", "virtio-serial-pci"});
  }
  auto port = [&](const std::string& id, const std::string& name, const std::filesystem::path& socket) {
    argv.insert(argv.end(), {"-chardev", "socket,id=" + id + ",path=" + qemu_escape(socket.string()) +
                                             ",server=on,wait=off",
                             "-device", "virtserialport,chardev=" + id + ",name=" + name});
  };
  if (c.agent_channel) {
    port("qga", "org.qemu.guest_agent.0", c.qga_socket());
  }
  for (std::size_t i = 0; i < c.channels.size(); ++i) {
    port("channel" + std::to_string(i), c.channels[i].name, c.channels[i].socket);
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

Expected<std::unique_ptr<QemuVm>> QemuVm::open(const std::filesystem::path& dir) {
  auto vm_json = read_vm_json(dir);
  if (!vm_json) {
    return vm_json.error();
  }
  auto config = QemuVmConfig::from_json(vm_json->json, vm_json->dir, kvm_usable());
  if (!config) {
    return config.error();
  }
  std::unique_ptr<QemuVm> vm(new QemuVm());
  vm->config_ = std::move(*config);
  vm->memory_ = std::make_unique<QemuMemoryState>(*vm);
  vm->load_active_disks();
  return vm;
}

void QemuVm::load_active_disks() {
  std::string text;
  if (!platform::read_whole_file((config_.dir / "active-disks.json").string(), text)) {
    return;
  }
  const auto j = json::parse(text, nullptr, false);
  if (!j.is_object()) {
    return;
  }
  for (auto& d : config_.disks) {
    if (j.contains(d.name) && j[d.name].is_string()) {
      d.image = j[d.name].get<std::string>();
    }
  }
}

std::optional<std::map<std::string, std::string>> QemuVm::query_top_layers() const {
  auto qmp = QmpClient::connect(config_.qmp_socket().string(), 10s);
  if (!qmp) {
    return std::nullopt;
  }
  auto blocks = qmp->execute("query-block");
  if (!blocks || !blocks->is_array()) {
    return std::nullopt;
  }
  std::map<std::string, std::string> tops;
  for (const auto& b : *blocks) {
    const auto device = b.value("device", std::string());
    if (device.rfind("disk-", 0) == 0 && b.contains("inserted") && b["inserted"].contains("file")) {
      tops[device.substr(5)] = b["inserted"]["file"].get<std::string>();
    }
  }
  return tops;
}

Status QemuVm::settle_top_layers(const std::map<std::string, std::string>& tops) {
  const auto checkpoints = checkpoints_dir().string() + "/";
  json record = json::object();
  for (auto& d : config_.disks) {
    const auto it = tops.find(d.name);
    if (it != tops.end()) {
      d.image = it->second;
    }
    if (d.image.string().rfind(checkpoints, 0) == 0) {
      // A checkpoint's overlay: the checkpoint's file, not the VM's. A fresh
      // top layer over it keeps the checkpoint as it was.
      const auto top = config_.dir / "disks" /
                       (d.name + ".top-" + std::to_string(std::chrono::system_clock::now().time_since_epoch().count()) +
                        ".qcow2");
      std::error_code ec;
      std::filesystem::create_directories(top.parent_path(), ec);
      const std::vector<std::string> argv{"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                                          "-b", d.image.string(), top.string()};
      if (auto made = run_command(argv, 2min); made.exit_code != 0) {
        return Error{ErrorKind::system, "disk " + d.name + ": `" + render_argv(argv) + "` failed: " + made.output};
      }
      d.image = top;
    }
    record[d.name] = d.image.string();
  }
  std::string error;
  if (!platform::write_file_atomically((config_.dir / "active-disks.json").string(), record.dump(2) + "\n",
                                       &error)) {
    return Error{ErrorKind::system, error};
  }
  return ok_status();
}

std::vector<DiskSpec> QemuVm::disks() const {
  // While on, QEMU knows best: a checkpoint moved the disks to overlays.
  const auto tops = running() ? query_top_layers() : std::nullopt;
  std::vector<DiskSpec> out;
  for (const auto& d : config_.disks) {
    const auto it = tops ? tops->find(d.name) : decltype(tops->end()){};
    out.push_back({d.name, tops && it != tops->end() ? it->second : d.image.string()});
  }
  return out;
}

int QemuVm::qemu_pid() const {
  std::string text;
  if (!platform::read_whole_file(config_.pid_file().string(), text)) {
    return 0;
  }
  const int pid = std::atoi(text.c_str());
  if (pid <= 0) {
    return 0;
  }
  // The pid file outlives a crashed QEMU; a recycled pid is not ours.
  std::string cmdline;
  if (!platform::read_whole_file("/proc/" + std::to_string(pid) + "/cmdline", cmdline) ||
      cmdline.find(config_.qmp_socket().string()) == std::string::npos) {
    return 0;
  }
  return pid;
}

bool QemuVm::running() const { return qemu_pid() > 0; }

void QemuVm::report(const std::string& step, const std::string& detail, std::optional<double> ms,
                    bool failed) const {
  if (progress_) {
    progress_({step, detail, ms, failed});
  }
}

Status QemuVm::power_on() {
  if (running()) {
    return Error{ErrorKind::conflict, "VM " + config_.name + " is already on (QEMU pid " +
                                          std::to_string(qemu_pid()) + ")"};
  }
  for (const auto& d : config_.disks) {
    if (!std::filesystem::exists(d.image)) {
      return Error{ErrorKind::not_found, "disk " + d.name + ": " + d.image.string() + ": no such file"};
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(config_.run_dir(), ec);
  std::filesystem::create_directories(config_.run_dir(), ec);
  std::filesystem::create_directories(config_.console_log().parent_path(), ec);
  const auto argv = qemu_command_line(config_);
  std::string error;
  if (!platform::write_file_atomically(config_.command_file().string(), json(argv).dump(2) + "\n", &error)) {
    return Error{ErrorKind::system, error};
  }
  const auto start = std::chrono::steady_clock::now();
  report("start QEMU", config_.accel + ", " + std::to_string(config_.memory_mib) + " MiB");
  // -daemonize: QEMU returns once the machine is set up (sockets listening),
  // and keeps running after quiesce-host exits.
  const auto started = run_command(argv, 2min);
  if (started.exit_code != 0) {
    report("start QEMU", started.output, ms_since(start), true);
    return Error{ErrorKind::system, "QEMU did not start (" + render_argv(argv) + "): " + started.output};
  }
  report("start QEMU", "pid " + std::to_string(qemu_pid()), ms_since(start));
  if (!config_.agent_channel) {
    return ok_status();
  }
  const auto wait_start = std::chrono::steady_clock::now();
  report("wait for the agent", "over " + config_.qga_socket().string());
  auto options = agent_client_options();
  options.timeout = 5s;
  options.retries = 0;
  const auto deadline = wait_start + config_.boot_timeout;
  std::string last;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!running()) {
      report("wait for the agent", "QEMU exited", ms_since(wait_start), true);
      return Error{ErrorKind::system, "QEMU exited while the guest booted; console: " +
                                          config_.console_log().string()};
    }
    try {
      client::AgentClient agent(options);
      const auto health = agent.health();
      if (health.ok()) {
        report("wait for the agent", health.body.value("version", std::string()), ms_since(wait_start));
        return ok_status();
      }
      last = health.error ? health.error->message : "status " + std::to_string(health.status);
    } catch (const std::exception& e) {
      last = e.what();
    }
    std::this_thread::sleep_for(500ms);
  }
  report("wait for the agent", last, ms_since(wait_start), true);
  return Error{ErrorKind::agent, "the VM is on, but its agent did not answer within " +
                                     std::to_string(config_.boot_timeout.count()) + " s (" + last +
                                     "); console: " + config_.console_log().string()};
}

bool QemuVm::wait_gone(int pid, std::chrono::milliseconds limit) const {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::kill(pid, 0) != 0 && errno == ESRCH) {
      return true;
    }
    // QEMU is not our child: gone once the pid is, or once it became a zombie of someone else.
    if (qemu_pid() != pid) {
      return true;
    }
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

Status QemuVm::power_off() {
  const int pid = qemu_pid();
  if (pid <= 0) {
    last_power_off_ = PowerOffMethod::already_off;
    return ok_status();
  }
  // Where each disk runs from now, asked before QEMU goes away.
  const auto tops = query_top_layers();
  const auto start = std::chrono::steady_clock::now();
  report("ACPI power-down", "deadline " + std::to_string(config_.shutdown_timeout.count()) + " s");
  bool asked = false;
  if (auto qmp = QmpClient::connect(config_.qmp_socket().string(), 10s)) {
    asked = qmp->execute("system_powerdown").ok();
  }
  if (asked && wait_gone(pid, config_.shutdown_timeout)) {
    last_power_off_ = PowerOffMethod::acpi;
  } else {
    report("ACPI power-down", asked ? "the guest did not power off in time" : "QMP did not take it",
           ms_since(start), true);
    bool quit = false;
    if (auto qmp = QmpClient::connect(config_.qmp_socket().string(), 10s)) {
      quit = qmp->execute("quit").ok();
    }
    if (quit && wait_gone(pid, 10s)) {
      last_power_off_ = PowerOffMethod::quit;
    } else {
      ::kill(pid, SIGKILL);
      if (!wait_gone(pid, 10s)) {
        return Error{ErrorKind::system, "QEMU (pid " + std::to_string(pid) + ") survived SIGKILL"};
      }
      last_power_off_ = PowerOffMethod::kill;
    }
  }
  report("power off", to_string(last_power_off_), ms_since(start));
  std::error_code ec;
  std::filesystem::remove_all(config_.run_dir(), ec);
  return settle_top_layers(tops.value_or(std::map<std::string, std::string>{}));
}

client::ClientOptions QemuVm::agent_client_options() const {
  client::ClientOptions options;
  options.endpoint.kind = client::Endpoint::Kind::qga;
  options.endpoint.path = config_.qga_socket().string();
  options.timeout = 30s;
  return options;
}

json QemuVm::status() const {
  json out = {{"name", config_.name}, {"kind", "qemu"}, {"accel", config_.accel},
              {"memory_mib", config_.memory_mib}, {"vcpus", config_.vcpus}};
  json disks = json::array();
  for (const auto& d : config_.disks) {
    disks.push_back({{"name", d.name}, {"image", d.image.string()}});
  }
  out["disks"] = disks;
  const int pid = qemu_pid();
  out["power"] = pid > 0 ? "on" : "off";
  out["command_file"] = config_.command_file().string();
  if (pid <= 0) {
    return out;
  }
  out["qemu_pid"] = pid;
  if (auto qmp = QmpClient::connect(config_.qmp_socket().string(), 5s)) {
    if (auto state = qmp->execute("query-status")) {
      out["run_state"] = state->value("status", std::string());
    }
  }
  if (config_.agent_channel) {
    try {
      auto options = agent_client_options();
      options.timeout = 5s;
      options.retries = 0;
      client::AgentClient agent(options);
      const auto health = agent.health();
      out["health"] = health.body;
      if (health.error) {
        out["health_error"] = health.error->message;
      }
    } catch (const std::exception& e) {
      out["health_error"] = e.what();
    }
  }
  return out;
}

}  // namespace quiesce::host

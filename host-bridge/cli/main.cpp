// quiesce-host: Hyper-V-style checkpoints of a VM through its quiesce agent,
// and the simulated host that plays the hypervisor on one machine.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "host-bridge/checkpoint/checkpoint_edit.hpp"
#include "host-bridge/checkpoint/checkpoint_transfer.hpp"
#include "host-bridge/checkpoint/checkpointer.hpp"
#include "host-bridge/checkpoint/qmp_backend.hpp"
#include "host-bridge/qemu/qemu_vm.hpp"
#include "host-bridge/sim/sim_vm.hpp"
#include "host-bridge/checkpoint/vm_directory.hpp"

namespace {

using nlohmann::json;
using namespace quiesce::host;

constexpr int exit_ok = 0;
constexpr int exit_usage = 2;

constexpr const char* usage_text = R"(Usage: quiesce-host [--vm DIR] [--json] <command> [options]

The VM (vm.json "kind": "sim" (default) or "qemu"):
  vm up                        power the VM on. sim (needs root: loop devices and
                               mounts): attach and mount its disks (made on first
                               use), start quiesce-agent, then the services. qemu:
                               start QEMU (kvm when usable, else tcg; QMP on
                               run/qmp.sock, the exact command line kept in
                               qemu-command.json), wait for the agent in the guest
  vm down                      power it off. sim: stop services and agent, unmount,
                               detach. qemu: ACPI power-down with a deadline, then a
                               hard stop (QMP quit, then SIGKILL); says which happened
  vm status                    power state, disks, the agent's health (sim: pids and
                               services; qemu: QEMU's pid and run state)
  sim up|down|status           the same as vm (the older name)

Checkpoints:
  checkpoint create [--type production|standard] [--fallback-standard]
                    [--label L] [--freeze-window-ms N]
                               without --type: a qemu VM's vm.json "checkpoint_type"
                               (production: falls back to standard; production-only;
                               standard; disabled), else production
                               production (default): quiesce through the agent,
                               snapshot every disk while frozen; application-consistent
                               only when the hold was continuous. standard: no guest help;
                               a running qemu VM is paused and its memory saved with the
                               disks (apply brings it back running where it was)
                               --fallback-standard: take a standard one if quiesce fails
  checkpoint list              every checkpoint, oldest first (* marks the current one)
  checkpoint tree              checkpoints as a tree of parents
  checkpoint show ID           one manifest
  checkpoint delete ID [--force | --subtree]
                               a checkpoint that is a parent is refused unless --force,
                               which re-parents its children onto its own parent;
                               --subtree deletes it and every checkpoint below it.
                               qemu: its disk layers are merged into what is built on
                               them first (qemu-img commit/rebase when off, block-commit/
                               block-stream jobs with progress when on), so no other
                               checkpoint breaks; refused while a block job runs
  checkpoint rename ID LABEL   a new label (at most 100 characters, no control characters)
  checkpoint export ID DIR     qemu: a self-contained copy in DIR (absent or empty):
                               each disk flattened (qemu-img convert), the memory state
                               file if any, the manifest, the QEMU command line
  checkpoint import DIR        qemu: bring an exported checkpoint into this VM's store
                               (checked first: a broken or foreign one changes nothing);
                               it becomes a root of the tree, ready to apply
  checkpoint apply ID [--save-current]
                               power off, (save the current state as a standard
                               checkpoint,) restore the disks, power on

Options:
  --vm DIR      the VM directory (default: $QUIESCE_VM, else the current directory)
  --json        machine output on stdout (progress then goes to stderr)
  --agent ENDPOINT
                reach the agent here instead of the VM's own socket: unix:/path,
                vsock:cid:port, hvsock:/uds:port, or qga:/path for the host end of
                the org.qemu.guest_agent.0 virtio-serial channel (one client at a
                time: not while libvirt uses it). A stock qemu-guest-agent there
                quiesces filesystems only: the checkpoint is filesystem-consistent.

Exit codes:
  0  success
  1  the checkpoint was taken but is not what was asked (a production checkpoint
     recorded as crash-consistent because the hold broke, or filesystem-consistent
     because a stock qemu-guest-agent answered)
  2  usage error
  3  invalid input: a bad vm.json, a corrupt manifest, a bad checkpoint id
  4  not found: no such checkpoint, a missing disk image or snapshot file
  5  conflict: wrong power state, a checkpoint that is a parent, a failed checkpoint
  6  the agent could not be reached or refused to quiesce (nothing stays frozen)
  7  the snapshot backend failed
  8  system: needs root, mount/losetup failures, files that cannot be written
)";

int exit_code(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::invalid_input: return 3;
    case ErrorKind::not_found: return 4;
    case ErrorKind::conflict: return 5;
    case ErrorKind::agent: return 6;
    case ErrorKind::backend: return 7;
    case ErrorKind::system: return 8;
  }
  return 8;
}

struct Args {
  std::string vm_dir;
  bool json_output = false;
  std::vector<std::string> positional;
  std::string type;  // empty: the VM's checkpoint type (qemu), else production
  bool fallback_standard = false;
  std::string label;
  std::optional<unsigned> freeze_window_ms;
  bool force = false;
  bool save_current = false;
  bool subtree = false;
  std::optional<quiesce::client::Endpoint> agent;
};

// The VM with its agent reached through another endpoint (--agent).
class AgentEndpointOverride : public VirtualMachine {
 public:
  AgentEndpointOverride(VirtualMachine& vm, quiesce::client::Endpoint endpoint)
      : vm_(vm), endpoint_(std::move(endpoint)) {}
  [[nodiscard]] std::vector<DiskSpec> disks() const override { return vm_.disks(); }
  [[nodiscard]] bool running() const override { return vm_.running(); }
  [[nodiscard]] Status power_off() override { return vm_.power_off(); }
  [[nodiscard]] Status power_on() override { return vm_.power_on(); }
  [[nodiscard]] quiesce::client::ClientOptions agent_client_options() const override {
    auto options = vm_.agent_client_options();
    options.endpoint = endpoint_;
    return options;
  }
  [[nodiscard]] VmStateCapture* state_capture() override { return vm_.state_capture(); }

 private:
  VirtualMachine& vm_;
  quiesce::client::Endpoint endpoint_;
};

struct UsageError {
  std::string message;
};

Args parse_args(int argc, char** argv) {
  Args args;
  if (const char* env = std::getenv("QUIESCE_VM"); env != nullptr) {
    args.vm_dir = env;
  }
  auto value = [&](int& i, const std::string& name) -> std::string {
    if (i + 1 >= argc) {
      throw UsageError{name + " needs a value"};
    }
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--vm") {
      args.vm_dir = value(i, a);
    } else if (a == "--json") {
      args.json_output = true;
    } else if (a == "--agent") {
      try {
        args.agent = quiesce::client::Endpoint::parse(value(i, a));
      } catch (const std::invalid_argument& e) {
        throw UsageError{std::string("--agent: ") + e.what()};
      }
    } else if (a == "--type") {
      args.type = value(i, a);
      if (args.type != "production" && args.type != "standard") {
        throw UsageError{"--type: expected production or standard, got \"" + args.type + "\""};
      }
    } else if (a == "--fallback-standard") {
      args.fallback_standard = true;
    } else if (a == "--label") {
      args.label = value(i, a);
      if (auto checked = check_label(args.label); !checked) {
        throw UsageError{"--" + checked.error().message};
      }
    } else if (a == "--freeze-window-ms") {
      const auto v = value(i, a);
      char* end = nullptr;
      const auto n = std::strtoul(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || n == 0 || n > 3'600'000) {
        throw UsageError{"--freeze-window-ms: expected a positive number of milliseconds, got \"" + v + "\""};
      }
      args.freeze_window_ms = static_cast<unsigned>(n);
    } else if (a == "--force") {
      args.force = true;
    } else if (a == "--subtree") {
      args.subtree = true;
    } else if (a == "--save-current") {
      args.save_current = true;
    } else if (a == "-h" || a == "--help") {
      std::cout << usage_text;
      std::exit(exit_ok);
    } else if (a.size() > 1 && a[0] == '-') {
      throw UsageError{"unknown option " + a};
    } else {
      args.positional.push_back(a);
    }
  }
  if (args.vm_dir.empty()) {
    args.vm_dir = ".";
  }
  return args;
}

class Output {
 public:
  explicit Output(bool json_output) : json_(json_output) {}
  [[nodiscard]] bool json_mode() const { return json_; }
  // Progress goes where it does not spoil machine output.
  [[nodiscard]] std::ostream& progress() const { return json_ ? std::cerr : std::cout; }
  void progress_line(const ProgressEvent& e) const {
    auto& out = progress();
    if (!e.ms && !e.failed) {
      out << "  .. " << e.step << (e.detail.empty() ? "" : "  " + e.detail) << std::endl;
      return;
    }
    out << (e.failed ? "[FAILED " : "[") << e.step << "]";
    if (e.ms) {
      out << " " << std::fixed << std::setprecision(1) << *e.ms << " ms";
    }
    if (!e.detail.empty()) {
      out << "  " << e.detail;
    }
    out << std::endl;
  }
  int fail(const Error& error) const {
    if (json_) {
      std::cout << json{{"error", {{"kind", to_string(error.kind)}, {"message", error.message}}}}.dump() << "\n";
    }
    std::cerr << "quiesce-host: " << error.message << "\n";
    return exit_code(error.kind);
  }

 private:
  bool json_;
};

std::string fmt_ms(const json& timings, const char* key) {
  if (!timings.contains(key) || !timings[key].is_number()) {
    return "-";
  }
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << timings[key].get<double>();
  return s.str();
}

void print_manifest(const Manifest& m) {
  std::cout << "checkpoint " << m.id << (m.label.empty() ? "" : "  \"" + m.label + "\"") << "\n"
            << "  type " << to_string(m.type) << "  consistency "
            << (m.consistency ? to_string(*m.consistency) : "-") << "  status " << (m.ok ? "ok" : "failed")
            << "  created " << m.created_at << "  parent " << (m.parent ? *m.parent : "-") << "\n";
  if (m.agent.is_object()) {
    std::cout << "  agent " << m.agent.value("kind", std::string("?")) << " "
              << m.agent.value("version", std::string()) << "\n";
  }
  if (m.error) {
    std::cout << "  error: " << m.error->message << "\n";
  }
  if (m.fallback_reason) {
    std::cout << "  fell back to standard: " << *m.fallback_reason << "\n";
  }
  for (const auto& d : m.disks) {
    std::cout << "  disk " << d.name << ": " << d.method << " " << d.snapshot << " (" << d.bytes / (1024 * 1024)
              << " MiB, " << d.allocated_bytes / 1024 << " KiB allocated)\n";
  }
  if (m.memory.is_object()) {
    std::cout << "  memory: " << m.memory.value("file", std::string()) << " ("
              << m.memory.value("bytes", std::uint64_t{0}) / (1024 * 1024) << " MiB, sha256 "
              << m.memory.value("sha256", std::string()).substr(0, 16) << "...), the VM paused "
              << fmt_ms(m.memory, "pause_ms") << " ms\n";
  }
  for (const auto& w : m.writers) {
    std::cout << "  writer " << w.value("name", "") << " (" << w.value("type", "") << ", " << w.value("level", "")
              << "): " << w.value("state", "") << "\n";
  }
  if (!m.artifacts.empty()) {
    std::cout << "  artifacts: " << m.artifacts.dump() << "\n";
  }
  std::cout << "  timings ms:";
  for (const auto& [k, v] : m.timings_ms.items()) {
    std::cout << " " << k << "=" << fmt_ms(m.timings_ms, k.c_str());
  }
  std::cout << "\n";
  for (const auto& w : m.warnings) {
    std::cout << "  warning: " << w << "\n";
  }
}

void print_tree(const json& nodes, const std::string& indent) {
  for (const auto& n : nodes) {
    std::cout << indent << (n["current"].get<bool>() ? "* " : "- ") << n["id"].get<std::string>() << "  "
              << n["type"].get<std::string>() << "/"
              << (n["consistency"].is_null() ? std::string("-") : n["consistency"].get<std::string>()) << "  "
              << n["status"].get<std::string>() << (n["label"].get<std::string>().empty() ? "" : "  \"" + n["label"].get<std::string>() + "\"")
              << "\n";
    print_tree(n["children"], indent + "    ");
  }
}

// A VM of either kind, as the commands below need it.
struct OpenedVm {
  std::unique_ptr<SimVm> sim;
  std::unique_ptr<QemuVm> qemu;

  [[nodiscard]] VirtualMachine& machine() const {
    return sim ? static_cast<VirtualMachine&>(*sim) : static_cast<VirtualMachine&>(*qemu);
  }
  [[nodiscard]] std::filesystem::path checkpoints_dir() const {
    return sim ? sim->checkpoints_dir() : qemu->checkpoints_dir();
  }
  [[nodiscard]] const json& backend_config() const { return sim ? sim->backend_config() : qemu->backend_config(); }
  [[nodiscard]] json status() const { return sim ? sim->status() : qemu->status(); }
  void set_progress(const ProgressFn& progress) const {
    if (sim) {
      sim->set_progress(progress);
    } else {
      qemu->set_progress(progress);
    }
  }
};

// The kind decides which vm.json schema applies; an unreadable or
// malformed file gets the simulated host's error, which names the file.
Expected<OpenedVm> open_vm(const std::string& dir) {
  auto vm_json = read_vm_json(dir);
  if (!vm_json) {
    return vm_json.error();
  }
  const auto& j = vm_json->json;
  OpenedVm opened;
  if (j.is_object() && j.value("kind", std::string()) == "qemu") {
    auto vm = QemuVm::open(dir);
    if (!vm) {
      return vm.error();
    }
    opened.qemu = std::move(*vm);
  } else {
    auto vm = SimVm::open(dir);
    if (!vm) {
      return vm.error();
    }
    opened.sim = std::move(*vm);
  }
  return opened;
}

int run(const Args& args, const Output& out) {
  const auto& p = args.positional;
  if (p.empty()) {
    throw UsageError{"a command is needed"};
  }
  auto vm = open_vm(args.vm_dir);
  if (!vm) {
    return out.fail(vm.error());
  }
  vm->set_progress([&](const ProgressEvent& e) { out.progress_line(e); });
  CheckpointStore store(vm->checkpoints_dir());
  auto backend = make_backend(vm->backend_config(), "backend");
  if (!backend) {
    return out.fail(backend.error());
  }
  if (auto* qmp = dynamic_cast<QmpBackend*>(backend->get()); qmp != nullptr) {
    qmp->set_progress([&](const ProgressEvent& e) { out.progress_line(e); });
  }
  std::optional<AgentEndpointOverride> agent_override;
  VirtualMachine* machine = &vm->machine();
  if (args.agent) {
    machine = &agent_override.emplace(vm->machine(), *args.agent);
  }
  Checkpointer checkpointer(store, **backend, *machine,
                            [&](const ProgressEvent& e) { out.progress_line(e); });

  const std::string group = p[0];
  const std::string command = p.size() > 1 ? p[1] : "";
  auto need_args = [&](std::size_t n) {
    if (p.size() != n) {
      throw UsageError{group + " " + command + ": expected " + std::to_string(n - 2) + " argument(s)"};
    }
  };

  if (group == "vm" || group == "sim") {
    need_args(2);
    if (command == "up") {
      const auto start = std::chrono::steady_clock::now();
      if (auto status = vm->machine().power_on(); !status) {
        return out.fail(status.error());
      }
      const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (out.json_mode()) {
        auto status = vm->status();
        status["ms"] = ms;
        std::cout << status.dump() << "\n";
      } else {
        std::cout << "VM on in " << std::fixed << std::setprecision(1) << ms << " ms\n";
      }
      return exit_ok;
    }
    if (command == "down") {
      const auto start = std::chrono::steady_clock::now();
      if (auto status = vm->machine().power_off(); !status) {
        return out.fail(status.error());
      }
      const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      const std::string how = vm->qemu ? to_string(vm->qemu->last_power_off()) : "";
      if (out.json_mode()) {
        json result = {{"power", "off"}, {"ms", ms}};
        if (vm->qemu) {
          result["method"] = key_of(vm->qemu->last_power_off());
          result["how"] = how;
        }
        std::cout << result.dump() << "\n";
      } else {
        std::cout << "VM off in " << std::fixed << std::setprecision(1) << ms << " ms"
                  << (how.empty() ? "" : ": " + how) << "\n";
      }
      return exit_ok;
    }
    if (command == "status") {
      const auto status = vm->status();
      if (out.json_mode()) {
        std::cout << status.dump() << "\n";
      } else {
        std::cout << status.dump(2) << "\n";
      }
      return exit_ok;
    }
    throw UsageError{group + ": expected up, down or status"};
  }

  if (group != "checkpoint") {
    throw UsageError{"unknown command " + group};
  }
  if (command == "create") {
    need_args(2);
    CreateOptions options;
    // Hyper-V's checkpoint type setting: what create does without --type.
    const std::string setting = vm->qemu ? vm->qemu->config().checkpoint_type : "production-only";
    if (args.type.empty() && setting == "disabled") {
      return out.fail(Error{ErrorKind::conflict, "checkpoints are disabled for this VM (vm.json checkpoint_type)"});
    }
    const std::string type = !args.type.empty() ? args.type : setting == "standard" ? "standard" : "production";
    options.type = type == "standard" ? CheckpointType::standard : CheckpointType::production;
    options.fallback_standard = args.fallback_standard || (args.type.empty() && setting == "production");
    options.label = args.label;
    options.freeze_window_ms = args.freeze_window_ms;
    auto created = checkpointer.create(options);
    if (!created) {
      return out.fail(created.error());
    }
    if (out.json_mode()) {
      std::cout << created->to_json().dump() << "\n";
    } else {
      print_manifest(*created);
    }
    // Asked for production, got a crash- or filesystem-consistent one: say so
    // in the code.
    const bool degraded = options.type == CheckpointType::production &&
                          (created->type != CheckpointType::production ||
                           created->consistency != Consistency::application);
    return degraded ? 1 : exit_ok;
  }
  if (command == "list" || command == "tree") {
    need_args(2);
    auto listing = store.list();
    auto current = store.current();
    const std::optional<std::string> current_id = current ? *current : std::nullopt;
    for (const auto& problem : listing.problems) {
      std::cerr << "quiesce-host: warning: " << problem.message << "\n";
    }
    if (command == "tree") {
      const auto tree = checkpoint_tree(listing.manifests, current_id);
      if (out.json_mode()) {
        std::cout << json{{"tree", tree}}.dump() << "\n";
      } else {
        print_tree(tree, "");
      }
    } else if (out.json_mode()) {
      json items = json::array();
      for (const auto& m : listing.manifests) {
        items.push_back(m.to_json());
      }
      json problems = json::array();
      for (const auto& problem : listing.problems) {
        problems.push_back(problem.message);
      }
      std::cout << json{{"checkpoints", items}, {"current", current_id ? json(*current_id) : json(nullptr)},
                        {"problems", problems}}
                       .dump()
                << "\n";
    } else {
      std::cout << "  ID                         TYPE        CONSISTENCY  STATUS  CREATED               PARENT                     LABEL\n";
      for (const auto& m : listing.manifests) {
        std::cout << (current_id && *current_id == m.id ? "* " : "  ") << std::left << std::setw(27) << m.id
                  << std::setw(12) << to_string(m.type) << std::setw(13)
                  << (m.consistency ? to_string(*m.consistency) : "-") << std::setw(8) << (m.ok ? "ok" : "failed")
                  << std::setw(22) << m.created_at << std::setw(27) << (m.parent ? *m.parent : "-") << m.label
                  << "\n";
      }
    }
    return listing.problems.empty() ? exit_ok : 3;
  }
  if (command == "show") {
    need_args(3);
    auto m = store.load(p[2]);
    if (!m) {
      return out.fail(m.error());
    }
    if (out.json_mode()) {
      std::cout << m->to_json().dump() << "\n";
    } else {
      print_manifest(*m);
    }
    return exit_ok;
  }
  if (command == "delete" && args.subtree) {
    need_args(3);
    if (args.force) {
      throw UsageError{"delete: --force and --subtree do not go together"};
    }
    auto deleted = remove_subtree(checkpointer, store, p[2]);
    if (!deleted) {
      return out.fail(deleted.error());
    }
    if (out.json_mode()) {
      std::cout << json{{"deleted", *deleted}}.dump() << "\n";
    } else {
      for (const auto& id : *deleted) {
        std::cout << "deleted " << id << "\n";
      }
    }
    return exit_ok;
  }
  if (command == "rename") {
    need_args(4);
    auto renamed = rename_checkpoint(store, p[2], p[3]);
    if (!renamed) {
      return out.fail(renamed.error());
    }
    if (out.json_mode()) {
      std::cout << json{{"renamed", p[2]}, {"label", renamed->label}}.dump() << "\n";
    } else {
      std::cout << "checkpoint " << p[2] << " is now \"" << renamed->label << "\"\n";
    }
    return exit_ok;
  }
  if (command == "export") {
    need_args(4);
    const auto command_file = vm->qemu ? vm->qemu->config().command_file() : std::filesystem::path();
    auto exported = export_checkpoint(store, p[2], p[3], command_file);
    if (!exported) {
      return out.fail(exported.error());
    }
    if (out.json_mode()) {
      std::cout << json{{"exported", p[2]}, {"dir", exported->dir.string()}, {"files", exported->files},
                        {"bytes", exported->bytes}}
                       .dump()
                << "\n";
    } else {
      std::cout << "exported " << p[2] << " to " << exported->dir.string() << " (" << exported->files.size()
                << " files, " << exported->bytes / 1024 << " KiB)\n";
    }
    return exit_ok;
  }
  if (command == "import") {
    need_args(3);
    std::vector<std::pair<std::string, std::string>> disks;
    for (const auto& d : vm->machine().disks()) {
      disks.emplace_back(d.name, d.image);
    }
    auto imported = import_checkpoint(store, p[2], disks);
    if (!imported) {
      return out.fail(imported.error());
    }
    if (out.json_mode()) {
      std::cout << imported->to_json().dump() << "\n";
    } else {
      std::cout << "imported " << p[2] << " as checkpoint " << imported->id << "\n";
    }
    return exit_ok;
  }
  if (command == "delete") {
    need_args(3);
    auto removed = checkpointer.remove(p[2], args.force);
    if (!removed) {
      return out.fail(removed.error());
    }
    if (out.json_mode()) {
      std::cout << json{{"deleted", p[2]}, {"reparented", removed->reparented},
                        {"new_parent", removed->new_parent ? json(*removed->new_parent) : json(nullptr)}}
                       .dump()
                << "\n";
    } else {
      std::cout << "deleted " << p[2];
      for (const auto& c : removed->reparented) {
        std::cout << "; " << c << " now descends from " << (removed->new_parent ? *removed->new_parent : "nothing");
      }
      std::cout << "\n";
    }
    return exit_ok;
  }
  if (command == "apply") {
    need_args(3);
    auto applied = checkpointer.apply(p[2], args.save_current);
    if (!applied) {
      return out.fail(applied.error());
    }
    if (out.json_mode()) {
      std::cout << json{{"applied", applied->applied.id},
                        {"saved", applied->saved ? json(applied->saved->id) : json(nullptr)},
                        {"timings_ms", applied->timings_ms}}
                       .dump()
                << "\n";
    } else {
      std::cout << "applied " << applied->applied.id << " in " << fmt_ms(applied->timings_ms, "total") << " ms";
      if (applied->saved) {
        std::cout << "; the previous state is checkpoint " << applied->saved->id;
      }
      std::cout << "\n";
    }
    return exit_ok;
  }
  throw UsageError{"checkpoint: expected create, list, tree, show, delete, apply, rename, export or import"};
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse_args(argc, argv);
    const Output out(args.json_output);
    return run(args, out);
  } catch (const UsageError& e) {
    std::cerr << "quiesce-host: " << e.message << "\n\n" << usage_text;
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "quiesce-host: internal error: " << e.what() << "\n";
    return 8;
  }
}

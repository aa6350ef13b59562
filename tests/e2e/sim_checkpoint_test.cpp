// The full flow on the simulated host, as root: loop-mounted ext4 disks, the
// real quiesce-agent with the real fsfreeze writer, the real checkpointer.
// Each test skips (with a message) when not root; the VM is powered off
// (unmount, detach) by RAII even when a check fails.

#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "host-bridge/checkpoint/checkpointer.hpp"
#include "host-bridge/sim/sim_vm.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
using namespace quiesce::host;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

bool skip_unless_root() {
  if (::geteuid() != 0) {
    MESSAGE("skipped: the simulated host needs root (loop devices, mount, FIFREEZE)");
    return true;
  }
  return false;
}

void write_synced(const std::filesystem::path& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  ::fsync(fd);
  ::close(fd);
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

// True when a create+write+fsync in `dir` finishes within `timeout` (the
// filesystem is not frozen). Done in a child so a frozen fs blocks it, not us.
bool writable_within(const std::filesystem::path& dir, std::chrono::milliseconds timeout) {
  const auto file = (dir / ("probe-" + std::to_string(::getpid()))).string();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const bool ok = fd >= 0 && ::write(fd, "x", 1) == 1 && ::fsync(fd) == 0;
    ::_exit(ok ? 0 : 1);
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    std::this_thread::sleep_for(5ms);
  }
  return false;  // left to finish once thawed
}

// A VM with one 32 MiB ext4 data disk and the fsfreeze writer, powered on
// for the test and off (unmounted, detached) whatever happens.
struct PoweredVm {
  test::TempDir dir{"quiesce-sim"};
  std::unique_ptr<SimVm> vm;

  explicit PoweredVm(json session = json::object()) {
    json config = {{"name", "t"},
                   {"disks", {{{"name", "data"}, {"size_mb", 32}}}},
                   {"agent", {{"binary", test::built_binary("quiesce-agent").string()}, {"log_level", "debug"}}}};
    if (!session.empty()) {
      config["agent"]["session"] = session;
    }
    std::filesystem::create_directories(dir.path() / "vm");
    std::ofstream(dir / "vm/vm.json") << config.dump(2);
    auto opened = SimVm::open(dir / "vm");
    REQUIRE_MESSAGE(opened.ok(), (opened.ok() ? "" : opened.error().message));
    vm = std::move(*opened);
    auto on = vm->power_on();
    REQUIRE_MESSAGE(on.ok(), (on.ok() ? "" : on.error().message));
  }
  ~PoweredVm() {
    if (auto off = vm->power_off(); !off) {
      MESSAGE("power off: " << off.error().message);
    }
  }
  [[nodiscard]] std::filesystem::path data() const { return vm->sim_disks().front().mount; }
  [[nodiscard]] json health() const {
    client::AgentClient agent(vm->agent_client_options());
    return agent.health().body;
  }
};

// The file backend with a hook that runs while the guest is held, to kill
// the agent or stall like a host that went away.
class HookedBackend final : public SnapshotBackend {
 public:
  explicit HookedBackend(std::function<void()> hook) : hook_(std::move(hook)) {}
  std::string name() const override { return "file"; }
  Expected<DiskSnapshot> snapshot(const DiskSpec& disk, const std::string& id,
                                  const std::filesystem::path& dir) override {
    hook_();
    return inner_.snapshot(disk, id, dir);
  }
  Status verify(const DiskSnapshot& s) override { return inner_.verify(s); }
  Status restore(const DiskSnapshot& s, const DiskSpec& d, const std::string& id) override {
    return inner_.restore(s, d, id);
  }
  Status remove(const DiskSnapshot& s, const std::string& id) override { return inner_.remove(s, id); }

 private:
  std::function<void()> hook_;
  FileBackend inner_;
};

}  // namespace

TEST_CASE("sim: production checkpoint, more writes, apply with --save-current keeps both states") {
  if (skip_unless_root()) {
    return;
  }
  PoweredVm p;
  CheckpointStore store(p.vm->checkpoints_dir());
  FileBackend backend;
  Checkpointer checkpointer(store, backend, *p.vm);

  write_synced(p.data() / "before.txt", "acknowledged before the checkpoint");
  CreateOptions options;
  options.label = "e2e";
  auto cp = checkpointer.create(options);
  REQUIRE_MESSAGE(cp.ok(), (cp.ok() ? "" : cp.error().message));
  CHECK(cp->type == CheckpointType::production);
  CHECK(cp->consistency == Consistency::application);
  CHECK(cp->verdict["continuous"] == true);
  REQUIRE(cp->writers.size() == 1);
  CHECK(cp->writers[0]["type"] == "fsfreeze");
  CHECK(cp->writers[0]["identity"].is_object());
  // The session's own identify: what was frozen, in which wave, and why.
  CHECK(cp->writers[0]["identity"]["components"][0].contains("wave_reason"));
  CHECK(cp->artifacts.contains("fs"));
  for (const char* phase : {"identify", "prepare", "freeze", "snapshot", "thaw", "complete", "total"}) {
    CHECK_MESSAGE(cp->timings_ms.contains(phase), phase);
  }
  CHECK(writable_within(p.data(), 1s));

  write_synced(p.data() / "after.txt", "written after the checkpoint");
  auto applied = checkpointer.apply(cp->id, true);
  REQUIRE_MESSAGE(applied.ok(), (applied.ok() ? "" : applied.error().message));
  REQUIRE(applied->saved.has_value());
  CHECK(read_text(p.data() / "before.txt") == "acknowledged before the checkpoint");
  CHECK_FALSE(std::filesystem::exists(p.data() / "after.txt"));
  // The restore marker was inside the snapshot: the agent says it was restored.
  auto health = p.health();
  REQUIRE(health["last_restore"].is_object());
  CHECK(health["last_restore"]["checkpoint_id"] == cp->id);

  // The state saved before applying is a checkpoint of its own, child of cp.
  const auto saved = *applied->saved;
  CHECK(saved.type == CheckpointType::standard);
  CHECK(saved.vm_state == "off");
  REQUIRE(saved.parent.has_value());
  CHECK(*saved.parent == cp->id);
  auto back = checkpointer.apply(saved.id, false);
  REQUIRE_MESSAGE(back.ok(), (back.ok() ? "" : back.error().message));
  CHECK(read_text(p.data() / "after.txt") == "written after the checkpoint");
  CHECK(p.health()["last_restore"].is_null());  // taken with the VM off: no hold, no marker
}

TEST_CASE("sim: the agent killed mid-checkpoint leaves nothing frozen and the checkpoint failed") {
  if (skip_unless_root()) {
    return;
  }
  PoweredVm p;
  CheckpointStore store(p.vm->checkpoints_dir());
  bool killed = false;
  HookedBackend backend([&] {
    if (!killed) {
      killed = true;
      REQUIRE(::kill(p.vm->agent_pid(), SIGKILL) == 0);
    }
  });
  Checkpointer checkpointer(store, backend, *p.vm);
  auto cp = checkpointer.create({});
  REQUIRE(killed);
  REQUIRE_FALSE(cp.ok());
  CHECK(cp.error().kind == ErrorKind::agent);
  CHECK(writable_within(p.data(), 1s));
  auto listing = store.list();
  REQUIRE(listing.manifests.size() == 1);
  const auto& m = listing.manifests.front();
  CHECK_FALSE(m.ok);
  REQUIRE(m.error.has_value());
  CHECK(m.error->message.find("thaw") != std::string::npos);
  CHECK(m.disks.empty());
  CHECK_FALSE(std::filesystem::exists(store.dir_of(m.id) / "disks"));
  // A failed checkpoint is never applied.
  auto applied = checkpointer.apply(m.id, false);
  REQUIRE_FALSE(applied.ok());
  CHECK(applied.error().kind == ErrorKind::conflict);
}

TEST_CASE("sim: host gone after freeze: the guest thaws at its deadline, the checkpoint is crash-consistent") {
  if (skip_unless_root()) {
    return;
  }
  PoweredVm p;
  CheckpointStore store(p.vm->checkpoints_dir());
  bool thawed_on_its_own = false;
  std::chrono::steady_clock::time_point hook_start;
  HookedBackend backend([&] {
    // The host stops calling: nothing thaws but the agent's watchdog.
    hook_start = std::chrono::steady_clock::now();
    CHECK_FALSE(writable_within(p.data(), 200ms));
    thawed_on_its_own = writable_within(p.data(), 3s);
  });
  Checkpointer checkpointer(store, backend, *p.vm);
  CreateOptions options;
  options.freeze_window_ms = 500;
  auto cp = checkpointer.create(options);
  CHECK(thawed_on_its_own);
  REQUIRE_MESSAGE(cp.ok(), (cp.ok() ? "" : cp.error().message));
  CHECK(cp->type == CheckpointType::production);
  CHECK(cp->consistency == Consistency::crash);
  CHECK(cp->verdict["continuous"] == false);
  CHECK(cp->verdict["watchdog_fired"] == true);
  CHECK_FALSE(cp->warnings.empty());
  CHECK(store.load(cp->id)->consistency == Consistency::crash);
}

TEST_CASE("sim: quiesce-host drives the VM: up, create, list, apply, down") {
  if (skip_unless_root()) {
    return;
  }
  test::TempDir dir{"quiesce-sim-cli"};
  std::filesystem::create_directories(dir.path() / "vm");
  std::ofstream(dir / "vm/vm.json") << json{{"disks", {{{"name", "data"}, {"size_mb", 32}}}},
                                             {"agent", {{"binary", test::built_binary("quiesce-agent").string()}}}}
                                           .dump();
  const auto host = test::built_binary("quiesce-host").string();
  const auto vm = (dir / "vm").string();
  struct Down {
    std::string host, vm;
    ~Down() { test::run_command({host, "--vm", vm, "sim", "down"}); }
  } down{host, vm};
  std::string out;
  REQUIRE_MESSAGE(test::run_command({host, "--vm", vm, "sim", "up"}, &out) == 0, out);
  CHECK(test::run_command({host, "--vm", vm, "sim", "up"}, &out) == 5);  // already on
  write_synced(dir / "vm/guest/data/one.txt", "one");
  REQUIRE_MESSAGE(test::run_command({host, "--vm", vm, "--json", "checkpoint", "create"}, &out) == 0, out);
  // The manifest is the one JSON line among the progress lines (keys sorted:
  // "agent" comes first).
  const auto at = out.rfind("{\"agent\"");
  REQUIRE_MESSAGE(at != std::string::npos, out);
  const auto line = out.substr(at);
  const auto manifest = json::parse(line.substr(0, line.find('\n')));
  CHECK(manifest["consistency"] == "application");
  CHECK(manifest["agent"]["kind"] == "quiesce");
  const std::string id = manifest["id"];
  std::filesystem::remove(dir / "vm/guest/data/one.txt");
  REQUIRE_MESSAGE(test::run_command({host, "--vm", vm, "checkpoint", "apply", id}, &out) == 0, out);
  CHECK(read_text(dir / "vm/guest/data/one.txt") == "one");
  REQUIRE(test::run_command({host, "--vm", vm, "--json", "sim", "status"}, &out) == 0);
  CHECK(out.find("\"checkpoint_id\":\"" + id + "\"") != std::string::npos);
  REQUIRE(test::run_command({host, "--vm", vm, "sim", "down"}, &out) == 0);
  CHECK_FALSE(std::filesystem::exists(dir / "vm/run"));
  // Production needs the agent: with the VM off it is refused, nothing recorded.
  CHECK(test::run_command({host, "--vm", vm, "checkpoint", "create"}, &out) == 5);
}

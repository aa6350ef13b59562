// The checkpoint tree of a VM of kind qemu, through the real quiesce-host
// and a real QEMU (TCG, machine pc, no guest OS: the block layer is all the
// tree needs, and a guest boot would cost minutes). Known bytes are written
// into the running VM's disk between checkpoints (HMP qemu-io), and every
// checkpoint's state is read back after each apply, create and delete, so a
// merge that loses or leaks one layer's data fails here. Also: delete
// refused while a block job runs or QMP is held, a snapshot transaction that
// fails leaving the VM running and nothing half made, rename, export and
// import.

#include <doctest/doctest.h>

#include <signal.h>

#include <array>
#include <filesystem>
#include <fstream>

#include "host-bridge/checkpoint/checkpoint_store.hpp"
#include "host-bridge/checkpoint/layer_merge.hpp"
#include "host-bridge/checkpoint/qmp_backend.hpp"
#include "host-bridge/checkpoint/qmp_client.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
using namespace quiesce::host;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

bool installed(const std::string& program) {
  return test::run_command({"sh", "-c", "command -v " + program}) == 0;
}

// Four 64 KiB blocks of the data disk; 0 is a block never written.
using Blocks = std::array<int, 4>;

std::string hex(int byte) {
  char text[8];
  std::snprintf(text, sizeof text, "0x%02x", byte);
  return text;
}

// What `image` (read through its backing chain) holds, compared with `expected`.
bool reads(const std::string& image, const Blocks& expected) {
  std::vector<std::string> argv{"qemu-io", "-r", "-U"};
  for (std::size_t i = 0; i < expected.size(); ++i) {
    argv.insert(argv.end(), {"-c", "read -P " + hex(expected[i]) + " " + std::to_string(i * 64) + "k 64k"});
  }
  argv.push_back(image);
  std::string output;
  const int rc = test::run_command(argv, &output);
  if (rc != 0 || output.find("Pattern verification failed") != std::string::npos ||
      output.find("read 65536/65536") == std::string::npos) {
    MESSAGE(image << " does not read as expected: " << output);
    return false;
  }
  return true;
}

// A qemu VM directory whose QEMU (daemonized by quiesce-host, so not our
// child) is killed at the end whatever happened.
class QemuVmDir {
 public:
  QemuVmDir(const std::filesystem::path& dir, const std::string& backend = "") : dir_(dir) {
    std::filesystem::create_directories(dir / "disks");
    REQUIRE(test::run_command({"qemu-img", "create", "-q", "-f", "qcow2", (dir / "disks/boot.qcow2").string(), "1M"}) == 0);
    REQUIRE(test::run_command({"qemu-img", "create", "-q", "-f", "qcow2", (dir / "disks/data.qcow2").string(), "4M"}) == 0);
    // No kernel: SeaBIOS finds nothing to boot and idles, which is all a
    // block layer needs. ACPI power-down then goes unanswered: a 1 s deadline.
    std::ofstream(dir / "vm.json")
        << R"({"kind": "qemu", "name": "tree", "memory_mib": 64, "accel": "tcg", "boot_disk": "boot",
               "disks": [{"name": "boot", "image": "disks/boot.qcow2"}, {"name": "data", "image": "disks/data.qcow2"}],
               "agent": null, "shutdown_timeout_s": 1)"
        << backend << "}\n";
  }
  ~QemuVmDir() {
    std::string text;
    std::ifstream pid_file(dir_ / "run" / "qemu.pid");
    int pid = 0;
    if (pid_file >> pid && pid > 0) {
      std::ifstream cmdline("/proc/" + std::to_string(pid) + "/cmdline");
      std::string line((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
      if (line.find((dir_ / "run").string()) != std::string::npos) {
        ::kill(pid, SIGKILL);
      }
    }
  }
  QemuVmDir(const QemuVmDir&) = delete;
  QemuVmDir& operator=(const QemuVmDir&) = delete;

  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  [[nodiscard]] std::string qmp_socket() const { return (dir_ / "run" / "qmp.sock").string(); }
  [[nodiscard]] CheckpointStore store() const { return CheckpointStore(dir_ / "checkpoints"); }

  // quiesce-host --vm DIR ARGS...; the exit code, the output in `output`.
  int host(const std::vector<std::string>& args, std::string* output = nullptr) const {
    std::vector<std::string> argv{test::built_binary("quiesce-host").string(), "--vm", dir_.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string text;
    const int rc = test::run_command(argv, &text);
    if (output != nullptr) {
      *output = text;
    }
    return rc;
  }
  void must(const std::vector<std::string>& args) const {
    std::string output;
    const int rc = host(args, &output);
    REQUIRE_MESSAGE(rc == 0, "quiesce-host " << args.front() << " " << (args.size() > 1 ? args[1] : "")
                                             << " exited " << rc << ": " << output);
  }
  // A standard checkpoint (no agent in this VM); its id.
  std::string checkpoint(const std::string& label) const {
    must({"checkpoint", "create", "--type", "standard", "--label", label});
    auto current = store().current();
    REQUIRE(current.ok());
    REQUIRE(current->has_value());
    return **current;
  }
  // Writes `byte` over block `block` of the running VM's data disk.
  void write(int block, int byte) const {
    auto qmp = QmpClient::connect(qmp_socket(), 10s);
    REQUIRE_MESSAGE(qmp.ok(), (qmp.ok() ? "" : qmp.error().message));
    auto done = qmp->execute("human-monitor-command",
                             {{"command-line", "qemu-io disk-data \"write -P " + hex(byte) + " " +
                                                   std::to_string(block * 64) + "k 64k\""}});
    REQUIRE_MESSAGE(done.ok(), (done.ok() ? "" : done.error().message));
  }
  // The image holding checkpoint `id`'s data disk: its overlay's base.
  [[nodiscard]] std::string state_of(const std::string& id) const {
    auto base = qcow2_backing_file("qemu-img", (dir_ / "checkpoints" / id / "disks" / "data.qcow2").string());
    REQUIRE_MESSAGE(base.ok(), (base.ok() ? "" : base.error().message));
    return *base;
  }
  // The data disk's image the VM (off) starts from.
  [[nodiscard]] std::string data_image() const {
    std::string output;
    REQUIRE(host({"--json", "vm", "status"}, &output) == 0);
    const auto status = json::parse(output.substr(output.find('{')));
    for (const auto& d : status["disks"]) {
      if (d["name"] == "data") {
        return d["image"].get<std::string>();
      }
    }
    FAIL("no data disk in vm status");
    return {};
  }
  [[nodiscard]] std::vector<std::filesystem::path> store_images() const {
    std::vector<std::filesystem::path> out;
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(dir_ / "checkpoints", ec);
         it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path().extension() == ".qcow2") {
        out.push_back(it->path());
      }
    }
    return out;
  }

 private:
  std::filesystem::path dir_;
};

bool have_qemu() {
  if (!installed("qemu-system-x86_64") || !installed("qemu-img") || !installed("qemu-io")) {
    MESSAGE("qemu-system-x86_64 / qemu-img / qemu-io not installed (packaging/dev.sh installs them); skipped");
    return false;
  }
  return true;
}

}  // namespace

TEST_CASE("qemu checkpoint tree: apply, create and delete (live and off) leave every other checkpoint intact") {
  if (!have_qemu()) {
    return;
  }
  test::TempDir tmp("quiesce-tree");
  QemuVmDir vm(tmp / "vm");
  vm.must({"vm", "up"});
  const int A = 0xa1, B = 0xb2, C = 0xc3, D = 0xd4, E = 0xe5, F = 0xf6, G = 0x17;
  vm.write(0, A);
  const auto cp1 = vm.checkpoint("one");
  vm.write(1, B);
  const auto cp2 = vm.checkpoint("two");
  vm.write(2, C);
  const auto cp3 = vm.checkpoint("three");
  vm.write(3, D);
  const Blocks at1{A, 0, 0, 0}, at2{A, B, 0, 0}, at3{A, B, C, 0};
  CHECK(reads(vm.state_of(cp1), at1));
  CHECK(reads(vm.state_of(cp2), at2));
  CHECK(reads(vm.state_of(cp3), at3));

  // Off: the VM gets a top layer of its own over cp3's overlay.
  vm.must({"vm", "down"});
  CHECK(reads(vm.data_image(), {A, B, C, D}));

  // Apply the oldest, then build a new branch on it.
  vm.must({"checkpoint", "apply", cp1});
  vm.write(1, E);
  const auto cp4 = vm.checkpoint("four, on one");
  vm.write(2, F);
  const Blocks at4{A, E, 0, 0};
  CHECK(reads(vm.state_of(cp1), at1));
  CHECK(reads(vm.state_of(cp2), at2));
  CHECK(reads(vm.state_of(cp3), at3));
  CHECK(reads(vm.state_of(cp4), at4));

  SUBCASE("delete, live and off, merges each layer into what is built on it") {
    // cp2's overlay is not open in QEMU (the VM runs the cp1 branch) and cp3
    // is built on it: qemu-img commit into cp1's overlay, cp3 re-pointed.
    // A parent: refused without --force, which changes nothing.
    std::string output;
    CHECK(vm.host({"checkpoint", "delete", cp2}, &output) == 5);
    CHECK(reads(vm.state_of(cp3), at3));
    vm.must({"checkpoint", "delete", cp2, "--force"});
    CHECK_FALSE(std::filesystem::exists(vm.store().dir_of(cp2)));
    CHECK(reads(vm.state_of(cp1), at1));
    CHECK(reads(vm.state_of(cp3), at3));
    CHECK(reads(vm.state_of(cp4), at4));
    CHECK(vm.store().load(cp3)->parent == cp1);

    // cp4's overlay is the layer QEMU writes to: an active block-commit
    // moves the VM onto the layer below, with F kept.
    REQUIRE(vm.host({"checkpoint", "delete", cp4}, &output) == 0);
    CHECK_MESSAGE(output.find("block-commit (active)") != std::string::npos, output);
    CHECK_MESSAGE(output.find("job quiesce-merge-data") != std::string::npos, output);
    CHECK(reads(vm.state_of(cp1), at1));
    CHECK(reads(vm.state_of(cp3), at3));

    vm.write(3, G);
    const auto cp5 = vm.checkpoint("five");
    CHECK(reads(vm.state_of(cp5), {A, E, F, G}));
    // Off, cp5's overlay holds the VM's own top layer: qemu-img commit, the
    // top re-pointed, nothing lost.
    vm.must({"vm", "down"});
    vm.must({"checkpoint", "delete", cp5});
    CHECK(reads(vm.data_image(), {A, E, F, G}));
    CHECK(reads(vm.state_of(cp1), at1));
    CHECK(reads(vm.state_of(cp3), at3));

    // The rest as one subtree, with the VM running on it.
    vm.must({"vm", "up"});
    const auto cp6 = vm.checkpoint("six");
    REQUIRE(vm.host({"checkpoint", "delete", cp1, "--subtree"}, &output) == 0);
    CHECK_MESSAGE(output.find("deleted " + cp3) < output.find("deleted " + cp1), output);
    CHECK_MESSAGE(output.find("deleted " + cp6) != std::string::npos, output);
    CHECK(vm.store().list().manifests.empty());
    CHECK(vm.store_images().empty());
    vm.must({"vm", "down"});
    CHECK(reads(vm.data_image(), {A, E, F, G}));
  }

  SUBCASE("delete is refused while a block job runs or another client holds QMP; nothing changes") {
    {
      auto qmp = QmpClient::connect(vm.qmp_socket(), 10s);
      REQUIRE(qmp.ok());
      // Streams cp4's state into the VM's top at 1 byte/s: it runs until cancelled.
      auto started = qmp->execute("block-stream", {{"device", "disk-data"}, {"job-id", "slow"}, {"speed", 1}});
      REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
    }
    std::string output;
    CHECK(vm.host({"checkpoint", "delete", cp3}, &output) == 5);
    CHECK_MESSAGE(output.find("a block job runs on this VM (job slow (stream") != std::string::npos, output);
    CHECK(std::filesystem::exists(vm.store().dir_of(cp3) / "disks" / "data.qcow2"));
    CHECK(reads(vm.state_of(cp3), at3));
    {
      auto qmp = QmpClient::connect(vm.qmp_socket(), 10s);
      REQUIRE(qmp.ok());
      REQUIRE(qmp->execute("block-job-cancel", {{"device", "slow"}}).ok());
      // Held: QEMU talks to one QMP client at a time.
      CHECK(vm.host({"checkpoint", "delete", cp3}, &output) == 5);
      CHECK_MESSAGE(output.find("does not answer") != std::string::npos, output);
      CHECK(reads(vm.state_of(cp3), at3));
    }
    REQUIRE(test::eventually(10s, [&] {
      auto qmp = QmpClient::connect(vm.qmp_socket(), 10s);
      auto jobs = qmp ? qmp->execute("query-jobs") : Expected<json>(qmp.error());
      return jobs.ok() && jobs->empty();
    }));
    vm.must({"checkpoint", "delete", cp3});
    CHECK(reads(vm.state_of(cp1), at1));
    CHECK(reads(vm.state_of(cp2), at2));
    CHECK(reads(vm.state_of(cp4), at4));
  }

  SUBCASE("rename, export and import into another VM, which applies it") {
    std::string output;
    const std::string long_label(101, 'x');
    CHECK(vm.host({"checkpoint", "rename", cp2, long_label}, &output) == 3);
    CHECK_MESSAGE(output.find("101 characters, at most 100") != std::string::npos, output);
    CHECK(vm.host({"checkpoint", "rename", cp2, "bad\nlabel"}, &output) == 3);
    CHECK(vm.host({"checkpoint", "rename", "cp-nope", "fine"}, &output) == 4);
    CHECK(vm.store().load(cp2)->label == "two");
    std::string accented;
    for (int i = 0; i < 100; ++i) {
      accented += "\xc3\xa9";  // é: 100 characters, 200 bytes
    }
    vm.must({"checkpoint", "rename", cp2, accented});
    CHECK(vm.store().load(cp2)->label == accented);

    // Exported while the VM runs (its state is a read-only layer of QEMU's).
    const auto exported = tmp / "exported";
    vm.must({"checkpoint", "export", cp3, exported.string()});
    CHECK(reads((exported / "disks" / "data.qcow2").string(), at3));
    CHECK(std::filesystem::exists(exported / "qemu-command.json"));
    CHECK(std::filesystem::exists(exported / "manifest.json"));
    CHECK(vm.host({"checkpoint", "export", cp3, exported.string()}, &output) == 5);  // not empty

    QemuVmDir other(tmp / "other");
    // Broken copies are refused and leave the store as it was.
    const auto broken = tmp / "broken";
    std::filesystem::copy(exported, broken, std::filesystem::copy_options::recursive);
    std::filesystem::resize_file(broken / "disks" / "data.qcow2", 1000);
    CHECK(other.host({"checkpoint", "import", broken.string()}, &output) == 3);
    CHECK_MESSAGE(output.find("disk 'data'") != std::string::npos, output);
    CHECK(other.host({"checkpoint", "import", (tmp / "nowhere").string()}, &output) == 4);
    CHECK(other.store().list().manifests.empty());
    CHECK(other.store_images().empty());

    REQUIRE(other.host({"--json", "checkpoint", "import", exported.string()}, &output) == 0);
    auto imported = other.store().list().manifests;
    REQUIRE(imported.size() == 1);
    CHECK_FALSE(imported[0].parent.has_value());
    CHECK(reads(other.state_of(imported[0].id), at3));
    other.must({"checkpoint", "apply", imported[0].id});
    other.must({"vm", "down"});
    CHECK(reads(other.data_image(), at3));
    // The source is untouched.
    CHECK(reads(vm.state_of(cp3), at3));
  }
  (void)vm.host({"vm", "down"});
}

TEST_CASE("qemu checkpoint: a disk the transaction cannot snapshot fails the checkpoint, the VM runs on, nothing is left") {
  if (!have_qemu()) {
    return;
  }
  test::TempDir tmp("quiesce-tree-fail");
  // The backend names a disk QEMU does not have: QEMU refuses the whole
  // transaction after creating the other disks' overlays.
  QemuVmDir vm(tmp / "vm", R"(, "backend": {"type": "qmp", "socket": "run/qmp.sock",
      "disks": {"boot": "disk-boot", "data": "disk-data", "logs": "disk-logs"}})");
  // The backend's socket must be absolute: quiesce-host may run anywhere.
  {
    std::ifstream in(vm.dir() / "vm.json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto at = text.find("run/qmp.sock");
    text.replace(at, std::string("run/qmp.sock").size(), vm.qmp_socket());
    std::ofstream(vm.dir() / "vm.json") << text;
  }
  vm.must({"vm", "up"});
  vm.write(0, 0x5a);
  std::string output;
  CHECK(vm.host({"checkpoint", "create", "--type", "standard"}, &output) == 7);
  CHECK_MESSAGE(output.find("disk 'logs'") != std::string::npos, output);
  CHECK_MESSAGE(output.find("no disk was snapshotted") != std::string::npos, output);
  auto qmp = QmpClient::connect(vm.qmp_socket(), 10s);
  REQUIRE(qmp.ok());
  auto status = qmp->execute("query-status");
  REQUIRE(status.ok());
  CHECK(status->value("status", std::string()) == "running");
  auto block = qmp->execute("query-block");
  REQUIRE(block.ok());
  for (const auto& dev : *block) {
    if (dev.contains("inserted")) {
      // Still on its own image, with no overlay.
      CHECK(dev["inserted"]["file"].get<std::string>().find("/disks/") != std::string::npos);
      CHECK_FALSE(dev["inserted"].contains("backing_file"));
    }
  }
  CHECK(vm.store_images().empty());
  // The failure is recorded, never made current.
  auto listing = vm.store().list();
  REQUIRE(listing.manifests.size() == 1);
  CHECK_FALSE(listing.manifests[0].ok);
  CHECK_FALSE(vm.store().current()->has_value());
  qmp = Error{ErrorKind::system, "closed"};
  (void)vm.host({"vm", "down"});
}

TEST_CASE("qmp backend delete: a base with other layers on it gets block-stream and qemu-img rebase, never into a checkpoint") {
  if (!have_qemu()) {
    return;
  }
  // A VM of kind qemu keeps one layer on each base; layers another tool
  // built beside ours (here with qemu-img, in the VM's disks/) must survive
  // a delete too. Machine none: QEMU's block layer and nothing else.
  test::TempDir tmp("quiesce-tree-stream");
  const auto disks = tmp / "disks";
  const auto store = tmp / "checkpoints";
  std::filesystem::create_directories(disks);
  const auto base = (disks / "data.qcow2").string();
  REQUIRE(test::run_command({"qemu-img", "create", "-q", "-f", "qcow2", base, "4M"}) == 0);
  REQUIRE(test::run_command({"qemu-io", "-c", "write -P 0xa1 0 64k", base}) == 0);
  const auto socket = (tmp / "qmp.sock").string();
  test::ChildProcess qemu({"/usr/bin/qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
                           "-qmp", "unix:" + socket + ",server=on,wait=off",
                           "-drive", "file=" + base + ",if=none,id=disk-data,format=qcow2"},
                          tmp / "qemu.log");
  REQUIRE(test::eventually(20s, [&] { return QmpClient::connect(socket, 5s).ok(); }));
  QmpBackendOptions options;
  options.socket = socket;
  options.disks = {{"data", {"disk-data", ""}}};
  QmpBackend backend(options);
  auto qmp_run = [&](const std::string& command, const json& arguments) {
    auto qmp = QmpClient::connect(socket, 10s);
    REQUIRE(qmp.ok());
    auto done = qmp->execute(command, arguments);
    REQUIRE_MESSAGE(done.ok(), (done.ok() ? "" : done.error().message));
  };
  auto hmp_write = [&](int block, int byte) {
    qmp_run("human-monitor-command", {{"command-line", "qemu-io disk-data \"write -P " + hex(byte) + " " +
                                                           std::to_string(block * 64) + "k 64k\""}});
  };
  auto layer = [&](const std::filesystem::path& file, const std::string& backing) {
    REQUIRE(test::run_command({"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing,
                               file.string()}) == 0);
  };
  auto cp1 = backend.snapshot({"data", base}, "cp-1", store / "cp-1");
  REQUIRE_MESSAGE(cp1.ok(), (cp1.ok() ? "" : cp1.error().message));
  hmp_write(1, 0xb2);
  // The VM's own top layer over cp-1's overlay (as after a restart).
  const auto top = (disks / "data.top.qcow2").string();
  qmp_run("blockdev-snapshot-sync", {{"device", "disk-data"}, {"snapshot-file", top}, {"format", "qcow2"}});
  hmp_write(2, 0xc3);
  const auto beside = disks / "beside.qcow2";  // on the base, beside cp-1's overlay
  const auto above = disks / "above.qcow2";    // on cp-1's overlay, not run by QEMU
  layer(beside, base);
  layer(above, cp1->snapshot);
  REQUIRE(test::run_command({"qemu-io", "-c", "write -P 0xd4 192k 64k", above.string()}) == 0);

  std::vector<ProgressEvent> steps;
  backend.set_progress([&](const ProgressEvent& e) { steps.push_back(e); });
  auto removed = backend.remove(*cp1, "cp-1");
  REQUIRE_MESSAGE(removed.ok(), (removed.ok() ? "" : removed.error().message));
  CHECK_FALSE(std::filesystem::exists(cp1->snapshot));
  std::string said;
  for (const auto& e : steps) {
    said += e.detail + "\n";
  }
  CHECK_MESSAGE(said.find("block-stream of " + cp1->snapshot + " into " + top) != std::string::npos, said);
  CHECK_MESSAGE(said.find("qemu-img rebase " + above.string()) != std::string::npos, said);
  auto backing = qcow2_backing_file("qemu-img", top);
  REQUIRE(backing.ok());
  CHECK(*backing == base);

  // Now a checkpoint's overlay over another's, on a base with a second
  // layer: streaming would change the upper checkpoint. Refused, unchanged.
  auto cp2 = backend.snapshot({"data", top}, "cp-2", store / "cp-2");
  REQUIRE(cp2.ok());
  auto cp3 = backend.snapshot({"data", top}, "cp-3", store / "cp-3");
  REQUIRE(cp3.ok());
  layer(disks / "beside-top.qcow2", top);
  auto refused = backend.remove(*cp2, "cp-2");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().kind == ErrorKind::conflict);
  CHECK_MESSAGE(refused.error().message.find("would change that checkpoint") != std::string::npos,
                refused.error().message);
  CHECK(std::filesystem::exists(cp2->snapshot));
  backing = qcow2_backing_file("qemu-img", cp3->snapshot);
  REQUIRE(backing.ok());
  CHECK(*backing == cp2->snapshot);

  REQUIRE(QmpClient::connect(socket, 10s)->execute("quit").ok());
  REQUIRE(qemu.wait_for(20s).has_value());
  CHECK(reads(top, {0xa1, 0xb2, 0xc3, 0}));
  CHECK(reads(above.string(), {0xa1, 0xb2, 0, 0xd4}));
  CHECK(reads(beside.string(), {0xa1, 0, 0, 0}));
  CHECK(reads(base, {0xa1, 0, 0, 0}));
}

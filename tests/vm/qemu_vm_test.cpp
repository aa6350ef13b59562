// Issue #13: a VM of kind qemu that quiesce-host runs itself. One boot of
// the initramfs guest (tests/vm/initramfs_guest.*: Debian's kernel, busybox,
// the agent from this build serving the qga protocol on
// org.qemu.guest_agent.0) described by a vm.json, driven only through the
// real quiesce-host binary: vm up, status, a production checkpoint through
// the agent in the guest with QMP's snapshot transaction, its apply (a
// second boot), vm down.
// The guest's control channel (org.quiesce.test.0) is one of the vm.json's
// channels; the test reads the guest's files through it.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "host-bridge/qemu/qemu_vm.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/vm/control_channel.hpp"
#include "tests/vm/initramfs_guest.hpp"

namespace {

using nlohmann::json;
using quiesce::test::ControlChannel;
using quiesce::test::TempDir;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string agent_config() {
  // The state directory on the data disk: the restore marker the agent
  // writes at freeze time is inside the snapshot, so the guest booted from
  // it runs post-restore.
  return json{{"listen", {{"unix", {{"path", "/run/quiesce/agent.sock"}, {"mode", "0660"}}}}},
              {"state_dir", "/mnt/data/quiesce-state"},
              {"session", {{"freeze_window_ms", 20000}, {"max_freeze_window_ms", 60000}}},
              {"log", {{"target", "stderr"}, {"level", "info"}}},
              {"writers", {{{"type", "fsfreeze"}, {"name", "fs"}, {"options", {{"mounts", {"/mnt/data"}}}}}}},
              {"qga",
               {{"virtio_serial_path", "/dev/virtio-ports/org.qemu.guest_agent.0"},
                {"freeze_window_ms", 20000}}}}
      .dump(2);
}

struct HostRun {
  int exit_code = -1;
  std::string output;
  json result;  // the last line of --json output, when it is JSON
};

HostRun quiesce_host(const std::filesystem::path& vm, std::vector<std::string> args) {
  std::vector<std::string> argv = {quiesce::test::built_binary("quiesce-host").string(), "--vm", vm.string(),
                                   "--json"};
  argv.insert(argv.end(), args.begin(), args.end());
  HostRun run;
  run.exit_code = quiesce::test::run_command(argv, &run.output);
  const auto end = run.output.find_last_not_of('\n');
  const auto start = run.output.rfind('\n', end);
  const auto last = run.output.substr(start == std::string::npos ? 0 : start + 1,
                                      end == std::string::npos ? 0 : end - (start == std::string::npos ? 0 : start + 1) + 1);
  run.result = json::parse(last, nullptr, false);
  return run;
}

// QEMU daemonizes, so it is not our child and may stay a zombie until
// whoever adopted it reaps it: a process is alive while it has a cmdline.
bool process_alive(int pid) {
  std::ifstream cmdline("/proc/" + std::to_string(pid) + "/cmdline");
  std::string text;
  std::getline(cmdline, text);
  return !text.empty();
}

std::string sha256_of(const std::filesystem::path& file) {
  std::string output;
  REQUIRE(quiesce::test::run_command({"sha256sum", file.string()}, &output) == 0);
  return output.substr(0, 64);
}

// qemu-img's view of an image and everything under it.
json backing_chain(const std::filesystem::path& image) {
  std::string output;
  REQUIRE(quiesce::test::run_command({"qemu-img", "info", "-U", "--backing-chain", "--output=json", image.string()},
                                     &output) == 0);
  return json::parse(output);
}

// The VM directory, made once: the guest's kernel and initrd with this
// build's agent, a qcow2 data disk, vm.json.
struct QemuVmFixture {
  TempDir dir{"quiesce-qemu-vm"};
  std::filesystem::path vm;
  std::filesystem::path control_socket;

  QemuVmFixture() {
    vm = dir.path() / "vm";
    std::filesystem::create_directories(vm / "disks");
    quiesce::test::InitramfsPayload payload;
    payload.build_dir = QUIESCE_BUILD_DIR;
    payload.agent_config = agent_config();
    const auto boot = quiesce::test::prepare_initramfs_boot(payload, vm);
    quiesce::test::make_data_disk(vm / "disks/data.qcow2", 64);
    control_socket = vm / "run/control.sock";
    const json config = {
        {"kind", "qemu"},
        {"name", "initramfs-guest"},
        {"memory_mib", 256},
        {"kernel", boot.kernel.string()},
        {"initrd", "initrd.img"},
        {"cmdline", boot.cmdline},
        {"disks", {{{"name", "data"}, {"image", "disks/data.qcow2"}}}},
        {"agent", {{"channel", "virtio-serial"}}},
        {"channels", {{{"name", "org.quiesce.test.0"}, {"socket", "run/control.sock"}}}},
        // The busybox guest has no acpid: the power button does nothing, so
        // a short deadline keeps the hard stop quick.
        {"shutdown_timeout_s", 5},
        {"boot_timeout_s", 240}};
    std::ofstream(vm / "vm.json") << config.dump(2);
  }
  ~QemuVmFixture() {
    // A failed case must not leave QEMU running.
    (void)quiesce_host(vm, {"vm", "down"});
  }
};

}  // namespace

TEST_SUITE("qemu vm") {
TEST_CASE("qemu vm: up, status, a production checkpoint through the agent in the guest, its apply, down") {
  QemuVmFixture f;
  const auto started = Clock::now();
  auto up = quiesce_host(f.vm, {"vm", "up"});
  const double up_s = std::chrono::duration<double>(Clock::now() - started).count();
  INFO(up.output);
  REQUIRE(up.exit_code == 0);
  std::cout << "qemu vm: up (QEMU start to the agent's health over virtio-serial) " << up_s << " s\n";
  CHECK(up.result["power"] == "on");
  CHECK(up.result["kind"] == "qemu");
  CHECK(up.result["health"]["version"].is_string());
  const int pid = up.result["qemu_pid"].get<int>();
  CHECK(pid > 0);

  // The exact command line is kept; it says which accelerator ran.
  std::ifstream command_file(f.vm / "qemu-command.json");
  const auto command = json::parse(command_file);
  REQUIRE(command.is_array());
  const auto accel = std::find(command.begin(), command.end(), "-accel");
  REQUIRE(accel != command.end());
  CHECK(*(accel + 1) == up.result["accel"]);
  CHECK(up.result["accel"] == (quiesce::host::kvm_usable() ? "kvm" : "tcg"));

  // A second up is refused and changes nothing.
  auto again = quiesce_host(f.vm, {"vm", "up"});
  CHECK(again.exit_code == 5);
  CHECK(again.output.find("already on") != std::string::npos);
  CHECK(quiesce_host(f.vm, {"vm", "status"}).result["qemu_pid"] == pid);

  ControlChannel control;
  control.connect(f.control_socket, Clock::now() + 60s, [&] { return process_alive(pid); });
  REQUIRE(control.run("echo before > /mnt/data/marker && sync").ok());

  // Production: the agent in the guest freezes /mnt/data, QMP's transaction
  // puts an overlay over the data disk, thaw, complete.
  auto created = quiesce_host(f.vm, {"checkpoint", "create", "--label", "first"});
  INFO(created.output);
  REQUIRE(created.exit_code == 0);
  CHECK(created.result["type"] == "production");
  CHECK(created.result["consistency"] == "application");
  REQUIRE(created.result["disks"].size() == 1);
  CHECK(created.result["disks"][0]["method"] == "qmp");
  // From here on nothing may write into the image the checkpoint froze.
  const auto data_image = f.vm / "disks/data.qcow2";
  const auto frozen_hash = sha256_of(data_image);
  // The guest writes on after the thaw (the overlay takes it).
  CHECK(control.run("echo after > /mnt/data/marker && sync && cat /mnt/data/marker").output.find("after") !=
        std::string::npos);

  auto status = quiesce_host(f.vm, {"vm", "status"});
  CHECK(status.result["run_state"] == "running");

  // Apply: power off, the disk back as it was at the checkpoint, boot; the
  // agent in the guest finds the restore marker and runs post-restore.
  control.close();
  const auto id = created.result["id"].get<std::string>();
  const auto apply_started = Clock::now();
  auto applied = quiesce_host(f.vm, {"checkpoint", "apply", id});
  INFO(applied.output);
  REQUIRE(applied.exit_code == 0);
  std::cout << "qemu vm: apply of a production checkpoint (off, restore, boot to the agent) "
            << std::chrono::duration<double>(Clock::now() - apply_started).count() << " s\n";
  auto restored = quiesce_host(f.vm, {"vm", "status"});
  REQUIRE(restored.result["power"] == "on");
  CHECK(restored.result["qemu_pid"] != pid);
  REQUIRE(restored.result["health"]["last_restore"].is_object());
  CHECK(restored.result["health"]["last_restore"]["checkpoint_id"] == id);
  const int restored_pid = restored.result["qemu_pid"].get<int>();
  ControlChannel after_apply;
  after_apply.connect(f.control_socket, Clock::now() + 60s, [&] { return process_alive(restored_pid); });
  CHECK(after_apply.run("cat /mnt/data/marker").output.find("before") != std::string::npos);
  // A new checkpoint after the apply: the tree grows, the older one stays.
  auto second = quiesce_host(f.vm, {"checkpoint", "create", "--label", "second"});
  INFO(second.output);
  REQUIRE(second.exit_code == 0);
  CHECK(second.result["consistency"] == "application");
  CHECK(after_apply.run("echo third > /mnt/data/marker && sync").ok());
  after_apply.close();
  auto down = quiesce_host(f.vm, {"vm", "down"});
  INFO(down.output);
  REQUIRE(down.exit_code == 0);
  CHECK(down.result["power"] == "off");
  // Whichever way it went, it says so, and QEMU is gone.
  const auto method = down.result["method"].get<std::string>();
  CHECK((method == "acpi" || method == "quit" || method == "kill"));
  std::cout << "qemu vm: down by " << down.result["how"].get<std::string>() << " in "
            << down.result["ms"].get<double>() << " ms\n";
  CHECK_FALSE(process_alive(restored_pid));
  CHECK(quiesce_host(f.vm, {"vm", "status"}).result["power"] == "off");

  // The tree never broke: the first checkpoint's frozen image is byte for
  // byte what it was, its overlay still stands on it, and the VM's next
  // start runs from a top layer of its own over the second checkpoint's
  // overlay (so the writes since are kept and no checkpoint file is written).
  CHECK(sha256_of(data_image) == frozen_hash);
  const auto first_chain = backing_chain(created.result["disks"][0]["snapshot"].get<std::string>());
  REQUIRE(first_chain.size() == 2);
  CHECK(first_chain[1]["filename"] == data_image.string());
  std::ifstream active_file(f.vm / "active-disks.json");
  const auto active = json::parse(active_file);
  const auto top = active["data"].get<std::string>();
  CHECK(top.find(f.vm.string() + "/disks/data.top-") == 0);
  const auto chain = backing_chain(top);
  REQUIRE(chain.size() >= 2);
  CHECK(chain[1]["filename"] == second.result["disks"][0]["snapshot"]);
  // Deleting the second checkpoint merges its overlay (the guest's writes
  // since, "third") into the layer below (qemu-img commit, the VM off) and
  // re-points the VM's top layer there: the disk reads byte for byte the
  // same, the first checkpoint is untouched.
  const auto second_id = second.result["id"].get<std::string>();
  const auto second_overlay = second.result["disks"][0]["snapshot"].get<std::string>();
  const auto second_state = backing_chain(second_overlay)[1]["filename"].get<std::string>();
  const auto disk_raw = f.dir / "disk.raw";
  auto disk_hash = [&] {
    REQUIRE(quiesce::test::run_command({"qemu-img", "convert", "-U", "-O", "raw", top, disk_raw.string()}) == 0);
    return sha256_of(disk_raw);
  };
  const auto before_delete = disk_hash();
  auto deleted = quiesce_host(f.vm, {"checkpoint", "delete", second_id});
  INFO(deleted.output);
  CHECK(deleted.exit_code == 0);
  CHECK_FALSE(std::filesystem::exists(second_overlay));
  CHECK(backing_chain(top)[1]["filename"] == second_state);
  CHECK(disk_hash() == before_delete);
  CHECK(sha256_of(data_image) == frozen_hash);
  std::filesystem::remove(disk_raw);
  CHECK(quiesce_host(f.vm, {"vm", "down"}).result["method"] == "already_off");
}
}
